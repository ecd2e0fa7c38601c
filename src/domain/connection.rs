//! Connections, their states and the transition table (SPEC section 2).

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ids::{ConnectionId, OrganizationId};

/// The lifecycle state of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionState {
    /// Created (or reactivated) by the source; waiting for the destination.
    Pending,
    /// Activated by the destination: data may be shared.
    Active,
    /// Deactivated by either party.
    Inactive,
}

impl ConnectionState {
    /// Every state, for exhaustive tests and documentation.
    pub const ALL: [Self; 3] = [Self::Pending, Self::Active, Self::Inactive];

    /// The stored (and logged) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
        }
    }
}

/// A stored value that is not one of the expected names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownName {
    kind: &'static str,
    value: String,
}

macro_rules! named_enum {
    ($ty:ty, $kind:literal, [$($variant:ident),+]) => {
        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $(if s == <$ty>::$variant.as_str() {
                    return Ok(<$ty>::$variant);
                })+
                Err(UnknownName { kind: $kind, value: s.to_owned() })
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    ConnectionState,
    "connection state",
    [Pending, Active, Inactive]
);

/// The part an organization plays in a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// Created the connection; shares its data.
    Source,
    /// Receives the data; activates the connection.
    Destination,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "SOURCE",
            Self::Destination => "DESTINATION",
        }
    }
}

named_enum!(Role, "connection role", [Source, Destination]);

/// A state change requested through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// PENDING -> ACTIVE, by the destination.
    Activate,
    /// PENDING or ACTIVE -> INACTIVE, by either party.
    Deactivate,
    /// INACTIVE -> PENDING, by the source.
    Reactivate,
}

impl Action {
    /// Every action, for exhaustive tests.
    pub const ALL: [Self; 3] = [Self::Activate, Self::Deactivate, Self::Reactivate];

    /// The name of the RPC that takes this action.
    pub fn method(self) -> &'static str {
        match self {
            Self::Activate => "ActivateConnection",
            Self::Deactivate => "DeactivateConnection",
            Self::Reactivate => "ReactivateConnection",
        }
    }

    /// The event this action appends to the history when it succeeds.
    pub fn event_type(self) -> EventType {
        match self {
            Self::Activate => EventType::Activated,
            Self::Deactivate => EventType::Deactivated,
            Self::Reactivate => EventType::Reactivated,
        }
    }
}

/// The kind of an entry in a connection's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The source created the connection.
    Created,
    /// The destination activated it.
    Activated,
    /// A party deactivated it.
    Deactivated,
    /// The source reactivated it.
    Reactivated,
}

impl EventType {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Activated => "ACTIVATED",
            Self::Deactivated => "DEACTIVATED",
            Self::Reactivated => "REACTIVATED",
        }
    }
}

named_enum!(
    EventType,
    "event type",
    [Created, Activated, Deactivated, Reactivated]
);

/// Why a transition is refused. The variants are in the order the checks run
/// (SPEC section 2): the first failing check decides the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionError {
    /// The caller is neither source nor destination: reported exactly as a
    /// connection that does not exist.
    NotAParty,
    /// The caller is a party, but the action needs the other role.
    WrongRole {
        /// The role the action requires.
        required: Role,
    },
    /// The current state does not allow the action (including a transition
    /// into the state the connection is already in).
    InvalidState {
        /// The connection's current state.
        current: ConnectionState,
    },
    /// The caller's etag does not match the connection's.
    EtagMismatch,
}

/// The role an action requires, or `None` if either party may take it.
pub fn required_role(action: Action) -> Option<Role> {
    match action {
        Action::Activate => Some(Role::Destination),
        Action::Deactivate => None,
        Action::Reactivate => Some(Role::Source),
    }
}

/// The state `action` leads to from `from`, or `None` if `from` does not allow it.
pub fn next_state(from: ConnectionState, action: Action) -> Option<ConnectionState> {
    use ConnectionState::{Active, Inactive, Pending};
    match (from, action) {
        (Pending, Action::Activate) => Some(Active),
        (Pending | Active, Action::Deactivate) => Some(Inactive),
        (Inactive, Action::Reactivate) => Some(Pending),
        (Active | Inactive, Action::Activate)
        | (Inactive, Action::Deactivate)
        | (Pending | Active, Action::Reactivate) => None,
    }
}

