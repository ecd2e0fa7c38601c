//! The audit log: every operator action (organization created, API key
//! created, API key revoked) and every change an organization makes to its
//! webhook endpoints is recorded with the credential that made it, the
//! client's address and the call's request ID, and never a secret;
//! AdminService reads it back, filtered and paged; and the database refuses
//! to change or delete an entry, whoever asks.

use connections::proto::{
    ActivateConnectionRequest, AuditAction, AuditEvent, CreateApiKeyRequest,
    CreateConnectionRequest, CreateOrganizationRequest, CreateWebhookEndpointRequest,
    CredentialKind, DataType, DeleteWebhookEndpointRequest, ListAuditEventsRequest,
    RecoverWebhookDeliveriesRequest, RevokeApiKeyRequest, RotateWebhookSecretRequest,
    UpdateWebhookEndpointRequest, WebhookEndpoint,
};
use prost_types::{FieldMask, Timestamp};
use sea_orm::{ConnectionTrait, DbBackend};
use sha2::{Digest, Sha256};
use tonic::{Code, Request};

use crate::support::{
    ADMIN_TOKEN, Bearer, TestApp, TestOrg, assert_error, receiver::Receiver, spawn_app,
};

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

/// The webhook actions, in the order the first test makes them.
const WEBHOOK_ACTIONS: [AuditAction; 5] = [
    AuditAction::WebhookEndpointCreated,
    AuditAction::WebhookEndpointUpdated,
    AuditAction::WebhookDeliveriesRecovered,
    AuditAction::WebhookSecretRotated,
    AuditAction::WebhookEndpointDeleted,
];

/// A connection from `source` to `destination`, activated; returns the
/// change tokens of its creation (a recovery after it has the activation to
/// queue) and of its activation.
async fn activated_connection(
    app: &TestApp,
    source: &TestOrg,
    destination: &TestOrg,
) -> (String, String) {
    let created = app
        .connections(source)
        .create_connection(CreateConnectionRequest {
            message: String::new(),
            destination_organization_id: destination.id.clone(),
            data_types: vec![DataType::Inquiry as i32],
            request_id: String::new(),
        })
        .await
        .expect("create connection")
        .into_inner();
    let activated = app
        .connections(destination)
        .activate_connection(ActivateConnectionRequest {
            connection_id: created.connection.unwrap().id,
            ..Default::default()
        })
        .await
        .expect("activate connection")
        .into_inner();
    (created.change_token, activated.change_token)
}

/// Every entry of the webhook actions, oldest first.
async fn webhook_entries(app: &TestApp) -> Vec<AuditEvent> {
    all_entries(app, ListAuditEventsRequest::default())
        .await
        .into_iter()
        .filter(|entry| WEBHOOK_ACTIONS.contains(&entry.action()))
        .collect()
}

