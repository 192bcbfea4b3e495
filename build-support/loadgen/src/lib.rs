//! The order system's load generator and benchmark.
//!
//! `bench` runs the whole benchmark against a running system: an open-loop
//! phase at a fixed rate (latency), a closed-loop phase at a fixed
//! concurrency (throughput), a step search for the highest sustainable
//! rate, and the machine's ceilings. Every phase ends by waiting for the
//! pipeline to drain and auditing, in PostgreSQL, that each accepted order
//! reached a terminal state exactly once, and, on the broker, that nothing
//! was published twice. `run` is one phase on its own and `ceilings` the
//! ceilings alone.

pub mod audit;
pub mod bench;
pub mod ceilings;
pub mod cli;
pub mod driver;
pub mod processes;
pub mod report;

use cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(args) => bench::run_bench(&args).await,
        Command::Run(args) => bench::run_single(&args).await,
        Command::Ceilings(args) => bench::run_ceilings(&args).await,
    }
}
