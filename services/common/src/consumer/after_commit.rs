//! Effects a handler wants only once its batch commits, such as counting
//! an order that reached its final status: a batch whose transaction rolls
//! back and is retried would otherwise count it twice.
//!
//! The consumer loop opens a scope around each commit; `after_commit`
//! queues an effect in it. Work rolled back (the whole batch, or one
//! record's savepoint) drops what it queued, and the effects left run once
//! the transaction commits.

use std::cell::RefCell;
use std::future::Future;

type Effect = Box<dyn FnOnce() + Send>;

tokio::task_local! {
    static QUEUED: RefCell<Vec<Effect>>;
}

/// Runs `effect` once the batch being applied commits, never if it rolls
/// back. Called outside a batch (a handler's own test), it runs at once.
pub fn after_commit(effect: impl FnOnce() + Send + 'static) {
    let mut effect = Some(effect);
    let _ = QUEUED.try_with(|queued| {
        if let Some(effect) = effect.take() {
            queued.borrow_mut().push(Box::new(effect));
        }
    });
    if let Some(effect) = effect {
        effect();
    }
}

/// How many effects are queued: undo back to it with `roll_back_to`.
pub(super) fn mark() -> usize {
    QUEUED.try_with(|queued| queued.borrow().len()).unwrap_or(0)
}

/// Drops the effects queued since `mark`: their work was rolled back.
pub(super) fn roll_back_to(mark: usize) {
    let _ = QUEUED.try_with(|queued| queued.borrow_mut().truncate(mark));
}

/// Runs `commit` in a scope of its own, then the effects it left queued
/// if it succeeded.
pub(super) async fn run_after<T, E>(commit: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let (result, effects) = QUEUED
        .scope(RefCell::new(Vec::new()), async {
            let result = commit.await;
            (result, QUEUED.with(RefCell::take))
        })
        .await;
    if result.is_ok() {
        for effect in effects {
            effect();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn counting() -> (Arc<AtomicU32>, impl Fn() -> Box<dyn FnOnce() + Send>) {
        let count = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&count);
        let effect = move || {
            let counter = Arc::clone(&counter);
            Box::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            }) as Box<dyn FnOnce() + Send>
        };
        (count, effect)
    }

    #[tokio::test]
    async fn effects_run_once_their_commit_succeeds_and_not_before() {
        let (count, effect) = counting();
        let committed = run_after(async {
            after_commit(effect());
            after_commit(effect());
            assert_eq!(count.load(Ordering::Relaxed), 0, "not before the commit");
            Ok::<_, ()>(())
        })
        .await;
        assert!(committed.is_ok());
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_failed_commit_or_a_rolled_back_savepoint_drops_its_effects() {
        let (count, effect) = counting();
        let failed = run_after(async {
            after_commit(effect());
            Err::<(), _>("rolled back")
        })
        .await;
        assert!(failed.is_err());
        assert_eq!(count.load(Ordering::Relaxed), 0);
        let committed = run_after(async {
            after_commit(effect());
            let savepoint = mark();
            after_commit(effect());
            roll_back_to(savepoint);
            Ok::<_, ()>(())
        })
        .await;
        assert!(committed.is_ok());
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn outside_a_batch_an_effect_runs_at_once() {
        let (count, effect) = counting();
        after_commit(effect());
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }
}
