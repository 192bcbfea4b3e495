//! Several instances of a service, as real processes on a real broker and
//! database: partitions spread as instances start and come back when they
//! stop, with the takeover times measured; a paused instance that resumes
//! after losing its partitions repeats nothing and moves no offset back;
//! and the gateway keeps answering reads and watches while order-service
//! instances die.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use uuid::Uuid;

use oms_api::orders::v1::{GetOrderRequest, ListOrdersRequest, OrderStatus, WatchOrderRequest};
use oms_common::topics::{ORDER_CREATED, PROCESS_PAYMENT, TopicNames};
use oms_testkit::cluster::Cluster;
use oms_testkit::events::{order_created, record};
use oms_testkit::orders::order;
use oms_testkit::process::ServiceProcess;
use oms_testkit::system::{ORDER, free_ports};
use oms_testkit::{TestDatabase, eventually, kafka, unique_topic_prefix};

const LEASE_MS: u64 = 3_000;
const RENEW_MS: u64 = 500;
const PARTITIONS: usize = 6;
/// order-created, payment-succeeded and payment-failed.
const ORDER_TOPICS: usize = 3;

/// Short leases, so that the tests wait seconds, not tens of seconds.
fn lease_env() -> Vec<(&'static str, String)> {
    vec![
        ("LEASE_DURATION_MS", LEASE_MS.to_string()),
        ("LEASE_RENEW_INTERVAL_MS", RENEW_MS.to_string()),
        ("KAFKA_TOPIC_PARTITIONS", PARTITIONS.to_string()),
    ]
}

/// Order-service instances started by hand, each with its own port.
struct OrderInstances {
    env: Vec<(&'static str, String)>,
    prefix: String,
    addrs: Vec<SocketAddr>,
    processes: Vec<Option<ServiceProcess>>,
}

impl OrderInstances {
    fn new(db: &TestDatabase, count: usize) -> Self {
        let prefix = unique_topic_prefix();
        let mut env = vec![
            ("KAFKA_BROKERS", kafka::brokers().join(",")),
            ("KAFKA_TOPIC_PREFIX", prefix.clone()),
            ("DATABASE_URL", db.url.expose().to_owned()),
        ];
        env.extend(lease_env());
        Self {
            env,
            prefix,
            addrs: free_ports(count),
            processes: (0..count).map(|_| None).collect(),
        }
    }

    async fn start(&mut self, index: usize) {
        let mut env = self.env.clone();
        env.push(("ORDER_GRPC_ADDR", self.addrs[index].to_string()));
        env.push(("INSTANCE_ID", format!("order-{index}")));
        let tag = format!("{}{index}-", self.prefix);
        self.processes[index] = Some(ServiceProcess::spawn(ORDER, &env, &tag));
        oms_testkit::grpc::wait_until_serving(self.addrs[index], ORDER, Duration::from_secs(60))
            .await;
    }

