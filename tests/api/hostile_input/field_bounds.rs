//! Field bounds through the API: identifiers, request_ids, etags, data
//! types, page tokens and display names. Each bound is checked on every RPC
//! whose request has the field, as the API's file descriptor set lists them,
//! so a new RPC is checked too.

use connections::{
    domain::organization::MAX_DISPLAY_NAME_CHARS,
    grpc::validate::{MAX_DATA_TYPES, MAX_ETAG_LEN, MAX_REQUEST_ID_CHARS},
    proto::{
        CheckAccessRequest, CreateApiKeyRequest, CreateConnectionRequest,
        CreateWebhookEndpointRequest, DataType, ListConnectionsRequest,
        RecoverWebhookDeliveriesRequest, UpdateConnectionDataTypesRequest,
    },
    service::page_token::MAX_PAGE_TOKEN_LEN,
};
use tonic::{Code, Status};

use crate::support::{
    TestApp, TestOrg, assert_error,
    rpcs::{self, Encoded, Rpc},
    spawn_app, unknown_id, violated_fields,
};

/// Calls `rpc` as `org` (with the admin token, for the AdminService).
async fn call(
    app: &TestApp,
    org: &TestOrg,
    rpc: &Rpc,
    request: Encoded,
) -> Result<Vec<u8>, Status> {
    rpcs::call(&app.channel, rpc, rpc.secret(org), request).await
}

/// A request for `rpc` that passes validation: `connection_id` names
/// `connection_id`, an organization identifier names `organization_id`,
/// any other identifier a well-formed ID, and a connection to create has a
/// data type. A test then sets the field it is about (the later value wins).
fn valid_request(rpc: &Rpc, organization_id: &str, connection_id: &str) -> Encoded {
    let mut request = match rpc.method.as_str() {
        "CreateConnection" => Encoded::of(&CreateConnectionRequest {
            data_types: vec![DataType::Inquiry as i32],
            ..Default::default()
        }),
        "UpdateConnectionDataTypes" => Encoded::of(&UpdateConnectionDataTypesRequest {
            data_types: vec![DataType::Inquiry as i32],
            ..Default::default()
        }),
        "CheckAccess" => Encoded::of(&CheckAccessRequest {
            data_type: DataType::Inquiry as i32,
            ..Default::default()
        }),
        // Test servers allow private addresses.
        "CreateWebhookEndpoint" => Encoded::of(&CreateWebhookEndpointRequest {
            url: "http://127.0.0.1:9/".to_owned(),
            ..Default::default()
        }),
        // Any token passes validation; the service reads it.
        "RecoverWebhookDeliveries" => Encoded::of(&RecoverWebhookDeliveriesRequest {
            after_change_token: "read-later".to_owned(),
            ..Default::default()
        }),
        _ => Encoded::default(),
    };
    for (field, number) in &rpc.fields {
        if field == "connection_id" {
            request = request.string(*number, connection_id);
        } else if field.ends_with("organization_id") {
            request = request.string(*number, organization_id);
        } else if is_identifier(field) {
            request = request.string(*number, &unknown_id());
        }
    }
    request
}

/// Whether `field` names a resource by its ID (a request_id does not: the
/// client makes it up).
fn is_identifier(field: &str) -> bool {
    field.ends_with("_id") && field != "request_id"
}

/// Asserts that every RPC of `rpcs`, called as `caller` with an otherwise
/// valid request (see [`valid_request`]), refuses each of `values` in
/// `field` as INVALID_ARGUMENT naming exactly that field.
async fn assert_each_refused(
    app: &TestApp,
    caller: &TestOrg,
    (organization_id, connection_id): (&str, &str),
    rpcs: &[Rpc],
    field: &str,
    values: &[String],
) {
    for value in values {
        for rpc in rpcs {
            let request =
                valid_request(rpc, organization_id, connection_id).string(rpc.number(field), value);
            assert_refused(call(app, caller, rpc, request).await, rpc, field);
        }
    }
}

/// Asserts that `result` is INVALID_ARGUMENT naming exactly `field`.
#[track_caller]
fn assert_refused(result: Result<Vec<u8>, Status>, rpc: &Rpc, field: &str) {
    let status = result.expect_err(&rpc.method);
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&status), [field], "{}", rpc.method);
}

