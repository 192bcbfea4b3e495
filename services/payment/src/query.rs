//! `payments.v1.PaymentService`: reads of the payments table.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use oms_api::money;
use oms_api::payments::v1::payment_service_server::PaymentService;
use oms_api::payments::v1::{GetPaymentRequest, Payment, PaymentStatus};
use oms_api::time::to_timestamp;
use oms_common::auth::Caller;
use oms_common::db::{DbError, DbPool};

use crate::error::PaymentError;
use crate::repository::{self, PaymentRow, STATUS_COMPLETED, STATUS_DECLINED, STATUS_PENDING};

pub struct PaymentQueries {
    pub pool: DbPool,
}

impl PaymentQueries {
    /// Another customer's payment is NOT_FOUND, as if it did not exist, so
    /// its existence does not leak.
    async fn get_payment(
        &self,
        caller: &Caller,
        raw_order_id: &str,
    ) -> Result<Payment, PaymentError> {
        let order_id = Uuid::parse_str(raw_order_id)
            .map_err(|_| PaymentError::InvalidOrderId(raw_order_id.to_owned()))?;
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        repository::find_by_order(&mut conn, order_id)
            .await?
            .filter(|row| caller.may_access(&row.customer_id))
            .map(into_proto)
            .ok_or(PaymentError::NotFound(order_id))
    }
}

fn into_proto(row: PaymentRow) -> Payment {
    let status = match row.status.as_str() {
        STATUS_PENDING => PaymentStatus::Pending,
        STATUS_COMPLETED => PaymentStatus::Completed,
        STATUS_DECLINED => PaymentStatus::Declined,
        _ => PaymentStatus::Unspecified,
    };
    Payment {
        payment_id: row.payment_id.to_string(),
        order_id: row.order_id.to_string(),
        customer_id: row.customer_id,
        amount: Some(money::from_minor_units(
            &row.currency_code,
            row.amount_minor,
        )),
        status: status as i32,
        decline_reason: row.decline_reason.unwrap_or_default(),
        create_time: Some(to_timestamp(row.create_time)),
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentQueries {
    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<Payment>, Status> {
        let caller = Caller::of(&request)?;
        let payment =
            PaymentQueries::get_payment(self, &caller, &request.get_ref().order_id).await?;
        Ok(Response::new(payment))
    }
}
