use std::time::Duration;

use connections::{
    entity::{connection, connection_event},
    proto::{
        ActivateConnectionRequest, ConnectionState, CreateConnectionRequest, DataType,
        ListConnectionsRequest,
    },
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, SqliteTransactionMode, Statement,
    TransactionOptions, TransactionTrait,
};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

use crate::support::{TestApp, TestOrg, assert_error, clients::connections_on, rpcs, spawn_app};

async fn health(app: &TestApp, service: &str) -> ServingStatus {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// Polls until the health service reports `want` (bounded).
async fn wait_for_health(app: &TestApp, want: ServingStatus) {
    for _ in 0..100 {
        if health(app, "").await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {want:?}");
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let app = spawn_app().await;
    wait_for_health(&app, ServingStatus::Serving).await;
    // Every service of the API, as its file descriptor set lists them.
    for service in &rpcs::services() {
        assert_eq!(
            health(&app, service).await,
            ServingStatus::Serving,
            "{service}"
        );
    }
}

#[tokio::test]
async fn when_the_database_is_unreachable_health_is_not_serving_and_calls_are_unavailable() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    wait_for_health(&app, ServingStatus::Serving).await;

    // Closing the server's pools makes every database call fail as in an outage.
    app.server_db.clone().close().await.unwrap();
    app.server_health_db.clone().close().await.unwrap();
    app.server_reader.close().await;

    wait_for_health(&app, ServingStatus::NotServing).await;
    let status = app
        .connections(&org)
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap_err();
    assert_error(&status, Code::Unavailable, "DATABASE_UNAVAILABLE");
    assert!(!status.message().to_lowercase().contains("pool"));
}

#[tokio::test]
async fn reflection_v1_lists_every_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "connections.v1.ConnectionService".into(),
            )),
        },
    ]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    let mut expected = rpcs::services();
    expected.push("grpc.health.v1.Health".to_owned());
    for expected in &expected {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn reflection_v1alpha_lists_every_service() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let requests = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "connections.v1.ConnectionService")
    );
}

/// Takes the lock on connection `id` that ActivateConnection needs, in a
/// transaction of `db` (not the server's): on SQLite the database's write
/// lock, on PostgreSQL the connection's row. Ending the transaction releases it.
async fn lock_connection(db: &DatabaseConnection, id: &str) -> DatabaseTransaction {
    match db.get_database_backend() {
        DbBackend::Sqlite => db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
            .expect("take the write lock"),
        _ => {
            let txn = db.begin().await.expect("begin");
            connection::Entity::find_by_id(Uuid::parse_str(id).unwrap())
                .lock_exclusive()
                .one(&txn)
                .await
                .expect("lock the row")
                .expect("the connection exists");
            txn
        }
    }
}

/// Returns once a statement of the database `db` is connected to waits for a
/// lock. PostgreSQL shows waiting statements; SQLite does not, so there a
/// short pause lets the call reach the lock.
async fn wait_until_a_statement_waits_for_a_lock(db: &DatabaseConnection) {
    if db.get_database_backend() == DbBackend::Sqlite {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return;
    }
    for _ in 0..400 {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS waiting FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ))
            .await
            .expect("read pg_stat_activity")
            .expect("one row");
        if row.try_get::<i64>("", "waiting").expect("count") > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no statement ever waited for the lock");
}

