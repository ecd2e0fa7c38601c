//! The access log (`serve --access-log`): one JSON line per call on standard
//! output, naming the method, gRPC code and ErrorInfo reason, the credential
//! (organization and key for an API key), the duration, the peer and the
//! request ID; and never a secret, in it or anywhere else the server prints.

use connections::proto::{
    ActivateConnectionRequest, CheckAccessRequest, CreateApiKeyRequest, CreateConnectionRequest,
    CreateOrganizationRequest, DataType, DeactivateConnectionRequest, GetConnectionRequest,
    ListAuditEventsRequest, ListConnectionsRequest, ReactivateConnectionRequest,
    RevokeApiKeyRequest, access_service_client::AccessServiceClient,
    admin_service_client::AdminServiceClient, connection_service_client::ConnectionServiceClient,
};
use serde_json::Value;
use tonic::{Request, Status};

use crate::support::{ADMIN_TOKEN, Bearer, TestDatabase, process::Server};

/// `message` as a request carrying `x-request-id: call-<n>`.
fn call<T>(n: usize, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", format!("call-{n}").parse().unwrap());
    request
}

/// What one call should leave in the access log.
struct Expected {
    method: &'static str,
    code: &'static str,
    reason: Option<&'static str>,
    credential: Option<&'static str>,
    /// The organization and key an API key call names.
    caller: Option<(String, String)>,
}

/// A call that succeeded with `credential` (and `caller`, for an API key).
fn ok(
    method: &'static str,
    result: Result<impl Sized, Status>,
    credential: Option<&'static str>,
    caller: Option<(&str, &str)>,
) -> Expected {
    expect(method, result, "OK", None, credential, caller)
}

fn expect(
    method: &'static str,
    result: Result<impl Sized, Status>,
    code: &'static str,
    reason: Option<&'static str>,
    credential: Option<&'static str>,
    caller: Option<(&str, &str)>,
) -> Expected {
    match (&result, code) {
        (Ok(_), "OK") => {}
        (Err(status), _) => assert_ne!(code, "OK", "{method}: {status:?}"),
        (Ok(_), _) => panic!("{method} succeeded; expected {code}"),
    }
    Expected {
        method,
        code,
        reason,
        credential,
        caller: caller.map(|(org, key)| (org.to_owned(), key.to_owned())),
    }
}

