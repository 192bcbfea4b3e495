//! TLS on the gRPC ports, with the processes as they run: the gateway
//! serves TLS, the order service demands client certificates (mutual TLS),
//! and the gateway reaches it with its own certificate. Clients with the
//! wrong CA, or without a certificate where one is demanded, are refused;
//! probes use the plaintext health-only port.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use oms_api::orders::v1::GetOrderRequest;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_devkeys::certs::{self, CertFiles};
use oms_testkit::orders;
use oms_testkit::process::ServiceProcess;
use oms_testkit::system::{GATEWAY, ORDER, free_ports};
use oms_testkit::{TestDatabase, eventually, grpc, kafka, unique_topic_prefix};

/// A TLS client for `addr`, trusting `ca` and presenting `identity` when
/// given; `None` when the handshake fails.
async fn tls_channel(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Option<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("CA")))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).expect("cert"),
            std::fs::read(key).expect("key"),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .ok()
}

/// Whether a health check over `channel` is answered.
async fn answers(channel: Option<Channel>) -> bool {
    let Some(channel) = channel else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest::default());
    matches!(
        tokio::time::timeout(Duration::from_secs(5), check).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_mutual_tls_admit_only_the_right_peers() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let dir = std::env::temp_dir().join(format!("oms-tls-{prefix}"));
    let ours = certs::write(&dir.join("ours")).expect("certificates");
    let strangers: CertFiles = certs::write(&dir.join("strangers")).expect("other CA");
    let [order, order_health, gateway, gateway_health] = free_ports(4)[..] else {
        unreachable!()
    };
    let path = |p: &Path| p.display().to_string();
    let common = vec![
        ("KAFKA_BROKERS", kafka::brokers().join(",")),
        ("KAFKA_TOPIC_PREFIX", prefix.clone()),
        ("KAFKA_TOPIC_PARTITIONS", "2".to_owned()),
        ("DATABASE_URL", db.url.expose().to_owned()),
        ("TLS_CERT_FILE", path(&ours.server_cert)),
        ("TLS_KEY_FILE", path(&ours.server_key)),
    ];
    let mut order_env = common.clone();
    order_env.extend([
        ("ORDER_GRPC_ADDR", order.to_string()),
        ("HEALTH_GRPC_ADDR", order_health.to_string()),
        ("INSTANCE_ID", format!("{prefix}order")),
        // Mutual TLS: only clients with a certificate from our CA.
        ("TLS_CLIENT_CA_FILE", path(&ours.ca_cert)),
    ]);
    let mut gateway_env = common;
    gateway_env.extend([
        ("GATEWAY_GRPC_ADDR", gateway.to_string()),
        ("HEALTH_GRPC_ADDR", gateway_health.to_string()),
        // The certificate names localhost, the URL's host: no
        // ORDER_SERVICE_TLS_NAME needed.
        (
            "ORDER_SERVICE_URL",
            format!("https://localhost:{}", order.port()),
        ),
        ("ORDER_SERVICE_CA_FILE", path(&ours.ca_cert)),
        ("ORDER_SERVICE_CERT_FILE", path(&ours.client_cert)),
        ("ORDER_SERVICE_KEY_FILE", path(&ours.client_key)),
    ]);
    let order_process = ServiceProcess::spawn(ORDER, &order_env, &prefix);
    let gateway_process = ServiceProcess::spawn(GATEWAY, &gateway_env, &prefix);
    // Probes reach the plaintext health ports.
    grpc::wait_until_serving(order_health, ORDER, Duration::from_secs(60)).await;
    grpc::wait_until_serving(gateway_health, GATEWAY, Duration::from_secs(60)).await;

    assert!(
        answers(tls_channel(gateway, &ours.ca_cert, None).await).await,
        "the gateway over TLS with our CA"
    );
    assert!(
        !answers(tls_channel(gateway, &strangers.ca_cert, None).await).await,
        "a client trusting another CA must not complete the handshake"
    );
    assert_eq!(
        grpc::health(gateway, "").await,
        None,
        "plaintext on a TLS port"
    );
    let identity = Some((ours.client_cert.as_path(), ours.client_key.as_path()));
    assert!(
        answers(tls_channel(order, &ours.ca_cert, identity).await).await,
        "the order service with our client certificate"
    );
    assert!(
        !answers(tls_channel(order, &ours.ca_cert, None).await).await,
        "mutual TLS must refuse a client without a certificate"
    );
    let strangers_identity = Some((
        strangers.client_cert.as_path(),
        strangers.client_key.as_path(),
    ));
    assert!(
        !answers(tls_channel(order, &ours.ca_cert, strangers_identity).await).await,
        "mutual TLS must refuse a certificate from another CA"
    );

    // The gateway reaches the order service over mutual TLS: an order
    // placed through it is read back through it.
    let client = OrderServiceClient::new(
        tls_channel(gateway, &ours.ca_cert, None)
            .await
            .expect("TLS channel"),
    );
    let order_id = client
        .clone()
        .create_order(orders::order("tls-customer", "tls-1"))
        .await
        .expect("CreateOrder over TLS (its key is claimed over mutual TLS)")
        .into_inner()
        .order_id;
    eventually(
        "the order read back through the gateway",
        Duration::from_secs(30),
        || {
            let (mut client, order_id) = (client.clone(), order_id.clone());
            async move { client.get_order(GetOrderRequest { order_id }).await.is_ok() }
        },
    )
    .await;

    gateway_process.terminate();
    order_process.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}
