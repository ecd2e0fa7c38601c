//! WatchConnectionEvents: the events of an organization's connections, as a
//! stream that catches up from the database and then follows the change
//! feed (see [`change_feed`](super::change_feed)).
//!
//! A watch starts from a snapshot (a change token's, or the database's now,
//! or the empty one) and sends, in log order, every event that snapshot does
//! not hold. Every message carries the change token to resume after it: the
//! start's snapshot with every position the stream has passed, so resuming
//! from it sends each later event once. The first message is a heartbeat,
//! sent once the start is fixed.
//!
//! A stream ends with an error when its consumer falls further behind than
//! the feed's buffer (see [`ChangeFeed::with_buffer`]) or has not read what
//! it was sent for [`WatchLimits::unread_timeout`], when its caller is no
//! longer authorized, or when its task fails; the error is its next message,
//! ahead of any it had not read yet. The authorization is checked before the
//! events of each batch are sent and every [`AUTHORIZATION_CHECK`], also
//! while the stream waits for its consumer, so a stalled stream of a revoked
//! key ends (and gives back its slot) within that bound.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::{
    sync::{broadcast::error::RecvError, mpsc, oneshot},
    time::{Instant, Interval},
};

use super::{
    ChangeTokens, ServiceError,
    change_feed::{ChangeFeed, LOG_PAGE, Subscription},
};
pub use crate::entity::change_log::Party;
use crate::{
    db::Reader,
    domain::{ConnectionEvent, OrganizationId, Snapshot},
    entity::change_log,
};

/// Where a watch starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchStart {
    /// After the changes of this snapshot (from a change token).
    After(Snapshot),
    /// At the first event.
    Beginning,
    /// After the changes committed when the watch starts.
    Now,
}

/// One message of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchItem {
    /// The event; `None` on a heartbeat.
    pub event: Option<ConnectionEvent>,
    /// The change token to resume after this message.
    pub change_token: String,
}

/// Checks that a watch's caller may still watch (e.g. that its API key was
/// not revoked); run every [`AUTHORIZATION_CHECK`] and before each batch of
/// events is sent, so it should be cheap.
pub type StillAuthorized =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>> + Send + Sync>;

/// How often an open watch checks that its caller is still authorized.
pub const AUTHORIZATION_CHECK: Duration = Duration::from_secs(1);

/// Messages a stream holds ready for its consumer; the feed's buffer holds
/// the rest.
const READY: usize = 16;

/// Limits on watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// Streams one organization may have open on this server at once.
    pub streams_per_organization: usize,
    /// Longest time between two messages of a stream.
    pub heartbeat: Duration,
    /// A stream whose consumer has left a message unread this long ends as
    /// too slow, however little it holds.
    pub unread_timeout: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            streams_per_organization: 16,
            heartbeat: Duration::from_secs(15),
            unread_timeout: Duration::from_secs(60),
        }
    }
}

/// The watches business layer. Clones share the feed and the stream counts.
#[derive(Clone)]
pub struct Watches {
    reader: Reader,
    feed: ChangeFeed,
    tokens: ChangeTokens,
    limits: WatchLimits,
    /// Open streams by organization.
    open: Arc<Mutex<HashMap<OrganizationId, usize>>>,
    /// Events sent so far, by every stream.
    sent: Counter,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One organization's claim on a stream; given back when dropped.
struct Slot {
    organization: OrganizationId,
    open: Arc<Mutex<HashMap<OrganizationId, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .expect("the stream counts are never poisoned");
        if let Some(count) = open.get_mut(&self.organization) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.organization);
            }
        }
    }
}

