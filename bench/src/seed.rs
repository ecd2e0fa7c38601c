//! Test data. Organizations that call the API, their keys and the connections
//! the write benchmarks change are made through the API; the bulk (up to a
//! million organizations and connections) is generated inside the database
//! by one `INSERT ... SELECT` per table, with IDs derived from a counter so
//! the load generator and pgbench can name any row without a lookup.

use connections::proto::{
    CreateApiKeyRequest, CreateOrganizationRequest, admin_service_client::AdminServiceClient,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use tonic::{Request, metadata::AsciiMetadataValue, transport::Channel};

/// High bits of bulk organization IDs: a valid UUIDv7 (version 7, variant
/// 10) from 2024, so bulk rows sort before anything made through the API.
const ORGANIZATION_PREFIX: &str = "01900000-0000-7000-8000-";
/// High bits of bulk connection IDs.
const CONNECTION_PREFIX: &str = "01910000-0000-7000-8000-";

fn bulk_id(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:012x}")
}

/// Bulk organization `n` (1-based).
pub fn organization_id(n: u64) -> String {
    bulk_id(ORGANIZATION_PREFIX, n)
}

/// Bulk connection `n` (1-based).
pub fn connection_id(n: u64) -> String {
    bulk_id(CONNECTION_PREFIX, n)
}

/// SQL for the ID of bulk row `expr` (an integer expression) with `prefix`.
pub fn sql_id(backend: DbBackend, prefix: &str, expr: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("('{prefix}' || lpad(to_hex({expr}), 12, '0'))::uuid"),
        // SQLite keeps UUIDs as 16-byte blobs.
        _ => format!(
            "unhex('{}' || printf('%012x', {expr}))",
            prefix.replace('-', "")
        ),
    }
}

/// SQL for the ID of bulk connection `expr`.
pub fn sql_connection_id(backend: DbBackend, expr: &str) -> String {
    sql_id(backend, CONNECTION_PREFIX, expr)
}

/// An organization made through the AdminService, with a key.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its ID.
    pub id: String,
    /// `Bearer <its API key>`.
    pub key: AsciiMetadataValue,
    /// The API key itself.
    pub secret: String,
    /// The key's ID.
    pub key_id: String,
    /// The key's display name.
    pub key_name: String,
}

/// Makes an organization and an API key for it through the AdminService.
pub async fn caller(channel: Channel, admin_token: &str, name: &str) -> anyhow::Result<Caller> {
    let mut admin = AdminServiceClient::new(channel);
    let token: AsciiMetadataValue = format!("Bearer {admin_token}").parse()?;
    let mut request = Request::new(CreateOrganizationRequest {
        display_name: name.to_owned(),
    });
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    let organization = admin
        .create_organization(request)
        .await?
        .into_inner()
        .organization
        .ok_or_else(|| anyhow::anyhow!("no organization in the response"))?;
    let key_name = "benchmark".to_owned();
    let mut request = Request::new(CreateApiKeyRequest {
        organization_id: organization.id.clone(),
        display_name: key_name.clone(),
    });
    request.metadata_mut().insert("authorization", token);
    let created = admin.create_api_key(request).await?.into_inner();
    let key_id = created
        .api_key
        .ok_or_else(|| anyhow::anyhow!("no API key in the response"))?
        .id;
    Ok(Caller {
        id: organization.id,
        key: crate::workload::bearer(&created.secret),
        secret: created.secret,
        key_id,
        key_name,
    })
}

/// What the bulk insert makes.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Organizations 1..=organizations.
    pub organizations: u64,
    /// `small` has connections 1..=small_count, to organizations 1..=small_count.
    pub small_count: u64,
    /// `large` has the next large_count connections, to organizations 1..=large_count.
    pub large_count: u64,
}

/// Bulk connections of each organization that are PENDING; the rest are ACTIVE.
pub const PENDING_PER_ORGANIZATION: u64 = 10;

/// Inserts the bulk rows for the organizations `small` and `large`.
pub async fn bulk(
    db: &DatabaseConnection,
    bulk: Bulk,
    small: &Caller,
    large: &Caller,
) -> anyhow::Result<()> {
    let backend = db.get_database_backend();
    let postgres = backend == DbBackend::Postgres;
    let series = |n: u64| {
        if postgres {
            format!("SELECT n FROM generate_series(1, {n}) AS s(n)")
        } else {
            format!(
                "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n}) \
                 SELECT n FROM s"
            )
        }
    };
    let now = if postgres {
        "now()"
    } else {
        "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')"
    };
    let uuid = |id: &str| {
        if postgres {
            format!("'{id}'::uuid")
        } else {
            format!("unhex('{}')", id.replace('-', ""))
        }
    };
    let organization = |expr: &str| sql_id(backend, ORGANIZATION_PREFIX, expr);
    let connection = |expr: &str| sql_id(backend, CONNECTION_PREFIX, expr);

    db.execute_unprepared(&format!(
        "INSERT INTO organizations (id, display_name, create_time) \
         SELECT {}, 'Bulk organization ' || n, {now} FROM ({}) AS bulk",
        organization("n"),
        series(bulk.organizations)
    ))
    .await?;
    for (owner, offset, count) in [
        (small, 0, bulk.small_count),
        (large, bulk.small_count, bulk.large_count),
    ] {
        // PENDING_PER_ORGANIZATION rows spread through the range, the rest
        // ACTIVE: a PENDING-only list finds a short page among many rows.
        let every = (count / PENDING_PER_ORGANIZATION).max(1);
        db.execute_unprepared(&format!(
            "INSERT INTO connections (id, source_organization_id, destination_organization_id, \
             state, data_types, version, create_time, update_time, activate_time) \
             SELECT {}, {}, {}, \
             CASE WHEN n % {every} = 0 THEN 'PENDING' ELSE 'ACTIVE' END, \
             'INQUIRY,ACCOUNT', 1, {now}, {now}, \
             CASE WHEN n % {every} = 0 THEN NULL ELSE {now} END FROM ({}) AS bulk",
            connection(&format!("n + {offset}")),
            uuid(&owner.id),
            organization("n"),
            series(count),
        ))
        .await?;
    }
    settle(db).await
}

/// Leaves the database as a long-running one would be after a bulk load:
/// statistics current, no vacuum or checkpoint of the load still to come
/// during the measurements.
pub async fn settle(db: &DatabaseConnection) -> anyhow::Result<()> {
    if db.get_database_backend() == DbBackend::Postgres {
        db.execute_unprepared("VACUUM ANALYZE").await?;
        // Needs superuser or pg_checkpoint; without it, the load's pages are
        // written by the next timed checkpoint instead.
        if let Err(err) = db.execute_unprepared("CHECKPOINT").await {
            eprintln!("note: CHECKPOINT refused ({err}); measurements may include it");
        }
    } else {
        db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn bulk_ids_are_uuid_v7() {
        for id in [organization_id(1), connection_id(1_000_000)] {
            let uuid = Uuid::parse_str(&id).unwrap();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
        assert_eq!(connection_id(255), "01910000-0000-7000-8000-0000000000ff");
    }
}