/// Decides a transition: who may take `action` on a connection in state
/// `current`, and where it leads.
///
/// `caller_role` is `None` when the caller is not a party. `etag_matches` is
/// true when the caller gave no etag or gave the current one. Checks run in the
/// order of [`TransitionError`]'s variants.
pub fn transition(
    current: ConnectionState,
    action: Action,
    caller_role: Option<Role>,
    etag_matches: bool,
) -> Result<ConnectionState, TransitionError> {
    let role = caller_role.ok_or(TransitionError::NotAParty)?;
    if let Some(required) = required_role(action)
        && role != required
    {
        return Err(TransitionError::WrongRole { required });
    }
    let next = next_state(current, action).ok_or(TransitionError::InvalidState { current })?;
    if !etag_matches {
        return Err(TransitionError::EtagMismatch);
    }
    Ok(next)
}

/// A type of data the source shares. Ordered as in the API enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DataType {
    /// Identity inquiries.
    Inquiry,
    /// Verification results.
    Verification,
    /// Account records.
    Account,
    /// Transaction records.
    Transaction,
}

impl DataType {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inquiry => "INQUIRY",
            Self::Verification => "VERIFICATION",
            Self::Account => "ACCOUNT",
            Self::Transaction => "TRANSACTION",
        }
    }
}

named_enum!(
    DataType,
    "data type",
    [Inquiry, Verification, Account, Transaction]
);

/// A non-empty set of data types, kept sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<DataType>", into = "Vec<DataType>")]
pub struct DataTypes(Vec<DataType>);

/// An empty list of data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("at least one data type is required")]
pub struct NoDataTypes;

impl TryFrom<Vec<DataType>> for DataTypes {
    type Error = NoDataTypes;

    fn try_from(types: Vec<DataType>) -> Result<Self, Self::Error> {
        Self::new(types)
    }
}

impl From<DataTypes> for Vec<DataType> {
    fn from(types: DataTypes) -> Self {
        types.0
    }
}

impl DataTypes {
    /// Collapses duplicates and sorts; fails if there are none.
    pub fn new(types: impl IntoIterator<Item = DataType>) -> Result<Self, NoDataTypes> {
        let mut types: Vec<DataType> = types.into_iter().collect();
        types.sort_unstable();
        types.dedup();
        if types.is_empty() {
            Err(NoDataTypes)
        } else {
            Ok(Self(types))
        }
    }

    /// The data types, sorted.
    pub fn as_slice(&self) -> &[DataType] {
        &self.0
    }

    /// The stored form: names joined by commas, e.g. `INQUIRY,ACCOUNT`.
    pub fn to_storage(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|t| t.as_str()).collect();
        names.join(",")
    }

    /// Parses the stored form.
    pub fn from_storage(s: &str) -> Result<Self, UnknownName> {
        let types = s
            .split(',')
            .map(DataType::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(types).map_err(|_| UnknownName {
            kind: "data types",
            value: s.to_owned(),
        })
    }
}

/// The two organizations of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parties {
    /// The organization that created the connection.
    pub source: OrganizationId,
    /// The organization it was created to.
    pub destination: OrganizationId,
}

impl Parties {
    /// The role `org` plays, or `None` if it is not a party.
    pub fn role_of(&self, org: OrganizationId) -> Option<Role> {
        if org == self.source {
            Some(Role::Source)
        } else if org == self.destination {
            Some(Role::Destination)
        } else {
            None
        }
    }
}

