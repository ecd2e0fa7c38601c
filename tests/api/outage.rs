//! Database outages under load (PostgreSQL only): the service answers
//! UNAVAILABLE (never INTERNAL, never a hang), health says NOT_SERVING, and it
//! recovers by itself when the database is back.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use connections::proto::{GetConnectionRequest, GetOrganizationRequest, ListConnectionsRequest};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokio::{task::JoinSet, time::Instant};
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{
    AppOptions, TestApp, TestOrg, proxy::Proxy, require_postgres, spawn_app_with,
};

async fn health(app: &TestApp) -> Option<ServingStatus> {
    let mut request = Request::new(HealthCheckRequest::default());
    request.set_timeout(Duration::from_secs(1));
    HealthClient::new(app.channel.clone())
        .check(request)
        .await
        .ok()
        .map(|r| r.into_inner().status())
}

/// Clients calling GetConnection and ListConnections with a 2-second deadline
/// until stopped;
/// returns every (time, status code) seen.
fn start_load(
    app: &TestApp,
    source: &TestOrg,
    destination: &TestOrg,
    connection: &str,
    stop: Arc<AtomicBool>,
) -> JoinSet<Vec<(Instant, Code)>> {
    let mut clients = JoinSet::new();
    for client in 0..8 {
        let mut api = app.connections(if client % 2 == 0 { source } else { destination });
        let (connection, stop) = (connection.to_owned(), stop.clone());
        clients.spawn(async move {
            let mut seen = Vec::new();
            let mut call = 0u32;
            while !stop.load(Ordering::SeqCst) && call < 10_000 {
                call += 1;
                let result = if call.is_multiple_of(2) {
                    let mut request = Request::new(GetConnectionRequest {
                        connection_id: connection.clone(),
                    });
                    request.set_timeout(Duration::from_secs(2));
                    api.get_connection(request).await.map(|_| ())
                } else {
                    let mut request = Request::new(ListConnectionsRequest::default());
                    request.set_timeout(Duration::from_secs(2));
                    api.list_connections(request).await.map(|_| ())
                };
                let code = result.map_or_else(|status| status.code(), |()| Code::Ok);
                seen.push((Instant::now(), code));
                if code != Code::Ok {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            seen
        });
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn during_a_database_outage_calls_are_unavailable_and_the_service_recovers_by_itself() {
    let (_, target) = require_postgres();
    let proxy = Proxy::start(target).await;
    let app = spawn_app_with(AppOptions {
        database_address: Some(proxy.address),
        ..AppOptions::default()
    })
    .await;
    let source = app.new_org("S").await;
    let destination = app.new_org("D").await;
    let connection = app.connect(&source, &destination).await.id;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&app, &source, &destination, &connection, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.down();
    let outage_start = Instant::now();
    let mut not_serving_seen = false;
    while outage_start.elapsed() < Duration::from_secs(4) {
        not_serving_seen |= health(&app).await == Some(ServingStatus::NotServing);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        not_serving_seen,
        "health never reported NOT_SERVING during the outage"
    );

    proxy.up();
    let back = Instant::now();
    let recovered = loop {
        let mut request = Request::new(GetConnectionRequest {
            connection_id: connection.clone(),
        });
        request.set_timeout(Duration::from_secs(2));
        if app
            .connections(&source)
            .get_connection(request)
            .await
            .is_ok()
        {
            break back.elapsed();
        }
        assert!(back.elapsed() < Duration::from_secs(10), "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    let mut codes: HashMap<Code, usize> = HashMap::new();
    let mut during_outage: HashMap<Code, usize> = HashMap::new();
    for seen in load.join_all().await {
        for (at, code) in seen {
            *codes.entry(code).or_default() += 1;
            // Calls that began well inside the outage window.
            if at > outage_start + Duration::from_millis(2_100) && at < back {
                *during_outage.entry(code).or_default() += 1;
            }
        }
    }
    for code in codes.keys() {
        assert!(
            matches!(code, Code::Ok | Code::Unavailable | Code::DeadlineExceeded),
            "unexpected {code:?}: {codes:?}"
        );
    }
    assert!(
        !during_outage.is_empty() && !during_outage.contains_key(&Code::Ok),
        "{during_outage:?}"
    );
    assert!(
        recovered < Duration::from_secs(5),
        "first success {recovered:?} after the database came back"
    );
    let health_back = Instant::now();
    while health(&app).await != Some(ServingStatus::Serving) {
        assert!(health_back.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "outage: outcomes {codes:?}; first success {recovered:?} after the database came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn terminated_database_sessions_under_load_never_surface_as_internal_errors() {
    let (admin_url, _) = require_postgres();
    let app = spawn_app_with(AppOptions::default()).await;
    let source = app.new_org("S").await;
    let destination = app.new_org("D").await;
    let connection = app.connect(&source, &destination).await.id;
    let database = current_database(&app).await;
    let admin = sea_orm::Database::connect(admin_url).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&app, &source, &destination, &connection, stop.clone());
    // Terminate every session of the server at least five times, and until a
    // termination has cut a session in the middle of a call (running one of
    // the calls' statements on connections, not a health probe) at least once.
    let (mut terminations, mut mid_call) = (0, 0);
    let window_start = Instant::now();
    while terminations < 5 || (mid_call == 0 && terminations < 200) {
        tokio::time::sleep(Duration::from_millis(if terminations < 5 {
            200
        } else {
            20
        }))
        .await;
        let cut = admin
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT state = 'active' AND query LIKE '%\"connections\"%', \
                 pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                [database.clone().into()],
            ))
            .await
            .unwrap();
        terminations += 1;
        mid_call += cut
            .iter()
            .filter(|row| row.try_get_by_index::<Option<bool>>(0).unwrap() == Some(true))
            .count();
    }
    let window_end = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut codes: HashMap<Code, usize> = HashMap::new();
    let mut in_window = 0;
    for seen in load.join_all().await {
        for (at, code) in seen {
            *codes.entry(code).or_default() += 1;
            if at > window_start && at < window_end {
                in_window += 1;
            }
        }
    }
    for code in codes.keys() {
        assert!(
            matches!(code, Code::Ok | Code::Unavailable),
            "unexpected {code:?}: {codes:?}"
        );
    }
    // The test proves something only if calls ran while sessions were cut,
    // and a cut hit a session in the middle of a call.
    assert!(
        mid_call > 0,
        "no termination hit a session mid-call in {terminations} tries"
    );
    assert!(
        in_window >= 100 && codes.get(&Code::Ok).copied().unwrap_or_default() >= 100,
        "too little load while sessions were cut: {in_window} calls, {codes:?}"
    );
    println!(
        "terminated sessions: {terminations} rounds, {mid_call} sessions cut mid-call, \
         {in_window} calls meanwhile, outcomes {codes:?}"
    );
    // And it still works.
    assert_eq!(app.get(&source, &connection).await.id, connection);
    admin.close().await.ok();
}

/// A database restart or failover closes every pooled session; the server
/// only finds out by using them. The calls that do must not fail for it:
/// reads run again on another connection, writes begin again on another.
/// (Single-statement writes outside transactions, the AdminService's, are
/// not repeated: they fail with UNAVAILABLE, for the caller to retry.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn calls_after_the_database_closed_every_pooled_session_succeed() {
    let (admin_url, _) = require_postgres();
    let app = spawn_app_with(AppOptions::default()).await;
    let source = app.new_org("S").await;
    let mut pairs = Vec::new();
    for i in 0..4 {
        let destination = app.new_org(&format!("D{i}")).await;
        let id = app.connect(&source, &destination).await.id;
        pairs.push((destination, id));
    }
    // Open several connections in both pools: calls at the same time.
    let busy = futures::future::join_all(pairs.iter().map(|(destination, id)| async {
        app.activate(destination, id, "").await.expect("activate");
        futures::future::join_all((0..4).map(|_| app.get(&source, id))).await;
    }));
    busy.await;
    // A key not used yet, so not remembered: its first call looks it up.
    let late = app.new_org("late").await;

    let admin = sea_orm::Database::connect(admin_url).await.unwrap();
    let database = current_database(&app).await;
    let terminated = admin
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            [database.into()],
        ))
        .await
        .unwrap();
    assert!(terminated.len() >= 4, "{} sessions", terminated.len());
    admin.close().await.ok();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let me = app
        .organizations(&late)
        .get_organization(GetOrganizationRequest {
            organization_id: late.id.clone(),
        })
        .await
        .expect("the first call of a key not remembered yet");
    assert_eq!(me.into_inner().organization.unwrap().id, late.id);
    for (destination, id) in &pairs {
        let deactivated = app
            .deactivate(destination, id, "")
            .await
            .expect("deactivate");
        assert_eq!(app.get(&source, id).await.etag, deactivated.etag);
        app.reactivate(&source, id, "").await.expect("reactivate");
        assert_eq!(app.events(&source, id).await.len(), 4);
    }
}

/// The name of the server's database.
async fn current_database(app: &TestApp) -> String {
    app.server_db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_database()",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap()
}
