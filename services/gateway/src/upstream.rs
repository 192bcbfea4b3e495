//! The order service as the gateway sees it: any number of instances, named
//! by `ORDER_SERVICE_URL` (comma-separated URLs; each host name is resolved
//! again every 10 s, and each of its addresses is one instance, as a
//! Kubernetes headless service or a Compose service with replicas gives).
//!
//! Calls go round-robin to the instances not known to be down. A call that
//! fails because its instance cannot be reached (UNAVAILABLE, or a
//! connection that broke) is made again on the next instance, and the
//! failed one is avoided for a while. Every call the gateway makes is a
//! read or an idempotent claim, so making it again is safe.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use oms_common::tls::{LoadedClientTls, TlsFileError};
use tonic::{Code, Status};

use oms_api::orders::internal::v1::order_query_service_client::OrderQueryServiceClient;

/// How long an instance that could not be reached is avoided.
const AVOID_FOR: Duration = Duration::from_secs(2);
/// How often host names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(10);
/// The most instances one call tries.
const MAX_TRIES: usize = 3;

pub type OrderClient = OrderQueryServiceClient<Channel>;

/// One `ORDER_SERVICE_URL` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    scheme: String,
    host: String,
    port: u16,
}

impl Target {
    pub fn is_https(&self) -> bool {
        self.scheme == "https"
    }
}

/// Parses `ORDER_SERVICE_URL`: one or more `http://host:port` URLs,
/// separated by commas.
pub fn parse_targets(list: &str) -> Result<Vec<Target>, String> {
    let targets: Vec<Target> = list
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let url = url::Url::parse(entry).map_err(|err| format!("{entry:?}: {err}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("{entry:?}: expected an http:// or https:// URL"));
            }
            let host = url
                .host_str()
                .ok_or_else(|| format!("{entry:?} names no host"))?;
            Ok(Target {
                scheme: url.scheme().to_owned(),
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: url.port_or_known_default().unwrap_or(80),
            })
        })
        .collect::<Result<_, _>>()?;
    if targets.is_empty() {
        return Err("no URL given".into());
    }
    Ok(targets)
}

/// One order-service instance.
struct Instance {
    addr: SocketAddr,
    /// For reads and claims.
    client: OrderClient,
    /// For watches, on a connection of their own: long-lived streams never
    /// take the stream slots or flow-control window reads need.
    watcher: OrderClient,
    avoid_until: Mutex<Option<Instant>>,
}

impl Instance {
    /// An instance at `addr`, resolved from `host`; over TLS when `tls` is
    /// given (the configuration then made every URL https).
    fn new(
        scheme: &str,
        host: &str,
        addr: SocketAddr,
        tls: Option<&LoadedClientTls>,
    ) -> Result<Self, TlsFileError> {
        let uri = format!("{scheme}://{addr}");
        let channel = || -> Result<Channel, TlsFileError> {
            let endpoint = match tls {
                Some(tls) => tls.endpoint(&uri, host)?,
                None => Endpoint::from_shared(uri.clone()).expect("an address makes a valid URI"),
            };
            Ok(endpoint
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                // A host that vanishes without a reset must not leave calls
                // and watches hanging on its connection.
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .connect_lazy())
        };
        Ok(Self {
            addr,
            client: OrderQueryServiceClient::new(channel()?),
            watcher: OrderQueryServiceClient::new(channel()?),
            avoid_until: Mutex::new(None),
        })
    }

    fn is_avoided(&self, now: Instant) -> bool {
        self.avoid_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some_and(|until| now < until)
    }

    fn avoid(&self) {
        *self
            .avoid_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now() + AVOID_FOR);
    }
}

/// The order-service instances and the next one to call.
pub struct OrderService {
    targets: Vec<Target>,
    tls: Option<LoadedClientTls>,
    instances: RwLock<Vec<Arc<Instance>>>,
    next: AtomicUsize,
}

impl OrderService {
    /// Resolves `targets` once; names that do not resolve yet are tried
    /// again by `keep_resolving`.
    pub async fn connect(targets: Vec<Target>, tls: Option<LoadedClientTls>) -> Arc<Self> {
        let service = Arc::new(Self {
            targets,
            tls,
            instances: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
        });
        service.resolve().await;
        service
    }

