//! Identifier newtypes, so an organization ID cannot be passed where a
//! connection ID is expected.

use std::fmt;

use uuid::Uuid;

/// Why a string is not an identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be a UUID in canonical hyphenated form, e.g. 0190f3c4-7a2b-7c3d-8e4f-5a6b7c8d9e0f")]
pub struct InvalidId;

/// Parses a UUID in hyphenated form (36 characters; either letter case).
pub fn parse_uuid(s: &str) -> Result<Uuid, InvalidId> {
    if s.len() != 36 {
        return Err(InvalidId);
    }
    Uuid::try_parse(s).map_err(|_| InvalidId)
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
        )]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) identifier.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the canonical hyphenated form.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                parse_uuid(s).map(Self)
            }

            /// The underlying UUID.
            pub fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Canonical lower-case hyphenated form.
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

id_type!(
    /// Identifies an organization.
    OrganizationId
);
id_type!(
    /// Identifies a connection.
    ConnectionId
);
id_type!(
    /// Identifies an API key.
    ApiKeyId
);
id_type!(
    /// Identifies a webhook endpoint.
    WebhookEndpointId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_canonical_and_upper_case_and_displays_lower_case() {
        let id = OrganizationId::parse("0190F3C4-7A2B-7C3D-8E4F-5A6B7C8D9E0F").unwrap();
        assert_eq!(id.to_string(), "0190f3c4-7a2b-7c3d-8e4f-5a6b7c8d9e0f");
    }

    #[test]
    fn rejects_other_forms() {
        for bad in [
            "",
            "not-a-uuid",
            "0190f3c47a2b7c3d8e4f5a6b7c8d9e0f",
            "{0190f3c4-7a2b-7c3d-8e4f-5a6b7c8d9e0f}",
            "urn:uuid:0190f3c4-7a2b-7c3d-8e4f-5a6b7c8d9e0f",
            "0190f3c4-7a2b-7c3d-8e4f-5a6b7c8d9e0g",
        ] {
            assert_eq!(ConnectionId::parse(bad), Err(InvalidId), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_version_7_and_increase() {
        let a = ConnectionId::generate();
        let b = ConnectionId::generate();
        assert_eq!(a.uuid().get_version_num(), 7);
        assert!(b > a);
    }
}
