//! The deliverer: one per replica, it sends the queues of the endpoints it
//! holds the lease of (see `service::webhook_delivery`), and records each
//! attempt.
//!
//! For one endpoint, the events of one connection go one at a time in log
//! order: the next is sent once the previous is recorded (delivered,
//! postponed or given up; a postponed one holds its connection's later
//! events back until it is delivered or given up). Events of other
//! connections go meanwhile, at most [`PER_ENDPOINT`] at once per endpoint
//! and [`IN_FLIGHT`] at once per replica, so memory does not grow with the
//! backlog. The deliverer looks at the queue whenever a commit is notified,
//! whenever an attempt ends, when the next postponed event is due, and at
//! least every [`LOOK_EVERY`].

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
};
use uuid::Uuid;

use super::http::{Attempt, Sender};
use crate::{
    background::Task,
    domain::webhook::signature_header,
    service::webhook_delivery::{
        Deliveries, DeliveryMetrics, Due, HeldEndpoint, RENEW_EVERY, Sent, outcome_label,
    },
};

/// Deliveries in flight at once on one replica.
pub const IN_FLIGHT: usize = 64;

/// Deliveries in flight at once to one endpoint.
pub const PER_ENDPOINT: usize = 32;

/// The longest the deliverer waits before it looks at the queue again, and
/// how often it takes the leases of endpoints no replica holds.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Starts delivering: `commits` changes at every commit this replica makes
/// or hears of, `endpoints_changed` is notified when this process changes
/// an endpoint. At a stop, attempts in flight are abandoned (their events
/// stay queued and go again) and the leases are given back.
pub fn start(
    deliveries: Deliveries,
    sender: Sender,
    commits: watch::Receiver<i64>,
    endpoints_changed: Arc<Notify>,
    metrics: DeliveryMetrics,
) -> Task {
    Task::start(|stop| async move {
        let mut deliverer = Deliverer {
            deliveries,
            sender,
            metrics,
            held: HashMap::new(),
            busy: HashSet::new(),
            per_endpoint: HashMap::new(),
            running: JoinSet::new(),
        };
        let mut commits = commits;
        let mut looked = None::<Instant>;
        let mut renewed = None::<Instant>;
        loop {
            if looked.is_none_or(|at| at.elapsed() >= LOOK_EVERY) {
                let renew = renewed.is_none_or(|at| at.elapsed() >= RENEW_EVERY);
                deliverer.lease(renew).await;
                if renew {
                    renewed = Some(Instant::now());
                    deliverer.measure_backlog().await;
                }
                looked = Some(Instant::now());
            }
            let wait = deliverer.send_due().await;
            commits.mark_unchanged();
            tokio::select! {
                () = stop.cancelled() => break,
                Some(done) = deliverer.running.join_next() => {
                    // Every attempt that has ended, recorded together.
                    let mut ended: Vec<_> = done.into_iter().collect();
                    while let Some(done) = deliverer.running.try_join_next() {
                        ended.extend(done);
                    }
                    deliverer.finished(ended).await;
                }
                _ = commits.changed() => {}
                // An endpoint changed here: read the endpoints again now.
                () = endpoints_changed.notified() => looked = None,
                () = tokio::time::sleep(wait) => {}
            }
        }
        deliverer.running.abort_all();
        if let Err(err) = deliverer.deliveries.release().await {
            tracing::warn!(error = %err, "cannot give back the webhook leases");
        }
    })
}

/// The deliverer's state.
struct Deliverer {
    deliveries: Deliveries,
    sender: Sender,
    metrics: DeliveryMetrics,
    /// The endpoints held, by ID.
    held: HashMap<Uuid, Arc<HeldEndpoint>>,
    /// (endpoint, connection) with an attempt in flight.
    busy: HashSet<(Uuid, Uuid)>,
    /// Attempts in flight per endpoint.
    per_endpoint: HashMap<Uuid, usize>,
    running: JoinSet<(Due, Sent)>,
}

impl Deliverer {
    /// Takes the leases of endpoints nobody holds (and renews this
    /// replica's with `renew`); keeps what it holds on failure.
    async fn lease(&mut self, renew: bool) {
        match self.deliveries.lease(renew).await {
            Ok(held) => {
                self.held = held
                    .into_iter()
                    .map(|endpoint| (endpoint.id.uuid(), Arc::new(endpoint)))
                    .collect();
            }
            Err(err) => tracing::warn!(error = %err, "cannot take webhook leases"),
        }
    }

