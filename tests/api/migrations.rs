//! Schema migrations: several replicas starting at once, where each
//! migration is recorded, and a schema newer or older than the release.

use chrono::{DateTime, Utc};
use connections::{
    config::DatabaseSettings,
    db,
    domain::{ConnectionRecord, DataType, DataTypes, Parties, Role},
    grpc::convert::encode_connection,
    service::idempotency::{Claim, IdempotencyKey, claim},
};
use migration::{
    Migrator, MigratorTrait,
    applied::{self, FIRST_RELEASE, FIRST_RELEASE_TABLE, LATER_TABLE},
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, Statement,
    sea_query::{Alias, ColumnDef, Query, Table},
};

use crate::support::{AppOptions, TestDatabase, spawn_replicas};

/// A migration of a release later than this build, which this build does
/// not know: it adds a table.
struct LaterMigration;

/// The name of [`LaterMigration`].
pub const LATER_MIGRATION: &str = "m20991231_000099_a_later_release_s_table";

impl migration::MigrationName for LaterMigration {
    fn name(&self) -> &str {
        LATER_MIGRATION
    }
}

#[migration::async_trait::async_trait]
impl migration::MigrationTrait for LaterMigration {
    async fn up(&self, manager: &migration::SchemaManager) -> Result<(), sea_orm::DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("a_later_release_s_table"))
                    .col(ColumnDef::new(Alias::new("id")).integer().primary_key())
                    .to_owned(),
            )
            .await
    }
}

/// Applies, to the migrated database `db`, a migration of a later release
/// that this build does not know, as that release's `connections migrate`
/// would; returns its name.
pub async fn apply_a_later_release_s_migration(db: &DatabaseConnection) -> &'static str {
    let txn = db::begin_write(db).await.unwrap();
    applied::apply(&*txn, &LaterMigration).await.unwrap();
    txn.commit().await.unwrap();
    LATER_MIGRATION
}

/// The versions recorded in `table`, in order.
async fn recorded(db: &DatabaseConnection, table: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        format!("SELECT version FROM {table} ORDER BY version"),
    ))
    .await
    .unwrap_or_else(|err| panic!("the records in {table}: {err}"))
    .iter()
    .map(|row| row.try_get("", "version").expect("version"))
    .collect()
}

/// A rollout starts every replica at the same moment against a database that
/// has pending migrations: each replica must start, and each migration must
/// be applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_a_new_database_all_start_and_apply_each_migration_once() {
    let replicas = spawn_replicas(
        6,
        AppOptions {
            max_connections: 2,
            ..AppOptions::default()
        },
    )
    .await;

    let db = &replicas[0].server_db;
    let mut applied = recorded(db, FIRST_RELEASE_TABLE).await;
    assert_eq!(db::schema(db).await.unwrap(), db::Schema::default());
    if Migrator::migrations().len() > FIRST_RELEASE.len() {
        applied.extend(recorded(db, LATER_TABLE).await);
    }
    let expected: Vec<String> = Migrator::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .collect();
    assert_eq!(applied, expected);

    for (i, replica) in replicas.iter().enumerate() {
        let org = replica.new_org(&format!("replica {i}")).await;
        assert!(!org.id.is_empty());
    }
}

/// Idempotency records used to keep the service's record as JSON; they now
/// keep the encoded response. A record written in the old form before an
/// upgrade must replay, after it, exactly the response the service would
/// record for that connection today.
#[tokio::test]
async fn a_request_id_recorded_as_json_before_an_upgrade_replays_the_same_response_after_it() {
    let (_database, url) = TestDatabase::create(false).await;
    let db = db::connect(&DatabaseSettings::new(url)).await.unwrap();
    let before = Migrator::migrations()
        .iter()
        .position(|m| m.name().ends_with("idempotency_responses_as_protobuf"))
        .expect("the migration that converts idempotency records");
    Migrator::up(&db, Some(u32::try_from(before).unwrap()))
        .await
        .unwrap();

    let time = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    let record = ConnectionRecord {
        id: uuid::Uuid::now_v7().into(),
        parties: Parties {
            source: uuid::Uuid::now_v7().into(),
            destination: uuid::Uuid::now_v7().into(),
        },
        state: connections::domain::ConnectionState::Inactive,
        data_types: DataTypes::new([DataType::Transaction, DataType::Inquiry]).unwrap(),
        version: 3,
        create_time: time("2026-11-30T12:00:00.123456Z"),
        update_time: time("2026-11-30T12:05:00.5Z"),
        activate_time: Some(time("2026-11-30T12:01:00Z")),
        deactivate_time: Some(time("2026-11-30T12:05:00.5Z")),
        deactivated_by: Some(Role::Destination),
        deactivation_reason: Some("contract ended".to_owned()),
        invitation_message: None,
        expire_time: None,
        pending_data_types: None,
    };
    // As the service serialized its record before the change.
    let old_json = serde_json::json!({
        "id": record.id.to_string(),
        "parties": {
            "source": record.parties.source.to_string(),
            "destination": record.parties.destination.to_string(),
        },
        "state": "INACTIVE",
        "data_types": ["INQUIRY", "TRANSACTION"],
        "version": 3,
        "create_time": "2026-11-30T12:00:00.123456Z",
        "update_time": "2026-11-30T12:05:00.500Z",
        "activate_time": "2026-11-30T12:01:00Z",
        "deactivate_time": "2026-11-30T12:05:00.500Z",
        "deactivated_by": "DESTINATION",
        "deactivation_reason": "contract ended",
    })
    .to_string();
    let caller = record.parties.destination;
    let key = IdempotencyKey::new(
        caller,
        "DeactivateConnection",
        "retry-after-upgrade".to_owned(),
        &[record.id.uuid().as_bytes(), b"", b"contract ended"],
    );
    let column = |name: &str| Alias::new(name);
    let insert = Query::insert()
        .into_table(column("idempotency_records"))
        .columns([
            column("organization_id"),
            column("method"),
            column("request_id"),
            column("request_sha256"),
            column("response"),
            column("create_time"),
        ])
        .values_panic([
            caller.uuid().into(),
            "DeactivateConnection".into(),
            "retry-after-upgrade".into(),
            key.fingerprint().to_vec().into(),
            old_json.into(),
            Utc::now().into(),
        ])
        .to_owned();
    db.execute(&insert).await.unwrap();

    db::migrate(&db).await.unwrap();

    let txn = db::begin_write(&db).await.unwrap();
    let Claim::Replay(recorded) = claim(&*txn, &key).await.unwrap() else {
        panic!("the record written before the upgrade was not found");
    };
    assert_eq!(recorded.response, encode_connection(&record));
    // Recorded before change tokens existed: it replays without one.
    assert_eq!(recorded.change_token, "");
    txn.rollback().await.unwrap();
    db.close().await.unwrap();
}

