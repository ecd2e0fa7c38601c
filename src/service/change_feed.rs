//! The change feed: each replica follows the change log and hands what it
//! reads to the watches open on it.
//!
//! One follower per process reads the log up to its horizon (see
//! `entity::change_log`) whenever a write of this process commits, on
//! PostgreSQL whenever the database notifies a commit of any replica (see
//! the `change_log_notify` migration), and at least every poll interval. A
//! commit names its position; while the horizon has not passed it (an older
//! transaction is still running) the follower looks again after 1 ms, 2 ms,
//! 4 ms, ... up to 50 ms apart. What it reads is published as a [`Batch`]:
//! the entries from the previous horizon up to the new one, with the
//! snapshot they were read under. A watch first
//! catches up from the database to the horizon of the last batch, then
//! follows the batches; so it sees every event once, in log order, whichever
//! replica it is on.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{Mutex, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    db::Reader,
    domain::Snapshot,
    entity::change_log::{self, LogEntry},
};

/// Entries read from the log at once, and at most in one batch.
pub const LOG_PAGE: u64 = 256;

/// Batches a watch may fall behind the follower before it is ended as too
/// slow, unless configured otherwise.
pub const WATCH_BUFFER: usize = 1024;

/// The PostgreSQL channel on which every append to the change log is
/// notified, with its position as the payload.
pub const NOTIFY_CHANNEL: &str = "connections_change_log";

/// The first wait before the follower looks again for a commit that is not
/// below the horizon yet; it doubles up to [`RETRY_MOST`] (or the poll
/// interval, if shorter).
const RETRY_FIRST: Duration = Duration::from_millis(1);

/// The longest wait between two looks for a commit not below the horizon
/// yet: a long transaction elsewhere holds the horizon back, and the log is
/// read again this often until it ends.
const RETRY_MOST: Duration = Duration::from_millis(50);

/// How long the listener waits before connecting again after losing the
/// database.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// The log entries between two horizons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The horizon before these entries.
    pub from: i64,
    /// The horizon after them: every entry below it has been published.
    pub horizon: i64,
    /// The entries, in log order.
    pub entries: Vec<LogEntry>,
    /// What had committed when they were read: every position below
    /// `horizon` among others.
    pub seen: Snapshot,
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
    /// The highest position known to have committed; its readers are woken
    /// by every commit this process makes or hears of.
    committed: watch::Sender<i64>,
    /// Batches kept for subscribers that fall behind.
    buffer: usize,
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
        Self::with_buffer(reader, WATCH_BUFFER)
    }

    /// A feed that keeps `buffer` batches for subscribers that fall behind;
    /// one further behind is lagged (a watch ends as too slow).
    pub fn with_buffer(reader: Reader, buffer: usize) -> Self {
        Self {
            buffer: buffer.max(1),
            reader,
            published: Arc::new(Mutex::new(None)),
            head: Arc::new(AtomicI64::new(i64::MIN)),
            committed: watch::Sender::new(i64::MIN),
        }
    }

    /// The horizon of the log this process has read so far.
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Relaxed)
    }

    /// Tells the readers of the log that an event committed at `position`.
    pub fn committed(&self, position: i64) {
        self.committed
            .send_modify(|highest| *highest = (*highest).max(position));
    }

    /// Changes at every commit this process makes or hears of (see
    /// [`committed`](Self::committed)), to the highest position known.
    pub fn commits(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
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

    /// Follows the log, waking on commits and at least every `poll`, until
    /// `stop` is cancelled.
    pub async fn follow(&self, poll: Duration, stop: CancellationToken) {
        let mut commits = self.commits();
        let mut retry = RETRY_FIRST;
        loop {
            commits.mark_unchanged();
            let wait = match self.read_new().await {
                // A commit the horizon has not passed yet: look again soon.
                Ok(()) if self.head() <= *self.committed.borrow() => {
                    let wait = retry;
                    retry = (retry * 2).min(poll.min(RETRY_MOST));
                    wait
                }
                Ok(()) => {
                    retry = RETRY_FIRST;
                    poll
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the change log");
                    poll
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                _ = commits.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Listens on PostgreSQL for the commits of every replica (see
    /// [`NOTIFY_CHANNEL`]) and tells the follower of each, until `stop` is
    /// cancelled. A lost connection is opened again; what was notified
    /// meanwhile the follower reads at its next poll.
    pub async fn listen(&self, options: PgConnectOptions, stop: CancellationToken) {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options);
        loop {
            let listening = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(NOTIFY_CHANNEL).await?;
                // Commits from now on wake the readers: read once for any
                // made while not listening.
                self.committed.send_modify(|_| {});
                loop {
                    let notification = listener.recv().await?;
                    let position = notification.payload().parse().unwrap_or(i64::MIN);
                    self.committed(position);
                }
            };
            let ended: Result<(), sea_orm::sqlx::Error> = tokio::select! {
                () = stop.cancelled() => break,
                ended = listening => ended,
            };
            if let Err(err) = ended {
                tracing::warn!(error = %err, "cannot listen for change log commits");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(LISTEN_RETRY) => {}
            }
        }
        pool.close().await;
    }

    /// Reads the log from the last horizon up to the current one and
    /// publishes it (the first time, only the horizon).
    async fn read_new(&self) -> Result<(), sea_orm::DbErr> {
        let horizon = change_log::horizon(&self.reader).await?;
        let mut published = self.published.lock().await;
        let Some(state) = published.as_mut() else {
            let (sender, _) = broadcast::channel(self.buffer);
            *published = Some(Published { horizon, sender });
            self.head.store(horizon, Ordering::Relaxed);
            return Ok(());
        };
        while state.horizon < horizon {
            let read =
                change_log::log_entries(&self.reader, state.horizon, horizon, LOG_PAGE, None)
                    .await?;
            // A full page ends at its last entry; a short one reaches the horizon.
            let next = match read.entries.last() {
                Some(last) if read.entries.len() as u64 == LOG_PAGE => last.position + 1,
                _ => horizon,
            };
            let batch = Batch {
                from: state.horizon,
                horizon: next,
                entries: read.entries,
                seen: read.snapshot,
            };
            state.horizon = next;
            self.head.store(next, Ordering::Relaxed);
            // No receivers is fine: nobody is watching.
            let _ = state.sender.send(Arc::new(batch));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Connections, testing};

    /// However large the buffer, the feed keeps a batch only until every
    /// subscriber has read it: memory follows the slowest watch's lag.
    #[tokio::test]
    async fn a_batch_is_held_only_until_every_subscriber_has_read_it() {
        let (db, tokens, source, destination) = testing::two_organizations().await;
        let feed = ChangeFeed::with_buffer(db.clone().into(), 1024);
        feed.start().await.unwrap();
        let mut reading = feed.subscribe().await.unwrap();
        let behind = feed.subscribe().await.unwrap();
        Connections::new(db.clone(), db.clone().into(), tokens, |_| Vec::new())
            .create(&source, testing::inquiries_to(destination.organization))
            .await
            .unwrap();
        feed.read_new().await.unwrap();

        let batch = reading.batches.recv().await.unwrap();
        assert_eq!(batch.entries.len(), 1);
        assert_eq!(
            Arc::strong_count(&batch),
            2,
            "held for the subscriber that has not read it"
        );
        drop(behind);
        assert_eq!(
            Arc::strong_count(&batch),
            1,
            "still held once every subscriber has read it or left"
        );
    }
}
