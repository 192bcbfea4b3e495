//! Capped exponential backoff for transient failures (database or broker
//! down): wait longer after each failure, never longer than the cap.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            next: initial,
            initial,
            max,
        }
    }

    /// The backoff used around broker and database calls.
    pub fn transient() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_secs(2))
    }

    /// Returns how long to wait now and doubles the next wait, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Calls `attempt` until it succeeds, backing off between failures and
/// logging each; returns `None` if `shutdown` comes first.
pub async fn retry_until_ok<T, F, Fut>(
    what: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(err) => tracing::warn!(error = format!("{err:#}"), "waiting for {what}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        let delays: Vec<_> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [10, 20, 35, 35]);
        backoff.reset();
        assert_eq!(backoff.next_delay().as_millis(), 10);
    }
}
