//! A database moved to another PostgreSQL cluster (dump and restore, as in
//! disaster recovery or a move between major versions): the change log goes
//! on in order above its old positions, and change tokens issued before the
//! move keep their meaning.

use std::time::Duration;

use connections::proto::{
    CheckAccessRequest, DataType, DeactivateConnectionRequest, WatchConnectionEventsResponse,
    access_service_client::AccessServiceClient,
};
use sea_orm::sqlx::{self, Connection as _, Executor, PgConnection};
use tonic::Streaming;

use crate::support::{
    AppOptions, Bearer, TestDatabase,
    own_postgres::OwnPostgres,
    require_postgres, spawn_app, spawn_app_on, spawn_replica_of,
    watching::{after, from_beginning, keys, until_quiet, watch},
};

/// The (connection, sequence) of every event `stream` sends until it falls
/// quiet, and the last token.
async fn keys_until_quiet(
    stream: &mut Streaming<WatchConnectionEventsResponse>,
) -> (Vec<(String, i64)>, String) {
    let (events, token) = until_quiet(stream, Duration::from_millis(500)).await;
    (keys(&events), token)
}

/// The highest position in the change log of the database at `url`.
async fn highest_position(url: &str) -> i64 {
    let mut session = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT MAX(position) FROM connection_events")
        .fetch_one(&mut session)
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn after_a_dump_and_restore_into_a_new_cluster_the_log_goes_on_above_its_old_positions() {
    require_postgres();
    // A new cluster's transaction IDs start low: lower than those of the
    // test's server once it has handed out the 20,000 spent below.
    let own = match OwnPostgres::start(&[]) {
        Ok(own) => own,
        Err(why) => {
            eprintln!("skipped: no PostgreSQL server of the test's own to restore into: {why}");
            return;
        }
    };
    let old = spawn_app().await;
    let mut session = PgConnection::connect(&old.database_url).await.unwrap();
    session
        .execute(
            "CREATE TEMPORARY TABLE spent (n int); \
             DO $$ BEGIN FOR i IN 1..20000 LOOP \
                 BEGIN INSERT INTO spent VALUES (i); EXCEPTION WHEN OTHERS THEN NULL; END; \
             END LOOP; END $$",
        )
        .await
        .unwrap();
    drop(session);
    let source = old.new_org("S").await;
    let destination = old.new_org("D").await;
    let id = old.connect(&source, &destination).await.id;
    old.activate(&destination, &id, "").await.unwrap();
    let (_, before_deactivation) =
        keys_until_quiet(&mut watch(&old, &source, from_beginning()).await).await;
    let deactivated = old
        .connections(&destination)
        .deactivate_connection(DeactivateConnectionRequest {
            connection_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .change_token;
    let old_highest = highest_position(&old.database_url).await;
    let old_url = old.database_url.clone();
    let (stopping, _old_database) = old.begin_stop();
    stopping.finished().await;

    // Dump, and restore into a new database of the new cluster.
    let dump = std::env::temp_dir().join(format!("connections-{}.dump", uuid::Uuid::now_v7()));
    let dump_path = dump.display().to_string();
    own.client("pg_dump", &["-Fc", "-f", &dump_path, "-d", &old_url])
        .unwrap();
    let (database, url) = TestDatabase::create_on(&own.url).await;
    own.client("pg_restore", &["--no-owner", "-d", &url, &dump_path])
        .unwrap();
    std::fs::remove_file(&dump).unwrap();
    let mut session = PgConnection::connect(&url).await.unwrap();
    let counter: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert!(
        counter < old_highest,
        "the new cluster's transaction IDs ({counter}) start below the old positions ({old_highest})"
    );

    let new = spawn_app_on(database, url.clone(), AppOptions::default()).await;
    new.reactivate(&source, &id, "").await.unwrap();
    new.activate(&destination, &id, "").await.unwrap();
    // Another connection: new positions take no old one.
    let other = new.new_org("O").await;
    new.connect(&source, &other).await;
    // Written after the move: the first connection's events from the fourth
    // on, and the other connection's.
    let lowest_new: i64 = sqlx::query_scalar(
        "SELECT MIN(position) FROM connection_events \
         WHERE NOT (connection_id = $1::uuid AND sequence <= 3)",
    )
    .bind(&id)
    .fetch_one(&mut session)
    .await
    .unwrap();
    assert!(lowest_new > old_highest, "{lowest_new} after {old_highest}");

    // The whole log, in order: the old history, then the new.
    let (all, _) = keys_until_quiet(&mut watch(&new, &source, from_beginning()).await).await;
    let history: Vec<(String, i64)> = new
        .events(&source, &id)
        .await
        .into_iter()
        .map(|e| (e.connection_id, e.sequence))
        .collect();
    assert_eq!(&all[..5], &history[..], "the connection's history in order");
    assert_eq!(all.len(), 6);
    // Tokens from before the move: a write's and a watch's.
    let (resumed, _) = keys_until_quiet(&mut watch(&new, &source, after(&deactivated)).await).await;
    assert_eq!(resumed, all[3..].to_vec(), "after the old deactivation");
    let (resumed, _) =
        keys_until_quiet(&mut watch(&new, &source, after(&before_deactivation)).await).await;
    assert_eq!(resumed, all[2..].to_vec(), "after the old watch's token");
    let answer =
        AccessServiceClient::with_interceptor(new.channel.clone(), Bearer::new(&source.key))
            .check_access(CheckAccessRequest {
                source_organization_id: source.id.clone(),
                destination_organization_id: destination.id.clone(),
                data_type: DataType::Inquiry.into(),
                at_least_change_token: deactivated,
            })
            .await
            .unwrap()
            .into_inner();
    assert!(answer.allowed, "the answer reflects the new activation");
    let epochs: i64 = sqlx::query_scalar("SELECT count(*) FROM change_log_epochs")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(epochs, 2, "a new epoch began");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn a_server_starting_while_an_old_transaction_is_open_elsewhere_keeps_the_epoch() {
    let (server, _) = require_postgres();
    // The cluster's oldest running transaction is older than every event.
    let mut idle = PgConnection::connect(&server).await.unwrap();
    idle.execute("BEGIN").await.unwrap();
    idle.execute("SELECT pg_current_xact_id()").await.unwrap();
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    let destination = app.new_org("D").await;
    let id = app.connect(&source, &destination).await.id;
    app.activate(&destination, &id, "").await.unwrap();
    let replica = spawn_replica_of(&app, AppOptions::default()).await;
    replica.deactivate(&destination, &id, "").await.unwrap();
    let mut session = PgConnection::connect(&app.database_url).await.unwrap();
    let epochs: i64 = sqlx::query_scalar("SELECT count(*) FROM change_log_epochs")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(epochs, 1, "no move, no new epoch");
    idle.execute("ROLLBACK").await.unwrap();
}
