//! Webhook endpoints: each organization's own, created, read, changed and
//! deleted by it; their signing secrets; the record of their deliveries; and
//! the queueing of events for them.
//!
//! Every change an organization makes to an endpoint (created, updated,
//! deleted, secret rotated, deliveries recovered) writes its audit log entry
//! in the transaction that makes it, naming the API key that made it and the
//! endpoint by its URL's origin ([`WebhookEndpoint::audit_name`]), never a
//! secret.
//!
//! An event is queued, in the transaction that writes it, for every endpoint
//! of both parties that takes its type ([`queue`]), with the body every
//! attempt will send; the deliverer (`webhook_delivery`) sends the queue.
//! Signing secrets are stored encrypted with the [`WebhookKey`], which is
//! not in the database: a dump of it alone cannot sign a delivery.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use aes_siv::{KeyInit, siv::Aes128Siv};
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tracing::instrument;

use super::{
    ChangeFeed, ChangeTokens, Page, PageTokens, ServiceError, audit,
    change_feed::LOG_PAGE,
    idempotency::{self, Claim, IdempotencyKey, Recorded},
    now, random_bytes,
};
use crate::{
    db,
    domain::{
        Actor, AuditAction, ConnectionEvent, ConnectionId, ConnectionRecord, Named, OrganizationId,
        PageSize, Snapshot, WebhookEndpointId,
        webhook::{
            self, DeliveryAttempt, EventTypes, MAX_DESCRIPTION_CHARS, SigningKey, UrlProblem,
            WebhookEndpoint, WebhookUrl,
        },
    },
    entity::{
        change_log::{self, Party},
        connection_event::{self, Appended},
        webhook_attempt, webhook_endpoint, webhook_queue,
    },
};

/// Makes the body of a delivery: the event, the connection as the event
/// left it, and the change token after it.
pub type WebhookBody = fn(&ConnectionEvent, &ConnectionRecord, &str) -> String;

/// Queues the event `appended` for every endpoint of its connection's
/// parties that takes its type, inside the transaction that writes it.
pub async fn queue(
    txn: &impl ConnectionTrait,
    appended: &Appended,
    record: &ConnectionRecord,
    change_token: &str,
    body: WebhookBody,
) -> Result<u64, ServiceError> {
    let event = &appended.event;
    let body = body(event, record, change_token);
    let queued = webhook_queue::Queued {
        event_id: event.id,
        connection_id: event.connection_id.uuid(),
        event_type: event.event_type.as_str(),
        position: appended.position,
        change_token,
        body: &body,
    };
    let parties = [
        record.parties.source.uuid(),
        record.parties.destination.uuid(),
    ];
    Ok(webhook_queue::enqueue(txn, parties, None, &queued, now()).await?)
}

/// The key that encrypts endpoints' signing secrets at rest (AES-SIV, the
/// endpoint's ID as associated data). Kept out of the database.
#[derive(Clone)]
pub struct WebhookKey(Arc<[u8; 32]>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(..)")
    }
}

impl WebhookKey {
    /// The key of these bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Arc::new(bytes))
    }

    /// A random key (for a database that lives only as long as the process).
    pub fn random() -> Self {
        Self::new(random_key())
    }

    fn cipher(&self) -> Aes128Siv {
        Aes128Siv::new(&(*self.0).into())
    }

    /// `secret` sealed for endpoint `id`.
    pub fn seal(&self, id: WebhookEndpointId, secret: &[u8]) -> Vec<u8> {
        self.cipher()
            .encrypt([id.uuid().as_bytes()], secret)
            .expect("AES-SIV encrypts any length")
    }

    /// The secret sealed for endpoint `id`; an error if it was sealed with
    /// another key or for another endpoint.
    pub fn open(&self, id: WebhookEndpointId, sealed: &[u8]) -> Result<Vec<u8>, ServiceError> {
        self.cipher()
            .decrypt([id.uuid().as_bytes()], sealed)
            .map_err(|_| {
                ServiceError::internal(format!(
                    "the signing secret of webhook endpoint {id} cannot be decrypted: this \
                     server's webhook key is not the one it was stored with"
                ))
            })
    }
}

