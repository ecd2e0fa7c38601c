//! The change log: one order of every committed event, the same on every
//! replica, read up to a horizon that never skips a late commit; and the
//! change tokens that writes return.

use connections::{
    db,
    domain::{Action, ApiKeyId, Caller, Change, ConnectionId, OrganizationId},
    entity::{change_log, connection, connection_event},
    proto::{ActivateConnectionRequest, CreateConnectionRequest, DataType},
};
use sea_orm::{Database, DatabaseConnection};

use crate::support::{
    AppOptions, FIRST_KEY_NAME, TestOrg, require_postgres, spawn_app, spawn_replicas,
};

/// The whole log below its horizon: (position, connection, sequence).
async fn read_log(db: &DatabaseConnection) -> Vec<(i64, ConnectionId, i64)> {
    let horizon = change_log::horizon(db).await.unwrap();
    change_log::log_entries(db, i64::MIN, horizon, 10_000, None)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|entry| {
            (
                entry.position,
                entry.event.connection_id,
                entry.event.sequence,
            )
        })
        .collect()
}

/// The log once it holds at least `count` events: on PostgreSQL its
/// horizon waits for every transaction of the cluster that began before the
/// last write, including other tests'.
async fn log_of_at_least(db: &DatabaseConnection, count: usize) -> Vec<(i64, ConnectionId, i64)> {
    let started = tokio::time::Instant::now();
    loop {
        let log = read_log(db).await;
        if log.len() >= count {
            return log;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the log holds {} of {count} events",
            log.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Activates `id` as `destination` in a transaction on `db` that is left
/// open, with its event written.
async fn activate_without_committing(
    db: &DatabaseConnection,
    destination: &TestOrg,
    id: &str,
) -> db::WriteTransaction {
    let caller = Caller {
        organization: OrganizationId::parse(&destination.id).unwrap(),
        api_key: ApiKeyId::parse(&destination.key_id).unwrap(),
        api_key_name: FIRST_KEY_NAME.into(),
    };
    let id = ConnectionId::parse(id).unwrap();
    let txn = db::begin_write(db).await.unwrap();
    let current = connection::secure_find(&*txn, caller.organization, id)
        .await
        .unwrap()
        .unwrap();
    let (next, event) = current
        .apply(Change {
            action: Action::Activate,
            caller,
            etag: None,
            reason: None,
            message: None,
            data_types: None,
            pending_lifetime: None,
            at: chrono::Utc::now(),
        })
        .unwrap();
    assert!(
        connection::update_guarded(&*txn, current.version, &next)
            .await
            .unwrap()
    );
    connection_event::append(&*txn, &event).await.unwrap();
    txn
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn an_event_committed_late_is_not_skipped_and_every_replica_reads_one_order() {
    require_postgres();
    let replicas = spawn_replicas(2, AppOptions::default()).await;
    let app = &replicas[0];
    let source = app.new_org("S").await;
    let (d1, d2) = (app.new_org("D1").await, app.new_org("D2").await);
    let first = app.connect(&source, &d1).await.id;
    let second = app.connect(&source, &d2).await.id;
    let before = log_of_at_least(&app.server_db, 2).await;

    // A writer takes its position, writes its event and holds its
    // transaction open; another commits after it.
    let held_pool = Database::connect(&app.database_url).await.unwrap();
    let held = activate_without_committing(&held_pool, &d1, &first).await;
    replicas[1].activate(&d2, &second, "").await.unwrap();

    // A reader now sees neither: the later commit waits for the earlier
    // position, so a reader that had passed it could not miss it.
    assert_eq!(read_log(&app.server_db).await, before);
    assert_eq!(read_log(&replicas[1].server_db).await, before);

    held.commit().await.unwrap();
    held_pool.close().await.unwrap();

    // Then both, the held one first, and every replica reads the same order.
    let after = log_of_at_least(&app.server_db, 4).await;
    assert_eq!(&after[..before.len()], &before[..]);
    let new: Vec<_> = after[before.len()..]
        .iter()
        .map(|(_, id, sequence)| (id.to_string(), *sequence))
        .collect();
    assert_eq!(new, [(first.clone(), 2), (second.clone(), 2)]);
    assert_eq!(log_of_at_least(&replicas[1].server_db, 4).await, after);
}

#[tokio::test]
async fn the_log_holds_every_event_once_in_an_order_that_agrees_with_each_history() {
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let destination = app.new_org(&format!("D{i}")).await;
        let id = app.connect(&source, &destination).await.id;
        app.activate(&destination, &id, "").await.unwrap();
        app.deactivate(&source, &id, "").await.unwrap();
        ids.push(id);
    }
    let log = log_of_at_least(&app.server_db, 9).await;
    assert_eq!(log.len(), 9);
    assert!(log.windows(2).all(|w| w[0].0 < w[1].0), "{log:?}");
    for id in &ids {
        let sequences: Vec<i64> = log
            .iter()
            .filter(|(_, c, _)| c.to_string() == *id)
            .map(|(_, _, sequence)| *sequence)
            .collect();
        assert_eq!(sequences, [1, 2, 3], "{id}");
    }
}

#[tokio::test]
async fn writes_return_a_change_token_and_a_retry_returns_the_same_one() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let create = || CreateConnectionRequest {
        message: String::new(),
        destination_organization_id: destination.id.clone(),
        data_types: vec![DataType::Inquiry.into()],
        request_id: "create-once".to_owned(),
    };
    let created = app
        .connections(&source)
        .create_connection(create())
        .await
        .unwrap()
        .into_inner();
    assert!(!created.change_token.is_empty());
    let retried = app
        .connections(&source)
        .create_connection(create())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        retried, created,
        "a retry returns the same response and token"
    );

    let id = created.connection.unwrap().id;
    let activate = || ActivateConnectionRequest {
        connection_id: id.clone(),
        request_id: "activate-once".to_owned(),
        ..Default::default()
    };
    let activated = app
        .connections(&destination)
        .activate_connection(activate())
        .await
        .unwrap()
        .into_inner();
    assert!(!activated.change_token.is_empty());
    assert_ne!(activated.change_token, created.change_token);
    let retried = app
        .connections(&destination)
        .activate_connection(activate())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, activated);
}

#[tokio::test]
async fn events_from_before_the_change_log_come_first_oldest_first() {
    use migration::{Migrator, MigratorTrait};
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    for i in 0..3 {
        let destination = app.new_org(&format!("D{i}")).await;
        let id = app.connect(&source, &destination).await.id;
        app.activate(&destination, &id, "").await.unwrap();
    }
    let url = app.database_url.clone();
    let (stopping, _database) = app.begin_stop();
    stopping.finished().await;
    let db = Database::connect(&url).await.unwrap();
    let logged = log_of_at_least(&db, 6).await;

    // Undo the change log (and the notification and epochs on it) and
    // apply it again: the events it finds are numbered below zero, in the
    // order they happened.
    Migrator::down(&db, Some(3)).await.unwrap();
    connections::db::migrate(&db).await.unwrap();
    let renumbered = log_of_at_least(&db, 6).await;
    db.close().await.unwrap();
    let positions: Vec<i64> = renumbered.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(positions, (-6..0).collect::<Vec<_>>());
    let order = |log: &[(i64, ConnectionId, i64)]| {
        log.iter()
            .map(|(_, id, seq)| (*id, *seq))
            .collect::<Vec<_>>()
    };
    assert_eq!(order(&renumbered), order(&logged));
}