#[tokio::test]
async fn connection_ids_must_be_36_character_uuids_everywhere() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let rpcs = rpcs::taking(
        "connection_id",
        &[
            "GetConnection",
            "ListConnectionEvents",
            "ActivateConnection",
            "DeactivateConnection",
            "ReactivateConnection",
            "UpdateConnectionDataTypes",
            "ApproveDataTypes",
            "DeclineDataTypes",
        ],
    );
    let valid = unknown_id();
    assert_eq!(valid.len(), 36);
    for id in [format!("{valid}0"), format!(" {valid}"), "a".repeat(10_000)] {
        for rpc in &rpcs {
            let request = valid_request(rpc, &org.id, &id);
            assert_refused(call(&app, &org, rpc, request).await, rpc, "connection_id");
        }
    }
    // 36 characters in canonical form pass validation and name nothing.
    for rpc in &rpcs {
        let request = valid_request(rpc, &org.id, &valid);
        let status = call(&app, &org, rpc, request).await.expect_err(&rpc.method);
        assert_error(&status, Code::NotFound, "CONNECTION_NOT_FOUND");
    }
}

#[tokio::test]
async fn organization_and_api_key_ids_must_be_36_character_uuids() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    // Every identifier field but connection_id (see above), on every RPC.
    let cases: Vec<(Rpc, String)> = rpcs::all()
        .into_iter()
        .flat_map(|rpc| {
            rpc.fields
                .iter()
                .map(|(field, _)| field.clone())
                .filter(|field| is_identifier(field) && field != "connection_id")
                .map(|field| (rpc.clone(), field))
                .collect::<Vec<_>>()
        })
        .collect();
    let seen: Vec<(&str, &str)> = cases
        .iter()
        .map(|(rpc, field)| (rpc.method.as_str(), field.as_str()))
        .collect();
    for known in [
        ("GetOrganization", "organization_id"),
        ("ListConnections", "counterparty_organization_id"),
        ("CreateConnection", "destination_organization_id"),
        ("CreateApiKey", "organization_id"),
        ("ListApiKeys", "organization_id"),
        ("RevokeApiKey", "api_key_id"),
        ("GetWebhookEndpoint", "endpoint_id"),
        ("DeleteWebhookEndpoint", "endpoint_id"),
        ("RotateWebhookSecret", "endpoint_id"),
        ("ListWebhookDeliveries", "endpoint_id"),
        ("RecoverWebhookDeliveries", "endpoint_id"),
    ] {
        assert!(seen.contains(&known), "{known:?} missing from {seen:?}");
    }
    for id in [format!("{}0", org.id), "a".repeat(10_000)] {
        for (rpc, field) in &cases {
            let request = valid_request(rpc, &org.id, &unknown_id()).string(rpc.number(field), &id);
            assert_refused(call(&app, &org, rpc, request).await, rpc, field);
        }
    }
}

#[tokio::test]
async fn request_ids_are_bounded_to_255_characters_on_every_rpc_that_takes_one() {
    assert_eq!(MAX_REQUEST_ID_CHARS, 255);
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let rpcs = rpcs::taking(
        "request_id",
        &[
            "CreateConnection",
            "ActivateConnection",
            "DeactivateConnection",
            "ReactivateConnection",
            "UpdateConnectionDataTypes",
            "ApproveDataTypes",
            "DeclineDataTypes",
            "CreateWebhookEndpoint",
        ],
    );
    for (len, refused) in [
        (MAX_REQUEST_ID_CHARS, false),
        (MAX_REQUEST_ID_CHARS + 1, true),
    ] {
        // Multi-byte characters: the limit counts characters, not bytes.
        let request_id = "é".repeat(len);
        for rpc in &rpcs {
            // What names nothing: an organization to connect to, or a
            // connection; an endpoint names only its URL, and is made.
            let not_found = match rpc.method.as_str() {
                "CreateConnection" => Some("ORGANIZATION_NOT_FOUND"),
                "CreateWebhookEndpoint" => None,
                _ if rpc.field("connection_id").is_some() => Some("CONNECTION_NOT_FOUND"),
                other => panic!("{other} takes a request_id: say what it answers here"),
            };
            let request = valid_request(rpc, &unknown_id(), &unknown_id())
                .string(rpc.number("request_id"), &request_id);
            let result = call(&app, &org, rpc, request).await;
            if refused {
                assert_refused(result, rpc, "request_id");
            } else if let Some(not_found) = not_found {
                // Valid: the call goes on to look up what it names.
                let status = result.expect_err(&rpc.method);
                assert_error(&status, Code::NotFound, not_found);
            } else {
                result.unwrap_or_else(|status| panic!("{}: {status:?}", rpc.method));
            }
        }
    }
}

