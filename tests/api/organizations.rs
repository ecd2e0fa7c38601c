use connections::proto::GetOrganizationRequest;
use tonic::Code;

use crate::support::{assert_error, spawn_app, unknown_id, violated_fields};

#[tokio::test]
async fn an_empty_id_returns_the_callers_own_organization() {
    let app = spawn_app().await;
    let org = app.new_org("Destination Lender").await;
    let own = app
        .organizations(&org)
        .get_organization(GetOrganizationRequest::default())
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(own.id, org.id);
    assert_eq!(own.display_name, "Destination Lender");
    assert!(own.create_time.is_some());
}

#[tokio::test]
async fn another_organization_can_be_looked_up_by_id() {
    let app = spawn_app().await;
    let source = app.new_org("Source").await;
    let destination = app.new_org("Destination").await;
    let found = app
        .organizations(&source)
        .get_organization(GetOrganizationRequest {
            organization_id: destination.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(found.id, destination.id);
    assert_eq!(found.display_name, "Destination");
}

#[tokio::test]
async fn unknown_or_malformed_organization_ids_are_refused() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut client = app.organizations(&org);
    let status = client
        .get_organization(GetOrganizationRequest {
            organization_id: unknown_id(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ORGANIZATION_NOT_FOUND");
    let status = client
        .get_organization(GetOrganizationRequest {
            organization_id: "acme".into(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&status), ["organization_id"]);
}
