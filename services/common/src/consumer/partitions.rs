//! Which partitions run: one supervised task per partition of every
//! consumed topic. Topic metadata is read again periodically, so partitions
//! added to a topic are consumed without a restart, and a topic missing
//! from one metadata answer is asked for again rather than given no
//! consumers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::UnknownTopicHandling;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Consumer, EventHandler};
use crate::supervisor::{TaskHealth, supervise};

/// How often topic metadata is read again.
const METADATA_REFRESH: Duration = Duration::from_secs(10);
/// How soon metadata is asked again when a consumed topic is missing from it.
const MISSING_TOPIC_RETRY: Duration = Duration::from_secs(1);

impl<H: EventHandler> Consumer<H> {
    /// Consumes every partition of `topics` until `shutdown`, then waits for
    /// each partition task to commit the batch in hand and stop.
    pub async fn run(
        self,
        topics: Vec<String>,
        tasks: Arc<TaskHealth>,
        shutdown: CancellationToken,
    ) {
        let this = Arc::new(self);
        let mut running: BTreeSet<(String, i32)> = BTreeSet::new();
        let mut supervisors = JoinSet::new();
        let mut first_look = true;
        loop {
            let next_look = match this.client.list_topics().await {
                Ok(listed) => {
                    let mut missing = Vec::new();
                    for topic in &topics {
                        let Some(metadata) = listed.iter().find(|t| &t.name == topic) else {
                            missing.push(topic.as_str());
                            continue;
                        };
                        for &partition in &metadata.partitions {
                            if running.insert((topic.clone(), partition)) {
                                if !first_look {
                                    tracing::info!(%topic, partition, "consuming a partition added to the topic");
                                }
                                supervisors.spawn(Arc::clone(&this).supervise_partition(
                                    topic.clone(),
                                    partition,
                                    Arc::clone(&tasks),
                                    shutdown.clone(),
                                ));
                            }
                        }
                    }
                    first_look = false;
                    if missing.is_empty() {
                        METADATA_REFRESH
                    } else {
                        tracing::warn!(topics = ?missing, "consumed topics missing from the broker's metadata, asking again");
                        MISSING_TOPIC_RETRY
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read topic metadata, asking again");
                    MISSING_TOPIC_RETRY
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(next_look) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        supervisors.join_all().await;
    }

    async fn supervise_partition(
        self: Arc<Self>,
        topic: String,
        partition: i32,
        tasks: Arc<TaskHealth>,
        shutdown: CancellationToken,
    ) {
        let name = format!("consumer of {topic}/{partition}");
        let start = || {
            let this = Arc::clone(&self);
            let (topic, shutdown) = (topic.clone(), shutdown.clone());
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
                this.consume_partition(client, shutdown).await;
            }
        };
        supervise(name, tasks, shutdown.clone(), start).await;
    }
}
