use connections::proto::{
    CreateApiKeyRequest, CreateOrganizationRequest, ListApiKeysRequest, ListOrganizationsRequest,
    RevokeApiKeyRequest,
};
use tonic::Code;

use crate::support::{
    AppOptions, Bearer, assert_error, spawn_app, spawn_app_with, unknown_id, violated_fields,
};

#[tokio::test]
async fn without_a_configured_admin_token_every_admin_call_is_refused() {
    let app = spawn_app_with(AppOptions {
        admin_token: None,
        ..AppOptions::default()
    })
    .await;
    for bearer in [Bearer::none(), Bearer::new(""), Bearer::new("anything")] {
        let status = app
            .admin_with(bearer)
            .list_organizations(ListOrganizationsRequest::default())
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, "ADMIN_TOKEN_INVALID");
    }
}

#[tokio::test]
async fn a_wrong_or_missing_admin_token_is_unauthenticated() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    for bearer in [
        Bearer::none(),
        Bearer::new("test-admin-token-0123456789abcdef-and-more"),
        Bearer::new("test-admin-token-0123456789abcde"),
        Bearer::new(&org.key),
    ] {
        let status = app
            .admin_with(bearer)
            .create_organization(CreateOrganizationRequest {
                display_name: "Mallory".into(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, "ADMIN_TOKEN_INVALID");
    }
}

#[tokio::test]
async fn organizations_are_listed_oldest_first_across_pages() {
    let app = spawn_app().await;
    let mut admin = app.admin();
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            admin
                .create_organization(CreateOrganizationRequest {
                    display_name: format!("  Org {i}  "),
                })
                .await
                .unwrap()
                .into_inner()
                .organization
                .unwrap(),
        );
    }
    assert_eq!(created[0].display_name, "Org 0");
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_organizations(ListOrganizationsRequest {
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.organizations);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, created);

    let status = admin
        .list_organizations(ListOrganizationsRequest {
            page_size: 3,
            page_token: "bogus".into(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
}

#[tokio::test]
async fn display_names_are_required_and_bounded() {
    let app = spawn_app().await;
    let mut admin = app.admin();
    for name in [
        "".to_owned(),
        "   ".to_owned(),
        "x".repeat(201),
        "tab\u{1b}".to_owned(),
    ] {
        let status = admin
            .create_organization(CreateOrganizationRequest { display_name: name })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["display_name"]);
    }
}

#[tokio::test]
async fn api_keys_are_created_listed_and_revoked_without_exposing_secrets() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut admin = app.admin();
    let created = admin
        .create_api_key(CreateApiKeyRequest {
            organization_id: org.id.clone(),
            display_name: "batch jobs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let key = created.api_key.unwrap();
    assert!(created.secret.starts_with(&key.prefix));
    assert_eq!(key.organization_id, org.id);
    assert!(key.revoke_time.is_none());

    let listed = admin
        .list_api_keys(ListApiKeysRequest {
            organization_id: org.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1], key);

    let revoked = admin
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: key.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert!(revoked.revoke_time.is_some());
    // Revoking again returns the key unchanged.
    let again = admin
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: key.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert_eq!(again, revoked);
}

#[tokio::test]
async fn admin_calls_on_unknown_ids_are_not_found() {
    let app = spawn_app().await;
    let mut admin = app.admin();
    let status = admin
        .create_api_key(CreateApiKeyRequest {
            organization_id: unknown_id(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ORGANIZATION_NOT_FOUND");
    let status = admin
        .list_api_keys(ListApiKeysRequest {
            organization_id: unknown_id(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ORGANIZATION_NOT_FOUND");
    let status = admin
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: unknown_id(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "API_KEY_NOT_FOUND");
    let status = admin
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
}
