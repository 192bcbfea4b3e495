//! The machine's ceilings, measured with the same clients and the same
//! code the services use, so the end-to-end rate can be judged against
//! what the broker, PostgreSQL and gRPC can do at all on this machine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

use oms_api::EventEnvelope;
use oms_api::orders::events::v1::OrderCreated;
use oms_common::config::{DatabaseConfig, DatabaseUrl, KafkaConfig};
use oms_common::consumer::{EventHandler, Fence, InboundRecord, Position, commit_records};
use oms_common::db::{self, DbPool};
use oms_common::kafka;
use oms_common::membership::acquire_for_benchmark;
use oms_common::outbox::{self, RELAY_BATCH};
use prost::Message;

use payment_service::provider::SimulatedProvider;
use payment_service::settlement::{ProviderPolicy, Settlement};

use crate::cli::CeilingSettings;
use crate::driver::order_request;

/// Records produced and fetched per order: `order-created`,
/// `process-payment` and `payment-succeeded` are each produced once;
/// `order-created` and `payment-succeeded` are fetched by two services.
const PRODUCES_PER_ORDER: f64 = 3.0;
const FETCHES_PER_ORDER: f64 = 5.0;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ceilings {
    /// Records per second produced and then fetched back once.
    pub broker_records_per_s: f64,
    pub broker_produce_records_per_s: f64,
    pub broker_fetch_records_per_s: f64,
    /// Orders per second the broker could carry: 3 produces and 5 fetches each.
    pub broker_orders_per_s: f64,
    /// Orders per second through every transaction the services run for
    /// an order, batched as the consumers batch them.
    pub postgres_orders_per_s: f64,
    /// Trivial unary calls (health checks) per second on the gateway.
    pub grpc_calls_per_s: f64,
    /// The lowest of the three, in orders per second (a gRPC call is one
    /// CreateOrder).
    pub lowest_orders_per_s: f64,
    pub lowest: String,
}

impl Ceilings {
    pub fn finish(mut self) -> Self {
        let candidates = [
            ("broker", self.broker_orders_per_s),
            ("postgres", self.postgres_orders_per_s),
            ("grpc", self.grpc_calls_per_s),
        ];
        if let Some((name, value)) = candidates
            .into_iter()
            .filter(|(_, value)| *value > 0.0)
            .min_by(|a, b| a.1.total_cmp(&b.1))
        {
            self.lowest = name.to_owned();
            self.lowest_orders_per_s = value;
        }
        self
    }
}

