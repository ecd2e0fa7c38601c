//! The PostgreSQL pool for reads: connections are reused without a round trip
//! in between, one left mid-statement by a cancelled call is never reused, and
//! one the database has closed costs a retry, not an error.

use std::time::Duration;

use connections::db::{PgReadPool, Reader};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::support::{TestDatabase, app::db_settings, require_postgres};

async fn backend_pid(reader: &Reader) -> i32 {
    let row = reader
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_backend_pid() AS pid",
        ))
        .await
        .expect("query")
        .expect("one row");
    row.try_get("", "pid").expect("pid")
}

/// A read pool of `max_connections` on a PostgreSQL database of its own,
/// and the database's URL (the read pool is PostgreSQL's).
async fn read_pool(max_connections: u32) -> (TestDatabase, String, Reader) {
    require_postgres();
    let (database, url) = TestDatabase::create(false).await;
    let reader =
        Reader::Postgres(PgReadPool::new(&db_settings(&url, max_connections)).expect("pool"));
    (database, url, reader)
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn a_read_cancelled_mid_statement_never_hands_its_connection_to_the_next_read() {
    let (_database, _, reader) = read_pool(1).await;

    let first = backend_pid(&reader).await;
    assert_eq!(
        backend_pid(&reader).await,
        first,
        "a finished read's connection is reused"
    );

    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        reader.query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_sleep(30)",
        )),
    )
    .await;
    assert!(cancelled.is_err(), "the sleep was cut short");

    // The only pooled connection is still waiting on pg_sleep: the next read
    // must get a fresh one, not that one.
    let after = tokio::time::timeout(Duration::from_secs(10), backend_pid(&reader))
        .await
        .expect("the next read does not wait for the cancelled statement");
    assert_ne!(after, first);
    assert_eq!(backend_pid(&reader).await, after);

    reader.close().await;
}

/// After a database restart or failover, every pooled connection is dead, and
/// the pool only learns so by using it. A read is safe to run again: it is
/// retried on another connection instead of failing the call.
#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn reads_on_connections_the_database_closed_are_retried_on_fresh_ones() {
    let (_database, url, reader) = read_pool(4).await;
    // Open all four: four reads at once, each holding its connection a while.
    let held = futures::future::join_all((0..4).map(|_| {
        reader.query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_backend_pid() AS pid, pg_sleep(0.2)",
        ))
    }))
    .await;
    let pooled: Vec<i32> = held
        .into_iter()
        .map(|row| {
            row.expect("query")
                .expect("row")
                .try_get("", "pid")
                .expect("pid")
        })
        .collect();

    let admin = sea_orm::Database::connect(&url).await.expect("connect");
    let terminated = admin
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid IN ({})",
                pooled
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ))
        .await
        .expect("terminate");
    assert_eq!(terminated.len(), 4);
    admin.close().await.ok();
    tokio::time::sleep(Duration::from_millis(100)).await;

    for _ in 0..4 {
        let pid = backend_pid(&reader).await;
        assert!(!pooled.contains(&pid), "a terminated session answered");
    }
    reader.close().await;
}
