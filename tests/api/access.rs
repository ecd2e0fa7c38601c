//! AccessService.CheckAccess: answered from memory, never older than the
//! change token it is given, for the parties and the operators only.

use connections::domain::Action;
use connections::proto::{
    CheckAccessRequest, CheckAccessResponse, ConnectionState, CreateConnectionRequest,
    CreateOrganizationRequest, DataType, access_service_client::AccessServiceClient,
};
use tonic::{Code, Status};

use crate::support::{
    ADMIN_TOKEN, AppOptions, Bearer, TestApp, TestOrg, assert_error,
    clients::{Asked, take},
    spawn_app, spawn_app_with, spawn_replica_of, spawn_replicas, unknown_id,
};

const ACCESS_CHECK_TOKEN: &str = "access-check-token-0123456789abcdef";

/// CheckAccess with `bearer` on `app`.
async fn check(
    app: &TestApp,
    bearer: Bearer,
    source: &str,
    destination: &str,
    data_type: DataType,
    at_least: &str,
) -> Result<CheckAccessResponse, Status> {
    AccessServiceClient::with_interceptor(app.channel.clone(), bearer)
        .check_access(CheckAccessRequest {
            source_organization_id: source.to_owned(),
            destination_organization_id: destination.to_owned(),
            data_type: data_type.into(),
            at_least_change_token: at_least.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Creates a connection sharing inquiries; returns its ID and the token.
async fn create(app: &TestApp, source: &TestOrg, destination: &TestOrg) -> (String, String) {
    let created = app
        .connections(source)
        .create_connection(CreateConnectionRequest {
            message: String::new(),
            destination_organization_id: destination.id.clone(),
            data_types: vec![DataType::Inquiry.into()],
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    (created.connection.unwrap().id, created.change_token)
}

/// Takes `action` on connection `id` as `org`; returns the change token.
async fn transition(app: &TestApp, org: &TestOrg, action: Action, id: &str) -> String {
    take(&mut app.connections(org), action, id, Asked::default())
        .await
        .map(|(_, token)| token)
        .unwrap_or_else(|status| panic!("{action:?}: {status:?}"))
}

#[tokio::test]
async fn access_is_allowed_exactly_while_the_connection_is_active_and_shares_the_type() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let as_destination = || Bearer::new(&destination.key);
    let (id, created) = create(&app, &source, &destination).await;

    let pending = check(
        &app,
        as_destination(),
        &source.id,
        &destination.id,
        DataType::Inquiry,
        &created,
    )
    .await
    .unwrap();
    assert!(!pending.allowed);
    assert_eq!(pending.connection_id, id);
    assert_eq!(pending.state(), ConnectionState::Pending);
    assert!(!pending.change_token.is_empty());

    let activated = transition(&app, &destination, Action::Activate, &id).await;
    let active = check(
        &app,
        as_destination(),
        &source.id,
        &destination.id,
        DataType::Inquiry,
        &activated,
    )
    .await
    .unwrap();
    assert!(active.allowed);
    assert_eq!(active.state(), ConnectionState::Active);
    let other_type = check(
        &app,
        as_destination(),
        &source.id,
        &destination.id,
        DataType::Account,
        &activated,
    )
    .await
    .unwrap();
    assert!(!other_type.allowed, "a type the connection does not share");
    let reverse = check(
        &app,
        as_destination(),
        &destination.id,
        &source.id,
        DataType::Inquiry,
        &activated,
    )
    .await
    .unwrap();
    assert!(!reverse.allowed, "connections are one-directional");
    assert_eq!(reverse.connection_id, "");
    assert_eq!(reverse.state(), ConnectionState::Unspecified);

    let deactivated = transition(&app, &source, Action::Deactivate, &id).await;
    let inactive = check(
        &app,
        as_destination(),
        &source.id,
        &destination.id,
        DataType::Inquiry,
        &deactivated,
    )
    .await
    .unwrap();
    assert!(!inactive.allowed);
    assert_eq!(inactive.state(), ConnectionState::Inactive);
}

#[tokio::test]
async fn only_the_parties_and_the_operators_may_check() {
    let app = spawn_app_with(AppOptions {
        access_check_token: Some(ACCESS_CHECK_TOKEN),
        ..AppOptions::default()
    })
    .await;
    let (source, destination, other) = (
        app.new_org("S").await,
        app.new_org("D").await,
        app.new_org("O").await,
    );
    let (id, _) = create(&app, &source, &destination).await;
    let activated = transition(&app, &destination, Action::Activate, &id).await;

    for bearer in [
        Bearer::new(&source.key),
        Bearer::new(&destination.key),
        Bearer::new(ADMIN_TOKEN),
        Bearer::new(ACCESS_CHECK_TOKEN),
    ] {
        let answer = check(
            &app,
            bearer,
            &source.id,
            &destination.id,
            DataType::Inquiry,
            &activated,
        )
        .await
        .unwrap();
        assert!(answer.allowed);
    }
    // Another organization is refused whatever the pair: the refusal depends
    // on the request alone.
    for (s, d) in [(&source.id, &destination.id), (&source.id, &unknown_id())] {
        let status = check(&app, Bearer::new(&other.key), s, d, DataType::Inquiry, "")
            .await
            .unwrap_err();
        assert_error(&status, Code::PermissionDenied, "CALLER_NOT_PARTY");
    }
    let status = check(
        &app,
        Bearer::none(),
        &source.id,
        &destination.id,
        DataType::Inquiry,
        "",
    )
    .await
    .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_MISSING");
    // The access-check token can do nothing else.
    let status = app
        .admin_with(Bearer::new(ACCESS_CHECK_TOKEN))
        .create_organization(CreateOrganizationRequest {
            display_name: "nope".to_owned(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "ADMIN_TOKEN_INVALID");
}

#[tokio::test]
async fn malformed_checks_are_invalid_argument() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let bearer = || Bearer::new(&org.key);
    let status = check(&app, bearer(), "nope", &org.id, DataType::Inquiry, "")
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let status = check(
        &app,
        bearer(),
        &org.id,
        &unknown_id(),
        DataType::Unspecified,
        "",
    )
    .await
    .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let status = check(
        &app,
        bearer(),
        &org.id,
        &unknown_id(),
        DataType::Inquiry,
        "forged",
    )
    .await
    .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_CHANGE_TOKEN");
}

#[tokio::test]
async fn with_the_token_of_a_transition_on_one_replica_the_other_is_never_stale() {
    let replicas = spawn_replicas(2, AppOptions::default()).await;
    let source = replicas[0].new_org("S").await;
    let destination = replicas[0].new_org("D").await;
    let (id, _) = create(&replicas[0], &source, &destination).await;
    let mut checks = 0;
    for round in 0..20 {
        let (writer, reader) = (&replicas[round % 2], &replicas[(round + 1) % 2]);
        let token = transition(writer, &destination, Action::Activate, &id).await;
        for _ in 0..5 {
            let answer = check(
                reader,
                Bearer::new(ADMIN_TOKEN),
                &source.id,
                &destination.id,
                DataType::Inquiry,
                &token,
            )
            .await
            .unwrap();
            assert!(answer.allowed, "round {round}: stale after activation");
            checks += 1;
        }
        let token = transition(writer, &destination, Action::Deactivate, &id).await;
        let answer = check(
            reader,
            Bearer::new(ADMIN_TOKEN),
            &source.id,
            &destination.id,
            DataType::Inquiry,
            &token,
        )
        .await
        .unwrap();
        assert!(!answer.allowed, "round {round}: stale after deactivation");
        assert_eq!(answer.state(), ConnectionState::Inactive);
        checks += 1;
        transition(writer, &source, Action::Reactivate, &id).await;
    }
    assert_eq!(checks, 120);
}

#[tokio::test]
async fn a_server_started_later_builds_its_index_from_the_database_and_keeps_it_current() {
    let first = spawn_app().await;
    let source = first.new_org("S").await;
    let mut pairs = Vec::new();
    for i in 0..12 {
        let destination = first.new_org(&format!("D{i}")).await;
        let (id, _) = create(&first, &source, &destination).await;
        if i % 3 == 0 {
            transition(&first, &destination, Action::Activate, &id).await;
        }
        pairs.push((destination, id));
    }
    let second = spawn_replica_of(&first, AppOptions::default()).await;
    // May `destination` receive inquiries from the source, asked of the
    // second server by the operator (with `token`, or none).
    let ask = async |destination: &TestOrg, token: &str| {
        let admin = Bearer::new(ADMIN_TOKEN);
        check(
            &second,
            admin,
            &source.id,
            &destination.id,
            DataType::Inquiry,
            token,
        )
        .await
        .unwrap()
    };
    // Every connection, as the database had it when the second server started.
    for (i, (destination, id)) in pairs.iter().enumerate() {
        let answer = ask(destination, "").await;
        assert_eq!(answer.connection_id, *id);
        let active = i % 3 == 0;
        assert_eq!(answer.allowed, active, "{i}");
        let state = if active {
            ConnectionState::Active
        } else {
            ConnectionState::Pending
        };
        assert_eq!(answer.state, state as i32, "{i}");
    }
    // Changes made on the first server after that: to connections it read
    // at start, and a connection made since. Checked with their tokens, and
    // without: the index itself shows them (a check without a token never
    // reads the database).
    let (destination, id) = &pairs[0];
    let token = transition(&first, destination, Action::Deactivate, id).await;
    let answer = ask(destination, &token).await;
    assert!(!answer.allowed);
    assert_eq!(answer.state, ConnectionState::Inactive as i32);
    let (destination, id) = &pairs[1];
    let token = transition(&first, destination, Action::Activate, id).await;
    assert!(ask(destination, &token).await.allowed);
    let late = first.new_org("Late").await;
    let (id, _) = create(&first, &source, &late).await;
    let token = transition(&first, &late, Action::Activate, &id).await;
    let answer = ask(&late, &token).await;
    assert_eq!(answer.connection_id, id);
    assert!(answer.allowed);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    for (destination, allowed) in [(&pairs[0].0, false), (&pairs[1].0, true), (&late, true)] {
        while ask(destination, "").await.allowed != allowed {
            assert!(tokio::time::Instant::now() < deadline, "the index lags");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn a_replica_started_during_a_burst_of_writes_keeps_its_index_current_however_small_its_feed_buffer()
 {
    use sea_orm::{ConnectionTrait, Database};

    crate::support::require_postgres();
    // 60,000 connections the index must read whenever it starts over.
    let (database, url) = crate::support::TestDatabase::create(false).await;
    let db = Database::connect(&url).await.unwrap();
    connections::db::migrate(&db).await.unwrap();
    let bulk = |prefix: &str| format!("('{prefix}' || lpad(to_hex(n), 12, '0'))::uuid");
    db.execute_unprepared(&format!(
        "INSERT INTO organizations (id, display_name, create_time) \
         SELECT {}, 'bulk', now() FROM generate_series(1, 60001) AS s(n); \
         INSERT INTO connections (id, source_organization_id, destination_organization_id, \
                                  state, data_types, version, create_time, update_time) \
         SELECT {}, {}, {}, 'PENDING', 'INQUIRY', 1, now(), now() \
         FROM generate_series(1, 60000) AS s(n)",
        bulk("01900000-0000-7000-8000-"),
        bulk("01910000-0000-7000-8000-"),
        "'01900000-0000-7000-8000-000000000001'::uuid",
        "('01900000-0000-7000-8000-' || lpad(to_hex(n + 1), 12, '0'))::uuid",
    ))
    .await
    .unwrap();
    db.close().await.unwrap();
    let app = std::sync::Arc::new(
        crate::support::spawn_app_on(database, url, AppOptions::default()).await,
    );
    let source = app.new_org("S").await;
    let latest = std::sync::Arc::new(std::sync::Mutex::new(None::<(String, String)>));
    let writing = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for i in 0..4 {
        let destination = app.new_org(&format!("D{i}")).await;
        let (id, _) = create(&app, &source, &destination).await;
        let (app, source, latest, writing) =
            (app.clone(), source.clone(), latest.clone(), writing.clone());
        writers.push(tokio::spawn(async move {
            while !writing.is_cancelled() {
                for (org, action) in [
                    (&destination, Action::Activate),
                    (&source, Action::Deactivate),
                    (&source, Action::Reactivate),
                ] {
                    let token = transition(&app, org, action, &id).await;
                    *latest.lock().unwrap() = Some((destination.id.clone(), token));
                }
            }
        }));
    }
    // A replica that keeps few batches for its readers starts while the
    // writes go on: its index is built, then must keep up.
    let replica = crate::support::spawn_replica_of(
        &app,
        AppOptions {
            watch_buffer: 2,
            ..AppOptions::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let mut slowest = std::time::Duration::ZERO;
    let mut checks = 0;
    while started.elapsed() < std::time::Duration::from_secs(3) {
        let Some((destination, token)) = latest.lock().unwrap().clone() else {
            continue;
        };
        let asked = std::time::Instant::now();
        check(
            &replica,
            Bearer::new(&source.key),
            &source.id,
            &destination,
            DataType::Inquiry,
            &token,
        )
        .await
        .unwrap();
        slowest = slowest.max(asked.elapsed());
        checks += 1;
    }
    writing.cancel();
    for writer in writers {
        writer.await.unwrap();
    }
    // A check the index cannot answer waits 1 s, then reads the database.
    assert!(
        slowest < std::time::Duration::from_millis(900),
        "of {checks} checks with a write's token, one took {slowest:?}"
    );
}
