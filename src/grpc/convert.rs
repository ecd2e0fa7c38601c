//! Conversions between domain types and protobuf messages.

use chrono::{DateTime, Utc};
use prost::Message;
use prost_types::Timestamp;

use crate::{
    domain, proto,
    service::{ServiceError, Written, idempotency::Outcome},
};

/// The connection and change token a write returns: what it produced now,
/// or what an earlier call with the same request_id returned (see
/// [`encode_connection`]).
pub fn written(outcome: Outcome<Written>) -> Result<(proto::Connection, String), ServiceError> {
    match outcome {
        Outcome::Fresh(written) => Ok((written.record.into(), written.change_token)),
        Outcome::Replayed(recorded) => Ok((
            proto::Connection::decode(recorded.response.as_slice())
                .map_err(ServiceError::internal)?,
            recorded.change_token,
        )),
    }
}

/// The message a connection is returned as, encoded: what the service
/// records for replays of the call that produced it.
pub fn encode_connection(record: &domain::ConnectionRecord) -> Vec<u8> {
    proto::Connection::from(record.clone()).encode_to_vec()
}

/// A protobuf timestamp.
pub fn timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

impl From<domain::ConnectionState> for proto::ConnectionState {
    fn from(state: domain::ConnectionState) -> Self {
        match state {
            domain::ConnectionState::Pending => Self::Pending,
            domain::ConnectionState::Active => Self::Active,
            domain::ConnectionState::Inactive => Self::Inactive,
        }
    }
}

impl From<domain::Role> for proto::ConnectionRole {
    fn from(role: domain::Role) -> Self {
        match role {
            domain::Role::Source => Self::Source,
            domain::Role::Destination => Self::Destination,
        }
    }
}

impl From<domain::DataType> for proto::DataType {
    fn from(data_type: domain::DataType) -> Self {
        match data_type {
            domain::DataType::Inquiry => Self::Inquiry,
            domain::DataType::Verification => Self::Verification,
            domain::DataType::Account => Self::Account,
            domain::DataType::Transaction => Self::Transaction,
        }
    }
}

impl From<domain::EventType> for proto::ConnectionEventType {
    fn from(event_type: domain::EventType) -> Self {
        match event_type {
            domain::EventType::Created => Self::Created,
            domain::EventType::Activated => Self::Activated,
            domain::EventType::Deactivated => Self::Deactivated,
            domain::EventType::Reactivated => Self::Reactivated,
            domain::EventType::Expired => Self::Expired,
            domain::EventType::DataTypesChanged => Self::DataTypesChanged,
            domain::EventType::DataTypesProposed => Self::DataTypesProposed,
            domain::EventType::DataTypesApproved => Self::DataTypesApproved,
            domain::EventType::DataTypesDeclined => Self::DataTypesDeclined,
        }
    }
}

/// The domain data type of a protobuf value; `None` for UNSPECIFIED.
pub fn data_type(value: proto::DataType) -> Option<domain::DataType> {
    match value {
        proto::DataType::Unspecified => None,
        proto::DataType::Inquiry => Some(domain::DataType::Inquiry),
        proto::DataType::Verification => Some(domain::DataType::Verification),
        proto::DataType::Account => Some(domain::DataType::Account),
        proto::DataType::Transaction => Some(domain::DataType::Transaction),
    }
}

/// The domain audit action of a protobuf value; `None` for UNSPECIFIED.
pub fn audit_action(value: proto::AuditAction) -> Option<domain::AuditAction> {
    match value {
        proto::AuditAction::Unspecified => None,
        proto::AuditAction::OrganizationCreated => Some(domain::AuditAction::OrganizationCreated),
        proto::AuditAction::ApiKeyCreated => Some(domain::AuditAction::ApiKeyCreated),
        proto::AuditAction::ApiKeyRevoked => Some(domain::AuditAction::ApiKeyRevoked),
        proto::AuditAction::WebhookEndpointCreated => {
            Some(domain::AuditAction::WebhookEndpointCreated)
        }
        proto::AuditAction::WebhookEndpointUpdated => {
            Some(domain::AuditAction::WebhookEndpointUpdated)
        }
        proto::AuditAction::WebhookEndpointDeleted => {
            Some(domain::AuditAction::WebhookEndpointDeleted)
        }
        proto::AuditAction::WebhookSecretRotated => Some(domain::AuditAction::WebhookSecretRotated),
        proto::AuditAction::WebhookDeliveriesRecovered => {
            Some(domain::AuditAction::WebhookDeliveriesRecovered)
        }
        proto::AuditAction::OrganizationPolicyUpdated => {
            Some(domain::AuditAction::OrganizationPolicyUpdated)
        }
    }
}