/// 32 random bytes, for a new [`WebhookKey`].
pub fn random_key() -> [u8; 32] {
    random_bytes()
}

/// Limits and rules of webhook endpoints.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Endpoints one organization may have.
    pub endpoints_per_organization: usize,
    /// Allows `http` and addresses in private networks (development, tests).
    pub allow_private_addresses: bool,
    /// How long a rotated-out secret keeps signing.
    pub secret_overlap: Duration,
    /// How long a connection may stay PENDING (`None`: for ever), for the
    /// expire times of the connections recovered deliveries carry.
    pub pending_lifetime: Option<chrono::TimeDelta>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            endpoints_per_organization: 20,
            allow_private_addresses: false,
            secret_overlap: Duration::from_secs(24 * 3600),
            pending_lifetime: None,
        }
    }
}

/// What CreateWebhookEndpoint asks for, its fields checked for shape.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    /// Where deliveries go (checked here against the address rules).
    pub url: String,
    /// Free text.
    pub description: String,
    /// The types it takes; empty: all.
    pub event_types: EventTypes,
    /// Makes the call safe to retry.
    pub request_id: Option<String>,
}

/// An endpoint and its signing secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithSecret {
    /// The endpoint.
    pub endpoint: WebhookEndpoint,
    /// `whsec_` and base64 of the key.
    pub secret: String,
}

/// What UpdateWebhookEndpoint changes: the fields given.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges {
    /// A new URL.
    pub url: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// New event types.
    pub event_types: Option<EventTypes>,
    /// Disable or enable.
    pub disabled: Option<bool>,
}

/// The webhooks business layer.
#[derive(Debug, Clone)]
pub struct Webhooks {
    db: DatabaseConnection,
    reader: db::Reader,
    tokens: PageTokens,
    change_tokens: ChangeTokens,
    /// None: this server was started without a key, and makes no secrets.
    key: Option<WebhookKey>,
    settings: WebhookSettings,
    body: WebhookBody,
    /// Told of recoveries, so that deliverers look at the queue at once.
    feed: ChangeFeed,
    /// Told of every change to an endpoint, so that this process's
    /// deliverer takes it into account at once.
    endpoints_changed: Arc<tokio::sync::Notify>,
}

impl Webhooks {
    /// The layer over `db`, reading through `reader`, sealing secrets with
    /// `key` (without one, creating an endpoint or rotating its secret is
    /// refused), and making recovered deliveries' bodies with `body`.
    pub fn new(
        db: DatabaseConnection,
        reader: db::Reader,
        tokens: PageTokens,
        key: Option<WebhookKey>,
        settings: WebhookSettings,
        body: WebhookBody,
    ) -> Self {
        Self {
            db,
            change_tokens: ChangeTokens::new(tokens.clone()),
            tokens,
            key,
            settings,
            body,
            feed: ChangeFeed::new(reader.clone()),
            reader,
            endpoints_changed: Arc::default(),
        }
    }

    /// Tells `feed` of recoveries.
    pub fn notifying(mut self, feed: ChangeFeed) -> Self {
        self.feed = feed;
        self
    }

    /// The key that seals secrets, if this server has one.
    fn key(&self) -> Result<&WebhookKey, ServiceError> {
        self.key.as_ref().ok_or(ServiceError::WebhooksNotConfigured)
    }

    /// Notified whenever this process changes an endpoint (creates,
    /// updates, rotates, deletes or recovers it).
    pub fn endpoints_changed(&self) -> Arc<tokio::sync::Notify> {
        self.endpoints_changed.clone()
    }

