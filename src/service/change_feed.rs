//! The change feed: each replica follows the change log and hands what it
//! reads to the watches open on it.
//!
//! One follower per process reads the log up to its horizon (see
//! `entity::connection_event`) whenever a write of this process commits, and
//! at least every poll interval for the writes of other replicas and
//! processes. What it reads is published as a [`Batch`]: the entries from the
//! previous horizon up to the new one. A watch first catches up from the
//! database to the horizon of the last batch, then follows the batches; so it
//! sees every event once, in log order, whichever replica it is on.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Mutex, Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::{
    db::Reader,
    entity::connection_event::{self, LogEntry},
};

/// Entries read from the log at once, and at most in one batch.
pub const LOG_PAGE: u64 = 256;

/// Batches a watch may fall behind the follower before it is ended as too
/// slow.
pub const WATCH_BUFFER: usize = 1024;

/// The log entries between two horizons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The horizon before these entries.
    pub from: i64,
    /// The horizon after them: every entry below it has been published.
    pub horizon: i64,
    /// The entries, in log order.
    pub entries: Vec<LogEntry>,
}

/// What the follower has published so far.
#[derive(Debug)]
struct Published {
    /// The horizon of the last batch (the next one starts there).
    horizon: i64,
    sender: broadcast::Sender<Arc<Batch>>,
}

/// The change feed of one process. Clones share it.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    reader: Reader,
    published: Arc<Mutex<Option<Published>>>,
    /// The horizon of the last batch, for metrics.
    head: Arc<AtomicI64>,
    wake: Arc<Notify>,
}

/// A watch's place in the feed: the horizon to catch up to from the database,
/// and the batches published after it.
#[derive(Debug)]
pub struct Subscription {
    /// Entries below this are read from the database; from it on they come
    /// in `batches`.
    pub horizon: i64,
    /// Every batch published after `horizon`.
    pub batches: broadcast::Receiver<Arc<Batch>>,
}

impl ChangeFeed {
    /// A feed of the log read through `reader`; it publishes nothing until
    /// [`follow`](Self::follow) runs.
    pub fn new(reader: Reader) -> Self {
        Self {
            reader,
            published: Arc::new(Mutex::new(None)),
            head: Arc::new(AtomicI64::new(i64::MIN)),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The horizon of the log this process has read so far.
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Relaxed)
    }

    /// Tells the follower that a write of this process committed.
    pub fn committed(&self) {
        self.wake.notify_one();
    }

    /// Subscribes to the batches published from now on; `None` until the
    /// follower has read the log's horizon once.
    pub async fn subscribe(&self) -> Option<Subscription> {
        let published = self.published.lock().await;
        published.as_ref().map(|published| Subscription {
            horizon: published.horizon,
            batches: published.sender.subscribe(),
        })
    }

    /// Reads the log's horizon, so that watches can start from it.
    pub async fn start(&self) -> Result<(), sea_orm::DbErr> {
        self.read_new().await
    }

    /// Follows the log, waking on this process's commits and at least every
    /// `poll`, until `stop` is cancelled.
    pub async fn follow(&self, poll: Duration, stop: CancellationToken) {
        loop {
            if let Err(err) = self.read_new().await {
                tracing::warn!(error = %err, "cannot read the change log");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Reads the log from the last horizon up to the current one and
    /// publishes it (the first time, only the horizon).
    async fn read_new(&self) -> Result<(), sea_orm::DbErr> {
        let horizon = connection_event::horizon(&self.reader).await?;
        let mut published = self.published.lock().await;
        let Some(state) = published.as_mut() else {
            let (sender, _) = broadcast::channel(WATCH_BUFFER);
            *published = Some(Published { horizon, sender });
            self.head.store(horizon, Ordering::Relaxed);
            return Ok(());
        };
        while state.horizon < horizon {
            let entries =
                connection_event::log_entries(&self.reader, state.horizon, horizon, LOG_PAGE, None)
                    .await?;
            // A full page ends at its last entry; a short one reaches the horizon.
            let next = match entries.last() {
                Some(last) if entries.len() as u64 == LOG_PAGE => last.position + 1,
                _ => horizon,
            };
            let batch = Batch {
                from: state.horizon,
                horizon: next,
                entries,
            };
            state.horizon = next;
            self.head.store(next, Ordering::Relaxed);
            // No receivers is fine: nobody is watching.
            let _ = state.sender.send(Arc::new(batch));
        }
        Ok(())
    }
}
