//! Schema migrations when several replicas start at once.

use chrono::{DateTime, Utc};
use connections::{
    config::DatabaseSettings,
    db,
    domain::{ConnectionRecord, DataType, DataTypes, Parties, Role},
    grpc::convert::encode_connection,
    service::idempotency::{Claim, IdempotencyKey, claim},
};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectionTrait, Statement,
    sea_query::{Alias, Query},
};

use crate::support::{AppOptions, TestDatabase, spawn_replicas};

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
    let applied: Vec<String> = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT version FROM seaql_migrations ORDER BY version",
        ))
        .await
        .expect("migration records")
        .iter()
        .map(|row| row.try_get("", "version").expect("version"))
        .collect();
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

    Migrator::up(&db, None).await.unwrap();

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
