//! CPU time and memory of the service processes, from `/proc` (Linux).
//! The services are found by their executable's name, so the benchmark
//! works however they were started.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub const SERVICES: [&str; 4] = [
    "gateway",
    "order-service",
    "payment-service",
    "notification-service",
];

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

/// The pids of the running services, by service name.
pub fn find_services() -> BTreeMap<&'static str, u32> {
    let mut found = BTreeMap::new();
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
        let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let name = Path::new(std::str::from_utf8(program).unwrap_or_default())
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(service) = SERVICES.iter().find(|s| **s == name) {
            found.insert(*service, pid);
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
    // contain spaces: state is field 3, utime 14 and stime 15.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
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

/// What one service used during a phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// The largest resident set seen while the phase ran (sampled each second).
    pub max_rss_mib: f64,
    /// The process's peak resident set since it started (VmHWM).
    pub peak_rss_mib: f64,
}

/// Tracks the services through a phase.
pub struct Tracker {
    pids: BTreeMap<&'static str, u32>,
    start: BTreeMap<&'static str, Reading>,
    max_rss_kib: BTreeMap<&'static str, u64>,
}

impl Tracker {
    pub fn start() -> Self {
        let pids = find_services();
        let start = pids
            .iter()
            .filter_map(|(name, pid)| Some((*name, read(*pid)?)))
            .collect();
        Self {
            pids,
            start,
            max_rss_kib: BTreeMap::new(),
        }
    }

    pub fn sample(&mut self) {
        for (name, pid) in &self.pids {
            if let Some(reading) = read(*pid) {
                let max = self.max_rss_kib.entry(name).or_default();
                *max = (*max).max(reading.rss_kib);
            }
        }
    }

    pub fn finish(mut self) -> BTreeMap<String, Usage> {
        self.sample();
        let mut usage = BTreeMap::new();
        for (name, pid) in &self.pids {
            let (Some(end), Some(start)) = (read(*pid), self.start.get(name)) else {
                continue;
            };
            usage.insert(
                (*name).to_owned(),
                Usage {
                    cpu_seconds: end.cpu_seconds - start.cpu_seconds,
                    max_rss_mib: self.max_rss_kib.get(name).copied().unwrap_or(0) as f64 / 1024.0,
                    peak_rss_mib: end.peak_rss_kib as f64 / 1024.0,
                },
            );
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_read() {
        let reading = read(std::process::id()).expect("own /proc entry");
        assert!(reading.rss_kib > 0);
        assert!(reading.peak_rss_kib >= reading.rss_kib);
        assert!(reading.cpu_seconds >= 0.0);
    }
}
