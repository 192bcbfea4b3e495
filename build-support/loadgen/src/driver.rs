//! Drives `CreateOrder`: open loop at a fixed rate or closed loop at a
//! fixed concurrency, with a live progress line.
//!
//! In the open loop every request has an intended send time, `start + i /
//! rate`, and its latency is measured from that time, not from when it was
//! actually sent: if the system (or this generator) falls behind, the wait
//! counts as latency instead of silently lowering the rate (no coordinated
//! omission).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use oms_api::google::r#type::Money;
use oms_api::orders::v1::CreateOrderRequest;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_devkeys::SigningKey;

/// How load is offered.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// A fixed rate, orders per second.
    Open { rate: f64 },
    /// A fixed number of requests in flight.
    Closed { concurrency: usize },
}

/// When a phase stops sending.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(Duration),
    Orders(u64),
}

/// Requests in flight above which the open loop counts new requests as
/// errors instead of piling up tasks without bound.
const MAX_IN_FLIGHT: u64 = 50_000;

/// What a phase sent and got back.
#[derive(Debug)]
pub struct Sent {
    pub accepted: Vec<Uuid>,
    pub errors: u64,
    /// CreateOrder latency in microseconds.
    pub create_latency: Histogram<u64>,
    pub elapsed: Duration,
}

impl Sent {
    fn empty() -> Self {
        Self {
            accepted: Vec::new(),
            errors: 0,
            create_latency: latency_histogram(),
            elapsed: Duration::ZERO,
        }
    }
}

/// Counters the progress line shows; `completed` is filled in by the caller.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub errors: AtomicU64,
    pub completed: AtomicU64,
}

/// A histogram of microseconds: 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// Opens `count` connections to the gateway.
pub async fn channels(gateway: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let channel = Endpoint::from_shared(gateway.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}

/// An order client on each of `count` connections to the gateway.
pub async fn connect(
    gateway: &str,
    count: usize,
) -> anyhow::Result<Vec<OrderServiceClient<Channel>>> {
    let channels = channels(gateway, count).await?;
    Ok(channels.into_iter().map(OrderServiceClient::new).collect())
}

/// Customers a run's orders are spread over.
const CUSTOMERS: u64 = 1000;

/// A run's orders, each sent with its customer's own token when the
/// services check tokens: as many customers calling at once, which is what
/// per-customer rate limits and token checks see in production.
pub struct Orders {
    run: String,
    /// `authorization` values by customer number; empty without tokens.
    credentials: Vec<AsciiMetadataValue>,
}

impl Orders {
    /// `signing_key` signs one token per customer; `None` sends none.
    pub fn new(run: &str, signing_key: Option<&SigningKey>) -> anyhow::Result<Self> {
        let mut credentials = Vec::new();
        if let Some(key) = signing_key {
            for customer in 0..CUSTOMERS {
                let token = key.token(&customer_id(run, customer), "orders:write", 86_400)?;
                credentials.push(format!("Bearer {token}").parse()?);
            }
        }
        Ok(Self {
            run: run.to_owned(),
            credentials,
        })
    }

    /// The `i`-th order as a call.
    pub fn request(&self, i: u64) -> tonic::Request<CreateOrderRequest> {
        let mut request = tonic::Request::new(order_request(&self.run, i));
        if let Some(credentials) = self.credentials.get((i % CUSTOMERS) as usize) {
            request
                .metadata_mut()
                .insert("authorization", credentials.clone());
        }
        request
    }
}

fn customer_id(run: &str, customer: u64) -> String {
    format!("bench-{run}-{customer}")
}

/// The `i`-th order of a run: spread over customers and products, always
/// below the simulator's decline limit, so every order should be paid.
pub fn order_request(run: &str, i: u64) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer_id(run, i % CUSTOMERS),
        product_id: format!("sku-{}", i % 100),
        quantity: 1 + (i % 5) as i32,
        amount: Some(Money {
            currency_code: "EUR".into(),
            units: 10 + (i % 90) as i64,
            nanos: ((i % 100) * 10_000_000) as i32,
        }),
        request_id: String::new(),
    }
}

enum Outcome {
    Accepted { order_id: Uuid, latency: Duration },
    Failed,
}