impl From<domain::AuditAction> for proto::AuditAction {
    fn from(value: domain::AuditAction) -> Self {
        match value {
            domain::AuditAction::OrganizationCreated => Self::OrganizationCreated,
            domain::AuditAction::ApiKeyCreated => Self::ApiKeyCreated,
            domain::AuditAction::ApiKeyRevoked => Self::ApiKeyRevoked,
            domain::AuditAction::WebhookEndpointCreated => Self::WebhookEndpointCreated,
            domain::AuditAction::WebhookEndpointUpdated => Self::WebhookEndpointUpdated,
            domain::AuditAction::WebhookEndpointDeleted => Self::WebhookEndpointDeleted,
            domain::AuditAction::WebhookSecretRotated => Self::WebhookSecretRotated,
            domain::AuditAction::WebhookDeliveriesRecovered => Self::WebhookDeliveriesRecovered,
            domain::AuditAction::OrganizationPolicyUpdated => Self::OrganizationPolicyUpdated,
        }
    }
}

impl From<domain::CredentialKind> for proto::CredentialKind {
    fn from(value: domain::CredentialKind) -> Self {
        match value {
            domain::CredentialKind::AdminToken => Self::AdminToken,
            domain::CredentialKind::Cli => Self::Cli,
            domain::CredentialKind::ApiKey => Self::ApiKey,
        }
    }
}

impl From<domain::AuditEvent> for proto::AuditEvent {
    fn from(event: domain::AuditEvent) -> Self {
        Self {
            id: event.id.to_string(),
            occur_time: Some(timestamp(event.occur_time)),
            action: proto::AuditAction::from(event.action).into(),
            credential_kind: proto::CredentialKind::from(event.credential_kind).into(),
            credential_id: event.credential_id.unwrap_or_default(),
            target_id: event.target_id.to_string(),
            organization_id: event.organization_id.to_string(),
            target_display_name: event.target_display_name,
            peer: event.peer.unwrap_or_default(),
            request_id: event.request_id.unwrap_or_default(),
        }
    }
}

/// The domain role of a protobuf value; `None` for UNSPECIFIED.
pub fn role(value: proto::ConnectionRole) -> Option<domain::Role> {
    match value {
        proto::ConnectionRole::Unspecified => None,
        proto::ConnectionRole::Source => Some(domain::Role::Source),
        proto::ConnectionRole::Destination => Some(domain::Role::Destination),
    }
}

/// The domain state of a protobuf value; `None` for UNSPECIFIED.
pub fn state(value: proto::ConnectionState) -> Option<domain::ConnectionState> {
    match value {
        proto::ConnectionState::Unspecified => None,
        proto::ConnectionState::Pending => Some(domain::ConnectionState::Pending),
        proto::ConnectionState::Active => Some(domain::ConnectionState::Active),
        proto::ConnectionState::Inactive => Some(domain::ConnectionState::Inactive),
    }
}

impl From<domain::ConnectionRecord> for proto::Connection {
    fn from(record: domain::ConnectionRecord) -> Self {
        let etag = record.etag();
        Self {
            id: record.id.to_string(),
            source_organization_id: record.parties.source.to_string(),
            destination_organization_id: record.parties.destination.to_string(),
            state: proto::ConnectionState::from(record.state).into(),
            data_types: data_types(Some(&record.data_types)),
            create_time: Some(timestamp(record.create_time)),
            update_time: Some(timestamp(record.update_time)),
            activate_time: record.activate_time.map(timestamp),
            deactivate_time: record.deactivate_time.map(timestamp),
            deactivated_by: record
                .deactivated_by
                .map_or(proto::ConnectionRole::Unspecified, Into::into)
                .into(),
            deactivation_reason: record.deactivation_reason.unwrap_or_default(),
            etag,
            invitation_message: record.invitation_message.unwrap_or_default(),
            expire_time: record.expire_time.map(timestamp),
            pending_data_types: data_types(record.pending_data_types.as_ref()),
        }
    }
}

