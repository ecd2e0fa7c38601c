use connections::{
    domain::{ConnectionId, connection::etag},
    proto::{
        Connection, ConnectionEvent, ConnectionEventType, ConnectionRole, ConnectionState,
        CreateConnectionRequest, DataType, ListConnectionEventsRequest,
    },
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    FIRST_KEY_NAME, TestOrg, assert_error, spawn_app, unknown_id, violated_fields,
};

fn request(destination: &str, data_types: &[DataType]) -> CreateConnectionRequest {
    CreateConnectionRequest {
        message: String::new(),
        destination_organization_id: destination.to_owned(),
        data_types: data_types.iter().map(|t| *t as i32).collect(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn create_returns_pending_connection_with_sorted_distinct_data_types() {
    let app = spawn_app().await;
    let (a, b) = (app.new_org("A").await, app.new_org("B").await);
    let connection = app
        .connections(&a)
        .create_connection(request(
            &b.id,
            &[
                DataType::Transaction,
                DataType::Inquiry,
                DataType::Transaction,
            ],
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(connection.state(), ConnectionState::Pending);
    assert_eq!(
        connection.data_types,
        [DataType::Inquiry as i32, DataType::Transaction as i32]
    );
    let id = uuid::Uuid::parse_str(&connection.id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(connection.id, id.hyphenated().to_string());
    assert!(!connection.etag.is_empty());

    let events = app
        .connections(&a)
        .list_connection_events(ListConnectionEventsRequest {
            connection_id: connection.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].sequence, 1);
    assert_eq!(events[0].actor_organization_id, a.id);
}

#[tokio::test]
async fn create_to_own_organization_is_invalid_argument_self_connection() {
    let app = spawn_app().await;
    let a = app.new_org("A").await;
    let status = app
        .connections(&a)
        .create_connection(request(&a.id, &[DataType::Account]))
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "SELF_CONNECTION");
    assert_eq!(violated_fields(&status), ["destination_organization_id"]);
}

#[tokio::test]
async fn create_to_unknown_organization_is_not_found() {
    let app = spawn_app().await;
    let a = app.new_org("A").await;
    let status = app
        .connections(&a)
        .create_connection(request(&unknown_id(), &[DataType::Account]))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ORGANIZATION_NOT_FOUND");
}

#[tokio::test]
async fn second_create_for_the_same_pair_is_already_exists_naming_the_first() {
    let app = spawn_app().await;
    let (a, b) = (app.new_org("A").await, app.new_org("B").await);
    let first = app.connect(&a, &b).await;
    let status = app
        .connections(&a)
        .create_connection(request(&b.id, &[DataType::Verification]))
        .await
        .unwrap_err();
    assert_error(&status, Code::AlreadyExists, "CONNECTION_ALREADY_EXISTS");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata.get("connection_id"), Some(&first.id));
}

#[tokio::test]
async fn the_reverse_direction_is_a_separate_connection() {
    let app = spawn_app().await;
    let (a, b) = (app.new_org("A").await, app.new_org("B").await);
    let forward = app.connect(&a, &b).await;
    let backward = app.connect(&b, &a).await;
    assert_ne!(forward.id, backward.id);
    assert_eq!(backward.source_organization_id, b.id);
}

#[tokio::test]
async fn concurrent_creates_of_one_pair_give_one_success_and_already_exists_for_the_rest() {
    let app = spawn_app().await;
    let (a, b) = (app.new_org("A").await, app.new_org("B").await);
    let calls = (0..12).map(|_| {
        let mut client = app.connections(&a);
        let request = request(&b.id, &[DataType::Inquiry]);
        tokio::spawn(async move { client.create_connection(request).await })
    });
    let results = futures::future::join_all(calls).await;
    let mut created = Vec::new();
    let mut refused = Vec::new();
    for result in results {
        match result.unwrap() {
            Ok(response) => created.push(response.into_inner().connection.unwrap().id),
            Err(status) => refused.push(status),
        }
    }
    assert_eq!(created.len(), 1, "refusals: {refused:?}");
    for status in &refused {
        assert_error(status, Code::AlreadyExists, "CONNECTION_ALREADY_EXISTS");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata.get("connection_id"), Some(&created[0]));
    }
}

#[tokio::test]
async fn malformed_create_requests_are_invalid_argument_with_field_violations() {
    let app = spawn_app().await;
    let (a, b) = (app.new_org("A").await, app.new_org("B").await);
    let mut client = app.connections(&a);
    let cases: Vec<(CreateConnectionRequest, Vec<&str>)> = vec![
        (request(&b.id, &[]), vec!["data_types"]),
        (request(&b.id, &[DataType::Unspecified]), vec!["data_types"]),
        (
            CreateConnectionRequest {
                data_types: vec![42],
                ..request(&b.id, &[])
            },
            vec!["data_types"],
        ),
        (
            request("", &[DataType::Inquiry]),
            vec!["destination_organization_id"],
        ),
        (
            request("not-a-uuid", &[]),
            vec!["destination_organization_id", "data_types"],
        ),
        (
            CreateConnectionRequest {
                request_id: "r".repeat(256),
                ..request(&b.id, &[DataType::Inquiry])
            },
            vec!["request_id"],
        ),
    ];
    for (request, fields) in cases {
        let status = client.create_connection(request.clone()).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), fields, "{request:?}");
    }
}

/// The creation time a connection's UUIDv7 records (its `create_time`).
fn time_in_id(id: &str) -> prost_types::Timestamp {
    let (seconds, nanos) = uuid::Uuid::parse_str(id)
        .unwrap()
        .get_timestamp()
        .expect("a UUIDv7")
        .to_unix();
    prost_types::Timestamp {
        seconds: seconds.try_into().unwrap(),
        nanos: nanos.try_into().unwrap(),
    }
}

/// Every field of a connection `source` has just created to `destination`
/// (`id` is the one the server chose): nothing but its creation is recorded.
fn newly_created(
    id: &str,
    source: &TestOrg,
    destination: &TestOrg,
    data_types: &[DataType],
) -> Connection {
    let created = Some(time_in_id(id));
    Connection {
        id: id.to_owned(),
        source_organization_id: source.id.clone(),
        destination_organization_id: destination.id.clone(),
        state: ConnectionState::Pending as i32,
        data_types: data_types.iter().map(|t| *t as i32).collect(),
        create_time: created,
        update_time: created,
        activate_time: None,
        deactivate_time: None,
        deactivated_by: ConnectionRole::Unspecified as i32,
        deactivation_reason: String::new(),
        etag: etag(ConnectionId::parse(id).unwrap(), 1),
        invitation_message: String::new(),
        // The default pending lifetime: 30 days.
        expire_time: created.map(|mut time| {
            time.seconds += 30 * 24 * 3600;
            time
        }),
        pending_data_types: Vec::new(),
    }
}

/// Every field of the one event a new connection's history holds (`event_id`
/// is the one the server chose).
fn created_event(event_id: &str, connection: &Connection, source: &TestOrg) -> ConnectionEvent {
    ConnectionEvent {
        id: event_id.to_owned(),
        connection_id: connection.id.clone(),
        sequence: 1,
        r#type: ConnectionEventType::Created as i32,
        from_state: ConnectionState::Unspecified as i32,
        to_state: ConnectionState::Pending as i32,
        actor_organization_id: source.id.clone(),
        actor_role: ConnectionRole::Source as i32,
        reason: String::new(),
        create_time: connection.create_time,
        actor_api_key_id: source.key_id.clone(),
        actor_api_key_display_name: FIRST_KEY_NAME.to_owned(),
        message: String::new(),
        previous_data_types: Vec::new(),
        previous_pending_data_types: Vec::new(),
        data_types: Vec::new(),
        pending_data_types: Vec::new(),
        by_policy: false,
    }
}

/// A create with a request_id stores and returns exactly what a create
/// without one does, and a retry of it returns the same record byte for byte
/// and leaves the record and its history as they were.
#[tokio::test]
async fn a_request_id_is_accepted_and_changes_nothing_else() {
    let app = spawn_app().await;
    let (a, b, c) = (
        app.new_org("A").await,
        app.new_org("B").await,
        app.new_org("C").await,
    );
    let mut client = app.connections(&a);
    let asked = [DataType::Account, DataType::Inquiry];
    let stored = [DataType::Inquiry, DataType::Account];

    // Without a request_id, for comparison.
    let plain = client
        .create_connection(request(&c.id, &asked))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(plain, newly_created(&plain.id, &a, &c, &stored));

    let with_request_id = CreateConnectionRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        ..request(&b.id, &asked)
    };
    let connection = client
        .create_connection(with_request_id.clone())
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(connection.state(), ConnectionState::Pending);
    assert_eq!(connection, newly_created(&connection.id, &a, &b, &stored));

    for (created, destination) in [(&plain, &c), (&connection, &b)] {
        assert_eq!(app.get(&a, &created.id).await, *created);
        assert_eq!(app.get(destination, &created.id).await, *created);
        let history = app.events(&a, &created.id).await;
        assert_eq!(history.len(), 1, "{history:?}");
        uuid::Uuid::parse_str(&history[0].id).expect("event ID is a UUID");
        assert_eq!(history, [created_event(&history[0].id, created, &a)]);
    }

    // A retry: the same response, and nothing changes.
    let history = app.events(&a, &connection.id).await;
    let retried = client
        .create_connection(with_request_id)
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(retried, connection);
    assert_eq!(app.get(&a, &connection.id).await, connection);
    assert_eq!(app.events(&a, &connection.id).await, history);
}
