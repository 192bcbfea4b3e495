//! The phases of a benchmark run and how they are put together.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tonic::transport::Channel;
use uuid::Uuid;

use oms_api::orders::v1::order_service_client::OrderServiceClient;

use oms_devkeys::DevKeys;

use crate::audit;
use crate::ceilings::{self, Ceilings};
use crate::cli::{BenchArgs, CeilingArgs, CeilingSettings, RunArgs, Target};
use crate::driver::{self, Load, Progress, Stop};
use crate::processes::Tracker;
use crate::report::{Machine, Percentiles, PhaseReport, Report};

/// The sustainable-rate search starts here and grows by `SEARCH_FACTOR`.
const SEARCH_START: f64 = 500.0;
const SEARCH_FACTOR: f64 = 1.5;
const SEARCH_MAX_STEPS: usize = 12;

fn describe(load: Load) -> String {
    match load {
        Load::Open { rate } => format!("open {rate:.0}/s"),
        Load::Closed { concurrency } => format!("closed {concurrency}"),
    }
}

/// Runs one phase, waits for the pipeline to drain, and audits it.
pub async fn run_phase(
    target: &Target,
    clients: &[OrderServiceClient<Channel>],
    name: &str,
    load: Load,
    stop: Stop,
) -> anyhow::Result<PhaseReport> {
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let topics = audit::PhaseTopics::mark(target).await?;
    let progress = Arc::new(Progress::default());
    let tracker = Arc::new(Mutex::new(Tracker::start()));
    let stop_progress =
        driver::show_progress(format!("{name} {}", describe(load)), Arc::clone(&progress));
    let sampler = tokio::spawn({
        let (progress, tracker, url, run) = (
            Arc::clone(&progress),
            Arc::clone(&tracker),
            target.database_url.clone(),
            run.clone(),
        );
        async move {
            let mut conn = audit::connect(&url).await.ok();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tracker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .sample();
                if let Some(conn) = conn.as_mut()
                    && let Ok(done) = audit::terminal_count_of_run(conn, &run).await
                {
                    progress.completed.store(done as u64, Ordering::Relaxed);
                }
            }
        }
    });

    let signing_key = match &target.token_key_dir {
        Some(dir) => Some(DevKeys::new(dir).load_or_create()?),
        None => None,
    };
    let orders = Arc::new(driver::Orders::new(&run, signing_key.as_ref())?);
    let sent = driver::drive(clients, orders, load, stop, Arc::clone(&progress)).await;
    let mut conn = audit::connect(&target.database_url).await?;
    let drain = audit::wait_for_drain(
        &mut conn,
        &sent.accepted,
        Duration::from_secs_f64(target.drain_timeout),
    )
    .await?;
    sampler.abort();
    // Once the aborted sampler is gone, the tracker has one owner again.
    let _ = sampler.await;
    let _ = stop_progress.send(());
    // Read before the audit, which reads every topic back and so would
    // count its own work as the broker's.
    let completed = audit::terminal_count(&mut conn, &sent.accepted).await?;
    let services = Arc::try_unwrap(tracker)
        .map(|tracker| {
            tracker
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .finish(completed.max(0) as u64)
        })
        .unwrap_or_default();
    let audit = audit::audit(&mut conn, &topics, &sent.accepted).await?;
    let e2e = audit::end_to_end_latency(&mut conn, &sent.accepted).await?;
    Ok(PhaseReport {
        name: name.to_owned(),
        load: describe(load),
        seconds: sent.elapsed.as_secs_f64(),
        sent: sent.accepted.len() as u64 + sent.errors,
        errors: sent.errors,
        accepted_per_s: sent.accepted.len() as f64 / sent.elapsed.as_secs_f64().max(1e-9),
        audit,
        drain_seconds: drain.as_secs_f64(),
        create: Percentiles::of(&sent.create_latency),
        e2e: Percentiles::of(&e2e),
        services,
    })
}

/// Whether a step kept up: the gateway accepted at (nearly) the offered
/// rate, measured until the last answer came back, so requests did not
/// queue up in front of it; and the pipeline finished the step's orders
/// soon after the last was accepted, so its backlog did not grow.
fn sustained(phase: &PhaseReport, rate: f64, step: Duration) -> bool {
    let offered = rate * step.as_secs_f64();
    phase.errors as f64 <= 0.01 * offered
        && phase.accepted_per_s >= 0.95 * rate
        && phase.audit.lost == 0
        && phase.drain_seconds <= (0.2 * step.as_secs_f64()).max(1.0)
}

