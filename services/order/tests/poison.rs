//! Records that decode but that the database would refuse never stop their
//! partition: validation catches what it can, the database's own refusals
//! are isolated record by record, and dead letters are always writable.

use diesel_async::SimpleAsyncConnection;
use uuid::Uuid;

use oms_api::orders::v1::OrderStatus;
use oms_common::topics::{ORDER_CREATED, dead_letter_topic};
use oms_testkit::events::{self, RawRecord, record};
use oms_testkit::{eventually, kafka};
use order_service::SCHEMA;

mod support;
use support::{WAIT, spawn_app};

/// An order on the same partition as `anchor`, with `change` applied.
fn order_like(
    anchor: &RawRecord,
    change: impl FnOnce(&mut oms_api::orders::events::v1::OrderCreated),
) -> RawRecord {
    let order_id = Uuid::now_v7().to_string();
    let mut event = events::order_created(&order_id, "carol");
    change(&mut event);
    let mut raw = record(&order_id, &event);
    raw.key = anchor.key.clone();
    raw
}

fn dlq_reasons(records: &[rskafka::record::RecordAndOffset]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.record.headers["dlq_reason"]).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_the_database_would_refuse_are_dead_lettered_and_the_partition_moves_on() {
    let app = spawn_app().await;
    // Rules the event validation does not know, as a schema change or a bug
    // could add them: a CHECK (an integrity violation, SQLSTATE class 23)
    // and a trigger raising a data exception (class 22), which diesel-async
    // reports without its code.
    app.db
        .connect(SCHEMA)
        .await
        .batch_execute(
            "ALTER TABLE orders ADD CONSTRAINT no_refused_products CHECK (product_id <> 'refused');
             CREATE FUNCTION refuse_odd() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.product_id = 'odd' THEN
                 RAISE EXCEPTION 'odd product' USING ERRCODE = '22023';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_odd BEFORE INSERT ON orders
               FOR EACH ROW EXECUTE FUNCTION refuse_odd();",
        )
        .await
        .expect("extra rules");

    let first_id = Uuid::now_v7().to_string();
    let first = record(&first_id, &events::order_created(&first_id, "carol"));
    let poison = [
        order_like(&first, |e| e.customer_id = "nul\0inside".into()),
        order_like(&first, |e| e.customer_id = "c".repeat(3_000)),
        order_like(&first, |e| e.request_id = "r\0".into()),
        order_like(&first, |e| {
            e.create_time = Some(prost_types::Timestamp {
                seconds: 300_000_000_000,
                nanos: 0,
            })
        }),
        order_like(&first, |e| e.product_id = "refused".into()),
        order_like(&first, |e| e.product_id = "odd".into()),
    ];
    let mut bad_header = order_like(&first, |e| e.quantity = 0);
    bad_header
        .headers
        .insert("x-nul\0name".into(), b"v\0alue".to_vec());
    let last_id = Uuid::now_v7().to_string();
    let mut last = record(&last_id, &events::order_created(&last_id, "carol"));
    last.key = first.key.clone();

    app.publish(ORDER_CREATED, &first).await;
    for record in poison.iter().chain([&bad_header]) {
        app.publish(ORDER_CREATED, record).await;
    }
    app.publish(ORDER_CREATED, &last).await;

    // Both valid orders of the partition are recorded: nothing stalled.
    app.wait_for_status(&first_id, OrderStatus::AwaitingPayment)
        .await;
    app.wait_for_status(&last_id, OrderStatus::AwaitingPayment)
        .await;
    let dlq = dead_letter_topic(&app.topics.name(ORDER_CREATED));
    eventually("seven dead letters", WAIT, || async {
        kafka::read_topic(&app.kafka, &dlq).await.len() == 7
    })
    .await;
    let letters = kafka::read_topic(&app.kafka, &dlq).await;
    let reasons = dlq_reasons(&letters);
    assert!(
        reasons[0].contains("customer_id must not contain control"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("customer_id must be at most 128"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("request_id must not contain control"),
        "{reasons:?}"
    );
    assert!(reasons[3].contains("create_time"), "{reasons:?}");
    assert!(
        reasons[4].contains("the record could not be applied")
            && reasons[4].contains("no_refused_products"),
        "the database's own message: {reasons:?}"
    );
    assert!(reasons[5].contains("odd product"), "{reasons:?}");
    assert!(reasons[6].contains("quantity"), "{reasons:?}");
    let copied = &letters[6].record.headers;
    assert_eq!(
        copied.get("x-nul%00name").map(Vec::as_slice),
        Some(&b"v\0alue"[..]),
        "the header name is encoded, its value kept: {:?}",
        copied.keys().collect::<Vec<_>>()
    );
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_the_client_cannot_read_is_skipped_alone_with_a_dead_letter() {
    let app = spawn_app().await;
    let topic = app.topics.name(ORDER_CREATED);
    let first_id = Uuid::now_v7().to_string();
    let first = record(&first_id, &events::order_created(&first_id, "dave"));
    let partition =
        oms_common::kafka::partition_for_key(&first.key, kafka::TEST_PARTITIONS as usize);
    app.publish(ORDER_CREATED, &first).await;

    // rskafka fails a whole fetch on a header name that is not UTF-8.
    let unreadable_id = Uuid::now_v7().to_string();
    let unreadable = record(
        &unreadable_id,
        &events::order_created(&unreadable_id, "dave"),
    );
    let broker = kafka::brokers()[0].parse().expect("broker address");
    oms_testkit::raw_produce::produce(
        broker,
        &topic,
        partition,
        oms_testkit::raw_produce::RawBatchRecord {
            key: &first.key,
            value: &unreadable.value,
            headers: &[(b"bad-\xff-name", b"x")],
        },
    )
    .await;
    let last_id = Uuid::now_v7().to_string();
    let mut last = record(&last_id, &events::order_created(&last_id, "dave"));
    last.key = first.key.clone();
    app.publish(ORDER_CREATED, &last).await;

    app.wait_for_status(&first_id, OrderStatus::AwaitingPayment)
        .await;
    app.wait_for_status(&last_id, OrderStatus::AwaitingPayment)
        .await;
    let dlq = dead_letter_topic(&topic);
    eventually("the skip's dead letter", WAIT, || async {
        kafka::read_topic(&app.kafka, &dlq).await.len() == 1
    })
    .await;
    let letter = &kafka::read_topic(&app.kafka, &dlq).await[0].record;
    let header = |name: &str| String::from_utf8_lossy(&letter.headers[name]).into_owned();
    assert!(
        header("dlq_reason").starts_with("skipped"),
        "{}",
        header("dlq_reason")
    );
    assert_eq!(header("dlq_source_topic"), topic);
    assert_eq!(header("dlq_source_partition"), partition.to_string());
    assert_eq!(
        header("dlq_source_offset"),
        "1",
        "exactly the unreadable offset"
    );
    assert!(
        app.get_order(&unreadable_id).await.is_err(),
        "the unreadable record was not applied"
    );
    app.service.stop().await.expect("clean shutdown");
}