/// `connections admin audit` with `args` on `app`'s database: its JSON lines.
async fn admin_audit(app: &TestApp, args: &[&str]) -> Vec<serde_json::Value> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_connections"));
    command
        .args(["admin", "audit", "--database-url", &app.database_url])
        .args(args)
        .env_remove("RUST_LOG");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run connections admin audit");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn each_webhook_endpoint_change_is_audited_once_with_the_calling_key_the_peer_and_the_request_id()
 {
    let app = spawn_app().await;
    let (acme, orbit) = (app.new_org("Acme Bank").await, app.new_org("Orbit").await);
    // The changes are made with a second key of Acme's: the entries name it.
    let ops = app.new_key(&acme, "ops").await;
    let (after_creation, _) = activated_connection(&app, &acme, &orbit).await;
    let receiver = Receiver::start().await;
    // The path and the query of a receiver's URL may be secrets of its own.
    let url = receiver.url("/hooks/path-s3cret?token=query-s3cret");
    let origin = receiver.url("");
    let mut webhooks = app.webhooks(&ops);

    let create = CreateWebhookEndpointRequest {
        url: url.clone(),
        description: "description-s3cret".to_owned(),
        event_types: Vec::new(),
        request_id: "create-endpoint-1".to_owned(),
    };
    let created = webhooks
        .create_webhook_endpoint(with_request_id(create.clone(), "req-webhook-create"))
        .await
        .unwrap()
        .into_inner();
    let endpoint_id = created.endpoint.unwrap().id;
    // A retry (same request_id) changes nothing and records nothing.
    let retried = webhooks
        .create_webhook_endpoint(with_request_id(create, "req-webhook-create-retry"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.endpoint.unwrap().id, endpoint_id);
    webhooks
        .update_webhook_endpoint(with_request_id(
            UpdateWebhookEndpointRequest {
                endpoint: Some(WebhookEndpoint {
                    id: endpoint_id.clone(),
                    description: "renamed".to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["description".to_owned()],
                }),
            },
            "req-webhook-update",
        ))
        .await
        .unwrap();
    let recovered = webhooks
        .recover_webhook_deliveries(with_request_id(
            RecoverWebhookDeliveriesRequest {
                endpoint_id: endpoint_id.clone(),
                after_change_token: after_creation,
            },
            "req-webhook-recover",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recovered.events_queued, 1, "the activation");
    let rotated = webhooks
        .rotate_webhook_secret(with_request_id(
            RotateWebhookSecretRequest {
                endpoint_id: endpoint_id.clone(),
            },
            "req-webhook-rotate",
        ))
        .await
        .unwrap()
        .into_inner();
    webhooks
        .delete_webhook_endpoint(with_request_id(
            DeleteWebhookEndpointRequest {
                endpoint_id: endpoint_id.clone(),
            },
            "req-webhook-delete",
        ))
        .await
        .unwrap();

    let entries = all_entries(
        &app,
        ListAuditEventsRequest {
            target_id: endpoint_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let actions: Vec<AuditAction> = entries.iter().map(|e| e.action()).collect();
    assert_eq!(actions, WEBHOOK_ACTIONS, "one entry per change");
    let request_ids: Vec<&str> = entries.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(
        request_ids,
        [
            "req-webhook-create",
            "req-webhook-update",
            "req-webhook-recover",
            "req-webhook-rotate",
            "req-webhook-delete"
        ]
    );
    for entry in &entries {
        assert_eq!(entry.credential_kind(), CredentialKind::ApiKey);
        assert_eq!(entry.credential_id, ops.key_id, "the key that called");
        assert_eq!(entry.organization_id, acme.id);
        assert_eq!(entry.target_id, endpoint_id);
        assert_eq!(entry.target_display_name, origin, "the URL's origin");
        assert!(entry.occur_time.is_some());
        let peer: std::net::SocketAddr = entry.peer.parse().expect("host:port");
        assert!(peer.ip().is_loopback(), "{peer}");
    }
    // Nothing else was recorded about webhooks.
    assert_eq!(webhook_entries(&app).await, entries);

    // Each action is a filter of its own, through the API and the command
    // line.
    for action in WEBHOOK_ACTIONS {
        let only = all_entries(
            &app,
            ListAuditEventsRequest {
                action: action.into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(only.len(), 1, "{action:?}");
        assert_eq!(only[0].action(), action);
    }
    let rotations = admin_audit(
        &app,
        &[
            "--action",
            "webhook_endpoint.secret_rotated",
            "--target",
            &endpoint_id,
        ],
    )
    .await;
    assert_eq!(rotations.len(), 1, "{rotations:?}");
    assert_eq!(rotations[0]["credential_kind"], "api_key");
    assert_eq!(rotations[0]["credential_id"], ops.key_id.as_str());
    assert_eq!(rotations[0]["target_type"], "webhook_endpoint");
    assert_eq!(rotations[0]["request_id"], "req-webhook-rotate");

    // No field of any entry holds a secret: the signing secrets (whole, or
    // their key without the prefix), the key the calls were made with, or
    // what the URL and the description could hide.
    let secrets = [
        created.secret.as_str(),
        &created.secret["whsec_".len()..],
        rotated.secret.as_str(),
        &rotated.secret["whsec_".len()..],
        ops.key.as_str(),
        "s3cret",
    ];
    let mut everything = format!(
        "{:?}",
        all_entries(&app, ListAuditEventsRequest::default()).await
    );
    everything.push_str(&format!("{:?}", admin_audit(&app, &[]).await));
    for secret in secrets {
        assert!(!everything.contains(secret), "{secret} is in the audit log");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_refused_or_empty_webhook_change_leaves_no_audit_entry() {
    let app = spawn_app().await;
    let (acme, orbit) = (app.new_org("Acme Bank").await, app.new_org("Orbit").await);
    let receiver = Receiver::start().await;
    let created = app
        .webhooks(&acme)
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            url: receiver.url("/hooks"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let endpoint_id = created.endpoint.unwrap().id;
    // Events it has already been sent (or has queued): a recovery after the
    // last of them has nothing to queue.
    let (after_creation, after_all) = activated_connection(&app, &acme, &orbit).await;
    let before = all_entries(&app, ListAuditEventsRequest::default()).await;

    // Another organization's endpoint is NOT_FOUND to each change.
    let mut others = app.webhooks(&orbit);
    let refusals = [
        others
            .update_webhook_endpoint(UpdateWebhookEndpointRequest {
                endpoint: Some(WebhookEndpoint {
                    id: endpoint_id.clone(),
                    disabled: true,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["disabled".to_owned()],
                }),
            })
            .await
            .map(drop),
        others
            .rotate_webhook_secret(RotateWebhookSecretRequest {
                endpoint_id: endpoint_id.clone(),
            })
            .await
            .map(drop),
        others
            .recover_webhook_deliveries(RecoverWebhookDeliveriesRequest {
                endpoint_id: endpoint_id.clone(),
                after_change_token: after_creation,
            })
            .await
            .map(drop),
        others
            .delete_webhook_endpoint(DeleteWebhookEndpointRequest {
                endpoint_id: endpoint_id.clone(),
            })
            .await
            .map(drop),
    ];
    for refused in refusals {
        assert_error(
            &refused.unwrap_err(),
            Code::NotFound,
            "WEBHOOK_ENDPOINT_NOT_FOUND",
        );
    }
    // The owner's own refused change, and a recovery with nothing to queue.
    let mut owner = app.webhooks(&acme);
    let refused = owner
        .update_webhook_endpoint(UpdateWebhookEndpointRequest {
            endpoint: Some(WebhookEndpoint {
                id: endpoint_id.clone(),
                url: "ftp://127.0.0.1/".to_owned(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["url".to_owned()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let nothing = owner
        .recover_webhook_deliveries(RecoverWebhookDeliveriesRequest {
            endpoint_id: endpoint_id.clone(),
            after_change_token: after_all,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nothing.events_queued, 0);

    let after = all_entries(&app, ListAuditEventsRequest::default()).await;
    assert_eq!(after, before, "nothing was recorded");
    let about_endpoint: Vec<AuditAction> = after
        .iter()
        .filter(|e| e.target_id == endpoint_id)
        .map(|e| e.action())
        .collect();
    assert_eq!(about_endpoint, [AuditAction::WebhookEndpointCreated]);
    app.stop().await;
}