impl Watches {
    /// Watches over the log read through `reader`, following `feed`, with
    /// tokens signed by `tokens`.
    pub fn new(
        reader: Reader,
        feed: ChangeFeed,
        tokens: ChangeTokens,
        limits: WatchLimits,
    ) -> Self {
        Self {
            reader,
            feed,
            tokens,
            limits,
            open: Arc::default(),
            sent: Counter::default(),
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.open
            .lock()
            .expect("the stream counts are never poisoned")
            .values()
            .sum()
    }

    /// Events sent so far, by every stream (shared, for metrics).
    pub fn events_sent(&self) -> Counter {
        self.sent.clone()
    }

    /// Where a watch after a change token starts (`field`: where it came
    /// from).
    pub fn start_after(
        &self,
        token: &str,
        field: &'static str,
    ) -> Result<WatchStart, ServiceError> {
        self.tokens.verify(token, field).map(WatchStart::After)
    }

    /// Opens a watch of `party`'s events from `start`. `still_authorized` is
    /// checked every [`AUTHORIZATION_CHECK`] while the stream is open, and
    /// before each batch of events.
    ///
    /// The start is fixed before this returns: a change committed after it
    /// returns is in the stream whatever `start` is, so a caller that has
    /// the response may write and expect to see its writes.
    pub async fn watch(
        &self,
        party: Party,
        start: WatchStart,
        still_authorized: StillAuthorized,
    ) -> Result<WatchStream, ServiceError> {
        let slot = self.claim(party.organization)?;
        // Subscribed before the start is read, so the feed misses nothing
        // the start does not hold.
        let subscription = self
            .feed
            .subscribe()
            .await
            .ok_or_else(|| ServiceError::internal("the change feed has not started"))?;
        let start = match start {
            WatchStart::After(seen) => seen,
            WatchStart::Beginning => Snapshot::empty(),
            WatchStart::Now => change_log::snapshot(&self.reader).await?,
        };
        let (sender, receiver) = mpsc::channel(READY);
        let (ended, outcome) = oneshot::channel();
        let read = Arc::new(Mutex::new(Instant::now()));
        let stream = Stream {
            watches: self.clone(),
            party,
            sender,
            still_authorized,
            authorization: tokio::time::interval_at(
                Instant::now() + AUTHORIZATION_CHECK,
                AUTHORIZATION_CHECK,
            ),
            read: read.clone(),
            waiting_since: None,
            seen: start.clone(),
            start,
        };
        let task = tokio::spawn(async move {
            let _slot = slot;
            stream.run(subscription).await
        });
        // The task's end, told to the consumer: a failure (a panic too) ends
        // the stream with its error.
        tokio::spawn(async move {
            let result = match task.await {
                Ok(Ok(Gone)) => Ok(()),
                Ok(Err(err)) => Err(err),
                Err(failed) => {
                    tracing::error!(error = %failed, "a watch's task failed");
                    Err(ServiceError::internal("the watch failed"))
                }
            };
            let _ = ended.send(result);
        });
        Ok(WatchStream {
            receiver,
            outcome: Some(outcome),
            drained: false,
            read,
        })
    }

    fn claim(&self, organization: OrganizationId) -> Result<Slot, ServiceError> {
        let mut open = self
            .open
            .lock()
            .expect("the stream counts are never poisoned");
        let count = open.entry(organization).or_default();
        if *count >= self.limits.streams_per_organization {
            return Err(ServiceError::WatchLimitExceeded);
        }
        *count += 1;
        Ok(Slot {
            organization,
            open: self.open.clone(),
        })
    }
}

/// The messages of one watch, as its consumer reads them: the stream's
/// messages, then its end. An error ends it at once, ahead of any message
/// not read yet.
pub struct WatchStream {
    receiver: mpsc::Receiver<WatchItem>,
    /// How the stream's task ended, once it has.
    outcome: Option<oneshot::Receiver<Result<(), ServiceError>>>,
    /// The task ended without an error: end once the messages are read.
    /// (With no outcome left and this false, an error has ended it.)
    drained: bool,
    /// When the consumer last took a message.
    read: Arc<Mutex<Instant>>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

impl futures_util::Stream for WatchStream {
    type Item = Result<WatchItem, ServiceError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(outcome) = &mut this.outcome {
            if let Poll::Ready(result) = Pin::new(outcome).poll(cx) {
                this.outcome = None;
                let error = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(err)) => Some(err),
                    Err(_) => Some(ServiceError::internal("the watch ended without an outcome")),
                };
                match error {
                    // Ahead of the messages not read yet, which go.
                    Some(err) => {
                        this.receiver = mpsc::channel(1).1;
                        return Poll::Ready(Some(Err(err)));
                    }
                    None => this.drained = true,
                }
            }
        } else if !this.drained {
            // The error has been sent: the end.
            return Poll::Ready(None);
        }
        match this.receiver.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                *this.read.lock().expect("never poisoned") = Instant::now();
                Poll::Ready(Some(Ok(item)))
            }
            // Closed: the end, once the task is known to have ended well.
            Poll::Ready(None) if this.drained => Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// One open watch.
struct Stream {
    watches: Watches,
    party: Party,
    sender: mpsc::Sender<WatchItem>,
    still_authorized: StillAuthorized,
    authorization: Interval,
    /// When the consumer last took a message.
    read: Arc<Mutex<Instant>>,
    /// Since when a message has waited in an otherwise empty channel.
    waiting_since: Option<Instant>,
    /// The start: its changes are not sent.
    start: Snapshot,
    /// What the stream has passed: its tokens name this.
    seen: Snapshot,
}

