//! CPU time and memory of the processes that carry an order, from `/proc`
//! (Linux): the four services (every instance), the broker (tansu) and
//! PostgreSQL (every backend, plus those that exited, through the
//! postmaster's children times). They are found by name, so the benchmark
//! works however they were started. The broker and PostgreSQL are counted
//! whole: on the benchmark machine they serve nothing else.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub const SERVICES: [&str; 4] = [
    "gateway",
    "order-service",
    "payment-service",
    "notification-service",
];
pub const BROKER: &str = "tansu";
pub const DATABASE: &str = "postgres";

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// User and system time of the process and of its children that exited
    /// and were waited for (PostgreSQL's ended backends, for the postmaster).
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

/// Which tracked group a process belongs to, from its command line and
/// its `comm` (PostgreSQL rewrites its backends' command lines).
fn group_of(cmdline: &[u8], comm: &str) -> Option<&'static str> {
    if comm == DATABASE {
        return Some(DATABASE);
    }
    let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let name = Path::new(std::str::from_utf8(program).unwrap_or_default())
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    SERVICES
        .iter()
        .chain([&BROKER])
        .find(|group| **group == name)
        .copied()
}

/// The pids of the running services, broker and database, by group.
pub fn find_processes() -> BTreeMap<&'static str, Vec<u32>> {
    let mut found: BTreeMap<&'static str, Vec<u32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if let Some(group) = group_of(&cmdline, comm.trim()) {
            found.entry(group).or_default().push(pid);
        }
    }
    found
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` times; asked of
/// `getconf` once.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn read(pid: u32) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may
    // contain spaces: state is field 3, utime 14, stime 15, cutime 16 and
    // cstime 17.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let mut ticks = 0.0;
    for field in 11..=14 {
        ticks += fields.get(field)?.parse::<f64>().ok()?;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|line| line.starts_with(key))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    Some(Reading {
        cpu_seconds: ticks / clock_ticks(),
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    })
}

/// What one group of processes used during a phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// CPU time of every process of the group (instances, backends).
    pub cpu_seconds: f64,
    /// The same per order completed in the phase, in microseconds.
    pub cpu_us_per_order: f64,
    /// The largest resident set of one process of the group seen while the
    /// phase ran (sampled each second).
    pub max_rss_mib: f64,
    /// The largest peak resident set of one process since it started (VmHWM).
    pub peak_rss_mib: f64,
}

/// Tracks the services, broker and database through a phase.
pub struct Tracker {
    /// The processes found at the start, sampled each second; `/proc` is
    /// scanned again only at the end, for processes started meanwhile.
    found: BTreeMap<&'static str, Vec<u32>>,
    start: BTreeMap<u32, Reading>,
    max_rss_kib: BTreeMap<&'static str, u64>,
}

impl Tracker {
    pub fn start() -> Self {
        let found = find_processes();
        let start = found
            .values()
            .flatten()
            .filter_map(|pid| Some((*pid, read(*pid)?)))
            .collect();
        Self {
            found,
            start,
            max_rss_kib: BTreeMap::new(),
        }
    }

    pub fn sample(&mut self) {
        for (group, pids) in &self.found {
            for reading in pids.iter().filter_map(|pid| read(*pid)) {
                let max = self.max_rss_kib.entry(group).or_default();
                *max = (*max).max(reading.rss_kib);
            }
        }
    }

    /// What each group used since `start`, per order of `completed`. A
    /// process that started during the phase counts from zero; one that
    /// ended during it is missed, except PostgreSQL's backends, which the
    /// postmaster's children times count whole (their time before the
    /// phase included).
    pub fn finish(mut self, completed: u64) -> BTreeMap<String, Usage> {
        self.sample();
        let mut usage = BTreeMap::new();
        for (group, pids) in find_processes() {
            let mut cpu_seconds = 0.0;
            let mut peak_rss_kib = 0;
            for pid in pids {
                let Some(end) = read(pid) else { continue };
                let start = self.start.get(&pid).map_or(0.0, |r| r.cpu_seconds);
                cpu_seconds += (end.cpu_seconds - start).max(0.0);
                peak_rss_kib = peak_rss_kib.max(end.peak_rss_kib);
            }
            usage.insert(
                group.to_owned(),
                Usage {
                    cpu_seconds,
                    cpu_us_per_order: per_order_us(cpu_seconds, completed),
                    max_rss_mib: self.max_rss_kib.get(group).copied().unwrap_or(0) as f64 / 1024.0,
                    peak_rss_mib: peak_rss_kib as f64 / 1024.0,
                },
            );
        }
        usage
    }
}

/// CPU microseconds per order; zero when no order completed.
fn per_order_us(cpu_seconds: f64, completed: u64) -> f64 {
    if completed == 0 {
        return 0.0;
    }
    cpu_seconds * 1e6 / completed as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_grouped_by_program_and_postgres_by_comm() {
        let cmdline = |args: &[&str]| args.join("\0").into_bytes();
        assert_eq!(
            group_of(
                &cmdline(&["/x/target/release/order-service"]),
                "order-service"
            ),
            Some("order-service")
        );
        // comm is cut at 15 characters; the command line is not.
        assert_eq!(
            group_of(
                &cmdline(&["/x/target/release/notification-service"]),
                "notification-se"
            ),
            Some("notification-service")
        );
        assert_eq!(
            group_of(&cmdline(&["/root/.cargo/bin/tansu", "broker"]), "tansu"),
            Some(BROKER)
        );
        assert_eq!(
            group_of(
                &cmdline(&["postgres: postgres bench_1 127.0.0.1(5432) idle"]),
                "postgres"
            ),
            Some(DATABASE)
        );
        assert_eq!(group_of(&cmdline(&["/usr/bin/bash"]), "bash"), None);
    }

    #[test]
    fn cpu_per_order_is_in_microseconds() {
        assert_eq!(per_order_us(2.0, 1_000), 2_000.0);
        assert_eq!(per_order_us(2.0, 0), 0.0);
    }

    #[test]
    fn this_process_can_be_read() {
        let reading = read(std::process::id()).expect("own /proc entry");
        assert!(reading.rss_kib > 0);
        assert!(reading.peak_rss_kib >= reading.rss_kib);
        assert!(reading.cpu_seconds >= 0.0);
    }
}
