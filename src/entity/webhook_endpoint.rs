//! The `webhook_endpoints` table: each organization's endpoints, their
//! encrypted signing secrets, and the lease of the replica that delivers to
//! each. Every query that a caller reaches is scoped to its organization.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    QueryOrder, QuerySelect,
    entity::prelude::*,
    sea_query::{Expr, ExprTrait, Query},
};

use super::unreadable;
use crate::domain::{
    OrganizationId, WebhookEndpointId,
    webhook::{EventTypes, WebhookEndpoint},
};

/// An endpoint.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_endpoints")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The owner.
    pub organization_id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// Free text.
    pub description: String,
    /// See [`EventTypes::to_storage`].
    pub event_types: String,
    /// Paused.
    pub disabled: bool,
    /// Why the server disabled it.
    pub disabled_reason: Option<String>,
    /// The signing secret, encrypted.
    pub secret: Vec<u8>,
    /// The secret before the last rotation, encrypted, while it still signs.
    pub previous_secret: Option<Vec<u8>>,
    /// Until when the previous secret signs.
    pub previous_secret_expire_time: Option<DateTimeUtc>,
    /// Since when every attempt has failed.
    pub failing_since: Option<DateTimeUtc>,
    /// The replica delivering to it.
    pub lease_owner: Option<Uuid>,
    /// Until when that replica holds it.
    pub lease_expire_time: Option<DateTimeUtc>,
    /// Creation time.
    pub create_time: DateTimeUtc,
    /// Last change by its owner (or the server disabling it).
    pub update_time: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Model {
    /// The endpoint as its owner sees it.
    pub fn endpoint(&self) -> Result<WebhookEndpoint, DbErr> {
        Ok(WebhookEndpoint {
            id: self.id.into(),
            organization_id: self.organization_id.into(),
            url: self.url.clone(),
            description: self.description.clone(),
            event_types: EventTypes::from_storage(&self.event_types)
                .map_err(|err| unreadable("webhook_endpoints", err))?,
            disabled: self.disabled,
            disabled_reason: self.disabled_reason.clone(),
            create_time: self.create_time,
            update_time: self.update_time,
        })
    }
}