/// The API form of a set of data types; empty for `None`.
fn data_types(types: Option<&domain::DataTypes>) -> Vec<i32> {
    types.map_or_else(Vec::new, |types| {
        types
            .as_slice()
            .iter()
            .map(|t| proto::DataType::from(*t).into())
            .collect()
    })
}

impl From<domain::ConnectionEvent> for proto::ConnectionEvent {
    fn from(event: domain::ConnectionEvent) -> Self {
        // Empty for events recorded before keys were, and for the service.
        let (actor_api_key_id, actor_api_key_display_name) =
            event.actor.key().map_or_else(Default::default, |key| {
                (key.id.to_string(), key.display_name.clone())
            });
        let change = event.data_types.as_ref();
        Self {
            id: event.id.hyphenated().to_string(),
            connection_id: event.connection_id.to_string(),
            sequence: event.sequence,
            r#type: proto::ConnectionEventType::from(event.event_type).into(),
            from_state: event
                .from_state
                .map_or(proto::ConnectionState::Unspecified, Into::into)
                .into(),
            to_state: proto::ConnectionState::from(event.to_state).into(),
            actor_organization_id: event
                .actor
                .organization()
                .map(|org| org.to_string())
                .unwrap_or_default(),
            actor_role: event
                .actor
                .role()
                .map_or(proto::ConnectionRole::Unspecified, Into::into)
                .into(),
            reason: event.reason.unwrap_or_default(),
            message: event.message.unwrap_or_default(),
            create_time: Some(timestamp(event.create_time)),
            actor_api_key_id,
            actor_api_key_display_name,
            previous_data_types: data_types(change.map(|c| &c.previous)),
            previous_pending_data_types: data_types(
                change.and_then(|c| c.previous_pending.as_ref()),
            ),
            data_types: data_types(change.map(|c| &c.current)),
            pending_data_types: data_types(change.and_then(|c| c.pending.as_ref())),
            by_policy: event.by_policy,
        }
    }
}

/// The domain event type of an API one; `None` for UNSPECIFIED.
pub fn event_type(value: proto::ConnectionEventType) -> Option<domain::EventType> {
    match value {
        proto::ConnectionEventType::Unspecified => None,
        proto::ConnectionEventType::Created => Some(domain::EventType::Created),
        proto::ConnectionEventType::Activated => Some(domain::EventType::Activated),
        proto::ConnectionEventType::Deactivated => Some(domain::EventType::Deactivated),
        proto::ConnectionEventType::Reactivated => Some(domain::EventType::Reactivated),
        proto::ConnectionEventType::Expired => Some(domain::EventType::Expired),
        proto::ConnectionEventType::DataTypesChanged => Some(domain::EventType::DataTypesChanged),
        proto::ConnectionEventType::DataTypesProposed => Some(domain::EventType::DataTypesProposed),
        proto::ConnectionEventType::DataTypesApproved => Some(domain::EventType::DataTypesApproved),
        proto::ConnectionEventType::DataTypesDeclined => Some(domain::EventType::DataTypesDeclined),
    }
}

impl From<domain::webhook::WebhookEndpoint> for proto::WebhookEndpoint {
    fn from(endpoint: domain::webhook::WebhookEndpoint) -> Self {
        Self {
            id: endpoint.id.to_string(),
            organization_id: endpoint.organization_id.to_string(),
            url: endpoint.url,
            description: endpoint.description,
            event_types: endpoint
                .event_types
                .as_slice()
                .iter()
                .map(|&t| proto::ConnectionEventType::from(t).into())
                .collect(),
            disabled: endpoint.disabled,
            disabled_reason: endpoint.disabled_reason.unwrap_or_default(),
            create_time: Some(timestamp(endpoint.create_time)),
            update_time: Some(timestamp(endpoint.update_time)),
        }
    }
}