/// Sends orders until `stop`, and returns what was accepted.
pub async fn drive(
    clients: &[OrderServiceClient<Channel>],
    orders: Arc<Orders>,
    load: Load,
    stop: Stop,
    progress: Arc<Progress>,
) -> Sent {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let collector = tokio::spawn({
        let progress = Arc::clone(&progress);
        async move {
            let mut sent = Sent::empty();
            while let Some(outcome) = rx.recv().await {
                match outcome {
                    Outcome::Accepted { order_id, latency } => {
                        sent.accepted.push(order_id);
                        sent.create_latency
                            .saturating_record(latency.as_micros().max(1) as u64);
                        progress.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Failed => {
                        sent.errors += 1;
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            sent
        }
    });
    let start = Instant::now();
    let counter = Arc::new(AtomicU64::new(0));
    match load {
        Load::Open { rate } => open_loop(clients, &orders, rate, stop, start, &progress, &tx).await,
        Load::Closed { concurrency } => {
            let workers = (0..concurrency.max(1)).map(|worker| {
                let client = clients[worker % clients.len()].clone();
                let (tx, progress, counter) =
                    (tx.clone(), Arc::clone(&progress), Arc::clone(&counter));
                let orders = Arc::clone(&orders);
                tokio::spawn(async move {
                    loop {
                        let i = counter.fetch_add(1, Ordering::Relaxed);
                        if is_done(stop, start, i) {
                            return;
                        }
                        progress.sent.fetch_add(1, Ordering::Relaxed);
                        let sent_at = Instant::now();
                        let outcome = send(client.clone(), orders.request(i), sent_at).await;
                        let _ = tx.send(outcome);
                    }
                })
            });
            futures::future::join_all(workers).await;
        }
    }
    drop(tx);
    let mut sent = collector.await.unwrap_or_else(|_| Sent::empty());
    sent.elapsed = start.elapsed();
    sent
}

fn is_done(stop: Stop, start: Instant, sent: u64) -> bool {
    match stop {
        Stop::After(duration) => start.elapsed() >= duration,
        Stop::Orders(orders) => sent >= orders,
    }
}

async fn open_loop(
    clients: &[OrderServiceClient<Channel>],
    orders: &Orders,
    rate: f64,
    stop: Stop,
    start: Instant,
    progress: &Arc<Progress>,
    tx: &mpsc::UnboundedSender<Outcome>,
) {
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let intended = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let finished = |i: u64| match stop {
        Stop::After(duration) => intended(i) - start >= duration,
        Stop::Orders(orders) => i >= orders,
    };
    let mut i = 0u64;
    while !finished(i) {
        tokio::time::sleep_until(intended(i)).await;
        // Timers fire with millisecond granularity: send every request that
        // is due by now, each measured from its own intended time.
        let now = Instant::now();
        while !finished(i) && intended(i) <= now {
            progress.sent.fetch_add(1, Ordering::Relaxed);
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                let _ = tx.send(Outcome::Failed);
            } else {
                in_flight.fetch_add(1, Ordering::Relaxed);
                let client = clients[i as usize % clients.len()].clone();
                let (tx, in_flight) = (tx.clone(), Arc::clone(&in_flight));
                let (request, sent_for) = (orders.request(i), intended(i));
                tasks.spawn(async move {
                    let _ = tx.send(send(client, request, sent_for).await);
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            i += 1;
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn send(
    mut client: OrderServiceClient<Channel>,
    request: tonic::Request<CreateOrderRequest>,
    measured_from: Instant,
) -> Outcome {
    match client.create_order(request).await {
        Ok(response) => match Uuid::parse_str(&response.get_ref().order_id) {
            Ok(order_id) => Outcome::Accepted {
                order_id,
                latency: measured_from.elapsed(),
            },
            Err(_) => Outcome::Failed,
        },
        Err(status) => {
            tracing::debug!(%status, "CreateOrder failed");
            Outcome::Failed
        }
    }
}

/// Prints the progress line to stderr every second until the returned
/// sender is dropped or sent to.
pub fn show_progress(label: String, progress: Arc<Progress>) -> tokio::sync::oneshot::Sender<()> {
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last_accepted = 0;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = &mut stop_rx => break,
            }
            let accepted = progress.accepted.load(Ordering::Relaxed);
            eprint!(
                "\r[{label} {:>5.1}s] sent {} accepted {} completed {} errors {} rate {}/s    ",
                start.elapsed().as_secs_f64(),
                progress.sent.load(Ordering::Relaxed),
                accepted,
                progress.completed.load(Ordering::Relaxed),
                progress.errors.load(Ordering::Relaxed),
                accepted - last_accepted,
            );
            let _ = std::io::stderr().flush();
            last_accepted = accepted;
        }
        eprintln!();
    });
    stop_tx
}
