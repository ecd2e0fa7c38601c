//! The audit log: every operator action (organization created, API key
//! created, API key revoked) is recorded with the credential that made it,
//! the client's address and the call's request ID; AdminService reads it
//! back, filtered and paged; and the database refuses to change or delete
//! an entry, whoever asks.

use connections::proto::{
    AuditAction, AuditEvent, CreateApiKeyRequest, CreateOrganizationRequest, CredentialKind,
    ListAuditEventsRequest, RevokeApiKeyRequest,
};
use prost_types::Timestamp;
use sea_orm::{ConnectionTrait, DbBackend};
use sha2::{Digest, Sha256};
use tonic::{Code, Request};

use crate::support::{ADMIN_TOKEN, Bearer, TestApp, assert_error, spawn_app};

/// `message` as a request carrying `x-request-id: id`.
fn with_request_id<T>(message: T, id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("an ASCII ID"));
    request
}

/// Every entry matching `request`'s filters, through every page of `size`.
async fn all_entries(app: &TestApp, request: ListAuditEventsRequest) -> Vec<AuditEvent> {
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .admin()
            .list_audit_events(ListAuditEventsRequest {
                page_token: token,
                ..request.clone()
            })
            .await
            .expect("ListAuditEvents")
            .into_inner();
        entries.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            return entries;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn each_operator_action_is_audited_with_the_token_the_peer_and_the_request_id() {
    let app = spawn_app().await;
    let mut admin = app.admin();

    let created = admin
        .create_organization(with_request_id(
            CreateOrganizationRequest {
                display_name: "Acme Bank".to_owned(),
            },
            "req-create-org",
        ))
        .await
        .unwrap();
    // The response names the request ID it was recorded under.
    assert_eq!(
        created.metadata().get("x-request-id").unwrap(),
        "req-create-org"
    );
    let org = created.into_inner().organization.unwrap();
    let key = admin
        .create_api_key(with_request_id(
            CreateApiKeyRequest {
                organization_id: org.id.clone(),
                display_name: "ci-deployer".to_owned(),
            },
            "req-create-key",
        ))
        .await
        .unwrap()
        .into_inner();
    let key_id = key.api_key.unwrap().id;
    // Without x-request-id, the server makes one and returns it.
    let revoked = admin
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: key_id.clone(),
        })
        .await
        .unwrap();
    let made_id = revoked
        .metadata()
        .get("x-request-id")
        .expect("a request ID")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&made_id).unwrap().get_version_num(),
        7
    );
    // Revoking it again changes nothing, and records nothing.
    admin
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: key_id.clone(),
        })
        .await
        .unwrap();

    let entries = all_entries(&app, ListAuditEventsRequest::default()).await;
    let actions: Vec<AuditAction> = entries.iter().map(|e| e.action()).collect();
    assert_eq!(
        actions,
        [
            AuditAction::OrganizationCreated,
            AuditAction::ApiKeyCreated,
            AuditAction::ApiKeyRevoked
        ]
    );
    let fingerprint: String = Sha256::digest(ADMIN_TOKEN.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for entry in &entries {
        assert_eq!(entry.credential_kind(), CredentialKind::AdminToken);
        assert_eq!(entry.credential_id, fingerprint, "the token's fingerprint");
        assert!(!entry.credential_id.contains(ADMIN_TOKEN));
        assert_eq!(entry.organization_id, org.id);
        assert!(entry.occur_time.is_some());
        let peer: std::net::SocketAddr = entry.peer.parse().expect("host:port");
        assert!(peer.ip().is_loopback(), "{peer}");
    }
    assert_eq!(entries[0].target_id, org.id);
    assert_eq!(entries[0].target_display_name, "Acme Bank");
    assert_eq!(entries[0].request_id, "req-create-org");
    assert_eq!(entries[1].target_id, key_id);
    assert_eq!(entries[1].target_display_name, "ci-deployer");
    assert_eq!(entries[1].request_id, "req-create-key");
    assert_eq!(entries[2].target_id, key_id);
    assert_eq!(entries[2].request_id, made_id);
    app.stop().await;
}

