//! The internal API the gateway calls: `orders.internal.v1.OrderQueryService`.
//! Reads, watches, and the claims of idempotency keys.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use oms_api::order_keys::keyed_order_id;
use oms_api::orders::internal::v1::order_query_service_server::OrderQueryService;
use oms_api::orders::internal::v1::{
    ClaimOutcome, ClaimRequestKeyRequest, ClaimRequestKeyResponse, GetOrderRequest,
    GetOrderResponse,
};
use oms_api::orders::v1::{ListOrdersRequest, ListOrdersResponse, WatchOrderRequest};
use oms_common::auth::{AccessDenied, Caller};
use oms_common::db::{DbError, DbPool};
use oms_common::grpc::timeout_of;
use oms_common::pagination;

use crate::error::{OrderError, Result};
use crate::order_stream::{OrderStream, OrderWatch};
use crate::pagination::Position;
use crate::repository;
use crate::request_keys::{self, Claim};
use crate::watch::OrderChanges;

pub struct OrderQueries {
    /// For reads: the read pool.
    pub pool: DbPool,
    /// For key claims, which are on CreateOrder's path: the main pool, so a
    /// flood of reads never delays placing orders.
    pub claims: DbPool,
    pub changes: OrderChanges,
    /// Ends open WatchOrder streams when the service stops.
    pub shutdown: CancellationToken,
}

fn parse_order_id(raw_id: &str) -> Result<Uuid> {
    Uuid::parse_str(raw_id).map_err(|_| OrderError::InvalidOrderId(raw_id.to_owned()))
}

impl OrderQueries {
    /// Another customer's order is NOT_FOUND, exactly as an order that does
    /// not exist, so its existence does not leak.
    async fn get_order(&self, caller: &Caller, raw_id: &str) -> Result<GetOrderResponse> {
        let order_id = parse_order_id(raw_id)?;
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        let order = repository::find(&mut conn, order_id)
            .await?
            .filter(|row| caller.may_access(&row.customer_id))
            .ok_or(OrderError::NotFound(order_id))?;
        Ok(GetOrderResponse {
            order: Some(order.into_proto()),
        })
    }

    /// A customer lists its own orders; another's, or everyone's, need an
    /// admin.
    async fn list_orders(
        &self,
        caller: &Caller,
        request: &ListOrdersRequest,
    ) -> Result<ListOrdersResponse> {
        let limit = pagination::page_size(request.page_size).ok_or(OrderError::InvalidPageSize)?;
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(Position::from_token(token).ok_or(OrderError::InvalidPageToken)?),
        };
        let customer_id = caller.customer_filter(&request.customer_id)?;
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        // One more than asked tells whether another page follows.
        let rows = repository::list(&mut conn, customer_id.as_deref(), after, limit + 1).await?;
        let (rows, next_page_token) = pagination::split_page(rows, limit, |last| {
            Position {
                create_time: last.create_time,
                order_id: last.order_id,
            }
            .to_token()
        });
        Ok(ListOrdersResponse {
            orders: rows.into_iter().map(|row| row.into_proto()).collect(),
            next_page_token,
        })
    }

    /// The key's order id must be the one derived from its customer and
    /// request id, and the caller must be that customer (or an admin), so
    /// no caller claims, probes or reads another customer's key, whoever
    /// calls this API.
    async fn claim_request_key(
        &self,
        caller: &Caller,
        request: &ClaimRequestKeyRequest,
    ) -> Result<ClaimRequestKeyResponse> {
        let order_id = parse_order_id(&request.order_id)?;
        let fingerprint = Uuid::parse_str(&request.fingerprint)
            .map_err(|_| OrderError::InvalidFingerprint(request.fingerprint.clone()))?;
        if request.customer_id.is_empty() || request.request_id.is_empty() {
            // Only a caller nobody checked may claim by order id alone (a
            // gateway older than the fields, with authentication off).
            if caller.subject().is_some() {
                return Err(OrderError::UnnamedKey);
            }
        } else {
            if keyed_order_id(&request.customer_id, &request.request_id) != order_id {
                return Err(OrderError::KeyMismatch(order_id));
            }
            if !caller.may_access(&request.customer_id) {
                return Err(AccessDenied(request.customer_id.clone()).into());
            }
        }
        let mut conn = self.claims.get().await.map_err(DbError::from)?;
        let outcome = match request_keys::claim(&mut conn, order_id, fingerprint).await? {
            Claim::Claimed => ClaimOutcome::Claimed,
            Claim::Conflict => ClaimOutcome::Conflict,
        };
        let order = repository::find(&mut conn, order_id)
            .await?
            .filter(|row| caller.may_access(&row.customer_id));
        Ok(ClaimRequestKeyResponse {
            outcome: outcome as i32,
            order: order.map(|row| row.into_proto()),
        })
    }

    async fn watch_order(
        &self,
        caller: Caller,
        raw_id: &str,
        timeout: Option<Duration>,
    ) -> Result<OrderStream> {
        let order_id = parse_order_id(raw_id)?;
        let subscription = self.changes.subscribe(order_id).await?;
        let watch = OrderWatch::new(
            order_id,
            subscription,
            caller,
            timeout,
            self.shutdown.clone(),
        );
        Ok(watch.into_stream())
    }
}

#[tonic::async_trait]
impl OrderQueryService for OrderQueries {
    type WatchOrderStream = OrderStream;

    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> Result<Response<OrderStream>, Status> {
        let timeout = timeout_of(&request);
        let caller = Caller::of(&request)?;
        let stream =
            OrderQueries::watch_order(self, caller, &request.get_ref().order_id, timeout).await?;
        Ok(Response::new(stream))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let caller = Caller::of(&request)?;
        let response = OrderQueries::get_order(self, &caller, &request.get_ref().order_id).await?;
        Ok(Response::new(response))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            OrderQueries::list_orders(self, &caller, request.get_ref()).await?,
        ))
    }

    async fn claim_request_key(
        &self,
        request: Request<ClaimRequestKeyRequest>,
    ) -> Result<Response<ClaimRequestKeyResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            OrderQueries::claim_request_key(self, &caller, request.get_ref()).await?,
        ))
    }
}
