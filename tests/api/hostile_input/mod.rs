//! Hostile input: garbage gRPC frames, oversized messages and metadata,
//! non-HTTP/2 bytes, stream floods, stalled uploads and over-long fields.
//!
//! Every test shows three things: the hostile input is refused (an error
//! status, or a refused stream / closed connection for transport-level
//! abuse), the server process keeps serving, and a normal call on a fresh
//! channel right afterwards succeeds.
//!
//! - `framing`: undecodable protobuf and malformed gRPC frames.
//! - `size_limits`: messages, metadata and credentials over their limits.
//! - `transport`: bytes that are not HTTP/2, partial prefaces, stream floods
//!   and stalled uploads.
//! - `field_bounds`: identifiers, request_ids, etags, data types, page tokens
//!   and display names over their bounds, on every RPC that takes them.

mod field_bounds;
mod framing;
mod size_limits;
mod transport;

use connections::proto::{
    GetOrganizationRequest, organization_service_client::OrganizationServiceClient,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{Bearer, TestApp, TestOrg, bounded};

/// The RPC the framing tests send their hand-made bodies to.
const GET_CONNECTION: &str = "/connections.v1.ConnectionService/GetConnection";

/// A new HTTP/2 connection to the server (the abused one may be dead).
async fn fresh_channel(app: &TestApp) -> Channel {
    bounded(
        "connect",
        Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect(),
    )
    .await
    .expect("the server still accepts connections")
}

/// The server answers health checks and authenticated calls on a new connection.
async fn assert_still_serving(app: &TestApp, org: &TestOrg) {
    let channel = fresh_channel(app).await;
    let health = bounded(
        "health check",
        HealthClient::new(channel.clone()).check(HealthCheckRequest::default()),
    )
    .await
    .expect("health check after hostile input")
    .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let own = bounded(
        "GetOrganization",
        OrganizationServiceClient::with_interceptor(channel, Bearer::new(&org.key))
            .get_organization(GetOrganizationRequest::default()),
    )
    .await
    .expect("normal call after hostile input")
    .into_inner()
    .organization
    .unwrap();
    assert_eq!(own.id, org.id);
}