/// Inserts `endpoint` with its encrypted secret.
pub async fn insert(
    conn: &impl ConnectionTrait,
    endpoint: &WebhookEndpoint,
    secret: Vec<u8>,
) -> Result<(), DbErr> {
    Entity::insert(ActiveModel {
        id: Set(endpoint.id.uuid()),
        organization_id: Set(endpoint.organization_id.uuid()),
        url: Set(endpoint.url.clone()),
        description: Set(endpoint.description.clone()),
        event_types: Set(endpoint.event_types.to_storage()),
        disabled: Set(endpoint.disabled),
        disabled_reason: Set(endpoint.disabled_reason.clone()),
        secret: Set(secret),
        previous_secret: Set(None),
        previous_secret_expire_time: Set(None),
        failing_since: Set(None),
        lease_owner: Set(None),
        lease_expire_time: Set(None),
        create_time: Set(endpoint.create_time),
        update_time: Set(endpoint.update_time),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// Endpoint `id` if `organization` owns it.
pub async fn find_owned(
    conn: &impl ConnectionTrait,
    organization: OrganizationId,
    id: WebhookEndpointId,
) -> Result<Option<Model>, DbErr> {
    Entity::find_by_id(id.uuid())
        .filter(Column::OrganizationId.eq(organization.uuid()))
        .one(conn)
        .await
}

/// How many endpoints `organization` has.
pub async fn count(
    conn: &impl ConnectionTrait,
    organization: OrganizationId,
) -> Result<u64, DbErr> {
    Entity::find()
        .filter(Column::OrganizationId.eq(organization.uuid()))
        .count(conn)
        .await
}

/// `organization`'s endpoints after `after`, oldest first: at most `limit`.
pub async fn list(
    conn: &impl ConnectionTrait,
    organization: OrganizationId,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<WebhookEndpoint>, DbErr> {
    let mut query = Entity::find().filter(Column::OrganizationId.eq(organization.uuid()));
    if let Some(after) = after {
        query = query.filter(Column::Id.gt(after));
    }
    query
        .order_by_asc(Column::Id)
        .limit(limit)
        .all(conn)
        .await?
        .iter()
        .map(Model::endpoint)
        .collect()
}

/// Saves the owner-visible fields of `endpoint` (which it must own).
pub async fn update(conn: &impl ConnectionTrait, endpoint: &WebhookEndpoint) -> Result<(), DbErr> {
    Entity::update_many()
        .set(ActiveModel {
            url: Set(endpoint.url.clone()),
            description: Set(endpoint.description.clone()),
            event_types: Set(endpoint.event_types.to_storage()),
            disabled: Set(endpoint.disabled),
            disabled_reason: Set(endpoint.disabled_reason.clone()),
            update_time: Set(endpoint.update_time),
            // Enabled again: its failures so far no longer count.
            failing_since: if endpoint.disabled { NotSet } else { Set(None) },
            ..Default::default()
        })
        .filter(Column::Id.eq(endpoint.id.uuid()))
        .filter(Column::OrganizationId.eq(endpoint.organization_id.uuid()))
        .exec(conn)
        .await?;
    Ok(())
}

/// Replaces the secret of endpoint `id`; the old one keeps signing until
/// `previous_expire`.
pub async fn rotate(
    conn: &impl ConnectionTrait,
    id: WebhookEndpointId,
    secret: Vec<u8>,
    previous: Vec<u8>,
    previous_expire: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    Entity::update_many()
        .set(ActiveModel {
            secret: Set(secret),
            previous_secret: Set(Some(previous)),
            previous_secret_expire_time: Set(Some(previous_expire)),
            update_time: Set(now),
            ..Default::default()
        })
        .filter(Column::Id.eq(id.uuid()))
        .exec(conn)
        .await?;
    Ok(())
}

/// Deletes endpoint `id` if `organization` owns it; whether it did.
pub async fn delete_owned(
    conn: &impl ConnectionTrait,
    organization: OrganizationId,
    id: WebhookEndpointId,
) -> Result<bool, DbErr> {
    let deleted = Entity::delete_many()
        .filter(Column::Id.eq(id.uuid()))
        .filter(Column::OrganizationId.eq(organization.uuid()))
        .exec(conn)
        .await?;
    Ok(deleted.rows_affected == 1)
}

/// Takes the lease of enabled endpoints that no replica holds (none, or
/// one that ended), at most `limit` of them, for `owner` until `until`;
/// with `renew`, also extends every lease `owner` holds to `until`.
/// Conditional updates: two replicas never both hold one endpoint.
pub async fn lease(
    conn: &impl ConnectionTrait,
    owner: Uuid,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: u64,
    renew: bool,
) -> Result<(), DbErr> {
    let free = || {
        Expr::col(Column::LeaseOwner)
            .is_null()
            .or(Expr::col(Column::LeaseExpireTime).lt(now))
    };
    let candidates = Query::select()
        .column(Column::Id)
        .from(Entity)
        .and_where(Expr::col(Column::Disabled).eq(false))
        .and_where(free())
        .limit(limit)
        .to_owned();
    Entity::update_many()
        .col_expr(Column::LeaseOwner, Expr::val(owner))
        .col_expr(Column::LeaseExpireTime, Expr::val(until))
        .filter(Column::Id.in_subquery(candidates))
        .filter(free())
        .exec(conn)
        .await?;
    if renew {
        Entity::update_many()
            .col_expr(Column::LeaseExpireTime, Expr::val(until))
            .filter(Column::LeaseOwner.eq(owner))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// Gives up `owner`'s leases (at a clean stop), so that another replica
/// takes over at once.
pub async fn release(conn: &impl ConnectionTrait, owner: Uuid) -> Result<(), DbErr> {
    Entity::update_many()
        .col_expr(Column::LeaseOwner, Expr::val(Option::<Uuid>::None))
        .col_expr(
            Column::LeaseExpireTime,
            Expr::val(Option::<DateTime<Utc>>::None),
        )
        .filter(Column::LeaseOwner.eq(owner))
        .exec(conn)
        .await?;
    Ok(())
}

/// Records the outcome of an attempt on the endpoint's health: a success
/// clears `failing_since`, a failure sets it if unset. If it has been failing
/// since before `disable_before`, or `disable` is given, the endpoint is
/// disabled with that reason. Returns whether it was disabled now.
pub async fn record_health(
    conn: &impl ConnectionTrait,
    id: Uuid,
    succeeded: bool,
    now: DateTime<Utc>,
    disable_before: DateTime<Utc>,
    disable: Option<&str>,
) -> Result<bool, DbErr> {
    if succeeded {
        Entity::update_many()
            .col_expr(
                Column::FailingSince,
                Expr::val(Option::<DateTime<Utc>>::None),
            )
            .filter(Column::Id.eq(id))
            .filter(Column::FailingSince.is_not_null())
            .exec(conn)
            .await?;
        return Ok(false);
    }
    Entity::update_many()
        .col_expr(Column::FailingSince, Expr::val(now))
        .filter(Column::Id.eq(id))
        .filter(Column::FailingSince.is_null())
        .exec(conn)
        .await?;
    let reason = match disable {
        Some(reason) => reason.to_owned(),
        None => {
            let failing = Entity::find_by_id(id)
                .filter(Column::FailingSince.lt(disable_before))
                .filter(Column::Disabled.eq(false))
                .one(conn)
                .await?;
            match failing.and_then(|row| row.failing_since) {
                Some(since) => format!(
                    "every delivery attempt failed since {}",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => return Ok(false),
            }
        }
    };
    let disabled = Entity::update_many()
        .col_expr(Column::Disabled, Expr::val(true))
        .col_expr(Column::DisabledReason, Expr::val(reason))
        .col_expr(Column::UpdateTime, Expr::val(now))
        .filter(Column::Id.eq(id))
        .filter(Column::Disabled.eq(false))
        .exec(conn)
        .await?;
    Ok(disabled.rows_affected == 1)
}

/// The endpoints of `organizations` that take events of type `stored_type`
/// (an `EventType` name): the ones a new event is queued for.
pub(super) fn taking(
    organizations: [Uuid; 2],
    stored_type: &str,
) -> sea_orm::sea_query::SelectStatement {
    Query::select()
        .column(Column::Id)
        .from(Entity)
        .and_where(Column::OrganizationId.is_in(organizations))
        .and_where(
            Expr::col(Column::EventTypes)
                .eq("")
                .or(Expr::col(Column::EventTypes).like(format!("%,{stored_type},%"))),
        )
        .to_owned()
}
