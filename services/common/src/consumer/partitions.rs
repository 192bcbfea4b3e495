//! Which partitions this instance consumes: those it holds a lease on (see
//! `membership`). Every renewal interval it renews its membership and
//! leases, takes its fair share of what is free, and hands back what is
//! beyond its share; a partition task runs for each lease held, and stops
//! when the lease is lost or handed back. Topic metadata is read again
//! periodically, so partitions added to a topic get leases without a
//! restart, and a topic missing from one metadata answer keeps its
//! partitions rather than losing their consumers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rskafka::client::partition::UnknownTopicHandling;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Consumer, EventHandler, Fence, Grant};
use crate::db::DbError;
use crate::membership::Round;
use crate::outbox;
use crate::supervisor::{TaskHealth, supervise};

/// How often topic metadata is read again.
const METADATA_REFRESH: Duration = Duration::from_secs(10);
/// How soon metadata is asked again when a consumed topic is missing from it.
const MISSING_TOPIC_RETRY: Duration = Duration::from_secs(1);
/// The longest a partition being handed back waits for the relay.
const HANDBACK_DRAIN_LIMIT: Duration = Duration::from_secs(5);

type Key = (String, i32);

/// A partition task and the lease it runs under.
struct Running {
    epoch: i64,
    deadline: watch::Sender<Instant>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The partitions being handed back, not to be counted or started again
/// until their lease is released.
type Releasing = Arc<Mutex<BTreeSet<Key>>>;

impl<H: EventHandler> Consumer<H> {
    /// Consumes this instance's share of the partitions of `topics` until
    /// `shutdown`, then waits for each partition task to commit the batch in
    /// hand and stop. The leases are kept: `Membership::leave` hands them
    /// back once the relay has published what the batches wrote.
    pub async fn run(
        self,
        topics: Vec<String>,
        tasks: Arc<TaskHealth>,
        shutdown: CancellationToken,
    ) {
        let this = Arc::new(self);
        let membership = Arc::clone(&this.membership);
        let mut running: BTreeMap<Key, Running> = BTreeMap::new();
        let releasing: Releasing = Arc::default();
        let mut releases = JoinSet::new();
        let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        let mut next_metadata = Instant::now();
        let mut fresh_start = true;
        loop {
            if Instant::now() >= next_metadata {
                // Bounded, so a slow broker never delays the renewal.
                let renew_every = membership.config.renew_every;
                let read = this.read_partitions(&topics, &mut partitions);
                next_metadata = Instant::now()
                    + tokio::time::timeout(renew_every, read)
                        .await
                        .unwrap_or_else(|_| {
                            tracing::warn!("topic metadata did not come in time, asking again");
                            MISSING_TOPIC_RETRY
                        });
            }
            // Leases a previous process with this id held are released and
            // taken afresh, under new epochs.
            if fresh_start {
                match membership.release_all().await {
                    Ok(()) => fresh_start = false,
                    Err(err) => tracing::warn!(error = %err, "cannot reach the leases yet"),
                }
            }
            if !fresh_start {
                let listed: Vec<Key> = partitions
                    .iter()
                    .flat_map(|(topic, ids)| ids.iter().map(|id| (topic.clone(), *id)))
                    .collect();
                let handing_back = lock(&releasing).clone();
                match membership.round(&listed, &handing_back).await {
                    Ok((round, deadline)) => {
                        if !round.acquired.is_empty() {
                            this.adopt_outbox().await;
                        }
                        this.reconcile(
                            round,
                            deadline,
                            &mut running,
                            &releasing,
                            &mut releases,
                            &tasks,
                            &shutdown,
                        )
                    }
                    // The tasks pause at their deadlines meanwhile.
                    Err(err) => tracing::warn!(error = %err, "cannot renew leases"),
                }
            }
            running.retain(|(topic, partition), partition_task| {
                let ended = partition_task.stop.is_cancelled() && partition_task.task.is_finished();
                if ended {
                    this.stats.progress.forget(topic, *partition);
                }
                !ended
            });
            tokio::select! {
                _ = tokio::time::sleep(membership.config.renew_every) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        for partition_task in running.into_values() {
            let _ = partition_task.task.await;
        }
        while releases.join_next().await.is_some() {}
    }

    /// Reads the partitions of `topics`, keeping what is known of a topic
    /// missing from the answer; returns when to read them again.
    async fn read_partitions(
        &self,
        topics: &[String],
        partitions: &mut BTreeMap<String, Vec<i32>>,
    ) -> Duration {
        let listed = match self.client.list_topics().await {
            Ok(listed) => listed,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read topic metadata, asking again");
                return MISSING_TOPIC_RETRY;
            }
        };
        let mut missing = Vec::new();
        for topic in topics {
            match listed.iter().find(|t| &t.name == topic) {
                Some(metadata) => {
                    let mut ids: Vec<i32> = metadata.partitions.iter().copied().collect();
                    ids.sort_unstable();
                    let known = partitions.insert(topic.clone(), ids.clone());
                    if let Some(known) = known.filter(|known| known.len() < ids.len()) {
                        tracing::info!(%topic, from = known.len(), to = ids.len(), "the topic has new partitions");
                    }
                }
                None => missing.push(topic.as_str()),
            }
        }
        if missing.is_empty() {
            METADATA_REFRESH
        } else {
            tracing::warn!(topics = ?missing, "consumed topics missing from the broker's metadata, asking again");
            MISSING_TOPIC_RETRY
        }
    }

    /// Brings the partition tasks in line with the leases held after a
    /// round: renewed ones get the new deadline, lost ones stop, ones beyond
    /// the share stop and are released, and new ones start.
    #[allow(clippy::too_many_arguments)]
    fn reconcile(
        self: &Arc<Self>,
        round: Round,
        deadline: Instant,
        running: &mut BTreeMap<Key, Running>,
        releasing: &Releasing,
        releases: &mut JoinSet<()>,
        tasks: &Arc<TaskHealth>,
        shutdown: &CancellationToken,
    ) {
        let instance = self.membership.instance_id();
        let members = round.members;
        let held: BTreeMap<Key, i64> = round
            .held
            .iter()
            .map(|lease| ((lease.topic.clone(), lease.partition), lease.epoch))
            .collect();
        running.retain(|(topic, partition), partition_task| {
            if held.get(&(topic.clone(), *partition)) == Some(&partition_task.epoch) {
                let _ = partition_task.deadline.send(deadline);
                return true;
            }
            if !partition_task.stop.is_cancelled() {
                tracing::warn!(
                    instance, %topic, partition, epoch = partition_task.epoch,
                    "partition lease lost (expired or taken over): consumer stopped"
                );
                partition_task.stop.cancel();
            }
            self.stats.progress.forget(topic, *partition);
            false
        });
        for (topic, partition) in round.give_up {
            let key = (topic.clone(), partition);
            let Some(&epoch) = held.get(&key) else {
                continue;
            };
            tracing::info!(
                instance, %topic, partition, epoch, members,
                "handing a partition back: more than this instance's share"
            );
            let stopped = running.remove(&key).map(|partition_task| {
                partition_task.stop.cancel();
                partition_task.task
            });
            lock(releasing).insert(key.clone());
            let (this, releasing) = (Arc::clone(self), Arc::clone(releasing));
            releases.spawn(async move {
                if let Some(task) = stopped {
                    let _ = task.await;
                }
                this.stats.progress.forget(&key.0, key.1);
                this.wait_for_relay().await;
                // If this fails the lease expires instead.
                if let Err(err) = this.membership.release(&key.0, key.1, epoch).await {
                    tracing::warn!(topic = %key.0, partition = key.1, error = %err, "cannot release a lease");
                }
                lock(&releasing).remove(&key);
            });
        }
        let handing_back = lock(releasing).clone();
        for ((topic, partition), epoch) in held {
            let key = (topic.clone(), partition);
            if running.contains_key(&key) || handing_back.contains(&key) {
                continue;
            }
            tracing::info!(instance, %topic, partition, epoch, members, "partition lease taken: consuming");
            let stop = shutdown.child_token();
            let (deadline_tx, deadline_rx) = watch::channel(deadline);
            let grant = Grant {
                fence: Fence {
                    owner: Arc::from(instance),
                    epoch,
                },
                deadline: deadline_rx,
            };
            let task = tokio::spawn(Arc::clone(self).supervise_partition(
                topic,
                partition,
                grant,
                Arc::clone(tasks),
                stop.clone(),
            ));
            running.insert(
                key,
                Running {
                    epoch,
                    deadline: deadline_tx,
                    stop,
                    task,
                },
            );
        }
    }

    /// Takes over the outbox rows of instances that are gone before
    /// consuming partitions taken from them, so that their events, older,
    /// go out before any this instance writes for the same orders.
    async fn adopt_outbox(&self) {
        let adopted = async {
            let mut conn = self.pool.get().await?;
            Ok::<_, DbError>(outbox::adopt_orphans(&mut conn, self.membership.instance_id()).await?)
        };
        match adopted.await {
            Ok(0) => {}
            Ok(rows) => {
                tracing::info!(
                    instance = self.membership.instance_id(),
                    rows,
                    "adopted outbox rows of instances that are gone"
                );
                self.relay_wakeup.notify_one();
            }
            Err(err) => tracing::warn!(error = %err, "cannot adopt outbox rows"),
        }
    }

    /// Waits, up to `HANDBACK_DRAIN_LIMIT`, until this instance's relay has
    /// published what its outbox holds now, so that the next owner's events
    /// for the same orders never overtake them.
    async fn wait_for_relay(&self) {
        let instance = self.membership.instance_id();
        let drained = async {
            let newest = {
                let mut conn = self.pool.get().await?;
                outbox::newest_of(&mut conn, instance).await?
            };
            let Some(newest) = newest else {
                return Ok::<_, DbError>(());
            };
            self.relay_wakeup.notify_one();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut conn = self.pool.get().await?;
                if !outbox::waits_up_to(&mut conn, instance, newest).await? {
                    return Ok(());
                }
            }
        };
        match tokio::time::timeout(HANDBACK_DRAIN_LIMIT, drained).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "cannot see whether the outbox drained"),
            Err(_) => tracing::warn!("the outbox did not drain before a partition was handed back"),
        }
    }

    async fn supervise_partition(
        self: Arc<Self>,
        topic: String,
        partition: i32,
        grant: Grant,
        tasks: Arc<TaskHealth>,
        stop: CancellationToken,
    ) {
        let name = format!("consumer of {topic}/{partition}");
        let start = || {
            let this = Arc::clone(&self);
            let (topic, grant, stop) = (topic.clone(), grant.clone(), stop.clone());
            async move {
                let client = match this
                    .client
                    .partition_client(topic.clone(), partition, UnknownTopicHandling::Retry)
                    .await
                {
                    Ok(client) => client,
                    Err(err) => {
                        tracing::warn!(%topic, partition, error = %err, "cannot open the partition");
                        return;
                    }
                };
                this.consume_partition(client, grant, stop).await;
            }
        };
        supervise(name, tasks, stop.clone(), start).await;
    }
}

fn lock(releasing: &Releasing) -> std::sync::MutexGuard<'_, BTreeSet<Key>> {
    releasing
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
