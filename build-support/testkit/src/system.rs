//! The whole system as real processes: the four service binaries on free
//! ports, sharing one test database and topic prefix.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tonic::transport::Channel;

use oms_api::orders::v1::order_service_client::OrderServiceClient;

use crate::TestDatabase;
use crate::grpc::{self, ServingStatus};
use crate::process::ServiceProcess;

pub const GATEWAY: &str = "gateway";
pub const ORDER: &str = "order-service";
pub const PAYMENT: &str = "payment-service";
pub const NOTIFICATION: &str = "notification-service";

/// A free port on loopback, for a process to bind after us.
pub fn free_port() -> SocketAddr {
    free_ports(1)[0]
}

/// `n` distinct free ports on loopback. Each listener is held until all are
/// chosen: released one by one, the kernel may hand out the same port twice,
/// and then one service cannot bind while another answers in its place.
pub fn free_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("addr"))
        .collect()
}

pub struct System {
    pub prefix: String,
    env: Vec<(&'static str, String)>,
    services: Vec<(ServiceProcess, SocketAddr)>,
    /// Where each service serves its metrics, by name.
    metrics: Vec<(&'static str, SocketAddr)>,
}

impl System {
    /// Starts the four services against `db` and `brokers`, plus any `extra`
    /// environment, and waits until each serves.
    pub async fn start(
        db: &TestDatabase,
        brokers: &str,
        prefix: &str,
        extra: &[(&'static str, String)],
    ) -> Self {
        let addrs = free_ports(8);
        let mut env = vec![
            ("KAFKA_BROKERS", brokers.to_owned()),
            ("KAFKA_TOPIC_PREFIX", prefix.to_owned()),
            ("KAFKA_TOPIC_PARTITIONS", "3".to_owned()),
            ("DATABASE_URL", db.url.expose().to_owned()),
            ("GATEWAY_GRPC_ADDR", addrs[0].to_string()),
            ("ORDER_GRPC_ADDR", addrs[1].to_string()),
            ("PAYMENT_GRPC_ADDR", addrs[2].to_string()),
            ("NOTIFICATION_GRPC_ADDR", addrs[3].to_string()),
            ("ORDER_SERVICE_URL", format!("http://{}", addrs[1])),
            // One instance of each service, under one name across restarts:
            // a restarted process takes its leases back at once instead of
            // waiting for them to expire. (Each service has its own schema,
            // so the four share the name without colliding.)
            ("INSTANCE_ID", format!("{prefix}instance")),
        ];
        env.extend(extra.iter().cloned());
        let mut system = Self {
            prefix: prefix.to_owned(),
            env,
            services: Vec::new(),
            metrics: [ORDER, PAYMENT, NOTIFICATION, GATEWAY]
                .into_iter()
                .zip(addrs[4..].iter().copied())
                .collect(),
        };
        // The order service first: the gateway reads through it.
        for (name, addr) in [
            (ORDER, addrs[1]),
            (PAYMENT, addrs[2]),
            (NOTIFICATION, addrs[3]),
            (GATEWAY, addrs[0]),
        ] {
            let process = system.spawn(name);
            system.services.push((process, addr));
        }
        for name in [ORDER, PAYMENT, NOTIFICATION, GATEWAY] {
            system
                .wait_until_serving(name, Duration::from_secs(60))
                .await;
        }
        system
    }

    /// Starts the system on the shared test broker with a fresh topic prefix.
    pub async fn start_on_test_broker(db: &TestDatabase) -> Self {
        let brokers = crate::kafka::brokers().join(",");
        Self::start(db, &brokers, &crate::unique_topic_prefix(), &[]).await
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.entry(name).1
    }

    /// The service's log file.
    pub fn log(&self, name: &str) -> std::path::PathBuf {
        self.entry(name).0.log.clone()
    }

    /// Where the service serves `/metrics`.
    pub fn metrics_addr(&self, name: &str) -> SocketAddr {
        self.metrics
            .iter()
            .find(|(service, _)| *service == name)
            .expect("known service")
            .1
    }

    fn spawn(&self, name: &str) -> ServiceProcess {
        let mut env = self.env.clone();
        env.push(("METRICS_ADDR", self.metrics_addr(name).to_string()));
        ServiceProcess::spawn(name, &env, &self.prefix)
    }

    fn entry(&self, name: &str) -> &(ServiceProcess, SocketAddr) {
        self.services
            .iter()
            .find(|(p, _)| p.name == name)
            .expect("known service")
    }

    /// Waits until the service reports SERVING under its own name, so another
    /// process that took its port cannot stand in for it. Fails at once, with
    /// the end of its log, if the process exits.
    pub async fn wait_until_serving(&self, name: &str, timeout: Duration) {
        let (process, addr) = self.entry(name);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if grpc::health(*addr, name).await == Some(ServingStatus::Serving) {
                return;
            }
            if let Some(status) = process.exit_status() {
                panic!(
                    "{name} exited with {status} before serving on {addr}; its log ends:\n{}",
                    process.log_tail(20)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} did not serve on {addr} within {timeout:?}; its log ends:\n{}",
                process.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the service with SIGKILL and starts it again on the same port.
    pub fn crash_and_restart(&mut self, name: &str) {
        self.kill(name);
        self.restart(name);
    }

    /// Kills the service with SIGKILL and leaves it down.
    pub fn kill(&mut self, name: &str) {
        let index = self.index(name);
        self.services[index].0.kill();
    }

    /// Starts a killed service again on its port.
    pub fn restart(&mut self, name: &str) {
        let index = self.index(name);
        self.services[index].0 = self.spawn(name);
    }

    fn index(&self, name: &str) -> usize {
        self.services
            .iter()
            .position(|(p, _)| p.name == name)
            .expect("known service")
    }

    pub async fn gateway(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(grpc::channel(self.addr(GATEWAY)).await)
    }

    /// Stops every service with SIGTERM and asserts each exits 0.
    pub fn shut_down(self) {
        for (process, _) in self.services {
            let (name, log) = (process.name.clone(), process.log.clone());
            let status = process.terminate();
            assert!(
                status.success(),
                "{name} exited with {status} on SIGTERM (log: {})",
                log.display()
            );
        }
    }
}
