//! Live order changes for WatchOrder, pushed by PostgreSQL.
//!
//! A trigger on `orders` sends `NOTIFY order_changes, '<order_id> <version>'`
//! for every insert and update. PostgreSQL delivers it when the writing
//! transaction commits, to every listening connection, so it works whichever
//! order-service instance made the change, and nothing uncommitted is ever
//! shown. Each process holds one listening connection and fans changes out
//! to its watchers: watchers of the same order share one `watch` channel,
//! and a change is read from the database once per process, not once per
//! watcher. Nothing polls: a quiet order costs no queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use oms_api::orders::v1::Order;
use oms_common::config::DatabaseUrl;
use oms_common::db::{DbError, DbPool};
use oms_common::retry::Backoff;

use crate::repository::{self, OrderRow};

/// The channel the `orders` trigger notifies (see `migrations/order`).
pub const CHANNEL: &str = "order_changes";

/// How often an idle listening connection is checked, so a connection that
/// died silently is replaced.
const LISTENER_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// An order as watchers see it: the row's version orders the snapshots.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: i32,
    pub is_terminal: bool,
    pub order: Order,
}

impl Snapshot {
    fn from_row(row: OrderRow) -> Self {
        Self {
            version: row.version,
            is_terminal: row.is_terminal(),
            order: row.into_proto(),
        }
    }
}

type Latest = watch::Sender<Option<Arc<Snapshot>>>;

/// The orders this process's watchers follow, and their latest snapshots.
#[derive(Clone)]
pub struct OrderChanges {
    pool: DbPool,
    watched: Arc<Mutex<HashMap<Uuid, Latest>>>,
}

/// One watcher's interest in one order; it ends when this is dropped.
pub struct Subscription {
    order_id: Uuid,
    changes: OrderChanges,
    pub latest: watch::Receiver<Option<Arc<Snapshot>>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watched = self.changes.lock();
        // This receiver is still alive here: one means it was the last.
        if watched
            .get(&self.order_id)
            .is_some_and(|latest| latest.receiver_count() <= 1)
        {
            watched.remove(&self.order_id);
        }
    }
}

impl OrderChanges {
    pub fn new(pool: DbPool) -> Self {
        Self {
            pool,
            watched: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Latest>> {
        // The map stays consistent even if a holder panicked: every
        // operation on it is a single insert, remove or lookup.
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts following `order_id` and reads its current state, so the
    /// subscription holds it (or `None` while the order is not recorded).
    /// Subscribing before reading means no change can fall in between.
    pub async fn subscribe(&self, order_id: Uuid) -> Result<Subscription, DbError> {
        let latest = self
            .lock()
            .entry(order_id)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        let subscription = Subscription {
            order_id,
            changes: self.clone(),
            latest,
        };
        self.refresh(order_id, None).await?;
        Ok(subscription)
    }

    /// The number of orders with at least one watcher in this process.
    pub fn watched_orders(&self) -> usize {
        self.lock().len()
    }

    /// Reads a watched order from the database and offers it to its
    /// watchers, unless they already hold `version` or newer. Without a
    /// version (a new watcher, a reconnected listener) it always reads.
    async fn refresh(&self, order_id: Uuid, version: Option<i32>) -> Result<(), DbError> {
        let Some(latest) = self.lock().get(&order_id).cloned() else {
            return Ok(());
        };
        let held = latest.borrow().as_ref().map(|snapshot| snapshot.version);
        if let (Some(held), Some(version)) = (held, version)
            && held >= version
        {
            return Ok(());
        }
        let mut conn = self.pool.get().await?;
        let Some(row) = repository::find(&mut conn, order_id).await? else {
            return Ok(());
        };
        let snapshot = Snapshot::from_row(row);
        // Concurrent reads may finish out of order; the newest version wins.
        latest.send_if_modified(|current| {
            let is_newer = current
                .as_ref()
                .is_none_or(|held| held.version < snapshot.version);
            if is_newer {
                *current = Some(Arc::new(snapshot));
            }
            is_newer
        });
        Ok(())
    }

    /// Listens for committed changes until `shutdown`, reconnecting after a
    /// lost connection and then re-reading every watched order, since
    /// notifications sent meanwhile are lost.
    pub async fn listen(self, database_url: DatabaseUrl, shutdown: CancellationToken) {
        let mut backoff = Backoff::transient();
        while !shutdown.is_cancelled() {
            match self.listen_once(&database_url, &shutdown).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "order change listener lost its connection");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn listen_once(
        &self,
        database_url: &DatabaseUrl,
        shutdown: &CancellationToken,
    ) -> Result<(), DbError> {
        let mut conn = AsyncPgConnection::establish(database_url.expose()).await?;
        conn.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        tracing::debug!("listening for order changes");
        self.refresh_all_watched();
        loop {
            let next = {
                let mut notifications = std::pin::pin!(conn.notifications_stream());
                tokio::select! {
                    next = tokio::time::timeout(LISTENER_CHECK_INTERVAL, notifications.next()) => next,
                    _ = shutdown.cancelled() => return Ok(()),
                }
            };
            match next {
                Ok(Some(notification)) => {
                    let notification = notification?;
                    match parse_payload(&notification.payload) {
                        Some((order_id, version)) => self.spawn_refresh(order_id, Some(version)),
                        None => {
                            tracing::warn!(payload = %notification.payload, "malformed order change ignored")
                        }
                    }
                }
                Ok(None) => {
                    let closed =
                        ConnectionError::BadConnection("listening connection closed".into());
                    return Err(closed.into());
                }
                // Quiet for a while: make sure the connection still works.
                Err(_) => conn.batch_execute("SELECT 1").await?,
            }
        }
    }

    fn refresh_all_watched(&self) {
        let watched: Vec<Uuid> = self.lock().keys().copied().collect();
        for order_id in watched {
            self.spawn_refresh(order_id, None);
        }
    }

    /// Reads off the listener's task, so one slow read does not hold up the
    /// notifications behind it. A failed read is retried while the order is
    /// watched: its watchers must not miss the change.
    fn spawn_refresh(&self, order_id: Uuid, version: Option<i32>) {
        if !self.lock().contains_key(&order_id) {
            return;
        }
        let changes = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::transient();
            while let Err(err) = changes.refresh(order_id, version).await {
                tracing::warn!(%order_id, error = %err, "could not read a changed order, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        });
    }
}

/// Reads `<order_id> <version>`.
fn parse_payload(payload: &str) -> Option<(Uuid, i32)> {
    let (order_id, version) = payload.split_once(' ')?;
    Some((Uuid::parse_str(order_id).ok()?, version.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_an_order_and_a_version() {
        let order_id = Uuid::now_v7();
        assert_eq!(parse_payload(&format!("{order_id} 3")), Some((order_id, 3)));
        assert_eq!(parse_payload("not-a-uuid 3"), None);
        assert_eq!(parse_payload(&format!("{order_id}")), None);
        assert_eq!(parse_payload(&format!("{order_id} x")), None);
    }
}