    /// Creates an endpoint for `organization` and returns it with its
    /// secret, recording `actor` in the audit log. A retry with the same
    /// request_id returns the endpoint and its current secret, and records
    /// nothing.
    #[instrument(skip_all, fields(caller = %organization))]
    pub async fn create(
        &self,
        actor: &Actor,
        organization: OrganizationId,
        new: NewEndpoint,
    ) -> Result<WithSecret, ServiceError> {
        let sealing = self.key()?;
        check_description(&new.description)?;
        let url = self.check_url(&new.url).await?;
        let key = new.request_id.clone().map(|request_id| {
            IdempotencyKey::new(
                organization,
                "CreateWebhookEndpoint",
                request_id,
                &[
                    new.url.as_bytes(),
                    new.description.as_bytes(),
                    new.event_types.to_storage().as_bytes(),
                ],
            )
        });
        let txn = db::begin_write(&self.db).await?;
        if let Some(key) = &key {
            match idempotency::claim(&*txn, key).await? {
                Claim::Fresh => {}
                Claim::Replay(recorded) => {
                    txn.rollback().await?;
                    return self.replayed(organization, &recorded).await;
                }
                Claim::Raced => {
                    txn.rollback().await?;
                    let recorded = idempotency::replay_committed(&self.reader, key).await?;
                    return self.replayed(organization, &recorded).await;
                }
            }
        }
        let count = webhook_endpoint::count(&*txn, organization).await?;
        if count >= self.settings.endpoints_per_organization as u64 {
            return Err(ServiceError::WebhookEndpointLimitExceeded {
                limit: self.settings.endpoints_per_organization,
            });
        }
        let id = WebhookEndpointId::generate();
        let at = now();
        let endpoint = WebhookEndpoint {
            id,
            organization_id: organization,
            url: url.as_str().to_owned(),
            description: new.description,
            event_types: new.event_types,
            disabled: false,
            disabled_reason: None,
            create_time: at,
            update_time: at,
        };
        let secret = random_bytes::<32>();
        webhook_endpoint::insert(&*txn, &endpoint, sealing.seal(id, &secret)).await?;
        audit_endpoint(&*txn, actor, AuditAction::WebhookEndpointCreated, &endpoint).await?;
        if let Some(key) = &key {
            let recorded = Recorded {
                response: id.uuid().as_bytes().to_vec(),
                change_token: String::new(),
            };
            idempotency::complete(&*txn, key, recorded).await?;
        }
        txn.commit().await?;
        self.endpoints_changed.notify_one();
        tracing::info!(endpoint_id = %id, "webhook endpoint created");
        Ok(WithSecret {
            endpoint,
            secret: SigningKey::secret_of(&secret),
        })
    }

    /// Endpoint `id` of `organization`.
    pub async fn get(
        &self,
        organization: OrganizationId,
        id: WebhookEndpointId,
    ) -> Result<WebhookEndpoint, ServiceError> {
        Ok(self.find(organization, id).await?.endpoint()?)
    }

    /// `organization`'s endpoints, oldest first.
    pub async fn list(
        &self,
        organization: OrganizationId,
        page_size: PageSize,
        page_token: Option<&str>,
    ) -> Result<Page<WebhookEndpoint>, ServiceError> {
        let scope = format!("ListWebhookEndpoints|{organization}");
        let after = self.tokens.cursor(&scope, page_token, |cursor| {
            uuid::Uuid::from_slice(cursor).ok()
        })?;
        let rows =
            webhook_endpoint::list(&self.reader, organization, after, page_size.fetch()).await?;
        Ok(self.tokens.page(&scope, page_size, rows, |last| {
            last.id.uuid().as_bytes().to_vec()
        }))
    }

