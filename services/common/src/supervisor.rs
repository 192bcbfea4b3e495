//! Background tasks that must not die quietly: a partition consumer or the
//! relay that panics or returns before shutdown is logged, reported as down
//! (the service is NOT_SERVING meanwhile) and started again with backoff.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;

/// Which supervised tasks are down, and why.
#[derive(Debug, Default)]
pub struct TaskHealth {
    down: Mutex<BTreeMap<String, String>>,
    restarts: AtomicU64,
}

impl TaskHealth {
    /// `Err` naming every task that is down.
    pub fn check(&self) -> Result<(), String> {
        let down = self
            .down
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if down.is_empty() {
            return Ok(());
        }
        let tasks: Vec<String> = down
            .iter()
            .map(|(name, why)| format!("{name} ({why})"))
            .collect();
        Err(format!("task down: {}", tasks.join(", ")))
    }

    /// How many times a task was started again.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    fn set_down(&self, name: &str, why: Option<String>) {
        let mut down = self
            .down
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match why {
            Some(why) => down.insert(name.to_owned(), why),
            None => down.remove(name),
        };
    }
}

/// Runs the task `start` makes until `shutdown`, starting it again whenever
/// it ends before that.
pub async fn supervise<F, Fut>(
    name: String,
    health: Arc<TaskHealth>,
    shutdown: CancellationToken,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::transient();
    loop {
        let ended = tokio::spawn(start()).await;
        if shutdown.is_cancelled() {
            return;
        }
        let why = match ended {
            Err(err) if err.is_panic() => "panicked".to_owned(),
            Err(err) => format!("was cancelled: {err}"),
            Ok(()) => "stopped".to_owned(),
        };
        tracing::error!(task = %name, reason = %why, "background task ended; starting it again");
        health.set_down(&name, Some(why));
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return,
        }
        health.restarts.fetch_add(1, Ordering::Relaxed);
        health.set_down(&name, None);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_reported_down_then_started_again() {
        let health = Arc::new(TaskHealth::default());
        let runs = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let start = {
            let (runs, shutdown) = (Arc::clone(&runs), shutdown.clone());
            move || {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                let shutdown = shutdown.clone();
                async move {
                    assert!(run > 0, "the first run fails");
                    shutdown.cancelled().await;
                }
            }
        };
        let supervisor = tokio::spawn(supervise(
            "flaky".to_owned(),
            Arc::clone(&health),
            shutdown.clone(),
            start,
        ));
        // Inside the first backoff (50 ms): down, and saying why.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let why = health.check().unwrap_err();
        assert!(why.contains("flaky") && why.contains("panicked"), "{why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(health.check(), Ok(()));
        assert_eq!((health.restarts(), runs.load(Ordering::SeqCst)), (1, 2));
        shutdown.cancel();
        supervisor.await.expect("supervisor");
    }
}
