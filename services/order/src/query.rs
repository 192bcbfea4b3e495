//! The internal read API the gateway calls: `orders.internal.v1.OrderQueryService`.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use oms_api::orders::internal::v1::order_query_service_server::OrderQueryService;
use oms_api::orders::internal::v1::{GetOrderRequest, GetOrderResponse};
use oms_common::db::{DbError, DbPool};

use crate::error::{OrderError, Result};
use crate::repository;

pub struct OrderQueries {
    pub pool: DbPool,
}

impl OrderQueries {
    async fn get_order(&self, raw_id: &str) -> Result<GetOrderResponse> {
        let order_id =
            Uuid::parse_str(raw_id).map_err(|_| OrderError::InvalidOrderId(raw_id.to_owned()))?;
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        let order = repository::find(&mut conn, order_id)
            .await?
            .ok_or(OrderError::NotFound(order_id))?;
        Ok(GetOrderResponse {
            order: Some(order.into_proto()),
        })
    }
}

#[tonic::async_trait]
impl OrderQueryService for OrderQueries {
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let response = OrderQueries::get_order(self, &request.get_ref().order_id).await?;
        Ok(Response::new(response))
    }
}