    /// Changes endpoint `id` of `organization` as `changes` says, recording
    /// `actor` in the audit log.
    #[instrument(skip_all, fields(caller = %organization, endpoint_id = %id))]
    pub async fn update(
        &self,
        actor: &Actor,
        organization: OrganizationId,
        id: WebhookEndpointId,
        changes: EndpointChanges,
    ) -> Result<WebhookEndpoint, ServiceError> {
        let url = match &changes.url {
            Some(url) => Some(self.check_url(url).await?),
            None => None,
        };
        if let Some(description) = &changes.description {
            check_description(description)?;
        }
        let txn = db::begin_write(&self.db).await?;
        let mut endpoint = webhook_endpoint::find_owned(&*txn, organization, id)
            .await?
            .ok_or(ServiceError::WebhookEndpointNotFound)?
            .endpoint()?;
        if let Some(url) = url {
            endpoint.url = url.as_str().to_owned();
        }
        if let Some(description) = changes.description {
            endpoint.description = description;
        }
        if let Some(event_types) = changes.event_types {
            endpoint.event_types = event_types;
        }
        if let Some(disabled) = changes.disabled {
            if disabled != endpoint.disabled {
                endpoint.disabled_reason = None;
            }
            endpoint.disabled = disabled;
        }
        endpoint.update_time = now();
        webhook_endpoint::update(&*txn, &endpoint).await?;
        audit_endpoint(&*txn, actor, AuditAction::WebhookEndpointUpdated, &endpoint).await?;
        txn.commit().await?;
        self.endpoints_changed.notify_one();
        Ok(endpoint)
    }

    /// Deletes endpoint `id` of `organization`, with its queue and record,
    /// recording `actor` in the audit log.
    #[instrument(skip_all, fields(caller = %organization, endpoint_id = %id))]
    pub async fn delete(
        &self,
        actor: &Actor,
        organization: OrganizationId,
        id: WebhookEndpointId,
    ) -> Result<(), ServiceError> {
        let txn = db::begin_write(&self.db).await?;
        let endpoint = webhook_endpoint::find_owned(&*txn, organization, id)
            .await?
            .ok_or(ServiceError::WebhookEndpointNotFound)?
            .endpoint()?;
        if !webhook_endpoint::delete_owned(&*txn, organization, id).await? {
            return Err(ServiceError::WebhookEndpointNotFound);
        }
        webhook_queue::clear(&*txn, id.uuid()).await?;
        webhook_attempt::clear(&*txn, id.uuid()).await?;
        audit_endpoint(&*txn, actor, AuditAction::WebhookEndpointDeleted, &endpoint).await?;
        txn.commit().await?;
        self.endpoints_changed.notify_one();
        tracing::info!("webhook endpoint deleted");
        Ok(())
    }

    /// Gives endpoint `id` of `organization` a new secret, recording `actor`
    /// in the audit log; the current one keeps signing until the returned
    /// time.
    #[instrument(skip_all, fields(caller = %organization, endpoint_id = %id))]
    pub async fn rotate(
        &self,
        actor: &Actor,
        organization: OrganizationId,
        id: WebhookEndpointId,
    ) -> Result<(String, DateTime<Utc>), ServiceError> {
        let sealing = self.key()?;
        let txn = db::begin_write(&self.db).await?;
        let row = webhook_endpoint::find_owned(&*txn, organization, id)
            .await?
            .ok_or(ServiceError::WebhookEndpointNotFound)?;
        let at = now();
        let expire = at
            + chrono::Duration::from_std(self.settings.secret_overlap)
                .unwrap_or(chrono::Duration::MAX);
        let secret = random_bytes::<32>();
        let endpoint = row.endpoint()?;
        webhook_endpoint::rotate(&*txn, id, sealing.seal(id, &secret), row.secret, expire, at)
            .await?;
        audit_endpoint(&*txn, actor, AuditAction::WebhookSecretRotated, &endpoint).await?;
        txn.commit().await?;
        self.endpoints_changed.notify_one();
        tracing::info!("webhook secret rotated");
        Ok((SigningKey::secret_of(&secret), expire))
    }