    /// Resolves the host names again every 10 s (every second while none
    /// resolves) until `shutdown`.
    pub async fn keep_resolving(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let pause = if self.instances().is_empty() {
                Duration::from_secs(1)
            } else {
                RESOLVE_EVERY
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => self.resolve().await,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn resolve(&self) {
        let mut found: Vec<(&Target, SocketAddr)> = Vec::new();
        for target in &self.targets {
            match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
                Ok(addrs) => found.extend(addrs.map(|addr| (target, addr))),
                // Until every name resolves, keep the instances known.
                Err(err) => {
                    tracing::warn!(host = %target.host, error = %err, "cannot resolve the order service");
                    return;
                }
            }
        }
        found.sort_by_key(|(_, addr)| *addr);
        found.dedup_by_key(|(_, addr)| *addr);
        let mut instances = self
            .instances
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
        let after: Vec<SocketAddr> = found.iter().map(|(_, addr)| *addr).collect();
        if before == after {
            return;
        }
        tracing::info!(instances = ?after, "order service instances");
        // Instances that stay keep their connection.
        *instances = found
            .into_iter()
            .filter_map(|(target, addr)| {
                if let Some(kept) = instances.iter().find(|i| i.addr == addr) {
                    return Some(Arc::clone(kept));
                }
                // Checked at start-up with the same settings; should a name
                // still be refused, that one instance is left out.
                Instance::new(&target.scheme, &target.host, addr, self.tls.as_ref())
                    .inspect_err(|err| tracing::error!(%addr, error = %err, "cannot reach an order service instance over TLS"))
                    .ok()
                    .map(Arc::new)
            })
            .collect();
    }

    fn instances(&self) -> Vec<Arc<Instance>> {
        self.instances
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The instances in the order to try them: round-robin from the next
    /// one, those not avoided first.
    fn candidates(&self) -> Vec<Arc<Instance>> {
        let instances = self.instances();
        if instances.is_empty() {
            return instances;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % instances.len();
        let now = Instant::now();
        let (mut fine, avoided): (Vec<_>, Vec<_>) = instances[start..]
            .iter()
            .chain(&instances[..start])
            .cloned()
            .partition(|instance| !instance.is_avoided(now));
        fine.extend(avoided);
        fine
    }

    /// Makes `call` on an instance, and again on the next while instances
    /// cannot be reached, up to `MAX_TRIES` of them.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(OrderClient) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_instances(|instance| call(instance.client.clone()))
            .await
            .map(|(answer, _)| answer)
    }

    /// As `call`, on the instances' watch connections, also saying which
    /// instance answered.
    pub async fn watch_on<T, F, Fut>(&self, mut call: F) -> Result<(T, SocketAddr), Status>
    where
        F: FnMut(OrderClient) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_instances(|instance| call(instance.watcher.clone()))
            .await
    }

    /// Avoids the instance at `addr` for a while: it went away mid-call.
    pub fn avoid(&self, addr: SocketAddr) {
        if let Some(instance) = self.instances().iter().find(|i| i.addr == addr) {
            instance.avoid();
        }
    }

    async fn call_instances<T, F, Fut>(&self, mut call: F) -> Result<(T, SocketAddr), Status>
    where
        F: FnMut(&Instance) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last =
            Status::unavailable("no order service instance is known (ORDER_SERVICE_URL)");
        for instance in self.candidates().into_iter().take(MAX_TRIES) {
            match call(&instance).await {
                Err(status) if is_unreachable(&status) => {
                    tracing::debug!(instance = %instance.addr, error = %status, "order service instance unreachable, trying another");
                    instance.avoid();
                    last = status;
                }
                answer => return answer.map(|answer| (answer, instance.addr)),
            }
        }
        Err(last)
    }
}

/// Whether a call failed because its instance could not be reached or
/// went away (refused, reset, shutting down), not because of its answer.
pub fn is_unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_and_host_names_are_accepted() {
        let targets = parse_targets("http://10.0.0.1:50052, http://order-service:50052").unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1].host, "order-service");
        assert_eq!(targets[1].port, 50052);
        assert!(parse_targets("").is_err());
        assert!(parse_targets("order-service:50052").is_err());
    }

    #[tokio::test]
    async fn calls_rotate_and_skip_an_instance_that_cannot_be_reached() {
        let service = OrderService::connect(
            parse_targets("http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3").unwrap(),
            None,
        )
        .await;
        // Instance :2 is "down": its calls fail as unreachable.
        let called = Mutex::new(Vec::new());
        for _ in 0..6 {
            let answer = service
                .call_instances(|instance| {
                    let port = instance.addr.port();
                    called.lock().unwrap().push(port);
                    async move {
                        if port == 2 {
                            Err(Status::unavailable("connection refused"))
                        } else {
                            Ok(port)
                        }
                    }
                })
                .await;
            assert_ne!(answer.unwrap().0, 2);
        }
        let called = called.into_inner().unwrap();
        // :2 was tried once, then avoided while the others answered.
        assert_eq!(
            called.iter().filter(|&&port| port == 2).count(),
            1,
            "{called:?}"
        );
    }
}
