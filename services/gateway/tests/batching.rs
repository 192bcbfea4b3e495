//! The gateway's batching producer against the real broker: concurrent
//! records share the first record's linger and each call returns once the
//! broker has its record, on the record's key's partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::UnknownTopicHandling;

use oms_common::batching::BatchingProducer;
use oms_common::kafka::{KeyedRecord, Producer, partition_for_key};
use oms_testkit::{kafka, unique_topic_prefix};

const LINGER: Duration = Duration::from_millis(300);
const RECORDS: usize = 50;

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_records_wait_for_one_linger_and_are_all_acknowledged() {
    let client = kafka::client().await;
    let topic = format!("{}batching", unique_topic_prefix());
    kafka::create_topics(&client, std::slice::from_ref(&topic)).await;
    let producer = BatchingProducer::new(
        Arc::new(Producer::new(Arc::clone(&client))),
        &topic,
        LINGER,
        Duration::from_secs(5),
    )
    .await
    .expect("batching producer");
    let producer = Arc::new(producer);

    let started = tokio::time::Instant::now();
    let sends = (0..RECORDS).map(|i| {
        let producer = Arc::clone(&producer);
        tokio::spawn(async move {
            let record = KeyedRecord {
                key: format!("order-{i}").into_bytes(),
                value: vec![i as u8; 200],
                headers: BTreeMap::new(),
            };
            let sent = tokio::time::Instant::now();
            producer.produce(record).await.expect("acknowledged");
            sent.elapsed()
        })
    });
    let waits: Vec<Duration> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|joined| joined.expect("task"))
        .collect();
    // Every call waited for a linger rather than going alone (one that
    // joined a batch late waits out the rest of it), and the calls shared
    // batches: together they took about one linger, not one each.
    assert!(waits.iter().all(|wait| *wait >= LINGER / 2), "{waits:?}");
    assert!(started.elapsed() < LINGER * 3, "{:?}", started.elapsed());

    let mut found = 0;
    for partition in 0..kafka::TEST_PARTITIONS {
        let partition_client = client
            .partition_client(topic.clone(), partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let (records, _) = partition_client
            .fetch_records(0, 1..10_000_000, 10)
            .await
            .expect("fetch");
        for record in records {
            let key = record.record.key.expect("key");
            let expected = partition_for_key(&key, kafka::TEST_PARTITIONS as usize);
            assert_eq!(partition, expected, "routed by key");
            found += 1;
        }
    }
    assert_eq!(found, RECORDS, "every acknowledged record is there");
}
