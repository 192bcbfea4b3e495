//! Command-line options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "oms-loadgen",
    about = "Load generator and benchmark for the order system"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The full benchmark: latency at a fixed rate, throughput at a fixed
    /// concurrency, the highest sustainable rate, and the ceilings.
    Bench(BenchArgs),
    /// One load phase, audited and reported.
    Run(RunArgs),
    /// The machine's ceilings only: broker, PostgreSQL and gRPC.
    Ceilings(CeilingArgs),
}

/// Where the system under test runs.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The gateway's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub gateway: String,
    /// The database the services write (read for the audit and the
    /// end-to-end latency).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/orders")]
    pub database_url: String,
    /// Kafka bootstrap brokers, for the broker ceiling and the audit.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The prefix of the system's topics, which the audit reads back; by
    /// default `KAFKA_TOPIC_PREFIX`, as the services read it.
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// When the services check tokens (`AUTH_MODE=jwt`): the directory of
    /// the development key they trust (`oms-devkeys init DIR`). Each
    /// customer's orders then carry a token of that customer's own.
    #[arg(long)]
    pub token_key_dir: Option<PathBuf>,
    /// gRPC connections to spread the load over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to wait for the pipeline to drain after a phase, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub drain_timeout: f64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/latest.json")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub target: Target,
    /// The open-loop phase's rate, orders per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// The closed-loop phase's concurrency.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Length of the latency and throughput phases, in seconds.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Length of each step of the sustainable-rate search, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub step_duration: f64,
    /// Skip the sustainable-rate search.
    #[arg(long)]
    pub no_search: bool,
    /// Skip the ceilings.
    #[arg(long)]
    pub no_ceilings: bool,
    #[command(flatten)]
    pub ceilings: CeilingSettings,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: Target,
    /// Open loop: send at this fixed rate, orders per second.
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: keep this many requests in flight (default 64).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Stop after this many seconds (default 10 unless --orders is given).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many orders.
    #[arg(long)]
    pub orders: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct CeilingArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub ceilings: CeilingSettings,
}

#[derive(Debug, Clone, Args)]
pub struct CeilingSettings {
    /// Seconds each ceiling is measured for.
    #[arg(long, default_value_t = 5.0)]
    pub ceiling_duration: f64,
    /// Records per produce request and events per database transaction in
    /// the ceilings (the consumers' batches reach hundreds under load).
    #[arg(long, default_value_t = 400)]
    pub batch: usize,
    /// Partitions of the ceiling's topic, and concurrent transactions per
    /// stage (as many as the benchmark's topics have partitions).
    #[arg(long, default_value_t = 2)]
    pub partitions: i32,
}