impl From<domain::webhook::DeliveryAttempt> for proto::WebhookDelivery {
    fn from(attempt: domain::webhook::DeliveryAttempt) -> Self {
        use domain::webhook::DeliveryOutcome as O;
        let outcome = match attempt.outcome {
            O::Succeeded => proto::WebhookDeliveryOutcome::Succeeded,
            O::WillRetry => proto::WebhookDeliveryOutcome::WillRetry,
            O::GaveUp => proto::WebhookDeliveryOutcome::GaveUp,
        };
        Self {
            id: attempt.id.hyphenated().to_string(),
            endpoint_id: attempt.endpoint_id.to_string(),
            event_id: attempt.event_id.hyphenated().to_string(),
            change_token: attempt.change_token,
            attempt: attempt.attempt,
            http_status: attempt.http_status.map_or(0, i32::from),
            error: attempt.error.unwrap_or_default(),
            duration: prost_types::Duration::try_from(attempt.duration).ok(),
            attempt_time: Some(timestamp(attempt.attempt_time)),
            next_attempt_time: attempt.next_attempt_time.map(timestamp),
            outcome: outcome.into(),
        }
    }
}

/// The body of a webhook delivery of `event` (SPEC section 10): its type,
/// its time, and the event, the connection as it left it and the change
/// token after it, the messages in the proto3 JSON mapping.
pub fn webhook_body(
    event: &domain::ConnectionEvent,
    record: &domain::ConnectionRecord,
    change_token: &str,
) -> String {
    let body = serde_json::json!({
        "type": domain::webhook::delivery_type(event.event_type),
        "timestamp": event.create_time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        "data": {
            "event": proto_json(&proto::ConnectionEvent::from(event.clone()), "connections.v1.ConnectionEvent"),
            "connection": proto_json(&proto::Connection::from(record.clone()), "connections.v1.Connection"),
            "change_token": change_token,
        },
    });
    body.to_string()
}

/// `message` in the proto3 JSON mapping.
fn proto_json(message: &impl Message, name: &str) -> serde_json::Value {
    static POOL: std::sync::LazyLock<prost_reflect::DescriptorPool> =
        std::sync::LazyLock::new(|| {
            prost_reflect::DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
                .expect("the API's descriptors decode")
        });
    let descriptor = POOL
        .get_message_by_name(name)
        .expect("the message is in the API's descriptors");
    let dynamic =
        prost_reflect::DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .expect("a message decodes as itself");
    serde_json::to_value(&dynamic).expect("a message serializes to JSON")
}

impl From<domain::Organization> for proto::Organization {
    fn from(org: domain::Organization) -> Self {
        Self {
            id: org.id.to_string(),
            display_name: org.display_name,
            create_time: Some(timestamp(org.create_time)),
        }
    }
}

impl From<domain::ApiKey> for proto::ApiKey {
    fn from(key: domain::ApiKey) -> Self {
        Self {
            id: key.id.to_string(),
            organization_id: key.organization_id.to_string(),
            display_name: key.display_name,
            prefix: key.prefix,
            create_time: Some(timestamp(key.create_time)),
            revoke_time: key.revoke_time.map(timestamp),
        }
    }
}

impl From<domain::Policy> for proto::OrganizationPolicy {
    fn from(policy: domain::Policy) -> Self {
        Self {
            auto_activate_source_ids: policy
                .trusted_sources
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_sub_second_precision() {
        let time = DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap();
        assert_eq!(
            timestamp(time),
            Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_000
            }
        );
    }

    #[test]
    fn enum_conversions_round_trip() {
        use domain::VariantArray;
        for &state in domain::ConnectionState::VARIANTS {
            assert_eq!(self::state(state.into()), Some(state));
        }
        for &role in domain::Role::VARIANTS {
            assert_eq!(self::role(role.into()), Some(role));
        }
        for &data_type in domain::DataType::VARIANTS {
            assert_eq!(self::data_type(data_type.into()), Some(data_type));
        }
        assert_eq!(self::state(proto::ConnectionState::Unspecified), None);
    }
}
