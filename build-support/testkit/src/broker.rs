//! A tansu broker owned by one test, on its own port with durable sqlite
//! storage, so the test can stop and restart it without disturbing others.
//! It can advertise another address than its own, such as a `TestProxy` in
//! front of it, so that clients reach it only through that address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;
use crate::system::free_port;

pub struct TestBroker {
    pub addr: SocketAddr,
    /// The address clients are told to connect to; `addr` unless proxied.
    advertised: SocketAddr,
    storage: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

fn tansu_binary() -> PathBuf {
    let in_cargo_home = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cargo/bin/tansu"))
        .filter(|path| path.exists());
    in_cargo_home.unwrap_or_else(|| PathBuf::from("tansu"))
}

impl TestBroker {
    /// Starts tansu on a free port with a fresh sqlite file.
    pub async fn start_durable(tag: &str) -> Self {
        let addr = free_port();
        Self::start_advertising(tag, addr, addr).await
    }

    /// Starts tansu on `addr` with a fresh sqlite file, telling clients to
    /// connect to `advertised` for every partition, which must lead to
    /// `addr` (a proxy's address, for instance).
    pub async fn start_advertising(tag: &str, addr: SocketAddr, advertised: SocketAddr) -> Self {
        let dir = crate::process::binary_dir().join("test-brokers");
        std::fs::create_dir_all(&dir).expect("broker dir");
        let mut broker = Self {
            addr,
            advertised,
            storage: dir.join(format!("{tag}tansu.db")),
            log: dir.join(format!("{tag}tansu.log")),
            child: None,
        };
        broker.resume().await;
        broker
    }

    /// Stops the broker (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and storage.
    pub async fn resume(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let advertised = format!("tcp://{}", self.advertised);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log");
        let child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            // tansu opens sqlite paths relative to its working directory,
            // even ones written with a leading slash.
            .current_dir(self.storage.parent().expect("storage dir"))
            .arg("--storage-engine")
            .arg(format!(
                "sqlite://{}",
                self.storage.file_name().expect("storage file").to_string_lossy()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start tansu ({err}); install it with `build-support/scripts/broker.sh install`"));
        self.child = Some(child);
        let addr = self.addr;
        eventually(
            &format!("tansu at {addr} (log: {})", self.log.display()),
            Duration::from_secs(20),
            || async move { tokio::net::TcpStream::connect(addr).await.is_ok() },
        )
        .await;
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.storage);
    }
}
