//! Whether each partition's consumer makes progress. A partition with
//! records waiting (the log's high watermark is past the stored position)
//! that has committed nothing for the stall time is stalled, and the service
//! reports NOT_SERVING until it moves again: health must not say SERVING
//! while one record or one slow dependency holds a partition.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// One partition's latest facts.
#[derive(Debug)]
struct PartitionState {
    next_offset: i64,
    high_watermark: i64,
    /// The last commit, or the last time the partition had nothing waiting.
    last_progress: Instant,
    /// The position is past the log's end: nothing moves until it catches
    /// up, which counts as a stall too.
    behind: bool,
    last_error: Option<String>,
    /// The last commit, or when this instance took the partition.
    last_commit: Instant,
    /// The epoch of the lease this instance holds on the partition.
    epoch: Option<i64>,
}

/// A partition's figures for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: i32,
    /// Records past the stored position, as of the last fetch.
    pub lag: i64,
    pub since_commit: Duration,
    pub epoch: Option<i64>,
}

/// The progress of one partition, updated by its consumer task.
#[derive(Debug)]
pub struct PartitionProgress {
    state: Mutex<PartitionState>,
}

impl PartitionProgress {
    fn new() -> Self {
        Self {
            state: Mutex::new(PartitionState {
                next_offset: 0,
                high_watermark: 0,
                last_progress: Instant::now(),
                behind: false,
                last_error: None,
                last_commit: Instant::now(),
                epoch: None,
            }),
        }
    }

    fn update(&self, change: impl FnOnce(&mut PartitionState)) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut state);
    }

    /// A fetch at `next_offset` answered, with the log's high watermark.
    pub fn fetched(&self, next_offset: i64, high_watermark: i64) {
        self.update(|state| {
            state.next_offset = next_offset;
            state.high_watermark = high_watermark;
            state.behind = high_watermark < next_offset;
            if high_watermark == next_offset {
                state.last_progress = Instant::now();
                state.last_error = None;
            }
        });
    }

    /// A batch committed; the partition now resumes at `next_offset`.
    pub fn committed(&self, next_offset: i64) {
        self.update(|state| {
            state.next_offset = next_offset;
            state.last_progress = Instant::now();
            state.behind = false;
            state.last_error = None;
            state.last_commit = state.last_progress;
        });
    }

    /// This instance consumes the partition under a lease of `epoch`.
    pub fn leased(&self, epoch: i64) {
        self.update(|state| state.epoch = Some(epoch));
    }

    /// Something failed; kept to say why the partition does not move.
    pub fn failed(&self, error: impl ToString) {
        let error = error.to_string();
        self.update(|state| state.last_error = Some(error));
    }
}

/// The progress of every partition a service consumes.
#[derive(Debug, Default)]
pub struct ConsumerProgress {
    partitions: Mutex<BTreeMap<(String, i32), Arc<PartitionProgress>>>,
}

impl ConsumerProgress {
    /// The partition's progress, registered on first use.
    pub fn partition(&self, topic: &str, partition: i32) -> Arc<PartitionProgress> {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(
            partitions
                .entry((topic.to_owned(), partition))
                .or_insert_with(|| Arc::new(PartitionProgress::new())),
        )
    }

    /// Stops watching a partition this instance no longer consumes; taken
    /// again, it starts afresh.
    pub fn forget(&self, topic: &str, partition: i32) {
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&(topic.to_owned(), partition));
    }

    /// Every partition's figures, for the metrics.
    pub fn snapshot(&self) -> Vec<PartitionSnapshot> {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        partitions
            .iter()
            .map(|((topic, partition), progress)| {
                let state = progress
                    .state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                PartitionSnapshot {
                    topic: topic.clone(),
                    partition: *partition,
                    lag: (state.high_watermark - state.next_offset).max(0),
                    since_commit: state.last_commit.elapsed(),
                    epoch: state.epoch,
                }
            })
            .collect()
    }

    /// `Err` describing every partition with records waiting that has not
    /// moved for `stall_after`.
    pub fn check(&self, stall_after: Duration) -> Result<(), String> {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let stalled: Vec<String> = partitions
            .iter()
            .filter_map(|((topic, partition), progress)| {
                let state = progress.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let waiting = state.high_watermark - state.next_offset;
                let idle = state.last_progress.elapsed();
                if idle < stall_after {
                    return None;
                }
                if state.behind {
                    return Some(format!(
                        "{topic}/{partition} is at offset {}, past the log's end ({}), for {}s",
                        state.next_offset,
                        state.high_watermark,
                        idle.as_secs()
                    ));
                }
                (waiting > 0).then(|| {
                    format!(
                        "{topic}/{partition} has {waiting} records waiting at offset {} and no commit for {}s (last error: {})",
                        state.next_offset,
                        idle.as_secs(),
                        state.last_error.as_deref().unwrap_or("none")
                    )
                })
            })
            .collect();
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(format!("stalled: {}", stalled.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_partition_with_records_waiting_and_no_commit_stalls() {
        let progress = ConsumerProgress::default();
        let partition = progress.partition("orders", 3);
        partition.fetched(10, 12);
        partition.failed("database refused");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(progress.check(Duration::from_secs(60)).is_ok());
        tokio::time::advance(Duration::from_secs(2)).await;
        let why = progress.check(Duration::from_secs(60)).unwrap_err();
        assert!(
            why.contains("orders/3") && why.contains("database refused"),
            "{why}"
        );
        partition.committed(12);
        assert!(progress.check(Duration::from_secs(60)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_position_past_the_logs_end_stalls_until_the_log_catches_up() {
        let progress = ConsumerProgress::default();
        let partition = progress.partition("orders", 1);
        partition.fetched(5, 5);
        partition.fetched(5, 2);
        tokio::time::advance(Duration::from_secs(61)).await;
        partition.fetched(5, 2);
        let why = progress.check(Duration::from_secs(60)).unwrap_err();
        assert!(why.contains("past the log's end"), "{why}");
        partition.fetched(5, 5);
        assert!(progress.check(Duration::from_secs(60)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_gives_lag_time_since_commit_and_lease() {
        let progress = ConsumerProgress::default();
        let partition = progress.partition("orders", 2);
        partition.leased(7);
        partition.fetched(10, 15);
        tokio::time::advance(Duration::from_secs(3)).await;
        let snapshot = |lag, secs| PartitionSnapshot {
            topic: "orders".into(),
            partition: 2,
            lag,
            since_commit: Duration::from_secs(secs),
            epoch: Some(7),
        };
        assert_eq!(progress.snapshot(), [snapshot(5, 3)]);
        partition.committed(15);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(progress.snapshot(), [snapshot(0, 1)]);
        // Past the log's end is no negative lag.
        partition.fetched(15, 12);
        assert_eq!(progress.snapshot()[0].lag, 0);
        progress.forget("orders", 2);
        assert!(progress.snapshot().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_partition_never_stalls() {
        let progress = ConsumerProgress::default();
        let partition = progress.partition("orders", 0);
        partition.fetched(5, 5);
        tokio::time::advance(Duration::from_secs(3_600)).await;
        partition.fetched(5, 5);
        assert!(progress.check(Duration::from_secs(60)).is_ok());
    }
}