/// A graceful stop lets a call already in flight finish, with its change
/// committed; a call made after the stop is refused UNAVAILABLE and changes
/// nothing; the server then stops cleanly.
///
/// The call is held in flight by a lock the test takes in the database
/// through a connection of its own. The test keeps the database after the
/// server, and its pools, are gone, to read what it holds.
#[tokio::test]
async fn graceful_stop_completes_calls_in_flight_and_refuses_new_ones() {
    let app = spawn_app().await;
    let (addr, url, channel) = (app.addr, app.database_url.clone(), app.channel.clone());
    let (source, destination, other) = (
        app.new_org("S").await,
        app.new_org("D").await,
        app.new_org("O").await,
    );
    let create = |destination: &TestOrg| CreateConnectionRequest {
        message: String::new(),
        destination_organization_id: destination.id.clone(),
        data_types: vec![DataType::Inquiry as i32],
        request_id: String::new(),
    };
    let pending = connections_on(&channel, &source)
        .create_connection(create(&destination))
        .await
        .expect("create connection")
        .into_inner()
        .connection
        .unwrap();

    let own = Database::connect(&url).await.expect("own connection");
    let lock = lock_connection(&own, &pending.id).await;
    let mut in_flight = {
        let mut client = connections_on(&channel, &destination);
        let id = pending.id.clone();
        tokio::spawn(async move {
            client
                .activate_connection(ActivateConnectionRequest {
                    connection_id: id,
                    ..Default::default()
                })
                .await
        })
    };
    wait_until_a_statement_waits_for_a_lock(&own).await;
    assert!(
        !in_flight.is_finished(),
        "the call did not wait for the lock"
    );

    let (server, _database) = app.begin_stop();
    // The listener closes as the stop begins; wait for it (bounded).
    let mut refused = false;
    for _ in 0..200 {
        match tokio::net::TcpStream::connect(addr).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(refused, "the server kept accepting connections");
    let late = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let status = connections_on(&late, &source)
        .create_connection(create(&other))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !server.is_finished(),
        "the server stopped with a call in flight"
    );

    lock.rollback().await.expect("release the lock");
    let activated = tokio::time::timeout(Duration::from_secs(30), &mut in_flight)
        .await
        .expect("the call in flight finishes")
        .unwrap()
        .expect("the call in flight succeeds")
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(activated.state(), ConnectionState::Active);
    tokio::time::timeout(Duration::from_secs(30), server.finished())
        .await
        .expect("the server stops");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    // What the database holds once the server is gone: the activation and
    // its event, and nothing from the refused call.
    let stored = connection::Entity::find_by_id(Uuid::parse_str(&pending.id).unwrap())
        .one(&own)
        .await
        .unwrap()
        .expect("the connection is stored");
    assert_eq!(stored.state, "ACTIVE");
    assert_eq!(stored.version, 2);
    let events = connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(stored.id))
        .count(&own)
        .await
        .unwrap();
    assert_eq!(events, 2, "created and activated");
    let connections = connection::Entity::find().count(&own).await.unwrap();
    assert_eq!(connections, 1, "the call after the stop created nothing");
    own.close().await.unwrap();
}

/// `future`'s output; fails the test if it takes over 5 s (half the
/// server's drain deadline, so that only ending the streams is in time).
async fn within_5s<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), future)
        .await
        .unwrap_or_else(|_| panic!("{what} within 5 s"))
}

/// A stop does not wait forever for streams: a health Watch gets NOT_SERVING
/// and then ends with UNAVAILABLE, a reflection session the client never
/// closes ends with UNAVAILABLE, and the server then stops. (Before, each
/// held the stop up indefinitely.)
#[tokio::test]
async fn a_stop_ends_open_health_and_reflection_streams_with_unavailable() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let app = spawn_app().await;
    let mut watch = HealthClient::new(app.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    // A reflection session whose request stream stays open.
    let (requests, open_requests) = tokio::sync::mpsc::channel(1);
    requests
        .send(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        })
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(open_requests))
        .await
        .unwrap()
        .into_inner();
    reflection.next().await.unwrap().unwrap();

    let (stopping, _database) = app.begin_stop();
    // The health monitor may repeat SERVING before the stop's NOT_SERVING.
    within_5s("NOT_SERVING", async {
        loop {
            let status = watch.next().await.unwrap().unwrap().status();
            if status == ServingStatus::NotServing {
                break;
            }
            assert_eq!(status, ServingStatus::Serving);
        }
    })
    .await;
    let ended = within_5s("the watch ends", watch.next()).await.unwrap();
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
    let ended = within_5s("the reflection session ends", reflection.next())
        .await
        .unwrap();
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
    within_5s("the server stops", stopping.finished()).await;
    drop(requests);
}

/// The binary, sent SIGTERM while a health Watch is open, exits 0 without
/// waiting for its drain deadline (it used to hang until killed).
#[tokio::test]
async fn sigterm_with_an_open_watch_exits_zero() {
    let (_database, url) = crate::support::TestDatabase::create(true).await;
    // A drain deadline longer than `wait` allows: only ending the stream can
    // let the process exit in time.
    let server =
        crate::support::process::Server::start_with(&url, &["--shutdown-timeout", "60s"], &[])
            .await;
    let mut watch = HealthClient::new(server.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();
    server.signal("-TERM");
    // `wait` fails the test if the process has not exited within 30 s.
    let status = server.wait().await;
    assert!(status.success(), "{status}");
    drop(watch);
}
