//! Request validation. Each check returns the parsed value or a field
//! violation; [`AllOk`] runs several and reports every violation at once.

use crate::{
    domain::{DataTypes, OrganizationId, PageSize, ids::InvalidId},
    grpc::convert,
    proto,
    service::{FieldViolation, ServiceError},
};

/// Longest `request_id`, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 255;
/// Longest deactivation reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest invitation message, in characters (after trimming).
pub const MAX_MESSAGE_CHARS: usize = 1000;
/// Longest etag accepted (ours are 16 characters).
pub const MAX_ETAG_LEN: usize = 64;
/// Most data types accepted in one request, duplicates included.
pub const MAX_DATA_TYPES: usize = 32;
/// Most checks in one BatchCheckAccess.
pub const MAX_BATCH_CHECKS: usize = 1_000;

type Checked<T> = Result<T, FieldViolation>;

/// A required identifier.
pub fn id<T>(
    field: &'static str,
    value: &str,
    parse: fn(&str) -> Result<T, InvalidId>,
) -> Checked<T> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    parse(value).map_err(|err| FieldViolation::new(field, err.to_string()))
}

/// An optional identifier: empty means absent.
pub fn optional_id<T>(
    field: &'static str,
    value: &str,
    parse: fn(&str) -> Result<T, InvalidId>,
) -> Checked<Option<T>> {
    if value.is_empty() {
        Ok(None)
    } else {
        id(field, value, parse).map(Some)
    }
}

/// The field a policy's trusted sources come in.
pub const TRUSTED_SOURCES_FIELD: &str = "policy.auto_activate_source_ids";

