//! One order is one trace. The four services export to an OTLP collector
//! run by the test; a CreateOrder sent with the test's own `traceparent`
//! must come back as one trace in which the gateway's call, its produce,
//! each service's record of each event and the payment link up parent to
//! child, with the Kafka attributes on the messaging spans, and records
//! fetched together get a batch span linked to each. And the trace
//! survives the outbox: an event whose process was SIGKILLed between commit
//! and publish goes out after the restart in the original trace.

use std::time::Duration;

use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use rskafka::record::Record;
use uuid::Uuid;

use oms_api::orders::v1::{GetOrderRequest, OrderStatus};
use oms_common::topics::{ORDER_CREATED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT, TopicNames};
use oms_testkit::TestDatabase;
use oms_testkit::kafka;
use oms_testkit::orders::order;
use oms_testkit::otlp::{
    CollectedSpan, Collector, KIND_CONSUMER, KIND_PRODUCER, KIND_SERVER, describe,
};
use oms_testkit::system::{GATEWAY, NOTIFICATION, ORDER, PAYMENT, System};

const WAIT: Duration = Duration::from_secs(60);

/// Starts the system exporting to `collector` every `export_every_ms`,
/// with JSON logs at `log_level`.
async fn traced_system(
    db: &TestDatabase,
    collector: &Collector,
    export_every_ms: u64,
    log_level: &str,
) -> System {
    let brokers = kafka::brokers().join(",");
    let prefix = oms_testkit::unique_topic_prefix();
    System::start(
        db,
        &brokers,
        &prefix,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", export_every_ms.to_string()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", log_level.into()),
        ],
    )
    .await
}

/// A request that continues the test's own trace.
fn traced<T>(message: T, trace_id: &str, parent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let traceparent = format!("00-{trace_id}-{parent}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    request
}

fn new_trace_id() -> String {
    Uuid::new_v4().simple().to_string()
}

/// The span of `service` named `name` in `spans` that `matches`, or a panic
/// listing them all.
fn find<'a>(
    spans: &'a [CollectedSpan],
    service: &str,
    name: &str,
    matches: impl Fn(&CollectedSpan) -> bool,
) -> &'a CollectedSpan {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name && matches(s))
        .unwrap_or_else(|| panic!("no {service} span {name:?} among:\n{}", describe(spans)))
}

