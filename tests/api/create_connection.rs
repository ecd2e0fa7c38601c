use connections::proto::{
    ConnectionState, CreateConnectionRequest, DataType, ListConnectionEventsRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{assert_error, spawn_app, unknown_id, violated_fields};

fn request(destination: &str, data_types: &[DataType]) -> CreateConnectionRequest {
    CreateConnectionRequest {
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

#[tokio::test]
async fn a_request_id_is_accepted_and_changes_nothing_else() {
    let app = spawn_app().await;
    let (a, b) = (app.new_org("A").await, app.new_org("B").await);
    let connection = app
        .connections(&a)
        .create_connection(CreateConnectionRequest {
            request_id: uuid::Uuid::now_v7().to_string(),
            ..request(&b.id, &[DataType::Account])
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(connection.state(), ConnectionState::Pending);
}
