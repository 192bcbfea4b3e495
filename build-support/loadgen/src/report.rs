//! The report: a table on the terminal and JSON on disk.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::audit::Audit;
use crate::ceilings::Ceilings;
use crate::processes::Usage;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: histogram.max() as f64 / 1000.0,
        }
    }
}

/// One phase of load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseReport {
    pub name: String,
    /// "open 1000/s" or "closed 256".
    pub load: String,
    pub seconds: f64,
    pub sent: u64,
    pub errors: u64,
    pub accepted_per_s: f64,
    pub audit: Audit,
    pub drain_seconds: f64,
    pub create: Percentiles,
    pub e2e: Percentiles,
    pub services: BTreeMap<String, Usage>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn this() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let memory_kib: f64 = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpu: cpuinfo
                .lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
                .unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        }
    }
}

/// Everything one benchmark run measured. The top-level figures come from
/// the phases named in their comments.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// Totals over every phase.
    pub accepted: u64,
    pub completed: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// The latency phase (open loop at a fixed rate).
    pub latency_rate: f64,
    pub create_p50_ms: f64,
    pub create_p90_ms: f64,
    pub create_p99_ms: f64,
    pub create_p999_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p90_ms: f64,
    pub e2e_p99_ms: f64,
    pub e2e_p999_ms: f64,
    /// The throughput phase (closed loop): completed orders per second.
    pub orders_per_s: f64,
    /// The step search: the highest rate whose backlog did not grow.
    pub max_sustained_orders_per_s: f64,
    /// The throughput phase's rate over the lowest ceiling.
    pub fraction_of_lowest_ceiling: Option<f64>,
    pub ceilings: Ceilings,
    pub phases: Vec<PhaseReport>,
}

impl Report {
    pub fn add_phase(&mut self, phase: PhaseReport) {
        self.accepted += phase.audit.accepted;
        self.completed += phase.audit.completed;
        self.lost += phase.audit.lost;
        self.duplicated += phase.audit.duplicated;
        self.phases.push(phase);
    }

    pub fn use_for_latency(&mut self, phase: &PhaseReport, rate: f64) {
        self.latency_rate = rate;
        self.create_p50_ms = phase.create.p50_ms;
        self.create_p90_ms = phase.create.p90_ms;
        self.create_p99_ms = phase.create.p99_ms;
        self.create_p999_ms = phase.create.p999_ms;
        self.e2e_p50_ms = phase.e2e.p50_ms;
        self.e2e_p90_ms = phase.e2e.p90_ms;
        self.e2e_p99_ms = phase.e2e.p99_ms;
        self.e2e_p999_ms = phase.e2e.p999_ms;
    }

    pub fn set_ceilings(&mut self, ceilings: Ceilings) {
        if ceilings.lowest_orders_per_s > 0.0 && self.orders_per_s > 0.0 {
            self.fraction_of_lowest_ceiling =
                Some(self.orders_per_s / ceilings.lowest_orders_per_s);
        }
        self.ceilings = ceilings;
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")?;
        Ok(())
    }

    pub fn print_table(&self) {
        let m = &self.machine;
        println!(
            "\nmachine: {} ({} cores, {:.1} GiB), kernel {}",
            m.cpu, m.cores, m.memory_gib, m.kernel
        );
        println!(
            "\n{:<12} {:<13} {:>8} {:>8} {:>8} {:>5} {:>4} {:>9} {:>9} | {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8}",
            "phase",
            "load",
            "accepted",
            "complete",
            "errors",
            "lost",
            "dup",
            "acc/s",
            "done/s",
            "c p50",
            "c p90",
            "c p99",
            "c p99.9",
            "e2e p50",
            "e2e p90",
            "e2e p99",
            "e2e p99.9"
        );
        for p in &self.phases {
            println!(
                "{:<12} {:<13} {:>8} {:>8} {:>8} {:>5} {:>4} {:>9.0} {:>9.0} | {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                p.name,
                p.load,
                p.audit.accepted,
                p.audit.completed,
                p.errors,
                p.audit.lost,
                p.audit.duplicated,
                p.accepted_per_s,
                p.audit.completed_per_s,
                p.create.p50_ms,
                p.create.p90_ms,
                p.create.p99_ms,
                p.create.p999_ms,
                p.e2e.p50_ms,
                p.e2e.p90_ms,
                p.e2e.p99_ms,
                p.e2e.p999_ms,
            );
        }
        // The open-loop phase, at the rate the latency targets are set for.
        if let Some(phase) = self
            .phases
            .iter()
            .find(|p| p.name == "latency" || p.name == "run")
        {
            println!(
                "\nprocesses during the {} phase (CPU seconds and per completed order, \
                 largest RSS of one process while running, peak RSS since start):",
                phase.name
            );
            for (name, usage) in &phase.services {
                println!(
                    "  {name:<21} cpu {:>7.2} s {:>7.0} µs/order   rss {:>6.1} MiB   peak {:>6.1} MiB",
                    usage.cpu_seconds,
                    usage.cpu_us_per_order,
                    usage.max_rss_mib,
                    usage.peak_rss_mib
                );
            }
            let total: f64 = phase.services.values().map(|u| u.cpu_us_per_order).sum();
            println!("  {:<21} {:>17.0} µs/order", "all of them", total);
        }
        let c = &self.ceilings;
        if c.lowest_orders_per_s > 0.0 {
            println!(
                "\nceilings: broker {:.0} records/s produced+fetched ({:.0} produce, {:.0} fetch; {:.0} orders/s), \
                 postgres {:.0} orders/s, gRPC {:.0} calls/s; lowest: {} at {:.0} orders/s",
                c.broker_records_per_s,
                c.broker_produce_records_per_s,
                c.broker_fetch_records_per_s,
                c.broker_orders_per_s,
                c.postgres_orders_per_s,
                c.grpc_calls_per_s,
                c.lowest,
                c.lowest_orders_per_s
            );
        }
        println!(
            "\ntotals: accepted {} completed {} lost {} duplicated {}",
            self.accepted, self.completed, self.lost, self.duplicated
        );
        if self.orders_per_s > 0.0 {
            println!(
                "throughput: {:.0} orders/s completed end to end",
                self.orders_per_s
            );
        }
        if self.max_sustained_orders_per_s > 0.0 {
            println!(
                "highest sustained rate: {:.0} orders/s",
                self.max_sustained_orders_per_s
            );
        }
        if let Some(fraction) = self.fraction_of_lowest_ceiling {
            println!("throughput / lowest ceiling: {:.0}%", fraction * 100.0);
        }
    }
}