    /// The delivery attempts of endpoint `id` of `organization`, newest
    /// first.
    pub async fn deliveries(
        &self,
        organization: OrganizationId,
        id: WebhookEndpointId,
        failed_only: bool,
        page_size: PageSize,
        page_token: Option<&str>,
    ) -> Result<Page<DeliveryAttempt>, ServiceError> {
        let scope = format!("ListWebhookDeliveries|{organization}|{id}|{failed_only}");
        let before = self.tokens.cursor(&scope, page_token, |cursor| {
            uuid::Uuid::from_slice(cursor).ok()
        })?;
        self.find(organization, id).await?;
        let rows =
            webhook_attempt::list(&self.reader, id, failed_only, before, page_size.fetch()).await?;
        Ok(self
            .tokens
            .page(&scope, page_size, rows, |last| last.id.as_bytes().to_vec()))
    }

    /// Where a recovery after a change token starts (`field`: where it came
    /// from).
    pub fn recovery_start(
        &self,
        token: &str,
        field: &'static str,
    ) -> Result<Snapshot, ServiceError> {
        self.change_tokens.verify(token, field)
    }

    /// Queues again for endpoint `id` of `organization` every event of its
    /// organization's connections that `after` had not seen and that has
    /// committed, matching the endpoint's types. Returns how many.
    ///
    /// A recovery that queues anything is recorded in the audit log, by
    /// `actor`, once: in the transaction of the first page that queues an
    /// event, so that no event is queued again without the entry having
    /// committed with it or before it. One that queues nothing changes
    /// nothing, and records nothing.
    #[instrument(skip_all, fields(caller = %organization, endpoint_id = %id))]
    pub async fn recover(
        &self,
        actor: &Actor,
        organization: OrganizationId,
        id: WebhookEndpointId,
        after: &Snapshot,
    ) -> Result<i64, ServiceError> {
        let endpoint = self.find(organization, id).await?.endpoint()?;
        let party = Party {
            organization,
            role: None,
        };
        let mut histories: HashMap<ConnectionId, Vec<ConnectionEvent>> = HashMap::new();
        let mut queued = 0_i64;
        let mut audited = false;
        let mut last = None;
        loop {
            let read =
                change_log::unseen_entries(&self.reader, after, last, i64::MAX, LOG_PAGE, party)
                    .await?;
            let full = read.entries.len() as u64 == LOG_PAGE;
            last = read.entries.last().map(|entry| entry.position).or(last);
            let txn = db::begin_write(&self.db).await?;
            let queued_before = queued;
            for entry in &read.entries {
                if !endpoint.event_types.takes(entry.event.event_type) {
                    continue;
                }
                let connection_id = entry.event.connection_id;
                let history = match histories.entry(connection_id) {
                    Entry::Occupied(known) => known.into_mut(),
                    Entry::Vacant(unknown) => {
                        unknown.insert(history(&self.reader, connection_id).await?)
                    }
                };
                let upto = history
                    .iter()
                    .position(|event| event.id == entry.event.id)
                    .ok_or_else(|| {
                        ServiceError::internal("a logged event is not in its history")
                    })?;
                let record = ConnectionRecord::replay(
                    entry.parties,
                    entry.data_types.clone(),
                    history,
                    upto,
                    self.settings.pending_lifetime,
                )
                .ok_or_else(|| {
                    ServiceError::internal("a history does not start with its creation")
                })?;
                let change_token = self
                    .change_tokens
                    .issue(&read.snapshot.below(entry.position + 1));
                let body = (self.body)(&entry.event, &record, &change_token);
                let event = webhook_queue::Queued {
                    event_id: entry.event.id,
                    connection_id: connection_id.uuid(),
                    event_type: entry.event.event_type.as_str(),
                    position: entry.position,
                    change_token: &change_token,
                    body: &body,
                };
                let parties = [organization.uuid(), organization.uuid()];
                queued += webhook_queue::enqueue(&*txn, parties, Some(id.uuid()), &event, now())
                    .await? as i64;
            }
            if !audited && queued > queued_before {
                let action = AuditAction::WebhookDeliveriesRecovered;
                audit_endpoint(&*txn, actor, action, &endpoint).await?;
                audited = true;
            }
            txn.commit().await?;
            if !full {
                break;
            }
        }
        self.endpoints_changed.notify_one();
        tracing::info!(queued, "webhook deliveries recovered");
        Ok(queued)
    }