#[tokio::test]
async fn etags_over_64_characters_are_invalid_argument() {
    assert_eq!(MAX_ETAG_LEN, 64);
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let rpcs = rpcs::taking(
        "etag",
        &[
            "ActivateConnection",
            "DeactivateConnection",
            "ReactivateConnection",
            "UpdateConnectionDataTypes",
            "ApproveDataTypes",
            "DeclineDataTypes",
        ],
    );
    let etags = ["e".repeat(MAX_ETAG_LEN + 1), "e".repeat(10_000)];
    let ids = (destination.id.as_str(), connection.id.as_str());
    assert_each_refused(&app, &destination, ids, &rpcs, "etag", &etags).await;
    // 64 characters pass validation and are merely not the current etag.
    let status = app
        .activate(&destination, &connection.id, &"e".repeat(MAX_ETAG_LEN))
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(app.get(&source, &connection.id).await, connection);
}

#[tokio::test]
async fn oversized_or_out_of_range_data_type_lists_are_invalid_argument() {
    assert_eq!(MAX_DATA_TYPES, 32);
    let app = spawn_app().await;
    let (a, b) = (app.new_org("A").await, app.new_org("B").await);
    let mut client = app.connections(&a);
    let inquiry = DataType::Inquiry as i32;
    for data_types in [
        vec![inquiry; MAX_DATA_TYPES + 1],
        // 10,000 packed varints: ~10 KB, inside the message limit.
        vec![inquiry; 10_000],
        vec![i32::MAX],
        vec![i32::MIN],
        vec![-1],
    ] {
        let status = client
            .create_connection(CreateConnectionRequest {
                message: String::new(),
                destination_organization_id: b.id.clone(),
                data_types: data_types.clone(),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(
            violated_fields(&status),
            ["data_types"],
            "{:?}",
            &data_types[..1]
        );
    }
    // Exactly 32 entries (duplicates collapse) are accepted.
    client
        .create_connection(CreateConnectionRequest {
            message: String::new(),
            destination_organization_id: b.id.clone(),
            data_types: vec![inquiry; MAX_DATA_TYPES],
            request_id: String::new(),
        })
        .await
        .expect("32 data types");

    // Unknown enum values in list filters, at the extremes of i32.
    let status = client
        .list_connections(ListConnectionsRequest {
            role: i32::MIN,
            state: i32::MAX,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&status), ["role", "state"]);
}

#[tokio::test]
async fn page_tokens_over_256_characters_are_refused_by_every_list() {
    assert_eq!(MAX_PAGE_TOKEN_LEN, 256);
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let rpcs = rpcs::taking(
        "page_token",
        &[
            "ListConnectionEvents",
            "ListOrganizations",
            "ListConnections",
            "ListWebhookEndpoints",
            "ListWebhookDeliveries",
        ],
    );
    for token in ["A".repeat(MAX_PAGE_TOKEN_LEN + 1), "A".repeat(10_000)] {
        for rpc in &rpcs {
            let request = valid_request(rpc, &destination.id, &connection.id)
                .string(rpc.number("page_token"), &token);
            let status = call(&app, &source, rpc, request)
                .await
                .expect_err(&rpc.method);
            assert_error(&status, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
            assert_eq!(violated_fields(&status), ["page_token"], "{}", rpc.method);
        }
    }
}

#[tokio::test]
async fn display_names_are_bounded_to_200_characters() {
    assert_eq!(MAX_DISPLAY_NAME_CHARS, 200);
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let rpcs = rpcs::taking("display_name", &["CreateOrganization", "CreateApiKey"]);
    let names = ["k".repeat(MAX_DISPLAY_NAME_CHARS + 1), "k".repeat(10_000)];
    let unknown = unknown_id();
    let ids = (org.id.as_str(), unknown.as_str());
    assert_each_refused(&app, &org, ids, &rpcs, "display_name", &names).await;
    for rpc in &rpcs {
        let request = valid_request(rpc, ids.0, ids.1).string(
            rpc.number("display_name"),
            &"ü".repeat(MAX_DISPLAY_NAME_CHARS),
        );
        call(&app, &org, rpc, request)
            .await
            .unwrap_or_else(|status| panic!("{}: 200 characters: {status:?}", rpc.method));
    }
    let key = app
        .admin()
        .create_api_key(CreateApiKeyRequest {
            organization_id: org.id.clone(),
            display_name: "ü".repeat(MAX_DISPLAY_NAME_CHARS),
        })
        .await
        .expect("200 characters")
        .into_inner()
        .api_key
        .unwrap();
    assert_eq!(key.display_name.chars().count(), MAX_DISPLAY_NAME_CHARS);
}
