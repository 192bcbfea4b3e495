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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    watched: Registry,
}

/// One channel per watched order, present exactly while the order has a
/// watcher: the first subscription creates it and the last one to end
/// removes it.
#[derive(Clone, Default)]
struct Registry(Arc<Mutex<HashMap<Uuid, Latest>>>);

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Latest>> {
        // The map stays consistent even if a holder panicked: every
        // operation on it is a single insert, remove or lookup.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn join(&self, order_id: Uuid) -> Subscription {
        let latest = self
            .lock()
            .entry(order_id)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        Subscription {
            order_id,
            registry: self.clone(),
            latest: Some(latest),
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// One watcher's interest in one order; it ends when this is dropped.
pub struct Subscription {
    order_id: Uuid,
    registry: Registry,
    /// Taken only by `drop`, which releases it under the registry's lock.
    latest: Option<watch::Receiver<Option<Arc<Snapshot>>>>,
}

impl Subscription {
    /// The order's newest snapshot, as the channel's receiving end.
    pub fn latest(&mut self) -> &mut watch::Receiver<Option<Arc<Snapshot>>> {
        self.latest
            .as_mut()
            .expect("the receiver is taken only when the subscription drops")
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watched = self.registry.lock();
        // The receiver goes while the lock is held, so the count is exact:
        // of two watchers ending together, the second to take the lock sees
        // the first one gone and removes the entry. Counting before the
        // receiver is gone let each of them see the other and keep it.
        drop(self.latest.take());
        if watched
            .get(&self.order_id)
            .is_some_and(|latest| latest.receiver_count() == 0)
        {
            watched.remove(&self.order_id);
        }
    }
}

impl OrderChanges {
    pub fn new(pool: DbPool) -> Self {
        Self {
            pool,
            watched: Registry::default(),
        }
    }

    /// Starts following `order_id` and reads its current state, so the
    /// subscription holds it (or `None` while the order is not recorded).
    /// Subscribing before reading means no change can fall in between.
    pub async fn subscribe(&self, order_id: Uuid) -> Result<Subscription, DbError> {
        let subscription = self.watched.join(order_id);
        self.refresh(order_id, None).await?;
        Ok(subscription)
    }

    /// The number of orders with at least one watcher in this process.
    pub fn watched_orders(&self) -> usize {
        self.watched.len()
    }

    /// Reads a watched order from the database and offers it to its
    /// watchers, unless they already hold `version` or newer. Without a
    /// version (a new watcher, a reconnected listener) it always reads.
    async fn refresh(&self, order_id: Uuid, version: Option<i32>) -> Result<(), DbError> {
        let Some(latest) = self.watched.lock().get(&order_id).cloned() else {
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
        let watched: Vec<Uuid> = self.watched.lock().keys().copied().collect();
        for order_id in watched {
            self.spawn_refresh(order_id, None);
        }
    }

    /// Reads off the listener's task, so one slow read does not hold up the
    /// notifications behind it. A failed read is retried while the order is
    /// watched: its watchers must not miss the change.
    fn spawn_refresh(&self, order_id: Uuid, version: Option<i32>) {
        if !self.watched.lock().contains_key(&order_id) {
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn an_order_is_forgotten_when_its_last_watcher_ends() {
        let registry = Registry::default();
        let order_id = Uuid::now_v7();
        let first = registry.join(order_id);
        let second = registry.join(order_id);
        drop(first);
        assert_eq!(registry.len(), 1, "one watcher is left");
        drop(second);
        assert_eq!(registry.len(), 0);
        let _again = registry.join(order_id);
        assert_eq!(registry.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn no_order_stays_watched_when_its_watchers_end_at_the_same_moment() {
        const ORDERS: usize = 200;
        const WATCHERS: usize = 2;
        // The window is a few instructions wide, so the test makes many
        // attempts: with the count taken before the receiver was dropped,
        // a few in a thousand pairs leaked.
        const ROUNDS: usize = 50;
        let registry = Registry::default();
        for round in 0..ROUNDS {
            let order_ids: Vec<Uuid> = (0..ORDERS).map(|_| Uuid::now_v7()).collect();
            let step = Arc::new(AtomicUsize::new(0));
            let enders: Vec<_> = (0..WATCHERS)
                .map(|_| {
                    let subscriptions: Vec<Subscription> =
                        order_ids.iter().map(|&id| registry.join(id)).collect();
                    let step = Arc::clone(&step);
                    tokio::task::spawn_blocking(move || {
                        end_in_step(subscriptions, &step, WATCHERS);
                    })
                })
                .collect();
            for ender in enders {
                ender.await.expect("an ender panicked");
            }
            assert_eq!(registry.len(), 0, "entries left in round {round}");
        }
    }

    /// Drops one subscription per order, in order, and waits before each
    /// drop until all `enders` have reached it, so that every watcher of an
    /// order ends at the same moment. A task handoff would take far longer
    /// than the race it is meant to provoke, hence the spinning.
    fn end_in_step(subscriptions: Vec<Subscription>, step: &AtomicUsize, enders: usize) {
        for (index, subscription) in subscriptions.into_iter().enumerate() {
            step.fetch_add(1, Ordering::AcqRel);
            let mut spins = 0_u32;
            while step.load(Ordering::Acquire) < (index + 1) * enders {
                // Yields after a while, in case the other enders have no core.
                if spins < 1_000 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    std::thread::yield_now();
                }
            }
            drop(subscription);
        }
    }

    #[test]
    fn payloads_name_an_order_and_a_version() {
        let order_id = Uuid::now_v7();
        assert_eq!(parse_payload(&format!("{order_id} 3")), Some((order_id, 3)));
        assert_eq!(parse_payload("not-a-uuid 3"), None);
        assert_eq!(parse_payload(&format!("{order_id}")), None);
        assert_eq!(parse_payload(&format!("{order_id} x")), None);
    }
}
