//! Schema migrations when several replicas start at once.

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Statement};

use crate::support::{AppOptions, spawn_replicas};

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
