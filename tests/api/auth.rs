use connections::proto::{
    GetOrganizationRequest, ListApiKeysRequest, ListConnectionsRequest, RevokeApiKeyRequest,
};
use tonic::{Code, Request};

use crate::support::{Bearer, assert_error, spawn_app};

#[tokio::test]
async fn a_call_without_credentials_is_unauthenticated_api_key_missing() {
    let app = spawn_app().await;
    let status = app
        .connections_with(Bearer::none())
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_MISSING");
}

#[tokio::test]
async fn unknown_or_malformed_keys_are_unauthenticated_api_key_invalid() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut tampered = org.key.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for secret in [
        "cnx_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        tampered,
        "not-even-our-format".to_owned(),
        format!("cnx_{}", "A".repeat(100_000 / 8)),
    ] {
        let status = app
            .connections_with(Bearer::new(&secret))
            .list_connections(ListConnectionsRequest::default())
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
    }

    // Not a bearer credential at all.
    let mut request = Request::new(ListConnectionsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Basic {}", org.key).parse().unwrap(),
    );
    let status = app
        .connections_with(Bearer::none())
        .list_connections(request)
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
}

#[tokio::test]
async fn unauthenticated_callers_learn_nothing_about_their_request() {
    let app = spawn_app().await;
    // A malformed request without credentials: authentication is checked first.
    let status = app
        .connections_with(Bearer::none())
        .list_connections(ListConnectionsRequest {
            page_size: -5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_MISSING");
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut client = app.connections(&org);
    client
        .list_connections(ListConnectionsRequest::default())
        .await
        .expect("key works before revocation");

    let mut admin = app.admin();
    let keys = admin
        .list_api_keys(ListApiKeysRequest {
            organization_id: org.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(keys.len(), 1);
    assert!(org.key.starts_with(&keys[0].prefix));
    admin
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: keys[0].id.clone(),
        })
        .await
        .unwrap();

    let status = client
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
    let status = app
        .organizations(&org)
        .get_organization(GetOrganizationRequest::default())
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
}

#[tokio::test]
async fn api_keys_are_long_random_and_prefixed() {
    let app = spawn_app().await;
    let a = app.new_org("A").await;
    let b = app.new_org("B").await;
    for key in [&a.key, &b.key] {
        assert!(key.starts_with("cnx_"));
        // 32 random bytes in base64url: 43 characters, 256 bits.
        assert_eq!(key.len(), 4 + 43);
    }
    assert_ne!(a.key, b.key);
}
