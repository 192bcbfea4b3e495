//! The system with several instances of each service, as real processes:
//! `replicas` each of the order, payment and notification services and
//! `gateways` gateways, on distinct ports, sharing one database and topic
//! prefix, with every gateway given every order-service instance. Each
//! instance can be killed, stopped (SIGSTOP), resumed, terminated and
//! started again.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::Channel;

use oms_api::orders::v1::order_service_client::OrderServiceClient;

use crate::TestDatabase;
use crate::grpc::{self, ServingStatus};
use crate::process::ServiceProcess;
use crate::system::{GATEWAY, NOTIFICATION, ORDER, PAYMENT, free_ports};

/// The variable each service's listen address comes from.
fn addr_variable(service: &str) -> &'static str {
    match service {
        GATEWAY => "GATEWAY_GRPC_ADDR",
        ORDER => "ORDER_GRPC_ADDR",
        PAYMENT => "PAYMENT_GRPC_ADDR",
        NOTIFICATION => "NOTIFICATION_GRPC_ADDR",
        other => panic!("unknown service {other}"),
    }
}

/// One instance: its binary, number, port and process (if running).
pub struct Instance {
    pub service: &'static str,
    pub index: usize,
    pub addr: SocketAddr,
    /// Starts of this instance so far; each start gets a new instance id,
    /// as a new pod would.
    starts: usize,
    process: Option<ServiceProcess>,
}

impl Instance {
    /// The `INSTANCE_ID` of its current (or last) process.
    pub fn instance_id(&self) -> String {
        format!("{}-{}-{}", self.service, self.index, self.starts)
    }
}

pub struct Cluster {
    pub prefix: String,
    env: Vec<(&'static str, String)>,
    pub instances: Vec<Instance>,
}

impl Cluster {
    /// Starts the cluster against `db` and the shared test broker, plus any
    /// `extra` environment, and waits until every instance serves.
    pub async fn start(
        db: &TestDatabase,
        replicas: usize,
        gateways: usize,
        extra: &[(&'static str, String)],
    ) -> Self {
        let prefix = crate::unique_topic_prefix();
        let layout: Vec<(&'static str, usize)> = [ORDER, PAYMENT, NOTIFICATION]
            .into_iter()
            .flat_map(|service| (0..replicas).map(move |index| (service, index)))
            .chain((0..gateways).map(|index| (GATEWAY, index)))
            .collect();
        let addrs = free_ports(layout.len());
        let instances: Vec<Instance> = layout
            .into_iter()
            .zip(addrs)
            .map(|((service, index), addr)| Instance {
                service,
                index,
                addr,
                starts: 0,
                process: None,
            })
            .collect();
        let order_urls: Vec<String> = instances
            .iter()
            .filter(|i| i.service == ORDER)
            .map(|i| format!("http://{}", i.addr))
            .collect();
        let mut env = vec![
            ("KAFKA_BROKERS", crate::kafka::brokers().join(",")),
            ("KAFKA_TOPIC_PREFIX", prefix.clone()),
            ("DATABASE_URL", db.url.expose().to_owned()),
            ("ORDER_SERVICE_URL", order_urls.join(",")),
        ];
        env.extend(extra.iter().cloned());
        let mut cluster = Self {
            prefix,
            env,
            instances,
        };
        for i in 0..cluster.instances.len() {
            cluster.spawn(i);
        }
        for i in 0..cluster.instances.len() {
            cluster.wait_serving(i, Duration::from_secs(90)).await;
        }
        cluster
    }

    fn position(&self, service: &str, index: usize) -> usize {
        self.instances
            .iter()
            .position(|i| i.service == service && i.index == index)
            .unwrap_or_else(|| panic!("no instance {service} #{index}"))
    }

    pub fn instance(&self, service: &str, index: usize) -> &Instance {
        &self.instances[self.position(service, index)]
    }

    fn spawn(&mut self, position: usize) {
        let instance = &mut self.instances[position];
        instance.starts += 1;
        let mut env = self.env.clone();
        env.push((addr_variable(instance.service), instance.addr.to_string()));
        env.push(("INSTANCE_ID", instance.instance_id()));
        let tag = format!("{}{}-", self.prefix, instance.index);
        instance.process = Some(ServiceProcess::spawn(instance.service, &env, &tag));
    }

    async fn wait_serving(&self, position: usize, timeout: Duration) {
        let instance = &self.instances[position];
        let process = instance.process.as_ref().expect("running");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if grpc::health(instance.addr, instance.service).await == Some(ServingStatus::Serving) {
                return;
            }
            if let Some(status) = process.exit_status() {
                panic!(
                    "{} #{} exited with {status} before serving; its log ends:\n{}",
                    instance.service,
                    instance.index,
                    process.log_tail(20)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} #{} did not serve within {timeout:?}; its log ends:\n{}",
                instance.service,
                instance.index,
                process.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a stopped or killed instance again (a new process, a new
    /// instance id) and waits until it serves.
    pub async fn start_again(&mut self, service: &str, index: usize) {
        let position = self.position(service, index);
        assert!(
            self.instances[position].process.is_none(),
            "{service} #{index} is running"
        );
        self.spawn(position);
        self.wait_serving(position, Duration::from_secs(60)).await;
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self, service: &str, index: usize) {
        let position = self.position(service, index);
        if let Some(mut process) = self.instances[position].process.take() {
            process.kill();
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn terminate(&mut self, service: &str, index: usize) {
        let position = self.position(service, index);
        let process = self.instances[position].process.take().expect("running");
        let status = process.terminate();
        assert!(
            status.success(),
            "{service} #{index} exited with {status} on SIGTERM"
        );
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, service: &str, index: usize, signal: &str) {
        let process = self
            .instance(service, index)
            .process
            .as_ref()
            .expect("running");
        process.signal(signal);
    }

    pub fn is_running(&self, service: &str, index: usize) -> bool {
        self.instance(service, index).process.is_some()
    }

    pub async fn gateway(&self, index: usize) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(grpc::channel(self.instance(GATEWAY, index).addr).await)
    }

    /// Stops every running instance with SIGTERM and asserts each exits 0.
    pub fn shut_down(mut self) {
        for instance in &mut self.instances {
            if let Some(process) = instance.process.take() {
                let log = process.log.clone();
                let status = process.terminate();
                assert!(
                    status.success(),
                    "{} #{} exited with {status} on SIGTERM (log: {})",
                    instance.service,
                    instance.index,
                    log.display()
                );
            }
        }
    }
}