/// A policy's trusted sources: each an organization ID, at most
/// [`MAX_TRUSTED_SOURCES`](crate::domain::organization::MAX_TRUSTED_SOURCES)
/// of them before duplicates are collapsed (so that a huge list is refused
/// before it is parsed).
pub fn trusted_sources(values: &[String]) -> Checked<Vec<OrganizationId>> {
    use crate::domain::organization::MAX_TRUSTED_SOURCES;
    if values.len() > MAX_TRUSTED_SOURCES {
        return Err(FieldViolation::new(
            TRUSTED_SOURCES_FIELD,
            format!("must have at most {MAX_TRUSTED_SOURCES} entries"),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            OrganizationId::parse(value).map_err(|err| {
                FieldViolation::new(TRUSTED_SOURCES_FIELD, format!("entry {i}: {err}"))
            })
        })
        .collect()
}

/// An optional free-text field of at most `max` characters without control
/// characters (line breaks and tabs are allowed); empty means absent.
fn optional_text(field: &'static str, value: &str, max: usize) -> Checked<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(Some(value.to_owned()))
}

/// The optional `request_id` of a mutating call.
pub fn request_id(value: &str) -> Checked<Option<String>> {
    optional_text("request_id", value, MAX_REQUEST_ID_CHARS)
}

/// The optional deactivation `reason`.
pub fn reason(value: &str) -> Checked<Option<String>> {
    optional_text("reason", value, MAX_REASON_CHARS)
}

/// The optional invitation `message`, trimmed of leading and trailing
/// white space (all white space: none).
pub fn message(value: &str) -> Checked<Option<String>> {
    optional_text("message", value.trim(), MAX_MESSAGE_CHARS)
}

/// The optional `etag` of a transition.
pub fn etag(value: &str) -> Checked<Option<String>> {
    if value.len() > MAX_ETAG_LEN {
        return Err(FieldViolation::new(
            "etag",
            format!("must be at most {MAX_ETAG_LEN} characters"),
        ));
    }
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

/// `page_size`: 0 is the default, large values are clamped.
pub fn page_size(value: i32) -> Checked<PageSize> {
    PageSize::from_request(value).map_err(|err| FieldViolation::new("page_size", err.to_string()))
}

/// `page_token`: empty means the first page. Its contents are checked by the
/// service, which alone knows what it was issued for.
pub fn page_token(value: &str) -> Checked<Option<&str>> {
    Ok((!value.is_empty()).then_some(value))
}

/// `data_types`: at least one, each a known non-UNSPECIFIED value.
pub fn data_types(values: &[i32]) -> Checked<DataTypes> {
    const FIELD: &str = "data_types";
    if values.len() > MAX_DATA_TYPES {
        return Err(FieldViolation::new(
            FIELD,
            format!("must have at most {MAX_DATA_TYPES} entries"),
        ));
    }
    let types = values
        .iter()
        .map(|&value| {
            proto::DataType::try_from(value)
                .ok()
                .and_then(convert::data_type)
                .ok_or_else(|| {
                    FieldViolation::new(
                        FIELD,
                        format!("{value} is not a data type (UNSPECIFIED is not allowed)"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    DataTypes::new(types).map_err(|err| FieldViolation::new(FIELD, err.to_string()))
}

/// Most event types accepted in one request, duplicates included.
pub const MAX_EVENT_TYPES: usize = 32;

/// `event_types` of a webhook endpoint: each a known non-UNSPECIFIED value;
/// none means every type.
pub fn event_types(values: &[i32]) -> Checked<crate::domain::webhook::EventTypes> {
    const FIELD: &str = "event_types";
    if values.len() > MAX_EVENT_TYPES {
        return Err(FieldViolation::new(
            FIELD,
            format!("must have at most {MAX_EVENT_TYPES} entries"),
        ));
    }
    values
        .iter()
        .map(|&value| {
            proto::ConnectionEventType::try_from(value)
                .ok()
                .and_then(convert::event_type)
                .ok_or_else(|| {
                    FieldViolation::new(
                        FIELD,
                        format!("{value} is not an event type (UNSPECIFIED is not allowed)"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(crate::domain::webhook::EventTypes::new)
}

/// A webhook endpoint's `url`: present, and short enough to look at (the
/// service checks the rest).
pub fn webhook_url(field: &'static str, value: &str) -> Checked<String> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    if value.len() > 4 * crate::domain::webhook::MAX_URL_CHARS {
        return Err(FieldViolation::new(
            field,
            format!(
                "must be at most {} characters",
                crate::domain::webhook::MAX_URL_CHARS
            ),
        ));
    }
    Ok(value.to_owned())
}

/// A webhook endpoint's optional `description`.
pub fn description(value: &str) -> Checked<String> {
    optional_text(
        "description",
        value,
        crate::domain::webhook::MAX_DESCRIPTION_CHARS,
    )
    .map(Option::unwrap_or_default)
}

/// One required data type.
pub fn data_type(field: &'static str, value: i32) -> Checked<crate::domain::DataType> {
    proto::DataType::try_from(value)
        .ok()
        .and_then(convert::data_type)
        .ok_or_else(|| FieldViolation::new(field, format!("{value} is not a data type")))
}

/// An optional data type filter: UNSPECIFIED means any.
pub fn data_type_filter(
    field: &'static str,
    value: i32,
) -> Checked<Option<crate::domain::DataType>> {
    if value == proto::DataType::Unspecified as i32 {
        return Ok(None);
    }
    data_type(field, value).map(Some)
}

/// An optional change token: empty means absent. Longer ones are refused
/// unread; the signature is checked by the service.
pub fn change_token<'a>(field: &'static str, value: &'a str) -> Checked<Option<&'a str>> {
    if value.len() > crate::service::change_token::MAX_CHANGE_TOKEN_LEN {
        return Err(FieldViolation::new(field, "is not a change token"));
    }
    Ok((!value.is_empty()).then_some(value))
}

/// A list of `len` entries that must have between 1 and `max`.
pub fn entries(field: &'static str, len: usize, max: usize) -> Checked<()> {
    if len == 0 || len > max {
        return Err(FieldViolation::new(
            field,
            format!("must have between 1 and {max} entries, not {len}"),
        ));
    }
    Ok(())
}

/// A field that must be left empty here; `description` says so, and what to
/// do instead.
pub fn empty(field: &'static str, value: &str, description: &str) -> Checked<()> {
    if value.is_empty() {
        Ok(())
    } else {
        Err(FieldViolation::new(field, description))
    }
}

/// A role filter: UNSPECIFIED means either role.
pub fn role_filter(value: i32) -> Checked<Option<crate::domain::Role>> {
    proto::ConnectionRole::try_from(value)
        .map(convert::role)
        .map_err(|_| FieldViolation::new("role", format!("{value} is not a connection role")))
}

/// A state filter: UNSPECIFIED means any state.
pub fn state_filter(value: i32) -> Checked<Option<crate::domain::ConnectionState>> {
    proto::ConnectionState::try_from(value)
        .map(convert::state)
        .map_err(|_| FieldViolation::new("state", format!("{value} is not a connection state")))
}

/// An audit action filter: UNSPECIFIED means every action.
pub fn audit_action_filter(value: i32) -> Checked<Option<crate::domain::AuditAction>> {
    proto::AuditAction::try_from(value)
        .map(convert::audit_action)
        .map_err(|_| FieldViolation::new("action", format!("{value} is not an audit action")))
}

/// An optional time: unset means absent; a set one must be a valid
/// timestamp (seconds from 0001-01-01 to 9999-12-31, nanos within a second).
pub fn optional_time(
    field: &'static str,
    value: Option<prost_types::Timestamp>,
) -> Checked<Option<chrono::DateTime<chrono::Utc>>> {
    let Some(value) = value else {
        return Ok(None);
    };
    // Timestamp's documented range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
    const RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    let nanos = u32::try_from(value.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000);
    match (RANGE.contains(&value.seconds), nanos) {
        (true, Some(nanos)) => Ok(chrono::DateTime::from_timestamp(value.seconds, nanos)),
        _ => Err(FieldViolation::new(field, "is not a valid timestamp")),
    }
}

/// Combines checks: all values, or every violation found.
pub trait AllOk {
    /// The checked values.
    type Output;
    /// The values if every check passed, else `InvalidArgument` listing all
    /// violations.
    fn all_ok(self) -> Result<Self::Output, ServiceError>;
}

macro_rules! impl_all_ok {
    ($($name:ident),+) => {
        impl<$($name),+> AllOk for ($(Checked<$name>,)+) {
            type Output = ($($name,)+);

            #[allow(non_snake_case)]
            fn all_ok(self) -> Result<Self::Output, ServiceError> {
                let ($($name,)+) = self;
                match ($($name,)+) {
                    ($(Ok($name),)+) => Ok(($($name,)+)),
                    ($($name,)+) => {
                        let mut violations = Vec::new();
                        $(if let Err(v) = $name {
                            violations.push(v);
                        })+
                        Err(ServiceError::InvalidArgument(violations))
                    }
                }
            }
        }
    };
}

impl_all_ok!(A);
impl_all_ok!(A, B);
impl_all_ok!(A, B, C);
impl_all_ok!(A, B, C, D);
impl_all_ok!(A, B, C, D, E);
impl_all_ok!(A, B, C, D, E, F);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ConnectionId, DataType};

    #[test]
    fn all_ok_reports_every_violation() {
        let result = (
            id("connection_id", "nope", ConnectionId::parse),
            reason(&"x".repeat(MAX_REASON_CHARS + 1)),
            etag("fine"),
        )
            .all_ok();
        let Err(ServiceError::InvalidArgument(violations)) = result else {
            panic!("expected InvalidArgument");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["connection_id", "reason"]);
    }

    /// The violation `field` with `description`, as a check reports it.
    fn violation<T>(field: &'static str, description: &str) -> Checked<T> {
        Err(FieldViolation::new(field, description))
    }

    #[test]
    fn required_id_must_be_present_and_well_formed() {
        assert_eq!(
            id("connection_id", "", ConnectionId::parse),
            violation("connection_id", "is required")
        );
        assert_eq!(
            id("connection_id", "nope", ConnectionId::parse),
            violation(
                "connection_id",
                "must be a UUID in canonical hyphenated form, e.g. \
                 0190f3c4-7a2b-7c3d-8e4f-5a6b7c8d9e0f"
            )
        );
        assert!(
            id(
                "connection_id",
                "0190f3c4-7a2b-7c3d-8e4f-5a6b7c8d9e0f",
                ConnectionId::parse
            )
            .is_ok()
        );
        assert_eq!(optional_id("x", "", ConnectionId::parse), Ok(None));
        assert_eq!(
            optional_id("counterparty_organization_id", "nope", ConnectionId::parse)
                .unwrap_err()
                .field,
            "counterparty_organization_id"
        );
    }

    #[test]
    fn reason_and_request_id_are_bounded_in_characters() {
        assert!(reason(&"é".repeat(MAX_REASON_CHARS)).is_ok());
        assert_eq!(
            reason(&"é".repeat(MAX_REASON_CHARS + 1)),
            violation("reason", "must be at most 500 characters")
        );
        assert!(request_id(&"r".repeat(MAX_REQUEST_ID_CHARS)).is_ok());
        assert_eq!(
            request_id(&"r".repeat(MAX_REQUEST_ID_CHARS + 1)),
            violation("request_id", "must be at most 255 characters")
        );
        assert!(reason("line one\nline two").is_ok());
        assert_eq!(
            reason("bell\u{7}"),
            violation("reason", "must not contain control characters")
        );
        assert_eq!(
            request_id("nul\u{0}"),
            violation("request_id", "must not contain control characters")
        );
        assert_eq!(reason(""), Ok(None));
    }

    #[test]
    fn etag_is_bounded_in_length() {
        assert_eq!(etag(""), Ok(None));
        assert_eq!(
            etag(&"e".repeat(MAX_ETAG_LEN)),
            Ok(Some("e".repeat(MAX_ETAG_LEN)))
        );
        assert_eq!(
            etag(&"e".repeat(MAX_ETAG_LEN + 1)),
            violation("etag", "must be at most 64 characters")
        );
    }

    #[test]
    fn data_types_reject_unspecified_unknown_and_empty() {
        assert_eq!(
            data_types(&[4, 1, 4]).unwrap().as_slice(),
            &[DataType::Inquiry, DataType::Transaction]
        );
        assert_eq!(
            data_types(&[]),
            violation("data_types", "at least one data type is required")
        );
        assert_eq!(
            data_types(&[0]),
            violation(
                "data_types",
                "0 is not a data type (UNSPECIFIED is not allowed)"
            )
        );
        assert_eq!(
            data_types(&[1, 99]),
            violation(
                "data_types",
                "99 is not a data type (UNSPECIFIED is not allowed)"
            )
        );
        assert_eq!(
            data_types(&[1; MAX_DATA_TYPES + 1]),
            violation("data_types", "must have at most 32 entries")
        );
    }

    #[test]
    fn filters_accept_unspecified_and_reject_unknown_values() {
        assert_eq!(role_filter(0), Ok(None));
        assert!(role_filter(1).unwrap().is_some());
        assert_eq!(
            role_filter(9),
            violation("role", "9 is not a connection role")
        );
        assert_eq!(state_filter(0), Ok(None));
        assert_eq!(
            state_filter(-1),
            violation("state", "-1 is not a connection state")
        );
    }

    #[test]
    fn lists_of_entries_are_bounded_at_both_ends() {
        assert_eq!(entries("checks", 1, 3), Ok(()));
        assert_eq!(entries("checks", 3, 3), Ok(()));
        assert_eq!(
            entries("checks", 0, 3),
            violation("checks", "must have between 1 and 3 entries, not 0")
        );
        assert_eq!(
            entries("checks", 4, 3),
            violation("checks", "must have between 1 and 3 entries, not 4")
        );
        assert_eq!(empty("x", "", "must be empty"), Ok(()));
        assert_eq!(
            empty("x", "t", "must be empty"),
            violation("x", "must be empty")
        );
    }

    #[test]
    fn negative_page_size_is_refused() {
        assert_eq!(
            page_size(-1),
            violation("page_size", "must not be negative")
        );
        assert_eq!(page_size(0).unwrap().get(), 50);
    }

    #[test]
    fn violations_reach_the_caller_as_invalid_argument_naming_each_field() {
        use tonic_types::StatusExt;
        let err = (
            role_filter(9),
            page_size(-1),
            etag(&"e".repeat(MAX_ETAG_LEN + 1)),
        )
            .all_ok()
            .unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.get_details_error_info().expect("ErrorInfo").reason,
            "ERROR_REASON_INVALID_ARGUMENT"
        );
        let violations: Vec<(String, String)> = status
            .get_details_bad_request()
            .expect("BadRequest")
            .field_violations
            .into_iter()
            .map(|v| (v.field, v.description))
            .collect();
        assert_eq!(
            violations,
            [
                ("role".to_owned(), "9 is not a connection role".to_owned()),
                ("page_size".to_owned(), "must not be negative".to_owned()),
                (
                    "etag".to_owned(),
                    "must be at most 64 characters".to_owned()
                ),
            ]
        );
    }
}
