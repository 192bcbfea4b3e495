//! Service binaries run as real processes, killed when the guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};

/// The directory holding the workspace's binaries: the test executable lives
/// in `target/<profile>/deps`, the binaries one level up.
pub fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf()
}

/// A running service process; killed on drop.
pub struct ServiceProcess {
    pub name: String,
    pub log: PathBuf,
    // Behind a lock so a shared `&self` can still ask whether it exited.
    child: Mutex<Child>,
}

impl ServiceProcess {
    /// Starts binary `name` with `env` added to the environment, logging to a
    /// file under `target/test-logs/`.
    pub fn spawn(name: &str, env: &[(&str, String)], log_tag: &str) -> Self {
        let binary = binary_dir().join(name);
        assert!(
            binary.exists(),
            "{} is missing: build the binaries first with `cargo build --workspace --bins` (`just test` does)",
            binary.display()
        );
        let log_dir = binary_dir().join("test-logs");
        std::fs::create_dir_all(&log_dir).expect("create log dir");
        let log = log_dir.join(format!("{log_tag}{name}.log"));
        // Appended to, so a restarted process keeps its predecessor's log.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log file");
        let child = Command::new(&binary)
            // Most tests are about something else, and send many calls
            // from one address; the auth tests pass `AUTH_MODE=jwt`, its
            // keys and limits in `env`, which wins.
            .env("AUTH_MODE", "disabled")
            .env("RATE_LIMIT_WRITES_PER_SECOND", "0")
            .env("RATE_LIMIT_READS_PER_SECOND", "0")
            .env("RATE_LIMIT_FAILED_AUTH_PER_SECOND", "0")
            // Any free port: tests run many services at once, and those
            // that scrape pass the address they chose.
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVICE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        Self {
            name: name.to_owned(),
            log,
            child: Mutex::new(child),
        }
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How the process ended, or `None` while it runs.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// The last `lines` lines of the process's log, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(self) -> ExitStatus {
        self.signal("TERM");
        self.child().wait().expect("wait for service")
    }

    /// Sends `signal` (a name such as `TERM`) without waiting.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child().id().to_string())
            .status();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_for_exit(&mut self, timeout: std::time::Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of the file at `path`, or why it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("<cannot read {}: {err}>", path.display()),
    }
}