/// A consumer's span for one record (its batch's span has no offset).
fn record_of(order_id: &str) -> impl Fn(&CollectedSpan) -> bool + '_ {
    move |span| {
        span.kind == KIND_CONSUMER
            && span.attribute("messaging.kafka.message.key") == Some(order_id)
            && span.attribute("messaging.kafka.offset").is_some()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_order_is_one_trace_from_the_call_to_the_last_notification() {
    let db = TestDatabase::create().await;
    let collector = Collector::start().await;
    let system = traced_system(&db, &collector, 100, "info").await;
    let topics = TopicNames::new(system.prefix.clone());
    let (order_created, process_payment, payment_succeeded) = (
        topics.name(ORDER_CREATED),
        topics.name(PROCESS_PAYMENT),
        topics.name(PAYMENT_SUCCEEDED),
    );
    let trace_id = new_trace_id();
    let client_span = "00f067aa0ba902b7";
    let mut client = system.gateway().await;
    let accepted = client
        .create_order(traced(order("alice", ""), &trace_id, client_span))
        .await
        .expect("create order")
        .into_inner();
    let order_id = accepted.order_id.as_str();

    let in_trace = |spans: &[CollectedSpan]| -> Vec<CollectedSpan> {
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    };
    let spans = collector
        .wait_for(
            "both notifications and the payment in the trace",
            WAIT,
            |spans| {
                let trace = in_trace(spans);
                let recorded = |service: &str, topic: &str| {
                    trace.iter().any(|s| {
                        s.service == service
                            && s.name == format!("process {topic}")
                            && record_of(order_id)(s)
                    })
                };
                recorded(NOTIFICATION, &order_created)
                    && recorded(NOTIFICATION, &payment_succeeded)
                    && recorded(ORDER, &payment_succeeded)
            },
        )
        .await;
    let trace = in_trace(&spans);

    let call = find(&trace, GATEWAY, "orders.v1.OrderService/CreateOrder", |s| {
        s.kind == KIND_SERVER
    });
    assert_eq!(
        call.parent_span_id, client_span,
        "the caller's trace continues"
    );
    assert_eq!(call.attribute("rpc.system"), Some("grpc"));
    assert_eq!(call.attribute("rpc.grpc.status_code"), Some("0"));

    let send = find(&trace, GATEWAY, &format!("send {order_created}"), |s| {
        s.kind == KIND_PRODUCER
    });
    assert_eq!(send.parent_span_id, call.span_id);
    assert_eq!(send.attribute("messaging.system"), Some("kafka"));
    assert_eq!(
        send.attribute("messaging.destination.name"),
        Some(order_created.as_str())
    );
    assert_eq!(
        send.attribute("messaging.kafka.message.key"),
        Some(order_id)
    );

    let recorded = find(
        &trace,
        ORDER,
        &format!("process {order_created}"),
        record_of(order_id),
    );
    assert_eq!(
        recorded.parent_span_id, send.span_id,
        "the record continues the produce"
    );
    for key in [
        "messaging.system",
        "messaging.destination.name",
        "messaging.destination.partition.id",
        "messaging.kafka.offset",
        "messaging.kafka.message.key",
    ] {
        assert!(
            recorded.attribute(key).is_some(),
            "{key} missing: {recorded:?}"
        );
    }
    assert_eq!(
        recorded.attribute("messaging.destination.partition.id"),
        send.attribute("messaging.destination.partition.id")
    );

    let payment = find(
        &trace,
        PAYMENT,
        &format!("process {process_payment}"),
        record_of(order_id),
    );
    assert_eq!(
        payment.parent_span_id, recorded.span_id,
        "the outbox event continues its cause"
    );
    let paid = find(
        &trace,
        ORDER,
        &format!("process {payment_succeeded}"),
        record_of(order_id),
    );
    assert_eq!(
        paid.parent_span_id, payment.span_id,
        "the payment event continues the payment"
    );
    let told_paid = find(
        &trace,
        NOTIFICATION,
        &format!("process {payment_succeeded}"),
        record_of(order_id),
    );
    assert_eq!(told_paid.parent_span_id, payment.span_id);
    let told_created = find(
        &trace,
        NOTIFICATION,
        &format!("process {order_created}"),
        record_of(order_id),
    );
    assert_eq!(told_created.parent_span_id, send.span_id);

    // The record alone in its batch hosts the batch's database work.
    let transaction = find(&spans, ORDER, "postgresql transaction", |s| {
        s.parent_span_id == recorded.span_id
    });
    assert_eq!(transaction.attribute("db.system.name"), Some("postgresql"));

    // Records fetched together: their batch has a span of its own, linked
    // to each record's context. (Not events the service can use: they go
    // to the dead-letter topic, which changes nothing here.)
    let linked: Vec<(String, String)> = (0..3)
        .map(|i| (new_trace_id(), format!("00000000000000a{i}")))
        .collect();
    let records = linked
        .iter()
        .map(|(trace, span)| Record {
            key: Some(b"together".to_vec()),
            value: Some(b"not an event".to_vec()),
            headers: [(
                "traceparent".to_owned(),
                format!("00-{trace}-{span}-01").into_bytes(),
            )]
            .into(),
            timestamp: chrono::Utc::now(),
        })
        .collect();
    let broker = kafka::client().await;
    kafka::produce_together(&broker, &order_created, 0, records).await;
    // (The notification service, which reads the topic too, makes one of
    // its own.)
    let links_all =
        |s: &CollectedSpan| s.service == ORDER && linked.iter().all(|pair| s.links.contains(pair));
    let spans = collector
        .wait_for("a batch span linked to the three records", WAIT, |spans| {
            spans.iter().any(links_all)
        })
        .await;
    let batch = spans.iter().find(|s| links_all(s)).expect("the batch span");
    assert_eq!(batch.kind, KIND_CONSUMER);
    assert_eq!(batch.name, format!("process {order_created}"));
    assert_eq!(batch.attribute("messaging.batch.message_count"), Some("3"));
    find(&spans, ORDER, "postgresql transaction", |s| {
        s.parent_span_id == batch.span_id
    });

    // A read goes gateway -> order service in the same trace.
    let read_trace = new_trace_id();
    client
        .get_order(traced(
            GetOrderRequest {
                order_id: order_id.to_owned(),
            },
            &read_trace,
            client_span,
        ))
        .await
        .expect("get order");
    let spans = collector
        .wait_for("the internal call in the read's trace", WAIT, |spans| {
            spans.iter().any(|s| {
                s.trace_id == read_trace
                    && s.name == "orders.internal.v1.OrderQueryService/GetOrder"
            })
        })
        .await;
    let read: Vec<CollectedSpan> = spans
        .into_iter()
        .filter(|s| s.trace_id == read_trace)
        .collect();
    let outer = find(&read, GATEWAY, "orders.v1.OrderService/GetOrder", |_| true);
    let inner = find(
        &read,
        ORDER,
        "orders.internal.v1.OrderQueryService/GetOrder",
        |_| true,
    );
    assert_eq!(inner.parent_span_id, outer.span_id);

    // A JSON log line of the order service leads to the trace.
    let log = std::fs::read_to_string(system.log(ORDER)).expect("read the log");
    let line = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "order paid" && line["order_id"] == order_id)
        .unwrap_or_else(|| panic!("no JSON line says the order was paid:\n{log}"));
    assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    assert!(
        line["span_id"].as_str().is_some_and(|id| id.len() == 16),
        "{line}"
    );
    system.shut_down();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_published_after_its_relay_was_killed_keeps_the_original_trace() {
    let db = TestDatabase::create().await;
    let collector = Collector::start().await;
    let mut system = traced_system(&db, &collector, 100, "info").await;
    let process_payment = TopicNames::new(system.prefix.clone()).name(PROCESS_PAYMENT);
    // The order service's outbox rows go to a member that never publishes,
    // so the row is committed and stays unpublished.
    let mut orders_db = db.connect("order_service").await;
    orders_db
        .batch_execute(
            "INSERT INTO members (instance_id, expires_at) VALUES ('held', now() + interval '1 hour'); \
             CREATE FUNCTION hold_outbox() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN NEW.owner := 'held'; RETURN NEW; END $$; \
             CREATE TRIGGER hold_outbox BEFORE INSERT ON outbox \
               FOR EACH ROW EXECUTE FUNCTION hold_outbox();",
        )
        .await
        .expect("hold the outbox");
    let trace_id = new_trace_id();
    let mut client = system.gateway().await;
    let accepted = client
        .create_order(traced(order("bob", ""), &trace_id, "00f067aa0ba902b7"))
        .await
        .expect("create order")
        .into_inner();
    oms_testkit::eventually("the payment request committed to the outbox", WAIT, || {
        let db = &db;
        async move {
            let mut conn = db.connect("order_service").await;
            let waiting: i64 = diesel::dsl::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "(SELECT count(*) FROM outbox)",
            ))
            .get_result(&mut conn)
            .await
            .expect("count");
            waiting == 1
        }
    })
    .await;

    // Its span must be out before the process dies.
    let order_created = TopicNames::new(system.prefix.clone()).name(ORDER_CREATED);
    collector
        .wait_for("the order service's record span", WAIT, |spans| {
            spans.iter().any(|s| {
                s.service == ORDER
                    && s.name == format!("process {order_created}")
                    && record_of(&accepted.order_id)(s)
            })
        })
        .await;
    system.kill(ORDER);
    orders_db
        .batch_execute(
            "DROP TRIGGER hold_outbox ON outbox; DELETE FROM members WHERE instance_id = 'held';",
        )
        .await
        .expect("release the outbox");
    system.restart(ORDER);

    // The restarted process adopts the orphaned row and publishes it; the
    // payment service's record of it is in the original trace.
    let spans = collector
        .wait_for("the payment request consumed", WAIT, |spans| {
            spans.iter().any(|s| {
                s.service == PAYMENT
                    && s.name == format!("process {process_payment}")
                    && record_of(&accepted.order_id)(s)
            })
        })
        .await;
    let payment = find(
        &spans,
        PAYMENT,
        &format!("process {process_payment}"),
        record_of(&accepted.order_id),
    );
    assert_eq!(payment.trace_id, trace_id, "{}", describe(&spans));
    let recorded = find(
        &spans,
        ORDER,
        &format!("process {order_created}"),
        record_of(&accepted.order_id),
    );
    assert_eq!(
        payment.parent_span_id, recorded.span_id,
        "it continues the killed process's record span"
    );
    system.shut_down();
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_still_queued_at_shutdown_reach_the_collector_before_the_processes_exit() {
    let db = TestDatabase::create().await;
    let collector = Collector::start().await;
    // Nothing leaves on the schedule: only the flush at shutdown exports.
    // And logs at warn, as the benchmark runs, must not silence the spans.
    let system = traced_system(&db, &collector, 600_000, "warn").await;
    let trace_id = new_trace_id();
    let mut client = system.gateway().await;
    let accepted = client
        .create_order(traced(order("carol", ""), &trace_id, "00f067aa0ba902b7"))
        .await
        .expect("create order")
        .into_inner();
    oms_testkit::eventually("the order paid", WAIT, || {
        let (mut client, order_id) = (client.clone(), accepted.order_id.clone());
        async move {
            // NOT_FOUND until the order service has recorded it.
            let order = client.get_order(GetOrderRequest { order_id }).await;
            order.is_ok_and(|order| order.into_inner().status == OrderStatus::Paid as i32)
        }
    })
    .await;
    oms_testkit::eventually("both notifications recorded", WAIT, || {
        let (db, order_id) = (&db, accepted.order_id.clone());
        async move {
            let mut conn = db.connect("notification_service").await;
            let recorded: i64 = diesel::dsl::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                &format!("(SELECT count(*) FROM notifications WHERE order_id = '{order_id}')"),
            ))
            .get_result(&mut conn)
            .await
            .expect("count");
            recorded == 2
        }
    })
    .await;
    assert!(
        collector.spans().iter().all(|s| s.trace_id != trace_id),
        "spans were exported before shutdown, so this proves nothing"
    );
    // Off the runtime's workers: the collector on them takes the flushes.
    tokio::task::spawn_blocking(move || system.shut_down())
        .await
        .expect("shut down");
    let spans = collector.spans();
    let services: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .map(|s| s.service.as_str())
        .collect();
    assert_eq!(
        services,
        [GATEWAY, NOTIFICATION, ORDER, PAYMENT]
            .into_iter()
            .collect(),
        "{}",
        describe(&spans)
    );
}
