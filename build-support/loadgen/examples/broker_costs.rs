//! What single requests cost the broker: the latency of a lone produce,
//! straight through rskafka and through our batching producer, and the
//! broker CPU each empty fetch costs for several fetch waits. The figures
//! behind the fetch and linger settings in BENCHMARKS.md.
//!
//!   cargo run --release -p oms-loadgen --example broker_costs -- BROKER PID
//!
//! PID is the broker's process id; its CPU time is read from /proc.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;

use oms_common::batching::BatchingProducer;
use oms_common::kafka::{KeyedRecord, Producer};

const PRODUCES: usize = 500;
const FETCH_WINDOW: Duration = Duration::from_secs(4);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(broker), Some(pid)) = (args.next(), args.next()) else {
        bail!("usage: broker_costs BROKER PID");
    };
    let client = Arc::new(ClientBuilder::new(vec![broker]).build().await?);
    let topic = format!("broker-costs-{}", chrono::Utc::now().timestamp_millis());
    client
        .controller_client()?
        .create_topic(&topic, 1, 1, 5_000)
        .await?;
    let partition = client
        .partition_client(topic.clone(), 0, UnknownTopicHandling::Retry)
        .await?;

    let mut direct = Vec::with_capacity(PRODUCES);
    for _ in 0..PRODUCES {
        let started = Instant::now();
        partition
            .produce(vec![record()], Compression::NoCompression)
            .await?;
        direct.push(started.elapsed());
    }
    print_latency("produce, rskafka directly", direct);

    let producer = Arc::new(Producer::new(Arc::clone(&client)));
    let batching =
        BatchingProducer::new(producer, &topic, Duration::ZERO, Duration::from_secs(5)).await?;
    let mut batched = Vec::with_capacity(PRODUCES);
    for _ in 0..PRODUCES {
        let started = Instant::now();
        batching
            .produce(KeyedRecord {
                key: b"key".to_vec(),
                value: vec![b'x'; 200],
                headers: Default::default(),
            })
            .await?;
        batched.push(started.elapsed());
    }
    print_latency("produce, batching producer, no linger", batched);

    for max_wait_ms in [0, 1, 5, 25] {
        empty_fetches(&partition, &pid, max_wait_ms).await?;
    }
    Ok(())
}

fn record() -> Record {
    Record {
        key: Some(b"key".to_vec()),
        value: Some(vec![b'x'; 200]),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    }
}

fn print_latency(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "{what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        at(0.5),
        at(0.9),
        at(0.99)
    );
}

/// Fetches at the end of the log, one at a time, for `FETCH_WINDOW`.
async fn empty_fetches(
    partition: &PartitionClient,
    pid: &str,
    max_wait_ms: i32,
) -> anyhow::Result<()> {
    let end = partition.get_offset(OffsetAt::Latest).await?;
    let cpu_before = cpu_ticks(pid)?;
    let started = Instant::now();
    let mut fetches = 0u64;
    while started.elapsed() < FETCH_WINDOW {
        partition
            .fetch_records(end, 1..1_000_000, max_wait_ms)
            .await?;
        fetches += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Clock ticks are 10 ms on Linux.
    let cpu_seconds = (cpu_ticks(pid)? - cpu_before) as f64 / 100.0;
    println!(
        "empty fetch, max_wait {max_wait_ms} ms: {:.2} ms each, broker CPU {:.0} µs each",
        elapsed * 1e3 / fetches as f64,
        cpu_seconds * 1e6 / fetches as f64
    );
    Ok(())
}

/// User plus system CPU time of process `pid`, in clock ticks.
fn cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // Fields after the command name, which may itself hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short stat line")?.parse()?)
    };
    Ok(field(11)? + field(12)?)
}
