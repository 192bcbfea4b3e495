//! `orders.v1.OrderService`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use oms_api::EventEnvelope;
use oms_api::orders::events::v1::OrderCreated;
use oms_api::orders::internal::v1::GetOrderRequest as InternalGetOrderRequest;
use oms_api::orders::v1::order_service_server::OrderService;
use oms_api::orders::v1::{
    CreateOrderRequest, GetOrderRequest, ListOrdersRequest, ListOrdersResponse, Order, OrderStatus,
    WatchOrderRequest,
};
use oms_common::auth::{AccessDenied, Caller};
use oms_common::batching::{BatchingProducer, ProduceError};
use oms_common::grpc::{SERVER_TIMEOUT, timeout_of};
use oms_common::kafka::KeyedRecord;
use oms_common::telemetry::propagation::{inject_span_into_record, is_enabled as tracing_enabled};
use tonic_types::FieldViolation;
use tracing::Instrument;

use crate::error::GatewayError;
use crate::idempotency;
use crate::metrics;
use crate::upstream::OrderService as OrderServiceInstances;
use crate::validation::{ValidOrder, validate_create_order, validate_list_orders};
use crate::watch::OrderStream;
use crate::watch_limits::WatchLimits;

/// The CloudEvents source of the events the gateway publishes.
const SOURCE: &str = "/gateway";

pub struct Gateway {
    /// Set once the broker has answered at start-up; until then every
    /// CreateOrder is UNAVAILABLE.
    /// Batches `order-created` records: concurrent calls share produce
    /// requests, and each call still waits for its own acknowledgement.
    pub producer: Arc<OnceCell<Arc<BatchingProducer>>>,
    /// The order service's instances, for reads, watches and key claims.
    pub orders: Arc<OrderServiceInstances>,
    /// The longest a CreateOrder waits for the broker's acknowledgement.
    pub publish_timeout: Duration,
    /// Ends open WatchOrder streams when the gateway stops.
    pub shutdown: CancellationToken,
    /// Bounds open WatchOrder streams.
    pub watches: Arc<WatchLimits>,
}

impl Gateway {
    async fn create_order(
        &self,
        caller: &Caller,
        request: CreateOrderRequest,
        deadline: Instant,
    ) -> Result<Order, GatewayError> {
        let order = validate_create_order(request).map_err(GatewayError::InvalidArgument)?;
        if !caller.may_access(&order.customer_id) {
            return Err(AccessDenied(order.customer_id).into());
        }
        // Derived from the customer and its key, so a caller's key can only
        // ever name the caller's own order.
        let order_id = idempotency::order_id_for(&order);
        if let Some(request_id) = &order.request_id {
            // The claim comes first, and a failed one refuses the call: two
            // calls with one key and different contents published unclaimed
            // would both be answered OK while only one is recorded.
            let claim = idempotency::claim_key(&self.orders, caller, order_id, &order, request_id);
            if let Some(recorded) = claim.await? {
                tracing::info!(%order_id, "retried request answered with the recorded order");
                return Ok(recorded);
            }
        }
        let create_time = timestamp_now();
        self.publish(order_id, &order, create_time, deadline)
            .await?;
        tracing::info!(%order_id, customer_id = %order.customer_id, "order accepted");
        Ok(Order {
            order_id: order_id.to_string(),
            customer_id: order.customer_id,
            product_id: order.product_id,
            quantity: order.quantity,
            amount: Some(order.amount),
            status: OrderStatus::Pending as i32,
            create_time: Some(create_time),
            update_time: Some(create_time),
            payment_id: String::new(),
            failure_reason: String::new(),
        })
    }

    /// Publishes `order-created` and returns once the broker acknowledged it.
    /// The record is not sent after `caller_deadline`, when the caller stops
    /// waiting, nor after the publish timeout.
    async fn publish(
        &self,
        order_id: Uuid,
        order: &ValidOrder,
        create_time: prost_types::Timestamp,
        caller_deadline: Instant,
    ) -> Result<(), GatewayError> {
        let Some(producer) = self.producer.get() else {
            metrics::PUBLISH_UNAVAILABLE.inc();
            return Err(GatewayError::BrokerUnavailable(
                "not connected to the broker yet".into(),
            ));
        };
        let order_id = order_id.to_string();
        let event = OrderCreated {
            order_id: order_id.clone(),
            customer_id: order.customer_id.clone(),
            product_id: order.product_id.clone(),
            quantity: order.quantity,
            amount: Some(order.amount.clone()),
            request_id: order.request_id.clone().unwrap_or_default(),
            create_time: Some(create_time),
        };
        let mut record = KeyedRecord {
            key: order_id.as_bytes().to_vec(),
            value: prost::Message::encode_to_vec(&event),
            headers: EventEnvelope::new::<OrderCreated>(SOURCE, &order_id).to_headers(),
        };
        let span = tracing_enabled().then(|| {
            let span = tracing::info_span!(
                "publish",
                otel.name = %format_args!("send {}", producer.topic()),
                otel.kind = "producer",
                messaging.system = "kafka",
                messaging.operation.type = "send",
                messaging.destination.name = producer.topic(),
                messaging.destination.partition.id = %producer.partition_of(&record.key),
                messaging.kafka.message.key = %order_id,
            );
            inject_span_into_record(&span, &mut record.headers);
            span
        });
        // The batch carrying the record is produced by a task of its own,
        // which this call cannot stop. The batcher drops the record if the
        // deadline passes before its batch goes, and abandons the batch at
        // the earliest deadline in it, so an order answered with an error
        // is not published afterwards.
        let started = Instant::now();
        let deadline = caller_deadline.min(started + self.publish_timeout);
        let published = producer
            .produce_by(record, deadline)
            .instrument(span.unwrap_or_else(tracing::Span::none))
            .await;
        metrics::published(started.elapsed(), &published);
        published.map_err(|err| match err {
            ProduceError::TooLarge { size, limit } => GatewayError::OrderTooLarge { size, limit },
            err => GatewayError::BrokerUnavailable(err.to_string()),
        })
    }

