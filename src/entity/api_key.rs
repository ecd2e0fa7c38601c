//! The `api_keys` table: its rows, the queries that read and write them, and
//! the mapping to domain keys.

use sea_orm::{ActiveValue::Set, QueryOrder, QuerySelect, entity::prelude::*};

use crate::domain::{ApiKey, ApiKeyId, Caller, OrganizationId};

/// An API key; only the SHA-256 digest of its secret is stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The organization the key acts for.
    pub organization_id: Uuid,
    /// Human-readable name.
    pub display_name: String,
    /// The non-secret start of the key.
    pub prefix: String,
    /// SHA-256 of the secret (unique).
    pub secret_sha256: Vec<u8>,
    /// Creation time.
    pub create_time: DateTimeUtc,
    /// Revocation time; `None` while valid.
    pub revoke_time: Option<DateTimeUtc>,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Inserts a new key whose secret has the digest `secret_sha256`.
pub async fn insert(
    conn: &impl ConnectionTrait,
    key: &ApiKey,
    secret_sha256: [u8; 32],
) -> Result<(), DbErr> {
    Entity::insert(ActiveModel {
        id: Set(key.id.uuid()),
        organization_id: Set(key.organization_id.uuid()),
        display_name: Set(key.display_name.clone()),
        prefix: Set(key.prefix.clone()),
        secret_sha256: Set(secret_sha256.to_vec()),
        create_time: Set(key.create_time),
        revoke_time: Set(key.revoke_time),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// The keys of `organization`, revoked ones included, oldest first.
pub async fn list(
    conn: &impl ConnectionTrait,
    organization: OrganizationId,
) -> Result<Vec<ApiKey>, DbErr> {
    let rows = Entity::find()
        .filter(Column::OrganizationId.eq(organization.uuid()))
        .order_by_asc(Column::Id)
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Marks key `id` revoked at `at`, unless it already is; whether it did.
pub async fn revoke(
    conn: &impl ConnectionTrait,
    id: ApiKeyId,
    at: DateTimeUtc,
) -> Result<bool, DbErr> {
    let result = Entity::update_many()
        .col_expr(Column::RevokeTime, at.into())
        .filter(Column::Id.eq(id.uuid()))
        .filter(Column::RevokeTime.is_null())
        .exec(conn)
        .await?;
    Ok(result.rows_affected > 0)
}

/// Key `id` and the digest of its secret, if it exists.
pub async fn find(
    conn: &impl ConnectionTrait,
    id: ApiKeyId,
) -> Result<Option<(ApiKey, Vec<u8>)>, DbErr> {
    Ok(Entity::find_by_id(id.uuid()).one(conn).await?.map(|row| {
        let digest = row.secret_sha256.clone();
        (from_row(row), digest)
    }))
}

/// The query for the organization, ID, display name and digest of the
/// unrevoked key whose secret has the digest `presented`.
pub fn lookup_query(presented: &[u8; 32]) -> Select<Entity> {
    Entity::find()
        .select_only()
        .column(Column::OrganizationId)
        .column(Column::Id)
        .column(Column::DisplayName)
        .column(Column::SecretSha256)
        .filter(Column::SecretSha256.eq(presented.to_vec()))
        .filter(Column::RevokeTime.is_null())
}

/// Who calls with the unrevoked key whose secret has the digest
/// `presented`, and the key's stored digest, if there is one.
pub async fn lookup(
    conn: &impl ConnectionTrait,
    presented: &[u8; 32],
) -> Result<Option<(Caller, Vec<u8>)>, DbErr> {
    let found: Option<(Uuid, Uuid, String, Vec<u8>)> =
        lookup_query(presented).into_tuple().one(conn).await?;
    Ok(found.map(|(organization, id, name, digest)| {
        let caller = Caller {
            organization: organization.into(),
            api_key: id.into(),
            api_key_name: name.into(),
        };
        (caller, digest)
    }))
}

fn from_row(row: Model) -> ApiKey {
    ApiKey {
        id: row.id.into(),
        organization_id: row.organization_id.into(),
        display_name: row.display_name,
        prefix: row.prefix,
        create_time: row.create_time,
        revoke_time: row.revoke_time,
    }
}
