//! WatchOrder across the real processes: a watcher sees an order's current
//! state, each change, and the end of the stream after a terminal state;
//! a thousand watchers share one connection to the gateway, a bounded number
//! of database connections, and cause no polling while nothing changes.

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};
use uuid::Uuid;

use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_api::orders::v1::{Order, OrderStatus, WatchOrderRequest};
use oms_testkit::TestDatabase;
use oms_testkit::orders::order;
use oms_testkit::system::{PAYMENT, System};

const WAIT: Duration = Duration::from_secs(30);

async fn watch(
    client: &OrderServiceClient<Channel>,
    order_id: &str,
) -> Result<Streaming<Order>, tonic::Status> {
    client
        .clone()
        .watch_order(WatchOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn next(stream: &mut Streaming<Order>) -> Option<Order> {
    next_within(WAIT, stream).await
}

async fn next_within(wait: Duration, stream: &mut Streaming<Order>) -> Option<Order> {
    tokio::time::timeout(wait, stream.message())
        .await
        .expect("a message or the end of the stream in time")
        .expect("no error on the stream")
}

/// How long after the order service's change (its `update_time`) the
/// watcher received it, on this machine's one clock.
fn delivery_lag(order: &Order) -> Duration {
    let update_time = order.update_time.expect("update_time");
    let changed = oms_api::time::from_timestamp(&update_time).expect("valid time");
    (chrono::Utc::now() - changed).to_std().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_order_follows_a_live_order_to_paid_and_closes() {
    let db = TestDatabase::create().await;
    let mut system = System::start_on_test_broker(&db).await;
    let client = system.gateway().await;
    // With the payment service down the order stops at AWAITING_PAYMENT,
    // so the watcher sees each state, whatever the timing.
    system.kill(PAYMENT);
    let order_id = gateway::idempotency::order_id_for_key("wendy", "watch-1").to_string();

    // Watching before the order exists waits for it to be recorded.
    let mut stream = watch(&client, &order_id).await.expect("watch");
    let accepted = client
        .clone()
        .create_order(order("wendy", "watch-1"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(accepted.order_id, order_id);
    assert_eq!(accepted.status, OrderStatus::Pending as i32);

    let recorded = next(&mut stream).await.expect("the recorded order");
    assert_eq!(recorded.status, OrderStatus::AwaitingPayment as i32);
    assert_eq!(recorded.order_id, order_id);
    assert_eq!(recorded.amount, accepted.amount);

    system.restart(PAYMENT);
    let paid = next(&mut stream).await.expect("the paid order");
    assert_eq!(paid.status, OrderStatus::Paid as i32);
    assert!(!paid.payment_id.is_empty());
    println!(
        "PAID reached the watcher {:?} after the change",
        delivery_lag(&paid)
    );
    assert_eq!(next(&mut stream).await, None, "the stream ends after PAID");

    // A watch of a settled order sends it once and ends.
    let mut again = watch(&client, &order_id).await.expect("watch again");
    assert_eq!(next(&mut again).await, Some(paid));
    assert_eq!(next(&mut again).await, None);
    system.shut_down();
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_order_refuses_bad_ids_and_honours_the_deadline() {
    let db = TestDatabase::create().await;
    let system = System::start_on_test_broker(&db).await;
    let client = system.gateway().await;

    let status = watch(&client, "not-a-uuid").await.expect_err("bad id");
    assert_eq!(status.code(), Code::InvalidArgument);

    // An order that is never recorded: the call ends at its deadline.
    let mut call = Request::new(WatchOrderRequest {
        order_id: Uuid::now_v7().to_string(),
    });
    call.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let outcome = match client.clone().watch_order(call).await {
        Ok(response) => response.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    let status = outcome.expect_err("no order, no message");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < WAIT);
    system.shut_down();
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    let mut conn = db.connect("public").await;
    diesel::sql_query(sql)
        .get_result::<Count>(&mut conn)
        .await
        .expect("count")
        .value
}

const WATCHED_ORDERS: usize = 100;
const WATCHERS_PER_ORDER: usize = 10;

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_watchers_share_connections_and_cost_no_polling() {
    let db = TestDatabase::create().await;
    let mut system = System::start_on_test_broker(&db).await;
    // One client, so one HTTP/2 connection to the gateway for all watchers.
    let client = system.gateway().await;
    system.kill(PAYMENT);
    let creates = (0..WATCHED_ORDERS).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .create_order(order(&format!("watcher-{i}"), ""))
                .await
                .expect("create")
                .into_inner()
                .order_id
        }
    });
    let order_ids = futures::future::join_all(creates).await;

    // Each watcher reports its first message, then waits for the end.
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel(WATCHED_ORDERS * WATCHERS_PER_ORDER);
    let mut watchers = tokio::task::JoinSet::new();
    for order_id in order_ids
        .iter()
        .cycle()
        .take(WATCHED_ORDERS * WATCHERS_PER_ORDER)
    {
        let (client, order_id, first_tx) = (client.clone(), order_id.clone(), first_tx.clone());
        watchers.spawn(async move {
            let mut stream = watch(&client, &order_id).await.expect("watch");
            let first = next(&mut stream).await.expect("current state");
            first_tx.send(first.status).await.expect("report");
            // Waits through the idle check and the payment service's restart.
            let last = next_within(Duration::from_secs(120), &mut stream)
                .await
                .expect("a change");
            assert_eq!(next(&mut stream).await, None, "ends after a terminal state");
            last
        });
    }
    for _ in 0..WATCHED_ORDERS * WATCHERS_PER_ORDER {
        let status = tokio::time::timeout(WAIT, first_rx.recv())
            .await
            .expect("every watcher gets the current state")
            .expect("watchers alive");
        assert_eq!(status, OrderStatus::AwaitingPayment as i32);
    }

    // All 1,000 watchers are open now. Database connections do not grow
    // with them: the services' pools (10 each) plus the order service's one
    // listener, and this test's own connection.
    let database = db.url.database_name();
    let connections = count(
        &db,
        &format!("SELECT count(*) AS value FROM pg_stat_activity WHERE datname = '{database}'"),
    )
    .await;
    println!("database connections with 1000 watchers open: {connections}");
    assert!(connections <= 3 * 10 + 2, "{connections} connections");

    // Nothing changes for a while: the watchers must cost (almost) no
    // queries. Statistics reach pg_stat_database within 10 s of idleness,
    // so the window may still see the watchers' 1,000 first reads and the
    // services' own health probes and relay sweeps (a few hundred); a
    // watcher polling even once a second would add 11,000.
    let commits =
        format!("SELECT xact_commit AS value FROM pg_stat_database WHERE datname = '{database}'");
    let before = count(&db, &commits).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let idle_commits = count(&db, &commits).await - before;
    println!("transactions in 11 s while 1000 watchers waited: {idle_commits}");
    assert!(
        idle_commits < 5_000,
        "{idle_commits} transactions: watchers are polling"
    );

    system.restart(PAYMENT);
    let mut lags = Vec::new();
    while let Some(joined) = watchers.join_next().await {
        let last = joined.expect("watcher task");
        assert_eq!(last.status, OrderStatus::Paid as i32);
        lags.push(delivery_lag(&last));
    }
    lags.sort_unstable();
    let percentile = |p: usize| lags[(lags.len() - 1) * p / 100];
    println!(
        "PAID delivery lag over {} watchers: p50 {:?}, p99 {:?}, max {:?}",
        lags.len(),
        percentile(50),
        percentile(99),
        percentile(100)
    );
    system.shut_down();
}
