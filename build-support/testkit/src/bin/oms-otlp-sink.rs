//! `oms-otlp-sink [ADDR]`: an OTLP/gRPC trace sink (default
//! 127.0.0.1:4317) that counts and drops what it receives, for measuring
//! what tracing costs the services (`BENCH_TRACES=on just bench`). Prints
//! the count when stopped with SIGTERM or Ctrl-C.

use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".into())
        .parse()?;
    let sink = oms_testkit::otlp::Collector::counting_on(listen).await?;
    eprintln!("OTLP sink on {listen}");
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    println!("spans received: {}", sink.count());
    Ok(())
}