    /// Starts the attempts that are due and have room; returns how long to
    /// wait before looking again.
    async fn send_due(&mut self) -> Duration {
        let room = IN_FLIGHT.saturating_sub(self.running.len());
        let enabled: Vec<Uuid> = self
            .held
            .values()
            .filter(|endpoint| !endpoint.disabled)
            .map(|endpoint| endpoint.id.uuid())
            .collect();
        if room == 0 || enabled.is_empty() {
            return LOOK_EVERY;
        }
        let limit = (self.running.len() + room) as u64;
        let due = match self.deliveries.due(&enabled, limit).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the webhook queue");
                return LOOK_EVERY;
            }
        };
        let mut started = 0;
        for due in due {
            if self.running.len() >= IN_FLIGHT {
                break;
            }
            let lane = (due.endpoint_id, due.connection_id);
            let count = self
                .per_endpoint
                .get(&due.endpoint_id)
                .copied()
                .unwrap_or(0);
            if self.busy.contains(&lane) || count >= PER_ENDPOINT {
                continue;
            }
            let Some(endpoint) = self.held.get(&due.endpoint_id).cloned() else {
                continue;
            };
            self.busy.insert(lane);
            *self.per_endpoint.entry(due.endpoint_id).or_default() += 1;
            self.metrics.in_flight.inc();
            started += 1;
            let sender = self.sender.clone();
            self.running.spawn(async move {
                let sent = send(&sender, &endpoint, &due).await;
                (due, sent)
            });
        }
        if started > 0 {
            return Duration::ZERO;
        }
        // What is due waits for attempts in flight (its connection's, or
        // room): their ends wake the loop; do not poll meanwhile.
        if !self.running.is_empty() {
            return LOOK_EVERY;
        }
        match self.deliveries.next_due(&enabled).await {
            Ok(Some(next)) => (next - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(1), LOOK_EVERY),
            Ok(None) => LOOK_EVERY,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the webhook queue");
                LOOK_EVERY
            }
        }
    }

    /// Records attempts that ended.
    async fn finished(&mut self, ended: Vec<(Due, Sent)>) {
        for (due, _) in &ended {
            self.busy.remove(&(due.endpoint_id, due.connection_id));
            if let Some(count) = self.per_endpoint.get_mut(&due.endpoint_id) {
                *count -= 1;
                if *count == 0 {
                    self.per_endpoint.remove(&due.endpoint_id);
                }
            }
            self.metrics.in_flight.dec();
        }
        match self.deliveries.record_all(&ended).await {
            Ok(recorded) => {
                for ((due, _), recorded) in ended.iter().zip(recorded) {
                    if !recorded.held || recorded.disabled {
                        // Another replica holds it now (and sends the event
                        // again), or it is disabled: nothing more is sent.
                        self.held.remove(&due.endpoint_id);
                        continue;
                    }
                    self.metrics
                        .attempts
                        .get_or_create(&outcome_label(recorded.outcome))
                        .inc();
                }
            }
            Err(err) => {
                // The events stay queued and go again.
                tracing::warn!(error = %err, attempts = ended.len(), "cannot record webhook attempts");
            }
        }
    }

    /// Updates the backlog metrics.
    async fn measure_backlog(&self) {
        let Ok(backlog) = self.deliveries.backlog().await else {
            return;
        };
        let now = chrono::Utc::now();
        let (mut queued, mut oldest) = (0_i64, 0_i64);
        for (endpoint, events, first) in backlog {
            if self.held.contains_key(&endpoint) {
                queued += events;
                oldest = oldest.max((now - first).num_seconds());
            }
        }
        self.metrics.queued.set(queued);
        self.metrics.oldest_undelivered_seconds.set(oldest);
    }
}

/// Sends `due` to `endpoint`, signed with each of its keys.
async fn send(sender: &Sender, endpoint: &HeldEndpoint, due: &Due) -> Sent {
    let attempt_time = crate::service::webhook_delivery::attempt_time();
    let timestamp = attempt_time.timestamp();
    let id = due.event_id.hyphenated().to_string();
    let keys: Vec<_> = endpoint.keys.iter().collect();
    let signature = signature_header(&keys, &id, timestamp, due.body.as_bytes());
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ] {
        headers.insert(
            name,
            HeaderValue::from_str(&value).expect("IDs, numbers and base64 are header values"),
        );
    }
    let attempt: Attempt = sender
        .post(&endpoint.url, headers, Bytes::from(due.body.clone()))
        .await;
    Sent {
        status: attempt.status,
        error: match (&attempt.failure, attempt.status) {
            (Some(failure), _) => Some(failure.to_string()),
            (None, Some(status))
                if !(200..300).contains(&status) && !attempt.excerpt.is_empty() =>
            {
                Some(attempt.excerpt.clone())
            }
            _ => None,
        },
        retry_after: attempt.retry_after,
        duration: attempt.duration,
        attempt_time,
    }
}