/// Why a stream stopped sending without an error: its client went away.
struct Gone;

impl Stream {
    /// Sends from the start until the client goes away (`Ok`) or the stream
    /// must end with an error; `subscription` was taken before the start
    /// was read.
    async fn run(
        mut self,
        Subscription {
            horizon: caught_up,
            mut batches,
        }: Subscription,
    ) -> Result<Gone, ServiceError> {
        // The feed takes over at `caught_up`: below it every change the start
        // does not hold comes from the database, then `cursor` is there.
        let mut cursor = self.start.xmin().max(caught_up);
        // The start is fixed: a first heartbeat tells the client so, with a
        // token to resume from should the stream end before anything else.
        if let Some(gone) = self.send(None).await? {
            return Ok(gone);
        }

        // Catch up from the database to where the feed takes over.
        let mut after = None;
        while self.start.xmin() < caught_up {
            self.check().await?;
            let read = change_log::unseen_entries(
                &self.watches.reader,
                &self.start,
                after,
                caught_up,
                LOG_PAGE,
                self.party,
            )
            .await?;
            let full = read.entries.len() as u64 == LOG_PAGE;
            after = read.entries.last().map(|entry| entry.position).or(after);
            for entry in read.entries {
                if let Some(gone) = self
                    .event(entry.event, entry.position, &read.snapshot)
                    .await?
                {
                    return Ok(gone);
                }
            }
            if !full {
                self.pass(&read.snapshot, caught_up);
                break;
            }
        }

        // Then follow the feed.
        let party = self.party;
        let heartbeat_every = self.watches.limits.heartbeat;
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
        loop {
            let gone = tokio::select! {
                batch = batches.recv() => match batch {
                    Ok(batch) => {
                        let events = batch.entries.iter().filter(|entry| {
                            entry.position >= cursor && party.takes_part_in(&entry.parties)
                        });
                        let mut gone = None;
                        // No event for a caller no longer authorized.
                        if events.clone().next().is_some() {
                            (self.still_authorized)().await?;
                        }
                        for entry in events {
                            gone = self.event(entry.event.clone(), entry.position, &batch.seen).await?;
                            if gone.is_some() {
                                break;
                            }
                        }
                        cursor = cursor.max(batch.horizon);
                        self.pass(&batch.seen, cursor);
                        gone
                    }
                    Err(RecvError::Lagged(_)) => return Err(ServiceError::WatchConsumerTooSlow),
                    // The feed is gone: the server is stopping.
                    Err(RecvError::Closed) => return Ok(Gone),
                },
                _ = heartbeat.tick() => self.send(None).await?,
                _ = self.authorization.tick() => {
                    self.check().await?;
                    None
                }
                () = self.sender.closed() => Some(Gone),
            };
            if let Some(gone) = gone {
                return Ok(gone);
            }
        }
    }

    /// The stream has passed every position below `cursor`, which `read`
    /// holds.
    fn pass(&mut self, read: &Snapshot, cursor: i64) {
        self.seen = if cursor >= self.start.upper() {
            // Past every position the start holds: it adds nothing more.
            read.below(cursor)
        } else {
            self.start.union(&read.below(cursor))
        };
    }

    /// Checks that the caller is still authorized, and that the consumer
    /// reads.
    async fn check(&mut self) -> Result<(), ServiceError> {
        (self.still_authorized)().await?;
        if let Some(since) = self.waiting_since {
            let read = *self.read.lock().expect("never poisoned");
            if self.sender.capacity() == self.sender.max_capacity() {
                self.waiting_since = None;
            } else if read.max(since).elapsed() >= self.watches.limits.unread_timeout {
                return Err(ServiceError::WatchConsumerTooSlow);
            }
        }
        Ok(())
    }

    /// Sends `event`, at `position`, read under `read`, unless the start
    /// holds it.
    async fn event(
        &mut self,
        event: ConnectionEvent,
        position: i64,
        read: &Snapshot,
    ) -> Result<Option<Gone>, ServiceError> {
        if self.start.saw(position) {
            return Ok(None);
        }
        self.pass(read, position + 1);
        let gone = self.send(Some(event)).await?;
        if gone.is_none() {
            self.watches.sent.inc();
        }
        Ok(gone)
    }

