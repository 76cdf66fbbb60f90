//! An owned, named background task that is awaited at most once.
//!
//! A `JoinHandle` panics if it is polled again after it completed, and a front end that
//! `select!`s over several tasks and then winds them all down would otherwise have to remember
//! which ones already finished. [`Task`] remembers for it.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::Instrument;

/// A spawned task, its name, and whether its result was already taken.
#[derive(Debug)]
pub struct Task<T> {
    name: &'static str,
    handle: Option<JoinHandle<T>>,
}

impl Task<()> {
    /// Runs `pass` on `target` every `interval` (the first after one interval) until `stop` is
    /// cancelled or `target` is dropped; `target` is held only during a pass, never while
    /// waiting.
    pub fn every<T: Send + Sync + 'static>(
        name: &'static str,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
        target: &std::sync::Arc<T>,
        pass: impl Fn(&T) + Send + 'static,
    ) -> Self {
        let target = std::sync::Arc::downgrade(target);
        Self::spawn(name, async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stop.cancelled() => break,
                }
                let Some(target) = target.upgrade() else {
                    break;
                };
                pass(&target);
            }
        })
    }
}

impl<T: Send + 'static> Task<T> {
    /// Spawns `future` on the current runtime inside a span named after the task.
    pub fn spawn<F>(name: &'static str, future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let handle = tokio::spawn(future.instrument(tracing::debug_span!("task", name)));
        Self {
            name,
            handle: Some(handle),
        }
    }

    /// Waits for the task's result. Returns `None` if it was taken before or the task panicked
    /// or was aborted (a panic is logged). Pending forever once the result was taken, so it can
    /// sit in a `select!` beside other branches.
    pub async fn join(&mut self) -> Option<T> {
        let Some(handle) = self.handle.as_mut() else {
            return std::future::pending().await;
        };
        let result = handle.await;
        self.handle = None;
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(task = self.name, "task panicked");
                }
                None
            }
        }
    }

    /// Waits at most `limit` for the task; aborts it if it is not done by then.
    pub async fn join_within(&mut self, limit: Duration) -> Option<T> {
        self.handle.as_ref()?;
        if let Ok(result) = tokio::time::timeout(limit, self.join()).await {
            return result;
        }
        tracing::debug!(
            task = self.name,
            ?limit,
            "task did not finish in time; aborting it"
        );
        self.abort();
        None
    }

    /// Stops the task (dropping whatever it owns) and forgets it.
    pub fn abort(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn joins_once_then_stays_pending() {
        let mut task = Task::spawn("t", async { 5 });
        assert_eq!(task.join().await, Some(5));
        let again = tokio::time::timeout(Duration::from_millis(10), task.join()).await;
        assert!(again.is_err(), "a taken task must stay pending, not panic");
        assert_eq!(task.join_within(Duration::from_millis(1)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn join_within_aborts_a_slow_task() {
        let mut task = Task::spawn("slow", std::future::pending::<()>());
        assert_eq!(task.join_within(Duration::from_secs(1)).await, None);
        assert!(task.handle.is_none());
    }
}