#[tokio::test]
async fn every_call_of_a_lifecycle_leaves_one_access_log_line_and_no_secret_is_printed() {
    let (_database, url) = TestDatabase::create(false).await;
    let server = Server::start_with(
        &url,
        &["--access-log"],
        &[("CONNECTIONS_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    let channel = server.channel.clone();
    let mut admin = AdminServiceClient::with_interceptor(channel.clone(), Bearer::new(ADMIN_TOKEN));
    let mut expected: Vec<Expected> = Vec::new();
    let mut calls = 0..;
    let mut next = || calls.next().unwrap() + 1;

    // The operator makes two organizations and a key for each.
    let mut orgs = Vec::new();
    for name in ["Source", "Destination"] {
        let created = admin
            .create_organization(call(
                next(),
                CreateOrganizationRequest {
                    display_name: name.to_owned(),
                },
            ))
            .await;
        let org = created
            .as_ref()
            .unwrap()
            .get_ref()
            .organization
            .clone()
            .unwrap();
        expected.push(ok(
            "/connections.v1.AdminService/CreateOrganization",
            created,
            Some("admin_token"),
            None,
        ));
        let key = admin
            .create_api_key(call(
                next(),
                CreateApiKeyRequest {
                    organization_id: org.id.clone(),
                    display_name: format!("{name} key"),
                },
            ))
            .await;
        let made = key.as_ref().unwrap().get_ref().clone();
        expected.push(ok(
            "/connections.v1.AdminService/CreateApiKey",
            key,
            Some("admin_token"),
            None,
        ));
        orgs.push((org.id, made.api_key.unwrap().id, made.secret));
    }
    let secrets: Vec<String> = orgs.iter().map(|(_, _, s)| s.clone()).collect();
    let [
        (source_id, source_key, source_secret),
        (dest_id, dest_key, dest_secret),
    ] = <[_; 2]>::try_from(orgs).unwrap();
    let source_caller = Some((source_id.as_str(), source_key.as_str()));
    let dest_caller = Some((dest_id.as_str(), dest_key.as_str()));
    let mut source =
        ConnectionServiceClient::with_interceptor(channel.clone(), Bearer::new(&source_secret));
    let mut destination =
        ConnectionServiceClient::with_interceptor(channel.clone(), Bearer::new(&dest_secret));

    // The whole lifecycle, and a refusal on the way.
    let created = source
        .create_connection(call(
            next(),
            CreateConnectionRequest {
                message: String::new(),
                destination_organization_id: dest_id.clone(),
                data_types: vec![DataType::Transaction.into()],
                request_id: String::new(),
            },
        ))
        .await;
    let id = created
        .as_ref()
        .unwrap()
        .get_ref()
        .connection
        .clone()
        .unwrap()
        .id;
    expected.push(ok(
        "/connections.v1.ConnectionService/CreateConnection",
        created,
        Some("api_key"),
        source_caller,
    ));
    let activate = |id: &str| ActivateConnectionRequest {
        connection_id: id.to_owned(),
        ..Default::default()
    };
    let refused = source
        .activate_connection(call(next(), activate(&id)))
        .await;
    expected.push(expect(
        "/connections.v1.ConnectionService/ActivateConnection",
        refused,
        "PERMISSION_DENIED",
        Some("ERROR_REASON_CALLER_NOT_DESTINATION"),
        Some("api_key"),
        source_caller,
    ));
    let result = destination
        .activate_connection(call(next(), activate(&id)))
        .await;
    expected.push(ok(
        "/connections.v1.ConnectionService/ActivateConnection",
        result,
        Some("api_key"),
        dest_caller,
    ));
    let result = destination
        .deactivate_connection(call(
            next(),
            DeactivateConnectionRequest {
                connection_id: id.clone(),
                reason: "paused".to_owned(),
                ..Default::default()
            },
        ))
        .await;
    expected.push(ok(
        "/connections.v1.ConnectionService/DeactivateConnection",
        result,
        Some("api_key"),
        dest_caller,
    ));
    let result = source
        .reactivate_connection(call(
            next(),
            ReactivateConnectionRequest {
                connection_id: id.clone(),
                ..Default::default()
            },
        ))
        .await;
    expected.push(ok(
        "/connections.v1.ConnectionService/ReactivateConnection",
        result,
        Some("api_key"),
        source_caller,
    ));
    let result = destination
        .activate_connection(call(next(), activate(&id)))
        .await;
    expected.push(ok(
        "/connections.v1.ConnectionService/ActivateConnection",
        result,
        Some("api_key"),
        dest_caller,
    ));
    let result = source
        .get_connection(call(
            next(),
            GetConnectionRequest {
                connection_id: id.clone(),
            },
        ))
        .await;
    expected.push(ok(
        "/connections.v1.ConnectionService/GetConnection",
        result,
        Some("api_key"),
        source_caller,
    ));
    let result = destination
        .list_connections(call(next(), ListConnectionsRequest::default()))
        .await;
    expected.push(ok(
        "/connections.v1.ConnectionService/ListConnections",
        result,
        Some("api_key"),
        dest_caller,
    ));
    let result = AccessServiceClient::with_interceptor(channel.clone(), Bearer::new(ADMIN_TOKEN))
        .check_access(call(
            next(),
            CheckAccessRequest {
                source_organization_id: source_id.clone(),
                destination_organization_id: dest_id.clone(),
                data_type: DataType::Transaction.into(),
                ..Default::default()
            },
        ))
        .await;
    assert!(result.as_ref().unwrap().get_ref().allowed);
    expected.push(ok(
        "/connections.v1.AccessService/CheckAccess",
        result,
        Some("admin_token"),
        None,
    ));

    // The source's key is revoked; its next call is refused; a call with
    // no credential at all is refused too.
    let result = admin
        .revoke_api_key(call(
            next(),
            RevokeApiKeyRequest {
                api_key_id: source_key.clone(),
            },
        ))
        .await;
    expected.push(ok(
        "/connections.v1.AdminService/RevokeApiKey",
        result,
        Some("admin_token"),
        None,
    ));
    let mut refused = false;
    for _ in 0..50 {
        // A verified key may be served from memory for up to 2 s.
        let result = source
            .get_connection(call(
                next(),
                GetConnectionRequest {
                    connection_id: id.clone(),
                },
            ))
            .await;
        refused = result.is_err();
        expected.push(if refused {
            expect(
                "/connections.v1.ConnectionService/GetConnection",
                result,
                "UNAUTHENTICATED",
                Some("ERROR_REASON_API_KEY_INVALID"),
                None,
                None,
            )
        } else {
            ok(
                "/connections.v1.ConnectionService/GetConnection",
                result,
                Some("api_key"),
                source_caller,
            )
        });
        if refused {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused, "the revoked key was never refused");
    let result = ConnectionServiceClient::new(channel.clone())
        .list_connections(call(next(), ListConnectionsRequest::default()))
        .await;
    expected.push(expect(
        "/connections.v1.ConnectionService/ListConnections",
        result,
        "UNAUTHENTICATED",
        Some("ERROR_REASON_API_KEY_MISSING"),
        None,
        None,
    ));
    let result = admin
        .list_audit_events(call(next(), ListAuditEventsRequest::default()))
        .await;
    let audited = &result.as_ref().unwrap().get_ref().audit_events;
    assert_eq!(audited.len(), 5, "2 organizations, 2 keys, 1 revocation");
    for entry in audited {
        println!("audit: {entry:?}");
    }
    expected.push(ok(
        "/connections.v1.AdminService/ListAuditEvents",
        result,
        Some("admin_token"),
        None,
    ));

    // Stopped, the server has written everything it will.
    server.signal("-TERM");
    let log = server.log();
    server.wait().await;

    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("method").is_some() && line.get("request_id").is_some())
        .collect();
    for line in &lines {
        println!("{line}");
    }
    for (i, expected) in expected.iter().enumerate() {
        let request_id = format!("call-{}", i + 1);
        let found: Vec<&Value> = lines
            .iter()
            .filter(|line| line["request_id"] == request_id.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{request_id}: one line each\n{log}");
        let line = found[0];
        assert_eq!(line["method"], expected.method, "{line}");
        assert_eq!(line["code"], expected.code, "{line}");
        assert_eq!(line["reason"].as_str(), expected.reason, "{line}");
        assert_eq!(line["credential"].as_str(), expected.credential, "{line}");
        let caller = expected
            .caller
            .as_ref()
            .map(|(org, key)| (org.as_str(), key.as_str()));
        assert_eq!(
            line["organization_id"]
                .as_str()
                .zip(line["api_key_id"].as_str()),
            caller,
            "{line}"
        );
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
        let peer: std::net::SocketAddr = line["peer"].as_str().unwrap().parse().unwrap();
        assert!(peer.ip().is_loopback(), "{line}");
        assert!(line["time"].as_str().is_some(), "{line}");
    }

    // No secret anywhere in what the server printed: not the keys' secrets,
    // not the admin token, not even their distinctive parts.
    for secret in secrets.iter().map(String::as_str).chain([ADMIN_TOKEN]) {
        let tail = &secret[secret.len() - 16..];
        assert!(
            !log.contains(secret) && !log.contains(tail),
            "a secret was printed:\n{log}"
        );
    }
}