#[tokio::test]
async fn the_audit_log_filters_by_action_target_and_time_and_pages_within_one_filter() {
    let app = spawn_app().await;
    let first = app.new_org("First").await;
    let second = app.new_org("Second").await;
    let all = all_entries(&app, ListAuditEventsRequest::default()).await;
    // Each organization and the key it was made with.
    assert_eq!(all.len(), 4);

    let created_orgs = all_entries(
        &app,
        ListAuditEventsRequest {
            action: AuditAction::OrganizationCreated.into(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<&str> = created_orgs.iter().map(|e| e.target_id.as_str()).collect();
    assert_eq!(ids, [first.id.as_str(), second.id.as_str()]);

    let about_key = all_entries(
        &app,
        ListAuditEventsRequest {
            target_id: second.key_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(about_key.len(), 1);
    assert_eq!(about_key[0].action(), AuditAction::ApiKeyCreated);
    assert_eq!(about_key[0].organization_id, second.id);

    // A time range: from the third entry on.
    let third = all[2].occur_time.unwrap();
    let since_third = all_entries(
        &app,
        ListAuditEventsRequest {
            start_time: Some(third),
            ..Default::default()
        },
    )
    .await;
    assert!(since_third.iter().all(|e| {
        let t = e.occur_time.unwrap();
        (t.seconds, t.nanos) >= (third.seconds, third.nanos)
    }));
    assert!(since_third.iter().any(|e| e.id == all[2].id));
    let before_third = all_entries(
        &app,
        ListAuditEventsRequest {
            end_time: Some(third),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(before_third.len() + since_third.len(), all.len());

    // A page token is good only with the filter it was issued with.
    let page = app
        .admin()
        .list_audit_events(ListAuditEventsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let refused = app
        .admin()
        .list_audit_events(ListAuditEventsRequest {
            page_size: 1,
            page_token: page.next_page_token,
            action: AuditAction::ApiKeyRevoked.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&refused, Code::InvalidArgument, "INVALID_PAGE_TOKEN");

    // Malformed filters name their fields; an empty time range is refused.
    let ten = Timestamp {
        seconds: 10,
        nanos: 0,
    };
    let refused = app
        .admin()
        .list_audit_events(ListAuditEventsRequest {
            action: 99,
            target_id: "not-a-uuid".to_owned(),
            start_time: Some(ten),
            end_time: Some(ten),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&refused, Code::InvalidArgument, "INVALID_ARGUMENT");
    let mut fields = crate::support::clients::violated_fields(&refused);
    fields.sort();
    assert_eq!(fields, ["action", "target_id"]);
    let refused = app
        .admin()
        .list_audit_events(ListAuditEventsRequest {
            start_time: Some(ten),
            end_time: Some(ten),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        crate::support::clients::violated_fields(&refused),
        ["end_time"]
    );

    // Only the admin token reads it.
    let refused = app
        .admin_with(Bearer::new(&first.key))
        .list_audit_events(ListAuditEventsRequest::default())
        .await
        .unwrap_err();
    assert_error(&refused, Code::Unauthenticated, "ADMIN_TOKEN_INVALID");
    app.stop().await;
}

#[tokio::test]
async fn the_database_refuses_to_change_or_delete_an_audit_entry_even_for_the_service_s_own_user() {
    let app = spawn_app().await;
    app.new_org("Acme Bank").await;
    let before = all_entries(&app, ListAuditEventsRequest::default()).await;
    assert_eq!(before.len(), 2);

    // The server's own pool: the same database user the service writes with.
    let db = &app.server_db;
    let mut attempts = vec![
        "UPDATE audit_events SET action = 'api_key.revoked'",
        "UPDATE audit_events SET credential_id = NULL",
        "DELETE FROM audit_events",
    ];
    if db.get_database_backend() == DbBackend::Postgres {
        attempts.push("TRUNCATE audit_events");
        attempts.push(
            "INSERT INTO audit_events SELECT * FROM audit_events LIMIT 1 \
             ON CONFLICT (id) DO UPDATE SET action = 'api_key.revoked'",
        );
    } else {
        // Replacing a row deletes it without firing DELETE triggers.
        attempts.push("INSERT OR REPLACE INTO audit_events SELECT * FROM audit_events LIMIT 1");
    }
    for statement in attempts {
        let err = db
            .execute_unprepared(statement)
            .await
            .expect_err(statement)
            .to_string();
        assert!(
            err.contains("append-only"),
            "{statement}: refused for another reason: {err}"
        );
    }
    let after = all_entries(&app, ListAuditEventsRequest::default()).await;
    assert_eq!(after, before, "nothing changed");
    app.stop().await;
}