    async fn find(
        &self,
        organization: OrganizationId,
        id: WebhookEndpointId,
    ) -> Result<webhook_endpoint::Model, ServiceError> {
        webhook_endpoint::find_owned(&self.reader, organization, id)
            .await?
            .ok_or(ServiceError::WebhookEndpointNotFound)
    }

    /// What a retry of a create returns: the endpoint it created (its ID is
    /// what was recorded) and its current secret.
    async fn replayed(
        &self,
        organization: OrganizationId,
        recorded: &Recorded,
    ) -> Result<WithSecret, ServiceError> {
        let id = uuid::Uuid::from_slice(&recorded.response)
            .map_err(|_| ServiceError::internal("a recorded endpoint ID is unreadable"))?;
        let id = WebhookEndpointId::from(id);
        let row = webhook_endpoint::find_owned(&self.db, organization, id)
            .await?
            .ok_or(ServiceError::WebhookEndpointNotFound)?;
        let secret = self.key()?.open(id, &row.secret)?;
        Ok(WithSecret {
            endpoint: row.endpoint()?,
            secret: SigningKey::secret_of(&secret),
        })
    }

    /// `url` if deliveries may go to it: the rules of [`WebhookUrl::parse`],
    /// then, unless private addresses are allowed, every address its host
    /// name resolves to now.
    async fn check_url(&self, url: &str) -> Result<WebhookUrl, ServiceError> {
        let allow_private = self.settings.allow_private_addresses;
        let url = WebhookUrl::parse(url, allow_private).map_err(|problem| match problem {
            UrlProblem::NotHttps | UrlProblem::Blocked(_) => {
                ServiceError::WebhookUrlNotAllowed(problem.to_string())
            }
            UrlProblem::TooLong
            | UrlProblem::Malformed(_)
            | UrlProblem::Credentials
            | UrlProblem::Fragment => ServiceError::invalid_field("url", problem.to_string()),
        })?;
        if allow_private {
            return Ok(url);
        }
        if let Some(class) = resolves_to_blocked(&url).await {
            return Err(ServiceError::WebhookUrlNotAllowed(format!(
                "must not name a host that resolves to a {class} address"
            )));
        }
        Ok(url)
    }
}

/// Records `action` on `endpoint` by `actor` in the audit log, in the
/// transaction `txn` that makes it: the endpoint named by its URL's origin
/// only, so that no secret the URL may carry is copied into the log.
async fn audit_endpoint(
    txn: &impl ConnectionTrait,
    actor: &Actor,
    action: AuditAction,
    endpoint: &WebhookEndpoint,
) -> Result<(), ServiceError> {
    audit::record(
        txn,
        actor,
        action,
        endpoint.id.uuid(),
        endpoint.organization_id,
        &endpoint.audit_name(),
    )
    .await?;
    Ok(())
}

/// How long the check of a new URL waits for its host name to resolve. A
/// name that does not resolve (yet) is accepted: each delivery checks the
/// addresses it connects to.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The class of the first blocked address `url`'s host name resolves to.
async fn resolves_to_blocked(url: &WebhookUrl) -> Option<webhook::BlockedAddress> {
    let host = url.domain()?;
    let port = url.port_or_default();
    let addresses = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .ok()?
        .ok()?;
    addresses
        .map(|address| address.ip())
        .find_map(|ip: IpAddr| webhook::blocked(ip))
}

fn check_description(description: &str) -> Result<(), ServiceError> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ServiceError::invalid_field(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Every event of connection `id`, in sequence order.
async fn history(
    conn: &impl ConnectionTrait,
    id: ConnectionId,
) -> Result<Vec<ConnectionEvent>, ServiceError> {
    let mut events = Vec::new();
    loop {
        let after = events
            .last()
            .map_or(0, |event: &ConnectionEvent| event.sequence);
        let page = connection_event::list(conn, id, after, 1000).await?;
        let done = page.len() < 1000;
        events.extend(page);
        if done {
            return Ok(events);
        }
    }
}
