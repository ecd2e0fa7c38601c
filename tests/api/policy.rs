//! Trusted partners: a destination's policy activates the connections its
//! trusted sources create or reactivate, as the destination.

use connections::proto::{
    AuditAction, CheckAccessRequest, ConnectionEventType as Event, ConnectionRole, ConnectionState,
    CreateConnectionRequest, CredentialKind, DataType, GetOrganizationPolicyRequest,
    ListAuditEventsRequest, OrganizationPolicy, UpdateOrganizationPolicyRequest,
    access_service_client::AccessServiceClient,
};
use tonic::{Code, Status};

use crate::support::{Bearer, TestApp, TestOrg, assert_error, spawn_app, unknown_id};

/// Makes `org` trust exactly `sources` (IDs) as a destination.
async fn trust(app: &TestApp, org: &TestOrg, sources: &[&str]) -> Result<Vec<String>, Status> {
    let policy = OrganizationPolicy {
        auto_activate_source_ids: sources.iter().map(|id| (*id).to_owned()).collect(),
    };
    app.organizations(org)
        .update_organization_policy(UpdateOrganizationPolicyRequest {
            policy: Some(policy),
        })
        .await
        .map(|response| {
            response
                .into_inner()
                .policy
                .unwrap_or_default()
                .auto_activate_source_ids
        })
}

async fn policy_of(app: &TestApp, org: &TestOrg) -> Vec<String> {
    app.organizations(org)
        .get_organization_policy(GetOrganizationPolicyRequest {})
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap_or_default()
        .auto_activate_source_ids
}

fn create(destination: &TestOrg, request_id: &str) -> CreateConnectionRequest {
    CreateConnectionRequest {
        destination_organization_id: destination.id.clone(),
        data_types: vec![DataType::Inquiry.into()],
        request_id: request_id.to_owned(),
        message: String::new(),
    }
}

