//! What a deliverer needs of the database: the endpoints it holds the lease
//! of, the events due for them (first in line per connection), and the
//! record of each attempt with its consequences (the event delivered,
//! postponed or given up; the endpoint disabled).
//!
//! Each replica runs one deliverer; an endpoint is delivered to by the one
//! replica that holds its lease. A lease lasts [`LEASE`] and is renewed well
//! before it ends; a replica that dies loses its leases when they end, and
//! another takes them over. A deliverer records an attempt only while it
//! still holds the endpoint's lease, so a replica that lost one (stalled
//! past its end) cannot reorder what its successor does; what it sent is
//! sent again by the successor, with the same `webhook-id` and body.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use super::{ServiceError, WebhookKey, now, random_bytes};
use crate::{
    db,
    domain::{
        WebhookEndpointId,
        webhook::{DeliveryAttempt, DeliveryOutcome, RetrySchedule, SigningKey, WebhookUrl},
    },
    entity::{webhook_attempt, webhook_endpoint, webhook_queue},
};

/// How long a lease lasts: a replica killed without a chance to give its
/// leases back holds them at most this long.
pub const LEASE: Duration = Duration::from_secs(30);

/// How often a deliverer renews its leases.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// Most endpoints one replica holds.
pub const MOST_ENDPOINTS: u64 = 1000;

/// An endpoint a deliverer holds, ready to send to.
#[derive(Debug, Clone)]
pub struct HeldEndpoint {
    /// Its ID.
    pub id: WebhookEndpointId,
    /// Where to send (checked again at each connection).
    pub url: WebhookUrl,
    /// The keys that sign: the current secret's, and the previous one's
    /// while it still signs.
    pub keys: Vec<SigningKey>,
    /// Paused: nothing is sent.
    pub disabled: bool,
}

/// An event due for an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The event: the `webhook-id`.
    pub event_id: Uuid,
    /// Its connection.
    pub connection_id: Uuid,
    /// The number of this attempt (1 for the first).
    pub attempt: i32,
    /// The change token in the body.
    pub change_token: String,
    /// The body.
    pub body: String,
}

/// What an attempt came to, as the sender saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The receiver's status, if one came.
    pub status: Option<u16>,
    /// Why no status came (`timeout`, `connect`, ...), or with a status the
    /// start of the receiver's answer.
    pub error: Option<String>,
    /// How long the receiver asked to be left alone (429, 503).
    pub retry_after: Option<Duration>,
    /// From sending to the status or failure.
    pub duration: Duration,
    /// When the attempt began.
    pub attempt_time: DateTime<Utc>,
}

impl Sent {
    fn succeeded(&self) -> bool {
        self.status
            .is_some_and(|status| (200..300).contains(&status))
    }
}

/// What recording an attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The attempt's outcome.
    pub outcome: DeliveryOutcome,
    /// Whether the endpoint was disabled by it.
    pub disabled: bool,
    /// False if the lease had been lost: nothing was recorded.
    pub held: bool,
}

/// The delivery side of webhooks for one replica.
#[derive(Debug, Clone)]
pub struct Deliveries {
    db: DatabaseConnection,
    reader: db::Reader,
    key: WebhookKey,
    /// This replica, as the owner of its leases.
    owner: Uuid,
    schedule: RetrySchedule,
    /// An endpoint failing every attempt this long is disabled.
    disable_after: Duration,
}

impl Deliveries {
    /// The deliveries of a replica (its own, new owner ID) over `db`.
    pub fn new(
        db: DatabaseConnection,
        reader: db::Reader,
        key: WebhookKey,
        schedule: RetrySchedule,
        disable_after: Duration,
    ) -> Self {
        Self {
            db,
            reader,
            key,
            owner: Uuid::now_v7(),
            schedule,
            disable_after,
        }
    }

