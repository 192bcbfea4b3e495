//! Paced order load for the fault tests: it keeps orders flowing for long
//! enough that faults land while orders are in every stage.

use std::time::Duration;

use tokio::task::JoinHandle;
use tonic::transport::Channel;
use uuid::Uuid;

use oms_api::orders::v1::CreateOrderRequest;
use oms_api::orders::v1::order_service_client::OrderServiceClient;

/// How many orders, from how many clients, and how often.
#[derive(Debug, Clone, Copy)]
pub struct PacedLoad {
    pub orders: usize,
    pub clients: usize,
    /// Each client's pause after an accepted order.
    pub pause: Duration,
    /// The request for order `i`.
    pub request: fn(usize) -> CreateOrderRequest,
}

impl PacedLoad {
    /// Sends every order, client `c` through `gateways[c % len]`; the task
    /// yields the accepted order ids and panics if a gateway refuses one.
    pub fn spawn(self, gateways: Vec<OrderServiceClient<Channel>>) -> JoinHandle<Vec<Uuid>> {
        assert!(!gateways.is_empty(), "a load needs a gateway");
        tokio::spawn(async move {
            let clients = (0..self.clients).map(|client| {
                let mut gateway = gateways[client % gateways.len()].clone();
                async move {
                    let mut accepted = Vec::new();
                    for i in (client..self.orders).step_by(self.clients) {
                        let order = gateway
                            .create_order((self.request)(i))
                            .await
                            .expect("a gateway accepts")
                            .into_inner();
                        accepted.push(Uuid::parse_str(&order.order_id).expect("uuid"));
                        tokio::time::sleep(self.pause).await;
                    }
                    accepted
                }
            });
            futures::future::join_all(clients)
                .await
                .into_iter()
                .flatten()
                .collect()
        })
    }
}