/// Health checks against the gateway at a fixed concurrency.
pub async fn grpc_calls_per_s(
    gateway: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let channels = crate::driver::channels(gateway, connections).await?;
    let calls = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers = (0..64).map(|worker| {
        let mut health = HealthClient::new(channels[worker % channels.len()].clone());
        let calls = Arc::clone(&calls);
        tokio::spawn(async move {
            while start.elapsed() < duration {
                if health.check(HealthCheckRequest::default()).await.is_ok() {
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    futures::future::join_all(workers).await;
    Ok(calls.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// A record the size and shape of the gateway's `order-created` records.
fn sample_record(i: u64) -> Record {
    let order_id = Uuid::now_v7().to_string();
    let request = order_request("ceiling", i);
    let event = OrderCreated {
        order_id: order_id.clone(),
        customer_id: request.customer_id,
        product_id: request.product_id,
        quantity: request.quantity,
        amount: request.amount,
        request_id: String::new(),
        create_time: Some(oms_api::time::to_timestamp(chrono::Utc::now())),
    };
    Record {
        key: Some(order_id.clone().into_bytes()),
        value: Some(event.encode_to_vec()),
        headers: EventEnvelope::new::<OrderCreated>("/bench", &order_id).to_headers(),
        timestamp: chrono::Utc::now(),
    }
}

/// Produces batches to every partition of a new topic for `duration`, then
/// fetches them all back.
pub async fn broker(brokers: &str, settings: &CeilingSettings) -> anyhow::Result<Ceilings> {
    let config = KafkaConfig {
        brokers: brokers.split(',').map(str::to_owned).collect(),
        ..KafkaConfig::from_env()?
    };
    let client = kafka::connect(&config, "oms-loadgen").await?;
    let topic = format!("bench-ceiling-{}", Uuid::new_v4().simple());
    kafka::ensure_topics(
        &client,
        std::slice::from_ref(&topic),
        settings.partitions,
        1,
    )
    .await?;
    let duration = Duration::from_secs_f64(settings.ceiling_duration);
    let mut partitions = Vec::new();
    for partition in 0..settings.partitions {
        partitions.push(Arc::new(
            client
                .partition_client(topic.clone(), partition, UnknownTopicHandling::Retry)
                .await?,
        ));
    }

    let start = Instant::now();
    let producers = partitions.iter().map(|partition| {
        let partition = Arc::clone(partition);
        let batch = settings.batch;
        tokio::spawn(async move {
            let mut produced = 0u64;
            while start.elapsed() < duration {
                let records = (0..batch as u64)
                    .map(|i| sample_record(produced + i))
                    .collect();
                partition
                    .produce(records, Compression::NoCompression)
                    .await?;
                produced += batch as u64;
            }
            anyhow::Ok(produced)
        })
    });
    let mut produced = 0;
    for result in futures::future::join_all(producers).await {
        produced += result??;
    }
    let produce_time = start.elapsed();

    let start = Instant::now();
    let fetchers = partitions.iter().map(|partition| {
        let partition = Arc::clone(partition);
        tokio::spawn(async move {
            let mut offset = 0;
            let mut fetched = 0u64;
            loop {
                let (records, high_watermark) = partition
                    .fetch_records(offset, 1..4 * 1024 * 1024, 25)
                    .await?;
                if let Some(last) = records.last() {
                    offset = last.offset + 1;
                }
                fetched += records.len() as u64;
                if offset >= high_watermark {
                    return anyhow::Ok(fetched);
                }
            }
        })
    });
    let mut fetched = 0;
    for result in futures::future::join_all(fetchers).await {
        fetched += result??;
    }
    let fetch_time = start.elapsed();
    if let Err(err) = client
        .controller_client()?
        .delete_topic(topic.clone(), 5_000)
        .await
    {
        tracing::warn!(%topic, error = %err, "could not delete the ceiling's topic");
    }

    let produce_rate = produced as f64 / produce_time.as_secs_f64();
    let fetch_rate = fetched as f64 / fetch_time.as_secs_f64();
    Ok(Ceilings {
        broker_records_per_s: produced as f64 / (produce_time + fetch_time).as_secs_f64(),
        broker_produce_records_per_s: produce_rate,
        broker_fetch_records_per_s: fetch_rate,
        broker_orders_per_s: 1.0
            / (PRODUCES_PER_ORDER / produce_rate + FETCHES_PER_ORDER / fetch_rate),
        ..Ceilings::default()
    })
}

/// The services' own handlers and tables in a scratch database.
struct Pipeline {
    orders: DbPool,
    payments: DbPool,
    notifications: DbPool,
    order_events: order_service::events::OrderEvents,
    payment_events: payment_service::events::PaymentEvents,
    /// Settles the payments the payment stage records as pending, as the
    /// payment service's worker does after each commit.
    settlement: Arc<Settlement<SimulatedProvider>>,
    /// Each partition's next offset and the lease its batches commit under.
    offsets: BTreeMap<String, (i64, Fence)>,
}

/// The instance the benchmark's connections and leases name.
const BENCHMARK_INSTANCE: &str = "benchmark";

/// Pipelines run at once, each in schemas of its own, so PostgreSQL works
/// on several stages at a time, as it does under the running services.
const PIPELINES: usize = 4;

/// One consumer stage: the records split over concurrent transactions of at
/// most `batch` records each, as partition consumers commit them.
async fn consume<H: EventHandler>(
    offsets: &mut BTreeMap<String, (i64, Fence)>,
    pool: &DbPool,
    handler: &H,
    topic: &str,
    records: &[InboundRecord],
    batch: usize,
) -> anyhow::Result<()> {
    let chunks: Vec<&[InboundRecord]> = records.chunks(batch.max(1)).collect();
    for partition in 0..chunks.len() {
        if let std::collections::btree_map::Entry::Vacant(entry) =
            offsets.entry(stage_key::<H>(topic, partition))
        {
            // Every batch is fenced by its lease, as in the services.
            let mut conn = pool.get().await?;
            let epoch =
                acquire_for_benchmark(&mut conn, BENCHMARK_INSTANCE, topic, partition as i32)
                    .await?;
            entry.insert((
                0,
                Fence {
                    owner: Arc::from(BENCHMARK_INSTANCE),
                    epoch,
                },
            ));
        }
    }
    let mut work = Vec::new();
    for (partition, chunk) in chunks.into_iter().enumerate() {
        let (offset, fence) = offsets
            .get_mut(&stage_key::<H>(topic, partition))
            .expect("leased above");
        *offset += chunk.len() as i64;
        work.push((partition as i32, chunk, *offset, fence.clone()));
    }
    let commits = work.iter().map(|(partition, chunk, offset, fence)| {
        let at = Position {
            topic,
            partition: *partition,
            new_offset: *offset,
            fence,
        };
        async move { commit_records(pool, handler, &at, chunk, 0).await }
    });
    for result in futures::future::join_all(commits).await {
        result?;
    }
    Ok(())
}

/// A consumer's partition: each service (its handler type) has its own
/// offsets and leases, in its own schema.
fn stage_key<H>(topic: &str, partition: usize) -> String {
    format!("{}/{topic}/{partition}", std::any::type_name::<H>())
}

/// One relay round trip: read the pending rows and delete them, as the
/// relay does around publishing them; returns them as the next stage's
/// input.
async fn relay(pool: &DbPool) -> anyhow::Result<Vec<InboundRecord>> {
    let mut conn = pool.get().await?;
    let mut records = Vec::new();
    loop {
        let rows = outbox::load_pending(&mut conn, BENCHMARK_INSTANCE, RELAY_BATCH).await?;
        if rows.is_empty() {
            return Ok(records);
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        outbox::delete_published(&mut conn, &ids).await?;
        records.extend(rows.into_iter().map(|row| {
            InboundRecord {
                topic: row.topic,
                partition: 0,
                offset: 0,
                key: Some(row.message_key),
                payload: row.payload,
                timestamp: chrono::Utc::now(),
                headers: row
                    .header_names
                    .into_iter()
                    .zip(row.header_values)
                    .collect(),
            }
        }));
    }
}

impl Pipeline {
    /// The three services' schemas for pipeline `worker`, migrated, as if
    /// each pipeline were a deployment of its own on the same server.
    async fn prepare(url: &DatabaseUrl, worker: usize, partitions: i32) -> anyhow::Result<Self> {
        // Schema names must be 'static for the pool; a handful per run.
        let schema = |service: &str| -> &'static str {
            Box::leak(format!("{service}_p{worker}").into_boxed_str())
        };
        let (order, payment, notification) = (
            schema(order_service::SCHEMA),
            schema(payment_service::SCHEMA),
            schema(notification_service::SCHEMA),
        );
        db::prepare(url, order, order_service::startup::MIGRATIONS).await?;
        db::prepare(url, payment, payment_service::startup::MIGRATIONS).await?;
        db::prepare(url, notification, notification_service::startup::MIGRATIONS).await?;
        let config = DatabaseConfig {
            url: url.clone(),
            pool_size: partitions.max(1) as u32 + 1,
            read_pool_size: 1,
        };
        let payments = db::pool(&config, payment, BENCHMARK_INSTANCE);
        Ok(Self {
            orders: db::pool(&config, order, BENCHMARK_INSTANCE),
            settlement: settlement(payments.clone()),
            payments,
            notifications: db::pool(&config, notification, BENCHMARK_INSTANCE),
            order_events: order_events(),
            payment_events: payment_events(),
            offsets: BTreeMap::new(),
        })
    }

    /// Takes `count` orders through every transaction of their life.
    async fn round(&mut self, count: usize, batch: usize) -> anyhow::Result<()> {
        let created: Vec<InboundRecord> = (0..count as u64)
            .map(|i| {
                let record = sample_record(i);
                InboundRecord {
                    topic: "order-created".into(),
                    partition: 0,
                    offset: 0,
                    key: record.key,
                    payload: record.value.unwrap_or_default(),
                    headers: record.headers,
                    timestamp: record.timestamp,
                }
            })
            .collect();
        let Pipeline {
            orders,
            payments,
            notifications,
            order_events,
            payment_events,
            settlement,
            offsets,
        } = self;
        let notification_events = notification_service::events::NotificationEvents;
        consume(
            offsets,
            orders,
            order_events,
            "order-created",
            &created,
            batch,
        )
        .await?;
        consume(
            offsets,
            notifications,
            &notification_events,
            "order-created",
            &created,
            batch,
        )
        .await?;
        let requested = relay(orders).await?;
        consume(
            offsets,
            payments,
            payment_events,
            "process-payment",
            &requested,
            batch,
        )
        .await?;
        settlement.settle_all_pending().await?;
        let paid = relay(payments).await?;
        consume(
            offsets,
            orders,
            order_events,
            "payment-succeeded",
            &paid,
            batch,
        )
        .await?;
        consume(
            offsets,
            notifications,
            &notification_events,
            "payment-succeeded",
            &paid,
            batch,
        )
        .await?;
        Ok(())
    }
}

fn order_events() -> order_service::events::OrderEvents {
    order_service::events::OrderEvents {
        process_payment_topic: "process-payment".into(),
        source: "/bench",
    }
}

fn payment_events() -> payment_service::events::PaymentEvents {
    payment_service::events::PaymentEvents {
        settlement_wakeup: Arc::new(Notify::new()),
    }
}

fn settlement(payments: DbPool) -> Arc<Settlement<SimulatedProvider>> {
    Arc::new(Settlement {
        pool: payments,
        provider: SimulatedProvider {
            decline_above_minor: i64::MAX,
            ..SimulatedProvider::default()
        },
        policy: ProviderPolicy::default(),
        payment_succeeded_topic: "payment-succeeded".into(),
        payment_failed_topic: "payment-failed".into(),
        source: "/bench",
        relay_wakeup: Arc::new(Notify::new()),
    })
}

/// Runs the services' transactions for whole orders, in a scratch database
/// on the same server, for `ceiling_duration`.
pub async fn postgres(database_url: &str, settings: &CeilingSettings) -> anyhow::Result<Ceilings> {
    let base = DatabaseUrl::parse("--database-url", database_url)?;
    let name = format!(
        "bench_ceiling_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let url = base.with_database(&name);
    let duration = Duration::from_secs_f64(settings.ceiling_duration);
    let per_round = settings.batch * settings.partitions.max(1) as usize;
    let mut pipelines = Vec::new();
    for worker in 0..PIPELINES {
        pipelines.push(Pipeline::prepare(&url, worker, settings.partitions).await?);
    }
    let start = Instant::now();
    let workers = pipelines.iter_mut().map(|pipeline| {
        let batch = settings.batch;
        async move {
            while start.elapsed() < duration {
                pipeline.round(per_round, batch).await?;
            }
            anyhow::Ok(())
        }
    });
    for result in futures::future::join_all(workers).await {
        result?;
    }
    let elapsed = start.elapsed();
    let mut paid = 0;
    for pipeline in &pipelines {
        paid += paid_orders(&pipeline.orders).await?;
    }
    drop(pipelines);
    let rate = paid as f64 / elapsed.as_secs_f64();
    drop_database(&base, &name).await;
    Ok(Ceilings {
        postgres_orders_per_s: rate,
        ..Ceilings::default()
    })
}

async fn paid_orders(pool: &DbPool) -> anyhow::Result<i64> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use order_service::schema::orders;
    let mut conn = pool.get().await?;
    Ok(orders::table
        .filter(orders::status.eq(order_service::repository::STATUS_PAID))
        .count()
        .get_result(&mut conn)
        .await?)
}

async fn drop_database(base: &DatabaseUrl, name: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let dropped = async {
        let mut admin = AsyncPgConnection::establish(base.maintenance_url().expose()).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await?;
        anyhow::Ok(())
    };
    if let Err(err) = dropped.await {
        tracing::warn!(database = name, error = %err, "could not drop the ceiling's database");
    }
}