    fn process(&self, index: usize) -> &ServiceProcess {
        self.processes[index].as_ref().expect("running")
    }
}

#[derive(diesel::QueryableByName)]
struct Owned {
    #[diesel(sql_type = Text)]
    owner: String,
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Valid leases per instance and topic.
async fn owners(db: &TestDatabase) -> BTreeMap<String, BTreeMap<String, i64>> {
    let rows: Vec<Owned> = diesel::sql_query(
        "SELECT owner, topic, count(*) AS count FROM order_service.partition_leases \
         WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner, topic",
    )
    .load(&mut db.connect("public").await)
    .await
    .unwrap_or_default();
    let mut owners: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for row in rows {
        owners
            .entry(row.owner)
            .or_default()
            .insert(row.topic, row.count);
    }
    owners
}

/// Whether exactly `instances` hold every partition of every topic, each
/// between `least` and `most` of each topic.
fn shared_by(
    owners: &BTreeMap<String, BTreeMap<String, i64>>,
    instances: &[&str],
    least: i64,
    most: i64,
) -> bool {
    let names: Vec<&str> = owners.keys().map(String::as_str).collect();
    let mut per_topic: HashMap<&str, i64> = HashMap::new();
    for topics in owners.values() {
        for (topic, count) in topics {
            *per_topic.entry(topic).or_default() += count;
        }
    }
    names == instances
        && per_topic.len() == ORDER_TOPICS
        && per_topic.values().all(|&n| n == PARTITIONS as i64)
        && owners.values().all(|topics| {
            topics.len() == ORDER_TOPICS && topics.values().all(|&n| (least..=most).contains(&n))
        })
}

async fn wait_for_sharing(
    db: &TestDatabase,
    instances: &[&str],
    least: i64,
    most: i64,
) -> Duration {
    let started = Instant::now();
    let what = format!("partitions shared by {instances:?}, {least} to {most} each");
    eventually(&what, Duration::from_secs(30), || async {
        shared_by(&owners(db).await, instances, least, most)
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_spread_over_instances_and_come_back_when_they_stop() {
    let db = TestDatabase::create().await;
    let mut orders = OrderInstances::new(&db, 3);
    orders.start(0).await;
    wait_for_sharing(&db, &["order-0"], 6, 6).await;
    orders.start(1).await;
    wait_for_sharing(&db, &["order-0", "order-1"], 3, 3).await;
    orders.start(2).await;
    wait_for_sharing(&db, &["order-0", "order-1", "order-2"], 2, 2).await;

    // SIGTERM hands the partitions back at once.
    let stopped = Instant::now();
    let status = orders.processes[2].take().expect("running").terminate();
    assert!(status.success());
    let exit = stopped.elapsed();
    let after_term = wait_for_sharing(&db, &["order-0", "order-1"], 3, 3).await + exit;
    // SIGKILL leaves them until the lease expires.
    let killed = Instant::now();
    orders.processes[1].take().expect("running").kill();
    wait_for_sharing(&db, &["order-0"], 6, 6).await;
    let after_kill = killed.elapsed();
    println!(
        "takeover after SIGTERM: {after_term:?} (exit took {exit:?}); after SIGKILL: {after_kill:?} \
         (lease {LEASE_MS} ms, renewal every {RENEW_MS} ms)"
    );
    assert!(after_term < Duration::from_secs(2), "{after_term:?}");
    let bound = Duration::from_millis(LEASE_MS + RENEW_MS) + Duration::from_secs(1);
    assert!(after_kill < bound, "{after_kill:?} is not within {bound:?}");

    // And the survivor consumes all of them.
    let client = kafka::client().await;
    let topic = TopicNames::new(orders.prefix.clone()).name(ORDER_CREATED);
    let ids: Vec<String> = (0..24).map(|_| Uuid::now_v7().to_string()).collect();
    for id in &ids {
        kafka::publish(&client, &topic, &record(id, &order_created(id, "alice"))).await;
    }
    eventually("every order recorded", Duration::from_secs(20), || async {
        count(&db, "SELECT count(*) AS count FROM order_service.orders").await == ids.len() as i64
    })
    .await;
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

async fn count(db: &TestDatabase, sql: &'static str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(&mut db.connect("public").await)
        .await
        .map(|row| row.count)
        .unwrap_or(-1)
}

#[derive(diesel::QueryableByName)]
struct Offset {
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Integer)]
    partition_id: i32,
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_instance_that_lost_its_partitions_repeats_nothing_when_it_resumes() {
    let db = TestDatabase::create().await;
    let mut orders = OrderInstances::new(&db, 2);
    orders.start(0).await;
    orders.start(1).await;
    wait_for_sharing(&db, &["order-0", "order-1"], 3, 3).await;

    // Orders flow the whole time; every stored offset is sampled, and must
    // never be seen lower than before.
    let topics = TopicNames::new(orders.prefix.clone());
    let done = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (done, published, topic) = (
            Arc::clone(&done),
            Arc::clone(&published),
            topics.name(ORDER_CREATED),
        );
        tokio::spawn(async move {
            let client = kafka::client().await;
            while !AtomicBool::load(&done, Ordering::SeqCst) {
                let id = Uuid::now_v7().to_string();
                kafka::publish(&client, &topic, &record(&id, &order_created(&id, "bob"))).await;
                published.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let backwards = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, backwards, url) = (Arc::clone(&done), Arc::clone(&backwards), db.url.clone());
        tokio::spawn(async move {
            let mut conn = AsyncPgConnection::establish(url.expose())
                .await
                .expect("connect");
            let mut seen: HashMap<(String, i32), i64> = HashMap::new();
            while !AtomicBool::load(&done, Ordering::SeqCst) {
                let offsets: Vec<Offset> = diesel::sql_query(
                    "SELECT topic, partition_id, next_offset FROM order_service.consumer_offsets",
                )
                .load(&mut conn)
                .await
                .unwrap_or_default();
                for offset in offsets {
                    let last = seen.entry((offset.topic, offset.partition_id)).or_default();
                    if offset.next_offset < *last {
                        backwards.fetch_add(1, Ordering::SeqCst);
                    }
                    *last = offset.next_offset.max(*last);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // order-0 stops past its lease: order-1 takes everything over.
    orders.process(0).signal("STOP");
    wait_for_sharing(&db, &["order-1"], 6, 6).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    orders.process(0).signal("CONT");
    // It notices, rejoins, and gets its share back.
    wait_for_sharing(&db, &["order-0", "order-1"], 3, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::SeqCst);
    producer.await.expect("producer");
    sampler.await.expect("sampler");

    let published = AtomicUsize::load(&published, Ordering::SeqCst) as i64;
    eventually("every order recorded", Duration::from_secs(20), || async {
        count(&db, "SELECT count(*) AS count FROM order_service.orders").await == published
    })
    .await;
    oms_testkit::events::wait_until_outbox_drained(&db, "order_service").await;
    // Each order's payment request published once: two relays publishing
    // the same rows would show here. (The order handler's inserts are
    // idempotent, so a fencing failure could not; leases.rs proves the
    // fence with a handler whose effects are not.)
    let client = kafka::client().await;
    let mut requests: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut offsets_seen = std::collections::HashSet::new();
    for found in kafka::read_topic(&client, &topics.name(PROCESS_PAYMENT)).await {
        if offsets_seen.insert((found.record.key.clone(), found.offset)) {
            *requests
                .entry(found.record.key.unwrap_or_default())
                .or_default() += 1;
        }
    }
    assert_eq!(requests.len() as i64, published);
    let repeated = requests.values().filter(|&&n| n > 1).count();
    assert_eq!(repeated, 0, "payment requests published more than once");
    assert_eq!(
        AtomicUsize::load(&backwards, Ordering::SeqCst),
        0,
        "a stored offset moved backwards"
    );
    let log = std::fs::read_to_string(&orders.process(0).log).unwrap_or_default();
    assert!(
        log.contains("lease not renewed in time") || log.contains("lease lost"),
        "the paused instance says it lost its partitions"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_and_watches_survive_the_loss_of_order_service_instances() {
    let db = TestDatabase::create().await;
    let mut extra = lease_env();
    // Payments take a while, so the watch is open across the kills.
    extra.push(("PAYMENT_SIMULATOR_FAULT", "slow:6000".into()));
    extra.push(("PAYMENT_PROVIDER_TIMEOUT_MS", "10000".into()));
    let mut cluster = Cluster::start(&db, 2, 1, &extra).await;
    let mut gateway = cluster.gateway(0).await;
    let order = gateway
        .create_order(order("carol", ""))
        .await
        .expect("create order")
        .into_inner();
    let order_id = order.order_id.clone();
    eventually("the order recorded", Duration::from_secs(20), || {
        let (mut gateway, order_id) = (gateway.clone(), order_id.clone());
        async move {
            gateway
                .get_order(GetOrderRequest { order_id })
                .await
                .is_ok_and(|found| found.into_inner().status == OrderStatus::AwaitingPayment as i32)
        }
    })
    .await;
    let mut watch = gateway
        .watch_order(WatchOrderRequest {
            order_id: order_id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("a state").expect("no error");
    assert_eq!(first.status, OrderStatus::AwaitingPayment as i32);

    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (done, failures, reads, gateway, order_id) = (
            Arc::clone(&done),
            Arc::clone(&failures),
            Arc::clone(&reads),
            gateway.clone(),
            order_id.clone(),
        );
        tokio::spawn(async move {
            while !AtomicBool::load(&done, Ordering::SeqCst) {
                let (mut a, mut b) = (gateway.clone(), gateway.clone());
                let get = a.get_order(GetOrderRequest {
                    order_id: order_id.clone(),
                });
                let list = b.list_orders(ListOrdersRequest {
                    customer_id: "carol".into(),
                    ..Default::default()
                });
                let (get, list) = futures::join!(get, list);
                for failed in [get.err(), list.err()].into_iter().flatten() {
                    eprintln!("read failed: {failed}");
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                reads.fetch_add(2, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Each order-service instance dies once while reads go on and the
    // watch is open, so whichever one serves the watch goes away.
    for index in [0, 1] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.kill(ORDER, index);
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.start_again(ORDER, index).await;
    }
    let mut states = vec![first.status];
    while let Some(next) = tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("the watch goes on")
    {
        states.push(next.expect("no error on the watch").status);
    }
    done.store(true, Ordering::SeqCst);
    reader.await.expect("reader");
    assert_eq!(
        states,
        [
            OrderStatus::AwaitingPayment as i32,
            OrderStatus::Paid as i32
        ],
        "every state once, in order, up to the terminal one"
    );
    println!(
        "reads during the kills: {}",
        AtomicUsize::load(&reads, Ordering::SeqCst)
    );
    assert_eq!(
        AtomicUsize::load(&failures, Ordering::SeqCst),
        0,
        "no read failed"
    );
    cluster.shut_down();
}