    /// Takes the lease of the endpoints no replica holds (every one of them
    /// with `renew`, extending those this one holds), then returns every
    /// endpoint this replica holds.
    pub async fn lease(&self, renew: bool) -> Result<Vec<HeldEndpoint>, ServiceError> {
        let at = now();
        let until = at + chrono::Duration::from_std(LEASE).expect("the lease is short");
        let txn = db::begin_write(&self.db).await?;
        webhook_endpoint::lease(&*txn, self.owner, at, until, MOST_ENDPOINTS, renew).await?;
        txn.commit().await?;
        let rows = webhook_endpoint::Entity::find()
            .filter(webhook_endpoint::Column::LeaseOwner.eq(self.owner))
            .all(&self.reader)
            .await?;
        // One endpoint that cannot be read does not stop the others.
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let id = row.id;
                self.held(row, at)
                    .inspect_err(|err| {
                        tracing::error!(endpoint_id = %id, error = %err, "webhook endpoint skipped");
                    })
                    .ok()
            })
            .collect())
    }

    fn held(
        &self,
        row: webhook_endpoint::Model,
        at: DateTime<Utc>,
    ) -> Result<HeldEndpoint, ServiceError> {
        let id = WebhookEndpointId::from(row.id);
        let mut keys = vec![SigningKey::from_bytes(self.key.open(id, &row.secret)?)];
        if let (Some(previous), Some(expire)) =
            (&row.previous_secret, row.previous_secret_expire_time)
            && expire > at
        {
            keys.push(SigningKey::from_bytes(self.key.open(id, previous)?));
        }
        // Stored URLs passed the rules when they were stored; each
        // connection checks its address again.
        let url = WebhookUrl::parse(&row.url, true)
            .map_err(|problem| ServiceError::internal(format!("stored webhook URL {problem}")))?;
        Ok(HeldEndpoint {
            id,
            url,
            keys,
            disabled: row.disabled,
        })
    }

    /// Gives back this replica's leases (when it stops).
    pub async fn release(&self) -> Result<(), ServiceError> {
        let txn = db::begin_write(&self.db).await?;
        webhook_endpoint::release(&*txn, self.owner).await?;
        txn.commit().await?;
        Ok(())
    }

    /// The events due now for `endpoints`, first in line for their
    /// connection, soonest due first: at most `limit`.
    pub async fn due(&self, endpoints: &[Uuid], limit: u64) -> Result<Vec<Due>, ServiceError> {
        let rows = webhook_queue::due_heads(&self.reader, endpoints, now(), limit).await?;
        Ok(rows
            .into_iter()
            .map(|row| Due {
                endpoint_id: row.endpoint_id,
                event_id: row.event_id,
                connection_id: row.connection_id,
                attempt: row.attempts + 1,
                change_token: row.change_token,
                body: row.body,
            })
            .collect())
    }

    /// When the next event queued for `endpoints` is due.
    pub async fn next_due(
        &self,
        endpoints: &[Uuid],
    ) -> Result<Option<DateTime<Utc>>, ServiceError> {
        Ok(webhook_queue::next_due(&self.reader, endpoints).await?)
    }

    /// Records the attempts `sent` (each of its `Due`), in one transaction,
    /// and what follows from each: a success takes the event off the queue;
    /// 410 Gone disables the endpoint (the event stays queued, for when it
    /// is enabled again); any other failure postpones the event by the
    /// schedule's next wait (at least what Retry-After asked on 429 and
    /// 503), or gives it up after the last. An endpoint failing every
    /// attempt for the configured time is disabled. Attempts on endpoints
    /// whose lease this replica no longer holds are not recorded.
    pub async fn record_all(&self, sent: &[(Due, Sent)]) -> Result<Vec<Recorded>, ServiceError> {
        let txn = db::begin_write(&self.db).await?;
        let endpoints: Vec<Uuid> = sent.iter().map(|(due, _)| due.endpoint_id).collect();
        let held: HashSet<Uuid> = webhook_endpoint::Entity::find()
            .select_only()
            .column(webhook_endpoint::Column::Id)
            .filter(webhook_endpoint::Column::LeaseOwner.eq(self.owner))
            .filter(webhook_endpoint::Column::Id.is_in(endpoints))
            .into_tuple::<Uuid>()
            .all(&*txn)
            .await?
            .into_iter()
            .collect();
        let at = now();
        let mut results = Vec::with_capacity(sent.len());
        let mut delivered: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        let mut attempts = Vec::new();
        // Per endpoint: whether its latest attempt succeeded, and whether it
        // answered 410.
        let mut health: HashMap<Uuid, (bool, bool)> = HashMap::new();
        for (due, sent) in sent {
            if !held.contains(&due.endpoint_id) {
                results.push(Recorded {
                    outcome: DeliveryOutcome::WillRetry,
                    disabled: false,
                    held: false,
                });
                continue;
            }
            let gone = sent.status == Some(410);
            let (outcome, next) = if sent.succeeded() {
                delivered
                    .entry(due.endpoint_id)
                    .or_default()
                    .push(due.event_id);
                (DeliveryOutcome::Succeeded, None)
            } else if gone {
                webhook_queue::postpone(&*txn, due.endpoint_id, due.event_id, due.attempt, at)
                    .await?;
                (DeliveryOutcome::WillRetry, None)
            } else if let Some(wait) = self.schedule.after(due.attempt) {
                let asked = matches!(sent.status, Some(429 | 503))
                    .then_some(sent.retry_after)
                    .flatten();
                let wait = RetrySchedule::jittered(wait, unit_random(), asked);
                let next = at + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                webhook_queue::postpone(&*txn, due.endpoint_id, due.event_id, due.attempt, next)
                    .await?;
                (DeliveryOutcome::WillRetry, Some(next))
            } else {
                delivered
                    .entry(due.endpoint_id)
                    .or_default()
                    .push(due.event_id);
                (DeliveryOutcome::GaveUp, None)
            };
            let error = if gone {
                Some("the endpoint was disabled: the receiver answered 410 Gone".to_owned())
            } else {
                sent.error.clone()
            };
            attempts.push(DeliveryAttempt {
                id: Uuid::now_v7(),
                endpoint_id: due.endpoint_id.into(),
                event_id: due.event_id,
                change_token: due.change_token.clone(),
                attempt: due.attempt,
                http_status: sent.status,
                error,
                duration: sent.duration,
                attempt_time: sent.attempt_time,
                next_attempt_time: next,
                outcome,
            });
            let entry = health.entry(due.endpoint_id).or_insert((false, false));
            *entry = (sent.succeeded(), entry.1 || gone);
            results.push(Recorded {
                outcome,
                disabled: false,
                held: true,
            });
        }
        for (endpoint, events) in &delivered {
            webhook_queue::remove_all(&*txn, *endpoint, events).await?;
        }
        webhook_attempt::insert_all(&*txn, &attempts).await?;
        let disable_before =
            at - chrono::Duration::from_std(self.disable_after).unwrap_or(chrono::Duration::MAX);
        let mut disabled = HashSet::new();
        for (endpoint, (succeeded, gone)) in health {
            let now_disabled = webhook_endpoint::record_health(
                &*txn,
                endpoint,
                succeeded && !gone,
                at,
                disable_before,
                gone.then_some("the receiver answered 410 Gone"),
            )
            .await?;
            if now_disabled {
                tracing::warn!(endpoint_id = %endpoint, "webhook endpoint disabled");
                disabled.insert(endpoint);
            }
        }
        txn.commit().await?;
        for ((due, _), recorded) in sent.iter().zip(&mut results) {
            recorded.disabled = disabled.contains(&due.endpoint_id);
        }
        Ok(results)
    }

    /// Per endpoint with queued events: how many, and when the oldest was
    /// queued.
    pub async fn backlog(&self) -> Result<Vec<(Uuid, i64, DateTime<Utc>)>, ServiceError> {
        Ok(webhook_queue::backlog(&self.reader).await?)
    }
}

