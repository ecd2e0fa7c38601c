//! WatchConnectionEvents: the events of an organization's connections, as a
//! stream that catches up from the database and then follows the change
//! feed (see [`change_feed`](super::change_feed)).
//!
//! Every message carries the change token to resume after it: an event's is
//! the horizon just after it, a heartbeat's the horizon the stream has
//! reached. The first message is a heartbeat, sent once the start is fixed.
//! A stream ends with an error when its consumer falls further behind than
//! the feed's buffer (see [`ChangeFeed::with_buffer`]), when its caller is
//! no longer authorized, or when the server stops.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    ChangeTokens, ServiceError,
    change_feed::{ChangeFeed, LOG_PAGE, Subscription},
};
pub use crate::entity::connection_event::Party;
use crate::{
    db::Reader,
    domain::{ConnectionEvent, OrganizationId},
    entity::connection_event,
};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// At this horizon (from a change token): every event from it on.
    At(i64),
    /// At the first event.
    Beginning,
    /// At the changes committed from now on.
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
/// not revoked); run every [`AUTHORIZATION_CHECK`].
pub type StillAuthorized =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>> + Send + Sync>;

/// How often an open watch checks that its caller is still authorized.
pub const AUTHORIZATION_CHECK: Duration = Duration::from_secs(1);

/// Limits on watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// Streams one organization may have open on this server at once.
    pub streams_per_organization: usize,
    /// Longest time between two messages of a stream.
    pub heartbeat: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            streams_per_organization: 16,
            heartbeat: Duration::from_secs(15),
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

    /// The horizon a change token names (`field`: where it came from).
    pub fn start_at(&self, token: &str, field: &'static str) -> Result<WatchStart, ServiceError> {
        self.tokens.verify(token, field).map(WatchStart::At)
    }

    /// Opens a watch of `party`'s events from `start`. `still_authorized` is
    /// checked every [`AUTHORIZATION_CHECK`] while the stream is open.
    pub fn watch(
        &self,
        party: Party,
        start: WatchStart,
        still_authorized: StillAuthorized,
    ) -> Result<ReceiverStream<Result<WatchItem, ServiceError>>, ServiceError> {
        let slot = self.claim(party.organization)?;
        // A few messages ready to send; the follower's buffer does the rest.
        let (sender, receiver) = mpsc::channel(16);
        let watches = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = Stream {
                watches: &watches,
                party,
                sender: &sender,
            };
            if let Err(err) = stream.run(start, still_authorized).await {
                let _ = sender.send(Err(err)).await;
            }
        });
        Ok(ReceiverStream::new(receiver))
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

/// One open watch.
struct Stream<'a> {
    watches: &'a Watches,
    party: Party,
    sender: &'a mpsc::Sender<Result<WatchItem, ServiceError>>,
}

/// Why a stream stopped sending without an error: its client went away.
struct Gone;

impl Stream<'_> {
    /// Sends from `start` until the client goes away (`Ok`) or the stream
    /// must end with an error.
    async fn run(
        &self,
        start: WatchStart,
        still_authorized: StillAuthorized,
    ) -> Result<(), ServiceError> {
        let Subscription {
            horizon: caught_up,
            mut batches,
        } = self
            .watches
            .feed
            .subscribe()
            .await
            .ok_or_else(|| ServiceError::internal("the change feed has not started"))?;
        // From now: what had committed when the watch began is skipped (on
        // PostgreSQL, some of it may lie above the horizon).
        let (mut cursor, before) = match start {
            WatchStart::At(horizon) => (horizon, None),
            WatchStart::Beginning => (i64::MIN, None),
            WatchStart::Now => {
                let snapshot = connection_event::snapshot(&self.watches.reader).await?;
                (snapshot.xmin, Some(snapshot))
            }
        };
        let new = |position: i64| before.as_ref().is_none_or(|before| !before.saw(position));
        let mut checked = tokio::time::Instant::now();
        // The start is fixed: a first heartbeat tells the client so, with a
        // token to resume from should the stream end before anything else.
        if self.send(None, cursor).await.is_err() {
            return Ok(());
        }

        // Catch up from the database to where the feed takes over.
        while cursor < caught_up {
            let entries = connection_event::log_entries(
                &self.watches.reader,
                cursor,
                caught_up,
                LOG_PAGE,
                Some(self.party),
            )
            .await?;
            let next = match entries.last() {
                Some(last) if entries.len() as u64 == LOG_PAGE => last.position + 1,
                _ => caught_up,
            };
            for entry in entries.into_iter().filter(|entry| new(entry.position)) {
                if self.event(entry.event, entry.position).await.is_err() {
                    return Ok(());
                }
            }
            cursor = next;
            if checked.elapsed() >= AUTHORIZATION_CHECK {
                still_authorized().await?;
                checked = tokio::time::Instant::now();
            }
        }

        // Then follow the feed.
        let mut authorization =
            tokio::time::interval_at(checked + AUTHORIZATION_CHECK, AUTHORIZATION_CHECK);
        let heartbeat_every = self.watches.limits.heartbeat;
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        loop {
            let sent = tokio::select! {
                batch = batches.recv() => match batch {
                    Ok(batch) => {
                        let mut sent = Ok(());
                        for entry in &batch.entries {
                            if entry.position >= cursor
                                && new(entry.position)
                                && self.party.takes_part_in(&entry.parties)
                            {
                                sent = self.event(entry.event.clone(), entry.position).await;
                                if sent.is_err() {
                                    break;
                                }
                            }
                        }
                        cursor = cursor.max(batch.horizon);
                        sent
                    }
                    Err(RecvError::Lagged(_)) => return Err(ServiceError::WatchConsumerTooSlow),
                    // The feed is gone: the server is stopping.
                    Err(RecvError::Closed) => return Ok(()),
                },
                _ = heartbeat.tick() => self.send(None, cursor).await,
                _ = authorization.tick() => {
                    still_authorized().await?;
                    Ok(())
                }
                () = self.sender.closed() => Err(Gone),
            };
            if sent.is_err() {
                return Ok(());
            }
        }
    }

    /// Sends `event`, at `position`, if the client is still there.
    async fn event(&self, event: ConnectionEvent, position: i64) -> Result<(), Gone> {
        self.send(Some(event), position + 1).await?;
        self.watches.sent.inc();
        Ok(())
    }

    /// Sends a message whose token names `horizon`.
    async fn send(&self, event: Option<ConnectionEvent>, horizon: i64) -> Result<(), Gone> {
        let item = WatchItem {
            event,
            change_token: self.watches.tokens.issue(horizon),
        };
        self.sender.send(Ok(item)).await.map_err(|_| Gone)
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
            organization: source,
            role: None,
        };
        let mut stream = watches
            .watch(
                party,
                WatchStart::Now,
                Arc::new(|| Box::pin(async { Ok(()) })),
            )
            .unwrap();
        // The first heartbeat: the watch has started.
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.event, None);

        // Nobody reads while writes commit, each published in a batch of its
        // own: far more than the stream's channel and the feed's buffer hold.
        let Outcome::Fresh(Written { record, .. }) = connections
            .create(source, testing::inquiries_to(destination))
            .await
            .unwrap()
        else {
            panic!("no request_id: nothing to replay")
        };
        let steps = [
            (destination, Action::Activate),
            (source, Action::Deactivate),
            (source, Action::Reactivate),
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
}
