//! Service binaries run as real processes, killed when the guard drops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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
    child: Child,
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
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVICE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        Self {
            name: name.to_owned(),
            log,
            child,
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for service")
    }

    /// Sends `signal` (a name such as `TERM`) without waiting.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_for_exit(
        &mut self,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