#[tokio::test]
async fn a_connection_from_a_trusted_source_is_active_at_once_activated_as_the_destination_by_policy()
 {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let other = app.new_org("O").await;
    let trusted = vec![source.id.clone()];
    assert_eq!(
        trust(&app, &destination, &[&source.id]).await.unwrap(),
        trusted
    );
    assert_eq!(policy_of(&app, &destination).await, trusted);

    let created = app
        .connections(&source)
        .create_connection(create(&destination, "trusted-1"))
        .await
        .unwrap()
        .into_inner();
    let connection = created.connection.clone().unwrap();
    assert_eq!(connection.state(), ConnectionState::Active);
    assert!(connection.activate_time.is_some());
    assert!(connection.expire_time.is_none());

    // Two events, each in a transaction of its own, in order.
    let events = app.events(&destination, &connection.id).await;
    let [created_event, activated] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(created_event.r#type(), Event::Created);
    assert!(!created_event.by_policy);
    assert_eq!(activated.r#type(), Event::Activated);
    assert!(activated.by_policy);
    assert_eq!(activated.actor_organization_id, destination.id);
    assert_eq!(activated.actor_role(), ConnectionRole::Destination);
    assert_eq!(
        activated.actor_api_key_id, "",
        "no key of the destination acted"
    );

    // The response's token holds the activation.
    let allowed =
        AccessServiceClient::with_interceptor(app.channel.clone(), Bearer::new(&source.key))
            .check_access(CheckAccessRequest {
                source_organization_id: source.id.clone(),
                destination_organization_id: destination.id.clone(),
                data_type: DataType::Inquiry.into(),
                at_least_change_token: created.change_token.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .allowed;
    assert!(allowed);

    // A retry returns the activated connection, byte for byte.
    let retried = app
        .connections(&source)
        .create_connection(create(&destination, "trusted-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, created);

    // A source the destination does not trust waits as before.
    let untrusted = app.connect(&other, &destination).await;
    assert_eq!(untrusted.state(), ConnectionState::Pending);
}

#[tokio::test]
async fn a_reactivation_by_a_trusted_source_is_activated_and_a_source_removed_from_the_policy_changes_nothing()
 {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let pending = app.connect(&source, &destination).await;
    trust(&app, &destination, &[&source.id]).await.unwrap();
    // Trusting a source changes no existing connection either.
    assert_eq!(
        app.get(&destination, &pending.id).await.state(),
        ConnectionState::Pending
    );
    app.deactivate(&source, &pending.id, "").await.unwrap();
    let reactivated = app.reactivate(&source, &pending.id, "").await.unwrap();
    assert_eq!(reactivated.state(), ConnectionState::Active);
    let last = app.events(&source, &pending.id).await.pop().unwrap();
    assert!(last.by_policy && last.r#type() == Event::Activated);

    assert_eq!(
        trust(&app, &destination, &[]).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        app.get(&destination, &pending.id).await.state(),
        ConnectionState::Active,
        "removing a source changes no existing connection"
    );
    app.deactivate(&destination, &pending.id, "").await.unwrap();
    let again = app.reactivate(&source, &pending.id, "").await.unwrap();
    assert_eq!(again.state(), ConnectionState::Pending);
}

#[tokio::test]
async fn a_policy_names_at_most_a_thousand_other_existing_organizations() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let unknown = unknown_id();
    let too_many: Vec<String> = (0..1001).map(|_| unknown_id()).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let cases: [(&[&str], Code, &str); 4] = [
        (
            &[&destination.id],
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (&["not-a-uuid"], Code::InvalidArgument, "INVALID_ARGUMENT"),
        (&too_many, Code::InvalidArgument, "INVALID_ARGUMENT"),
        (
            &[&source.id, &unknown],
            Code::NotFound,
            "ORGANIZATION_NOT_FOUND",
        ),
    ];
    for (sources, code, reason) in cases {
        let status = trust(&app, &destination, sources).await.unwrap_err();
        assert_error(&status, code, reason);
    }
    assert!(
        policy_of(&app, &destination).await.is_empty(),
        "a refusal keeps nothing"
    );

    // Duplicates collapse; the list comes back sorted.
    let mut both = vec![source.id.clone(), app.new_org("T").await.id];
    let stored = trust(&app, &destination, &[&both[1], &both[0], &both[1]])
        .await
        .unwrap();
    both.sort();
    assert_eq!(stored, both);
}

#[tokio::test]
async fn a_policy_update_is_audited_with_the_calling_key() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    trust(&app, &destination, &[&source.id]).await.unwrap();
    let entries = app
        .admin()
        .list_audit_events(ListAuditEventsRequest {
            action: AuditAction::OrganizationPolicyUpdated.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .audit_events;
    let [entry] = entries.as_slice() else {
        panic!("{entries:?}")
    };
    assert_eq!(entry.credential_kind(), CredentialKind::ApiKey);
    assert_eq!(entry.credential_id, destination.key_id);
    assert_eq!(entry.target_id, destination.id);
    assert_eq!(entry.organization_id, destination.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_of_one_policy_each_succeed_and_one_of_them_is_the_policy() {
    let app = spawn_app().await;
    let destination = app.new_org("D").await;
    let mut sources = Vec::new();
    for i in 0..4 {
        sources.push(app.new_org(&format!("S{i}")).await.id);
    }
    // Overlapping lists, so that two updates insert the same rows.
    let lists: Vec<Vec<&str>> = (0..8)
        .map(|i| sources.iter().skip(i % 3).map(String::as_str).collect())
        .collect();
    let results =
        futures::future::join_all(lists.iter().map(|list| trust(&app, &destination, list))).await;
    let mut stored = Vec::new();
    for result in results {
        stored.push(result.unwrap_or_else(|status| panic!("{status:?}")));
    }
    let now = policy_of(&app, &destination).await;
    assert!(stored.contains(&now), "{now:?} is none of {stored:?}");
}