/// Raises the rate step by step until a step does not keep up; returns the
/// highest rate that did.
pub async fn find_max_sustained(
    target: &Target,
    clients: &[OrderServiceClient<Channel>],
    step: Duration,
    report: &mut Report,
) -> anyhow::Result<f64> {
    let mut rate = SEARCH_START;
    let mut best = 0.0;
    for _ in 0..SEARCH_MAX_STEPS {
        let phase = run_phase(
            target,
            clients,
            "search",
            Load::Open { rate },
            Stop::After(step),
        )
        .await?;
        let kept_up = sustained(&phase, rate, step);
        eprintln!(
            "  {rate:.0}/s: accepted {:.0}/s, drained in {:.2} s -> {}",
            phase.accepted_per_s,
            phase.drain_seconds,
            if kept_up { "sustained" } else { "backlog grew" }
        );
        report.add_phase(phase);
        if !kept_up {
            break;
        }
        best = rate;
        rate *= SEARCH_FACTOR;
    }
    Ok(best)
}

pub async fn measure_ceilings(
    target: &Target,
    settings: &CeilingSettings,
) -> anyhow::Result<Ceilings> {
    eprintln!("measuring ceilings ({} s each)", settings.ceiling_duration);
    let grpc = ceilings::grpc_calls_per_s(
        &target.gateway,
        target.connections,
        Duration::from_secs_f64(settings.ceiling_duration),
    )
    .await?;
    let broker = ceilings::broker(&target.brokers, settings).await?;
    let postgres = ceilings::postgres(&target.database_url, settings).await?;
    Ok(Ceilings {
        grpc_calls_per_s: grpc,
        postgres_orders_per_s: postgres.postgres_orders_per_s,
        ..broker
    }
    .finish())
}

fn finish(report: &Report, target: &Target) -> anyhow::Result<()> {
    report.print_table();
    report.write_json(&target.out)?;
    println!("\nreport written to {}", target.out.display());
    Ok(())
}

pub async fn run_bench(args: &BenchArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let clients = driver::connect(&target.gateway, target.connections).await?;
    let duration = Duration::from_secs_f64(args.duration);
    let mut report = Report {
        machine: Machine::this(),
        ..Report::default()
    };

    let latency = run_phase(
        target,
        &clients,
        "latency",
        Load::Open { rate: args.rate },
        Stop::After(duration),
    )
    .await?;
    report.use_for_latency(&latency, args.rate);
    report.add_phase(latency);

    let load = Load::Closed {
        concurrency: args.concurrency,
    };
    let throughput = run_phase(target, &clients, "throughput", load, Stop::After(duration)).await?;
    report.orders_per_s = throughput.audit.completed_per_s;
    report.add_phase(throughput);

    if !args.no_search {
        let step = Duration::from_secs_f64(args.step_duration);
        report.max_sustained_orders_per_s =
            find_max_sustained(target, &clients, step, &mut report).await?;
    }
    if !args.no_ceilings {
        report.set_ceilings(measure_ceilings(target, &args.ceilings).await?);
    }
    finish(&report, target)
}

pub async fn run_single(args: &RunArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let clients = driver::connect(&target.gateway, target.connections).await?;
    let load = match (args.rate, args.concurrency) {
        (Some(rate), _) => Load::Open { rate },
        (None, concurrency) => Load::Closed {
            concurrency: concurrency.unwrap_or(64),
        },
    };
    let stop = match (args.orders, args.duration) {
        (Some(orders), _) => Stop::Orders(orders),
        (None, duration) => Stop::After(Duration::from_secs_f64(duration.unwrap_or(10.0))),
    };
    let phase = run_phase(target, &clients, "run", load, stop).await?;
    let mut report = Report {
        machine: Machine::this(),
        orders_per_s: phase.audit.completed_per_s,
        ..Report::default()
    };
    report.use_for_latency(&phase, args.rate.unwrap_or(0.0));
    report.add_phase(phase);
    finish(&report, target)
}

pub async fn run_ceilings(args: &CeilingArgs) -> anyhow::Result<()> {
    let mut report = Report {
        machine: Machine::this(),
        ..Report::default()
    };
    report.set_ceilings(measure_ceilings(&args.target, &args.ceilings).await?);
    finish(&report, &args.target)
}