/// The time of an attempt that starts now, at the precision stored.
pub fn attempt_time() -> DateTime<Utc> {
    now()
}

/// What the deliverer counts, for metrics.
#[derive(Debug, Clone, Default)]
pub struct DeliveryMetrics {
    /// Attempts by outcome (`succeeded`, `will_retry`, `gave_up`).
    pub attempts: Family<OutcomeLabel, Counter>,
    /// Attempts in flight now.
    pub in_flight: Gauge,
    /// Events queued and not yet delivered, over every endpoint this
    /// replica holds.
    pub queued: Gauge,
    /// Age in seconds of the oldest undelivered event of the endpoints this
    /// replica holds (0 if none).
    pub oldest_undelivered_seconds: Gauge,
}

/// The `outcome` label of a delivery attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `succeeded`, `will_retry` or `gave_up`.
    pub outcome: &'static str,
}

/// The label of attempts with `outcome`.
pub fn outcome_label(outcome: DeliveryOutcome) -> OutcomeLabel {
    OutcomeLabel {
        outcome: match outcome {
            DeliveryOutcome::Succeeded => "succeeded",
            DeliveryOutcome::WillRetry => "will_retry",
            DeliveryOutcome::GaveUp => "gave_up",
        },
    }
}

/// A random number in `[0, 1)`.
fn unit_random() -> f64 {
    (u64::from_be_bytes(random_bytes()) >> 11) as f64 / (1u64 << 53) as f64
}
