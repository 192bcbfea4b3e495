//! `notifications.v1.NotificationService`: a customer's or an order's
//! notifications, oldest first, with keyset pagination by
//! `(create_time, notification_id)` (see `oms_common::pagination`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use oms_api::notifications::v1::notification_service_server::NotificationService;
use oms_api::notifications::v1::{
    ListNotificationsRequest, ListNotificationsResponse, Notification, NotificationKind,
};
use oms_api::time::to_timestamp;
use oms_common::auth::Caller;
use oms_common::db::{DbError, DbPool};
use oms_common::pagination::{self, decode_token, encode_token};

use crate::error::NotificationError;
use crate::events::{KIND_ORDER_RECEIVED, KIND_PAYMENT_FAILED, KIND_PAYMENT_SUCCEEDED};
use crate::schema::notifications;

/// The longest customer id the gateway accepts.
const MAX_CUSTOMER_ID_CHARS: usize = 128;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = notifications)]
pub struct NotificationRow {
    pub notification_id: i64,
    pub order_id: Uuid,
    pub customer_id: String,
    pub kind: String,
    pub message: String,
    pub create_time: DateTime<Utc>,
}

impl NotificationRow {
    fn token(&self) -> String {
        encode_token(self.create_time, &self.notification_id.to_be_bytes())
    }

    fn into_proto(self) -> Notification {
        let kind = match self.kind.as_str() {
            KIND_ORDER_RECEIVED => NotificationKind::OrderReceived,
            KIND_PAYMENT_SUCCEEDED => NotificationKind::PaymentSucceeded,
            KIND_PAYMENT_FAILED => NotificationKind::PaymentFailed,
            _ => NotificationKind::Unspecified,
        };
        Notification {
            notification_id: self.notification_id.to_string(),
            kind: kind as i32,
            message: self.message,
            order_id: self.order_id.to_string(),
            customer_id: self.customer_id,
            create_time: Some(to_timestamp(self.create_time)),
        }
    }
}

/// A validated request.
struct Filter {
    order_id: Option<Uuid>,
    customer_id: Option<String>,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
}

impl TryFrom<ListNotificationsRequest> for Filter {
    type Error = NotificationError;

    fn try_from(request: ListNotificationsRequest) -> Result<Self, NotificationError> {
        if request.order_id.is_empty() && request.customer_id.is_empty() {
            return Err(NotificationError::MissingFilter);
        }
        if request.customer_id.chars().count() > MAX_CUSTOMER_ID_CHARS {
            return Err(NotificationError::InvalidCustomerId);
        }
        let order_id = match request.order_id.as_str() {
            "" => None,
            raw => Some(
                Uuid::parse_str(raw)
                    .map_err(|_| NotificationError::InvalidOrderId(raw.to_owned()))?,
            ),
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => {
                let (create_time, key) =
                    decode_token(token, 8).ok_or(NotificationError::InvalidPageToken)?;
                let id = i64::from_be_bytes(
                    key.try_into()
                        .map_err(|_| NotificationError::InvalidPageToken)?,
                );
                Some((create_time, id))
            }
        };
        Ok(Self {
            order_id,
            customer_id: Some(request.customer_id).filter(|id| !id.is_empty()),
            after,
            limit: pagination::page_size(request.page_size)
                .ok_or(NotificationError::InvalidPageSize)?,
        })
    }
}

/// Up to `limit` notifications matching `filter`, oldest first.
async fn list(
    conn: &mut AsyncPgConnection,
    filter: &Filter,
    limit: i64,
) -> QueryResult<Vec<NotificationRow>> {
    let mut query = notifications::table
        .select(NotificationRow::as_select())
        .order((
            notifications::create_time.asc(),
            notifications::notification_id.asc(),
        ))
        .limit(limit)
        .into_boxed();
    if let Some(order_id) = filter.order_id {
        query = query.filter(notifications::order_id.eq(order_id));
    }
    if let Some(customer_id) = &filter.customer_id {
        query = query.filter(notifications::customer_id.eq(customer_id.clone()));
    }
    if let Some((create_time, id)) = filter.after {
        query = query.filter(
            notifications::create_time
                .gt(create_time)
                .or(notifications::create_time
                    .eq(create_time)
                    .and(notifications::notification_id.gt(id))),
        );
    }
    query.load(conn).await
}

pub struct NotificationQueries {
    pub pool: DbPool,
}

impl NotificationQueries {
    /// A customer lists only its own notifications: the customer filter is
    /// its own unless it is an admin, so asking by another customer's order
    /// finds nothing, as for an order that does not exist.
    async fn list_notifications(
        &self,
        caller: &Caller,
        mut request: ListNotificationsRequest,
    ) -> Result<ListNotificationsResponse, NotificationError> {
        request.customer_id = caller
            .customer_filter(&request.customer_id)?
            .unwrap_or_default();
        let filter = Filter::try_from(request)?;
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        // One more than asked tells whether another page follows.
        let rows = list(&mut conn, &filter, filter.limit + 1).await?;
        let (rows, next_page_token) =
            pagination::split_page(rows, filter.limit, NotificationRow::token);
        Ok(ListNotificationsResponse {
            notifications: rows.into_iter().map(NotificationRow::into_proto).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationQueries {
    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let response =
            NotificationQueries::list_notifications(self, &caller, request.into_inner()).await?;
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(order_id: &str, customer_id: &str, page_token: &str) -> ListNotificationsRequest {
        ListNotificationsRequest {
            order_id: order_id.into(),
            customer_id: customer_id.into(),
            page_size: 0,
            page_token: page_token.into(),
        }
    }

    #[test]
    fn a_filter_is_required_and_checked() {
        assert!(matches!(
            Filter::try_from(request("", "", "")),
            Err(NotificationError::MissingFilter)
        ));
        assert!(matches!(
            Filter::try_from(request("nope", "", "")),
            Err(NotificationError::InvalidOrderId(_))
        ));
        assert!(matches!(
            Filter::try_from(request("", &"c".repeat(129), "")),
            Err(NotificationError::InvalidCustomerId)
        ));
        assert!(matches!(
            Filter::try_from(request("", "c-1", "zz")),
            Err(NotificationError::InvalidPageToken)
        ));
        let filter = Filter::try_from(request("", "c-1", "")).unwrap();
        assert_eq!(
            (filter.limit, filter.customer_id.as_deref()),
            (50, Some("c-1"))
        );
    }

    #[test]
    fn a_row_token_reads_back_as_its_position() {
        let row = NotificationRow {
            notification_id: 42,
            order_id: Uuid::now_v7(),
            customer_id: "c-1".into(),
            kind: KIND_ORDER_RECEIVED.into(),
            message: "m".into(),
            create_time: DateTime::from_timestamp_micros(1_764_120_000_000_001).unwrap(),
        };
        let filter = Filter::try_from(request("", "c-1", &row.token())).unwrap();
        assert_eq!(filter.after, Some((row.create_time, 42)));
    }
}