    /// Sends a message whose token names what the stream has passed, once
    /// the consumer has room for it; meanwhile keeps checking the caller's
    /// authorization and that the consumer reads.
    async fn send(&mut self, event: Option<ConnectionEvent>) -> Result<Option<Gone>, ServiceError> {
        let item = WatchItem {
            event,
            change_token: self.watches.tokens.issue(&self.seen),
        };
        if self.sender.capacity() == self.sender.max_capacity() {
            self.waiting_since = Some(Instant::now());
        }
        let sender = self.sender.clone();
        loop {
            tokio::select! {
                permit = sender.reserve() => {
                    return Ok(match permit {
                        Ok(permit) => {
                            permit.send(item);
                            None
                        }
                        Err(_) => Some(Gone),
                    });
                }
                _ = self.authorization.tick() => self.check().await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        domain::Action,
        service::{
            Connections,
            connections::{TransitionRequest, Written},
            idempotency::Outcome,
            testing,
        },
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_nobody_reads_holds_at_most_its_buffers_then_ends_as_too_slow() {
        const BUFFER: usize = 4;
        let (db, tokens, source, destination) = testing::two_organizations().await;
        let feed = ChangeFeed::with_buffer(db.clone().into(), BUFFER);
        feed.start().await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn({
            let (feed, stop) = (feed.clone(), stop.clone());
            async move { feed.follow(Duration::from_secs(60), stop).await }
        });
        let connections = Connections::new(db.clone(), db.clone().into(), tokens.clone(), |_| {
            Vec::new()
        })
        .notifying(feed.clone());
        let watches = Watches::new(
            db.clone().into(),
            feed.clone(),
            ChangeTokens::new(tokens),
            WatchLimits::default(),
        );
        let party = Party {
            organization: source.organization,
            role: None,
        };
        let mut stream = watches
            .watch(
                party,
                WatchStart::Now,
                Arc::new(|| Box::pin(async { Ok(()) })),
            )
            .await
            .unwrap();
        // The first heartbeat: the watch has started.
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.event, None);

        // Nobody reads while writes commit, each published in a batch of its
        // own: far more than the stream's channel and the feed's buffer hold.
        let Outcome::Fresh(Written { record, .. }) = connections
            .create(&source, testing::inquiries_to(destination.organization))
            .await
            .unwrap()
        else {
            panic!("no request_id: nothing to replay")
        };
        let steps = [
            (&destination, Action::Activate),
            (&source, Action::Deactivate),
            (&source, Action::Reactivate),
        ];
        for round in 0..20 {
            for (caller, action) in steps {
                let head = feed.head();
                connections
                    .transition(
                        caller,
                        TransitionRequest {
                            id: record.id,
                            action,
                            etag: None,
                            reason: None,
                            message: None,
                            data_types: None,
                            request_id: None,
                        },
                    )
                    .await
                    .unwrap_or_else(|err| panic!("round {round}: {err}"));
                while feed.head() == head {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }

        // What was held: the channel's messages, then the end.
        let mut held = 0;
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                Ok(Some(Ok(_))) => held += 1,
                Ok(Some(Err(err))) => break err,
                Ok(None) => panic!("the stream ended without an error"),
                Err(_) => panic!("the stream neither sent nor ended"),
            }
        };
        assert!(matches!(end, ServiceError::WatchConsumerTooSlow), "{end}");
        assert!(
            held <= 16 + 1,
            "{held} messages were held for a stalled watch"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_watch_whose_task_fails_ends_with_internal_not_ok() {
        let (db, tokens, source, _) = testing::two_organizations().await;
        let feed = ChangeFeed::new(db.clone().into());
        feed.start().await.unwrap();
        let watches = Watches::new(
            db.clone().into(),
            feed,
            ChangeTokens::new(tokens),
            WatchLimits::default(),
        );
        let party = Party {
            organization: source.organization,
            role: None,
        };
        let mut stream = watches
            .watch(
                party,
                WatchStart::Beginning,
                Arc::new(|| panic!("a bug in the authorization check")),
            )
            .await
            .unwrap();
        // Maybe its first heartbeat (the error goes ahead of what is unread),
        // then the error, then the end.
        let mut end = stream.next().await.expect("an error, not the end");
        if let Ok(first) = &end {
            assert_eq!(first.event, None, "the first heartbeat");
            end = stream.next().await.expect("an error, not the end");
        }
        assert!(matches!(end, Err(ServiceError::Internal(_))), "{end:?}");
        assert!(stream.next().await.is_none());
        assert_eq!(watches.open_streams(), 0, "its slot is given back");
    }
}
