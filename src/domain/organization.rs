//! Organizations, API keys and their display names.

use chrono::{DateTime, Utc};

use super::ids::{ApiKeyId, OrganizationId};

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;

/// A trimmed display name of 1 to [`MAX_DISPLAY_NAME_CHARS`] characters,
/// without control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

/// Why a string is not a display name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDisplayName {
    /// Empty or only whitespace.
    #[error("must not be empty")]
    Empty,
    /// Over the limit.
    #[error("must be at most {MAX_DISPLAY_NAME_CHARS} characters")]
    TooLong,
    /// Contains a control character.
    #[error("must not contain control characters")]
    ControlCharacter,
}

impl DisplayName {
    /// Parses a display name, trimming surrounding whitespace.
    pub fn parse(s: &str) -> Result<Self, InvalidDisplayName> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(InvalidDisplayName::Empty);
        }
        if trimmed.chars().count() > MAX_DISPLAY_NAME_CHARS {
            return Err(InvalidDisplayName::TooLong);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(InvalidDisplayName::ControlCharacter);
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who makes a call with an API key: the organization the key acts for, and
/// the key itself (its ID, and its display name as it is now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The organization.
    pub organization: OrganizationId,
    /// The key.
    pub api_key: ApiKeyId,
    /// The key's display name.
    pub api_key_name: std::sync::Arc<str>,
}

impl Caller {
    /// The key, as a change it makes records it.
    pub fn key(&self) -> ActorKey {
        ActorKey {
            id: self.api_key,
            display_name: self.api_key_name.to_string(),
        }
    }
}

/// The API key that made a change, as the change's event records it: its ID,
/// and its display name as it was at the time (a copy, never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorKey {
    /// The key.
    pub id: ApiKeyId,
    /// Its display name when it acted.
    pub display_name: String,
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    /// Identifier.
    pub id: OrganizationId,
    /// Human-readable name.
    pub display_name: String,
    /// When it was created.
    pub create_time: DateTime<Utc>,
}

/// An API key's metadata (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Identifier.
    pub id: ApiKeyId,
    /// The organization it acts for.
    pub organization_id: OrganizationId,
    /// Human-readable name; may be empty.
    pub display_name: String,
    /// The non-secret start of the key.
    pub prefix: String,
    /// When it was created.
    pub create_time: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoke_time: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(
            DisplayName::parse("  Acme Bank ").unwrap().as_str(),
            "Acme Bank"
        );
        assert_eq!(DisplayName::parse("   "), Err(InvalidDisplayName::Empty));
        assert_eq!(
            DisplayName::parse(&"é".repeat(MAX_DISPLAY_NAME_CHARS))
                .unwrap()
                .as_str()
                .chars()
                .count(),
            MAX_DISPLAY_NAME_CHARS
        );
        assert_eq!(
            DisplayName::parse(&"x".repeat(MAX_DISPLAY_NAME_CHARS + 1)),
            Err(InvalidDisplayName::TooLong)
        );
        assert_eq!(
            DisplayName::parse("a\u{0}b"),
            Err(InvalidDisplayName::ControlCharacter)
        );
    }
}

/// The most source organizations one organization's policy may trust.
pub const MAX_TRUSTED_SOURCES: usize = 1000;

/// What an organization decides as a destination: the source organizations
/// it trusts, whose connections to it the service activates at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The trusted sources: distinct, sorted, never the organization itself.
    pub trusted_sources: Vec<OrganizationId>,
}

/// Why a policy cannot be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyProblem {
    /// More sources than [`MAX_TRUSTED_SOURCES`] (duplicates collapsed).
    #[error("at most {MAX_TRUSTED_SOURCES} source organizations")]
    TooMany,
    /// The organization named itself: it cannot connect to itself.
    #[error("an organization cannot trust itself as a source")]
    Own,
}

impl Policy {
    /// `owner`'s policy trusting `sources` (duplicates collapsed).
    pub fn new(
        owner: OrganizationId,
        sources: impl IntoIterator<Item = OrganizationId>,
    ) -> Result<Self, PolicyProblem> {
        let mut trusted_sources: Vec<OrganizationId> = sources.into_iter().collect();
        trusted_sources.sort_unstable_by_key(|id| id.uuid());
        trusted_sources.dedup();
        if trusted_sources.contains(&owner) {
            return Err(PolicyProblem::Own);
        }
        if trusted_sources.len() > MAX_TRUSTED_SOURCES {
            return Err(PolicyProblem::TooMany);
        }
        Ok(Self { trusted_sources })
    }
}
