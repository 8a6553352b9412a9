//! One stop signal for every background task of a process.
//!
//! Membership keep-alives, the placement-leader campaign, catalog and
//! membership watches, the session sweeper and summary jobs all run in the
//! background. Each is spawned through a [`Shutdown`] (cloned into whoever
//! spawns), so on SIGTERM the binary can signal all of them at once and wait
//! until they have returned, instead of leaving detached tasks racing the exit
//! (tokio mini-redis's `Shutdown` is the model). It sits in this crate because
//! the node and the coordinator both need it and neither may depend on the other.
//! A task is dropped at its next await once the signal is given, so anything it
//! must not leave half done (a sled write) has to be a single awaited call.
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// See the module documentation. Clones share the signal and the task set.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A signal nobody has given yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` in the background until it finishes or the signal is given,
    /// whichever comes first; [`Shutdown::stop`] waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tasks.spawn(async move {
            token.run_until_cancelled_owned(task).await;
        });
    }

    /// Whether the signal was given (for loops that check between steps).
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the signal is given (for tasks that clean up before returning).
    pub async fn stopping(&self) {
        self.token.cancelled().await
    }

    /// Gives the signal and waits up to `grace` for every spawned task to return;
    /// false when some were still running at the deadline.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_cancels_waiting_tasks_and_waits_for_running_ones() {
        let shutdown = Shutdown::new();
        let finished = Arc::new(AtomicBool::new(false));
        shutdown.spawn(std::future::pending());
        let f = finished.clone();
        shutdown.spawn(async move { f.store(true, Ordering::SeqCst) });
        tokio::task::yield_now().await;
        assert!(!shutdown.is_stopping());
        assert!(shutdown.stop(Duration::from_secs(5)).await, "a pending task must be cancelled, not waited for");
        assert!(shutdown.is_stopping());
        assert!(finished.load(Ordering::SeqCst), "spawned tasks run");
    }
}
