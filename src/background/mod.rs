//! Work the server does besides answering calls, one module per task: the
//! database health monitor ([`health`]), the request_id sweeper
//! ([`sweeper`]), the change log's reader and access index
//! ([`change_feed`]), the expiry of pending connections ([`expiry`]) and the
//! webhook deliverer ([`webhooks`]). Each starts as a [`Task`] that runs until it is stopped;
//! the server stops every task, and waits for it, before it closes its pools.

pub mod change_feed;
pub mod expiry;
pub mod health;
pub mod sweeper;
pub mod webhooks;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running background task.
#[derive(Debug)]
pub struct Task {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Task {
    /// Starts `run`, which must return soon after its token is cancelled.
    pub fn start<F, Fut>(run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(stop.clone()));
        Self { stop, handle }
    }

    /// Asks the task to stop and waits until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(err) = self.handle.await {
            tracing::error!(error = %err, "background task failed");
        }
    }
}

/// What a background task has done, observable from outside it.
#[derive(Debug, Default)]
pub struct Activity {
    running: AtomicBool,
    rounds: AtomicU64,
}

impl Activity {
    /// Whether the task is running now (false until it first runs).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// How many rounds of work the task has finished.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Marks the task running until the returned guard is dropped.
    fn start(self: &Arc<Self>) -> Running {
        self.running.store(true, Ordering::SeqCst);
        Running(self.clone())
    }

    /// Counts one finished round.
    fn round_done(&self) {
        self.rounds.fetch_add(1, Ordering::SeqCst);
    }
}

/// Marks an [`Activity`] stopped when dropped, however the task ends.
struct Running(Arc<Activity>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}