/// A connection as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    /// Identifier.
    pub id: ConnectionId,
    /// Source and destination.
    pub parties: Parties,
    /// Current state.
    pub state: ConnectionState,
    /// What the source shares.
    pub data_types: DataTypes,
    /// Incremented by every change: 1 at creation. Equals the sequence number
    /// of the connection's latest event.
    pub version: i64,
    /// When it was created.
    pub create_time: DateTime<Utc>,
    /// When it last changed.
    pub update_time: DateTime<Utc>,
    /// Last activation, if any.
    pub activate_time: Option<DateTime<Utc>>,
    /// Last deactivation, if any.
    pub deactivate_time: Option<DateTime<Utc>>,
    /// Who deactivated it last, if anyone.
    pub deactivated_by: Option<Role>,
    /// The reason given with the last deactivation.
    pub deactivation_reason: Option<String>,
}

impl ConnectionRecord {
    /// The opaque etag of this version of the connection.
    pub fn etag(&self) -> String {
        etag(self.id, self.version)
    }
}

/// The etag of version `version` of connection `id`: a short digest, so that
/// it is opaque and never valid for another connection.
pub fn etag(id: ConnectionId, version: i64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(id.uuid().as_bytes());
    hasher.update(version.to_be_bytes());
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of a connection's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// Identifier (UUIDv7).
    pub id: uuid::Uuid,
    /// The connection it belongs to.
    pub connection_id: ConnectionId,
    /// 1, 2, 3, ... per connection.
    pub sequence: i64,
    /// What happened.
    pub event_type: EventType,
    /// State before; `None` for the creation.
    pub from_state: Option<ConnectionState>,
    /// State after.
    pub to_state: ConnectionState,
    /// Who did it.
    pub actor_organization_id: OrganizationId,
    /// The actor's role in the connection.
    pub actor_role: Role,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// When it happened.
    pub create_time: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectionState::{Active, Inactive, Pending};

    /// The table of SPEC section 2, written out independently of the code under
    /// test: (action, role that may take it (None = either), from, to).
    const SPEC_TABLE: &[(Action, Option<Role>, ConnectionState, ConnectionState)] = &[
        (Action::Activate, Some(Role::Destination), Pending, Active),
        (Action::Deactivate, None, Pending, Inactive),
        (Action::Deactivate, None, Active, Inactive),
        (Action::Reactivate, Some(Role::Source), Inactive, Pending),
    ];

    fn spec_allows(action: Action, role: Role, from: ConnectionState) -> Option<ConnectionState> {
        SPEC_TABLE
            .iter()
            .find(|(a, r, f, _)| *a == action && *f == from && r.is_none_or(|r| r == role))
            .map(|(_, _, _, to)| *to)
    }

    fn spec_role_ok(action: Action, role: Role) -> bool {
        SPEC_TABLE
            .iter()
            .any(|(a, r, _, _)| *a == action && r.is_none_or(|r| r == role))
    }

    #[test]
    fn every_state_action_role_and_etag_follows_the_spec_in_check_order() {
        let roles = [None, Some(Role::Source), Some(Role::Destination)];
        let mut cases = 0;
        for state in ConnectionState::ALL {
            for action in Action::ALL {
                for role in roles {
                    for etag_matches in [true, false] {
                        cases += 1;
                        let got = transition(state, action, role, etag_matches);
                        let expected = match role {
                            None => Err(TransitionError::NotAParty),
                            Some(role) if !spec_role_ok(action, role) => {
                                let required = SPEC_TABLE
                                    .iter()
                                    .find_map(|(a, r, _, _)| if *a == action { *r } else { None })
                                    .unwrap();
                                Err(TransitionError::WrongRole { required })
                            }
                            Some(role) => match spec_allows(action, role, state) {
                                None => Err(TransitionError::InvalidState { current: state }),
                                Some(_) if !etag_matches => Err(TransitionError::EtagMismatch),
                                Some(to) => Ok(to),
                            },
                        };
                        assert_eq!(
                            got, expected,
                            "{action:?} by {role:?} from {state:?}, etag matches: {etag_matches}"
                        );
                    }
                }
            }
        }
        assert_eq!(cases, 3 * 3 * 3 * 2);
    }

    #[test]
    fn non_party_is_refused_before_anything_else() {
        for state in ConnectionState::ALL {
            for action in Action::ALL {
                assert_eq!(
                    transition(state, action, None, false),
                    Err(TransitionError::NotAParty)
                );
            }
        }
    }

    #[test]
    fn wrong_role_is_refused_before_state_and_etag() {
        // Active -> Activate is also a state error and the etag is stale, but the
        // role check runs first.
        assert_eq!(
            transition(Active, Action::Activate, Some(Role::Source), false),
            Err(TransitionError::WrongRole {
                required: Role::Destination
            })
        );
        assert_eq!(
            transition(Pending, Action::Reactivate, Some(Role::Destination), false),
            Err(TransitionError::WrongRole {
                required: Role::Source
            })
        );
    }

    #[test]
    fn transition_into_current_state_is_invalid_state_before_etag() {
        assert_eq!(
            transition(Active, Action::Activate, Some(Role::Destination), false),
            Err(TransitionError::InvalidState { current: Active })
        );
        assert_eq!(
            transition(Inactive, Action::Deactivate, Some(Role::Source), false),
            Err(TransitionError::InvalidState { current: Inactive })
        );
        assert_eq!(
            transition(Pending, Action::Reactivate, Some(Role::Source), false),
            Err(TransitionError::InvalidState { current: Pending })
        );
    }

    #[test]
    fn stale_etag_is_refused_only_when_everything_else_allows_the_change() {
        assert_eq!(
            transition(Pending, Action::Activate, Some(Role::Destination), false),
            Err(TransitionError::EtagMismatch)
        );
        assert_eq!(
            transition(Pending, Action::Activate, Some(Role::Destination), true),
            Ok(Active)
        );
    }

    #[test]
    fn full_lifecycle_returns_to_active() {
        let mut state = Pending;
        for (action, role) in [
            (Action::Activate, Role::Destination),
            (Action::Deactivate, Role::Source),
            (Action::Reactivate, Role::Source),
            (Action::Activate, Role::Destination),
            (Action::Deactivate, Role::Destination),
        ] {
            state = transition(state, action, Some(role), true).unwrap();
        }
        assert_eq!(state, Inactive);
    }

    #[test]
    fn names_round_trip() {
        for state in ConnectionState::ALL {
            assert_eq!(state.as_str().parse::<ConnectionState>(), Ok(state));
        }
        for role in [Role::Source, Role::Destination] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        for event in [
            EventType::Created,
            EventType::Activated,
            EventType::Deactivated,
            EventType::Reactivated,
        ] {
            assert_eq!(event.as_str().parse::<EventType>(), Ok(event));
        }
        assert!("pending".parse::<ConnectionState>().is_err());
    }

    #[test]
    fn data_types_are_sorted_deduplicated_and_non_empty() {
        let types = DataTypes::new([
            DataType::Transaction,
            DataType::Inquiry,
            DataType::Transaction,
            DataType::Account,
        ])
        .unwrap();
        assert_eq!(
            types.as_slice(),
            &[DataType::Inquiry, DataType::Account, DataType::Transaction]
        );
        assert_eq!(types.to_storage(), "INQUIRY,ACCOUNT,TRANSACTION");
        assert_eq!(DataTypes::from_storage(&types.to_storage()), Ok(types));
        assert_eq!(DataTypes::new([]), Err(NoDataTypes));
        assert!(DataTypes::from_storage("").is_err());
        assert!(DataTypes::from_storage("INQUIRY,BOGUS").is_err());
    }

    #[test]
    fn parties_know_their_roles() {
        let parties = Parties {
            source: OrganizationId::generate(),
            destination: OrganizationId::generate(),
        };
        assert_eq!(parties.role_of(parties.source), Some(Role::Source));
        assert_eq!(
            parties.role_of(parties.destination),
            Some(Role::Destination)
        );
        assert_eq!(parties.role_of(OrganizationId::generate()), None);
    }

    #[test]
    fn etag_changes_with_version_and_connection() {
        let id = ConnectionId::generate();
        assert_ne!(etag(id, 1), etag(id, 2));
        assert_ne!(etag(id, 1), etag(ConnectionId::generate(), 1));
        assert_eq!(etag(id, 7), etag(id, 7));
        assert_eq!(etag(id, 1).len(), 16);
    }
}
