//! Calling the API: credentials, clients, organizations to call as, and the
//! assertions on what comes back.

use connections::domain::Action;
use connections::proto::{
    ActivateConnectionRequest, ApproveDataTypesRequest, Connection, CreateApiKeyRequest,
    CreateOrganizationRequest, DataType, DeactivateConnectionRequest, DeclineDataTypesRequest,
    ReactivateConnectionRequest, UpdateConnectionDataTypesRequest,
    admin_service_client::AdminServiceClient, connection_service_client::ConnectionServiceClient,
    organization_service_client::OrganizationServiceClient,
    webhook_service_client::WebhookServiceClient,
};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tonic_types::StatusExt;
use uuid::Uuid;

/// The AdminService token of every test server.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Adds `authorization: Bearer <secret>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(secret: &str) -> Self {
        Self(Some(
            format!("Bearer {secret}").parse().expect("ASCII secret"),
        ))
    }

    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Connections = ConnectionServiceClient<InterceptedService<Channel, Bearer>>;
pub type Organizations = OrganizationServiceClient<InterceptedService<Channel, Bearer>>;
pub type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;
pub type Webhooks = WebhookServiceClient<InterceptedService<Channel, Bearer>>;

/// An organization with an API key.
#[derive(Debug, Clone)]
pub struct TestOrg {
    pub id: String,
    /// The key's secret.
    pub key: String,
    /// The key's ID.
    pub key_id: String,
}

/// A ConnectionService client on `channel` calling as `org`.
pub fn connections_on(channel: &Channel, org: &TestOrg) -> Connections {
    ConnectionServiceClient::with_interceptor(channel.clone(), Bearer::new(&org.key))
}

/// The display name of the key every test organization starts with.
pub const FIRST_KEY_NAME: &str = "tests";

/// A new organization with one API key (named [`FIRST_KEY_NAME`]), made
/// through the AdminService of the server at the other end of `channel`
/// (with the tests' admin token).
pub async fn new_org_on(channel: &Channel, name: &str) -> TestOrg {
    let mut admin = AdminServiceClient::with_interceptor(channel.clone(), Bearer::new(ADMIN_TOKEN));
    let org = admin
        .create_organization(CreateOrganizationRequest {
            display_name: name.to_owned(),
        })
        .await
        .expect("create organization")
        .into_inner()
        .organization
        .unwrap();
    new_key_on(channel, &org.id, FIRST_KEY_NAME).await
}

/// A new API key of organization `organization_id`, named `name`, made
/// through the AdminService of the server at the other end of `channel`:
/// the organization as it calls with that key.
pub async fn new_key_on(channel: &Channel, organization_id: &str, name: &str) -> TestOrg {
    let mut admin = AdminServiceClient::with_interceptor(channel.clone(), Bearer::new(ADMIN_TOKEN));
    let created = admin
        .create_api_key(CreateApiKeyRequest {
            organization_id: organization_id.to_owned(),
            display_name: name.to_owned(),
        })
        .await
        .expect("create API key")
        .into_inner();
    TestOrg {
        id: organization_id.to_owned(),
        key: created.secret,
        key_id: created.api_key.expect("the key").id,
    }
}

/// Asserts the status code and the ErrorInfo reason (and domain).
#[track_caller]
pub fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "connections.v1");
    assert_eq!(info.reason, format!("ERROR_REASON_{reason}"), "{status:?}");
}

/// The fields named in the BadRequest detail.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|br| br.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The value of the Prometheus sample named exactly `series` (name and labels).
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
}

/// A well-formed ID that names nothing.
pub fn unknown_id() -> String {
    Uuid::now_v7().to_string()
}

/// What a request that changes a connection carries besides the action.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// Only at this etag; empty: whatever the version.
    pub etag: String,
    /// Makes the call safe to retry; empty: none.
    pub request_id: String,
    /// A deactivation's or a decline's reason.
    pub reason: String,
    /// An update's new set of data types (UpdateDataTypes and
    /// NarrowDataTypes, which are the same RPC).
    pub data_types: Vec<DataType>,
}

/// Calls the RPC that takes `action` on connection `id` through `client`:
/// the connection it returns and the change token.
pub async fn take(
    client: &mut Connections,
    action: Action,
    id: &str,
    asked: Asked,
) -> Result<(Connection, String), Status> {
    let Asked {
        etag,
        request_id,
        reason,
        data_types,
    } = asked;
    let connection_id = id.to_owned();
    let (connection, token) = match action {
        Action::Activate => {
            let response = client
                .activate_connection(ActivateConnectionRequest {
                    connection_id,
                    etag,
                    request_id,
                })
                .await?
                .into_inner();
            (response.connection, response.change_token)
        }
        Action::Deactivate => {
            let response = client
                .deactivate_connection(DeactivateConnectionRequest {
                    connection_id,
                    etag,
                    request_id,
                    reason,
                })
                .await?
                .into_inner();
            (response.connection, response.change_token)
        }
        Action::Reactivate => {
            let response = client
                .reactivate_connection(ReactivateConnectionRequest {
                    connection_id,
                    etag,
                    request_id,
                    message: String::new(),
                })
                .await?
                .into_inner();
            (response.connection, response.change_token)
        }
        Action::UpdateDataTypes | Action::NarrowDataTypes => {
            let response = client
                .update_connection_data_types(UpdateConnectionDataTypesRequest {
                    connection_id,
                    etag,
                    request_id,
                    data_types: data_types.into_iter().map(Into::into).collect(),
                })
                .await?
                .into_inner();
            (response.connection, response.change_token)
        }
        Action::ApproveDataTypes => {
            let response = client
                .approve_data_types(ApproveDataTypesRequest {
                    connection_id,
                    etag,
                    request_id,
                })
                .await?
                .into_inner();
            (response.connection, response.change_token)
        }
        Action::DeclineDataTypes => {
            let response = client
                .decline_data_types(DeclineDataTypesRequest {
                    connection_id,
                    etag,
                    request_id,
                    reason,
                })
                .await?
                .into_inner();
            (response.connection, response.change_token)
        }
    };
    Ok((
        connection.expect("the response holds the connection"),
        token,
    ))
}