/// The migrations of the first release, applied as it applies them.
struct FirstRelease;

impl MigratorTrait for FirstRelease {
    fn migrations() -> Vec<Box<dyn migration::MigrationTrait>> {
        Migrator::migrations()
            .into_iter()
            .take(FIRST_RELEASE.len())
            .collect()
    }
}

/// The first release (v0.1.0) records its migrations in `seaql_migrations`
/// and refuses to start when that table names a migration it does not know.
/// Its migrations are this build's first ones, recorded there; every later
/// one is recorded elsewhere.
#[tokio::test]
async fn only_the_first_release_s_migrations_are_recorded_where_the_first_release_reads() {
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .collect();
    assert_eq!(names[..FIRST_RELEASE.len()], FIRST_RELEASE);
    for name in &names[FIRST_RELEASE.len()..] {
        assert_eq!(applied::table_of(name), LATER_TABLE, "{name}");
    }

    let (_database, url) = TestDatabase::create(false).await;
    let db = db::connect(&DatabaseSettings::new(url)).await.unwrap();
    let schema = db::migrate(&db).await.unwrap();
    assert_eq!(schema, db::Schema::default());
    assert_eq!(recorded(&db, FIRST_RELEASE_TABLE).await, FIRST_RELEASE);

    // A later release's migration, and the check the first release makes
    // at every start: sea-orm-migration's own, on `seaql_migrations`.
    apply_a_later_release_s_migration(&db).await;
    let first_release_pending = FirstRelease::get_pending_migrations(&db)
        .await
        .expect("the first release's check of its migrations passes");
    assert!(
        first_release_pending.is_empty(),
        "{:?}",
        first_release_pending
            .iter()
            .map(|migration| migration.name().to_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(recorded(&db, FIRST_RELEASE_TABLE).await, FIRST_RELEASE);
    let mut later = names[FIRST_RELEASE.len()..].to_vec();
    later.push(LATER_MIGRATION.to_owned());
    assert_eq!(recorded(&db, LATER_TABLE).await, later);
    db.close().await.unwrap();
}

/// sea-orm-migration's `Migrator::up` refuses to run on a database that
/// has a migration it does not know. This release migrates such a database
/// (a later release migrated it, and this one still serves or is rolled
/// back to): it applies what it lacks and leaves the rest.
#[tokio::test]
async fn a_schema_with_a_later_release_s_migration_is_migrated_and_reported_newer() {
    let (_database, url) = TestDatabase::create(false).await;
    let db = db::connect(&DatabaseSettings::new(url)).await.unwrap();
    db::migrate(&db).await.unwrap();
    apply_a_later_release_s_migration(&db).await;
    // And one of this release's migrations still to apply.
    Migrator::down(&db, Some(1)).await.unwrap();
    let last = FIRST_RELEASE[FIRST_RELEASE.len() - 1].to_owned();

    let before = db::schema(&db).await.unwrap();
    assert_eq!(before.pending, std::slice::from_ref(&last));
    assert_eq!(before.unknown, [LATER_MIGRATION]);
    let after = db::migrate(&db).await.expect("migrates a newer schema");
    assert_eq!(after.pending, Vec::<String>::new());
    assert_eq!(after.unknown, [LATER_MIGRATION]);
    assert_eq!(db::schema(&db).await.unwrap(), after);
    assert_eq!(recorded(&db, FIRST_RELEASE_TABLE).await, FIRST_RELEASE);
    db.close().await.unwrap();
}

/// Reading the schema's state changes nothing, even on an empty database:
/// a server started with `--no-migrate` leaves it as it found it.
#[tokio::test]
async fn reading_the_schema_of_an_empty_database_finds_every_migration_pending_and_creates_nothing()
{
    let (_database, url) = TestDatabase::create(false).await;
    let db = db::connect(&DatabaseSettings::new(url)).await.unwrap();
    let schema = db::schema(&db).await.unwrap();
    let every: Vec<String> = Migrator::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .collect();
    assert_eq!(schema.pending, every);
    assert!(schema.unknown.is_empty());
    let manager = migration::SchemaManager::new(&db);
    for table in [FIRST_RELEASE_TABLE, LATER_TABLE, "organizations"] {
        assert!(!manager.has_table(table).await.unwrap(), "{table}");
    }
    db.close().await.unwrap();
}