    /// Asks the order service for an order; `None` when it is not recorded
    /// or not the caller's to see. The order service checks the caller's
    /// token itself; the check here is a second line.
    async fn find_order(
        &self,
        caller: &Caller,
        order_id: &str,
    ) -> Result<Option<Order>, GatewayError> {
        let request = InternalGetOrderRequest {
            order_id: order_id.to_owned(),
        };
        let response = self
            .orders
            .call(|mut client| {
                let request = caller.forward(request.clone());
                async move { client.get_order(request).await }
            })
            .await;
        match response {
            Ok(response) => response
                .into_inner()
                .order
                .map(|order| Some(order).filter(|o| caller.may_access(&o.customer_id)))
                .ok_or_else(|| GatewayError::Internal("response without an order".into())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) if status.code() == Code::InvalidArgument => {
                Err(GatewayError::InvalidArgument(vec![FieldViolation::new(
                    "order_id",
                    status.message(),
                )]))
            }
            Err(status) => Err(upstream_error(status)),
        }
    }

    async fn get_order(
        &self,
        caller: &Caller,
        request: GetOrderRequest,
    ) -> Result<Order, GatewayError> {
        if Uuid::parse_str(&request.order_id).is_err() {
            return Err(GatewayError::InvalidArgument(vec![FieldViolation::new(
                "order_id",
                "must be a UUID",
            )]));
        }
        self.find_order(caller, &request.order_id)
            .await?
            .ok_or(GatewayError::NotFound(request.order_id))
    }

    /// A customer's own orders unless it asks, as an admin, for another's
    /// or everyone's.
    async fn list_orders(
        &self,
        caller: &Caller,
        mut request: ListOrdersRequest,
    ) -> Result<ListOrdersResponse, GatewayError> {
        validate_list_orders(&request).map_err(GatewayError::InvalidArgument)?;
        request.customer_id = caller
            .customer_filter(&request.customer_id)?
            .unwrap_or_default();
        let response = self
            .orders
            .call(|mut client| {
                let request = caller.forward(request.clone());
                async move { client.list_orders(request).await }
            })
            .await;
        match response {
            Ok(response) => Ok(response.into_inner()),
            // The order service checked the one thing the gateway cannot.
            Err(status) if status.code() == Code::InvalidArgument => {
                Err(GatewayError::InvalidArgument(vec![FieldViolation::new(
                    "page_token",
                    status.message(),
                )]))
            }
            Err(status) => Err(upstream_error(status)),
        }
    }
}

/// What an order service failure means for the gateway's caller: its own
/// bugs stay INTERNAL; anything else means it cannot be reached or used now.
pub(crate) fn upstream_error(status: Status) -> GatewayError {
    match status.code() {
        // It checked the caller's token itself and refused it: the caller's
        // answer, not an outage.
        Code::Unauthenticated | Code::PermissionDenied => GatewayError::Refused(status),
        Code::Internal | Code::Unknown | Code::DataLoss => {
            GatewayError::Internal(status.message().to_owned())
        }
        _ => GatewayError::OrderServiceUnavailable(status.message().to_owned()),
    }
}

fn timestamp_now() -> prost_types::Timestamp {
    oms_api::time::to_timestamp(Utc::now())
}

#[tonic::async_trait]
impl OrderService for Gateway {
    type WatchOrderStream = OrderStream;

    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> Result<Response<OrderStream>, Status> {
        let timeout = timeout_of(&request);
        let caller = Caller::of(&request)?;
        let stream = Gateway::watch_order(self, caller, request.into_inner(), timeout).await?;
        Ok(Response::new(stream))
    }

    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        // The server ends the call at the client's deadline or its own
        // timeout, whichever comes first; past that nobody hears the answer.
        let timeout = timeout_of(&request).map_or(SERVER_TIMEOUT, |t| t.min(SERVER_TIMEOUT));
        let deadline = Instant::now() + timeout;
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            Gateway::create_order(self, &caller, request.into_inner(), deadline).await?,
        ))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            Gateway::get_order(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            Gateway::list_orders(self, &caller, request.into_inner()).await?,
        ))
    }
}
