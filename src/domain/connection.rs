//! Connections, their states and the transition table (SPEC section 2).

use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use super::{
    Named,
    ids::{ConnectionId, OrganizationId},
    organization::{ActorKey, Caller},
};

/// The lifecycle state of a connection. Its stored (and logged) name is the
/// variant's name in SCREAMING_SNAKE_CASE, e.g. `PENDING`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionState {
    /// Created (or reactivated) by the source; waiting for the destination.
    Pending,
    /// Activated by the destination: data may be shared.
    Active,
    /// Deactivated by either party.
    Inactive,
}

/// The part an organization plays in a connection (stored as `SOURCE`,
/// `DESTINATION`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// Created the connection; shares its data.
    Source,
    /// Receives the data; activates the connection.
    Destination,
}

/// A change requested through the API: a transition between states, or a
/// change of the data types that keeps the state; displayed as a verb
/// phrase (`activate`, `change the data types of`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "lowercase")]
pub enum Action {
    /// PENDING -> ACTIVE, by the destination.
    Activate,
    /// PENDING or ACTIVE -> INACTIVE, by either party.
    Deactivate,
    /// INACTIVE -> PENDING, by the source.
    Reactivate,
    /// The source proposes a new set of data types, in any state: on an
    /// ACTIVE connection removed types stop at once and added ones wait for
    /// the destination's approval; otherwise the set is replaced.
    #[strum(serialize = "change the data types of")]
    UpdateDataTypes,
    /// The destination removes data types from an ACTIVE connection
    /// (UpdateConnectionDataTypes with a subset of the current types).
    #[strum(serialize = "narrow the data types of")]
    NarrowDataTypes,
    /// The destination allows the pending data types of an ACTIVE
    /// connection.
    #[strum(serialize = "approve data types on")]
    ApproveDataTypes,
    /// The destination refuses the pending data types of an ACTIVE
    /// connection.
    #[strum(serialize = "decline data types on")]
    DeclineDataTypes,
}

impl Action {
    /// The event this action appends to the history when it succeeds.
    ///
    /// A source's proposal is recorded as DATA_TYPES_PROPOSED when it leaves
    /// types waiting for approval and as DATA_TYPES_CHANGED otherwise, so
    /// this is the event of the second case.
    pub fn event_type(self) -> EventType {
        match self {
            Self::Activate => EventType::Activated,
            Self::Deactivate => EventType::Deactivated,
            Self::Reactivate => EventType::Reactivated,
            Self::UpdateDataTypes | Self::NarrowDataTypes => EventType::DataTypesChanged,
            Self::ApproveDataTypes => EventType::DataTypesApproved,
            Self::DeclineDataTypes => EventType::DataTypesDeclined,
        }
    }

    /// Whether the action changes the data types and keeps the state.
    pub fn changes_data_types(self) -> bool {
        match self {
            Self::Activate | Self::Deactivate | Self::Reactivate => false,
            Self::UpdateDataTypes
            | Self::NarrowDataTypes
            | Self::ApproveDataTypes
            | Self::DeclineDataTypes => true,
        }
    }
}

/// The kind of an entry in a connection's history (stored as `CREATED`, ...;
/// the changes of the data types as `TYPES_CHANGED`, ..., since the column
/// holds 16 characters).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    /// The source created the connection.
    Created,
    /// The destination activated it.
    Activated,
    /// A party deactivated it.
    Deactivated,
    /// The source reactivated it.
    Reactivated,
    /// The service deactivated it: its destination had not activated it
    /// before its expire time.
    Expired,
    /// A party changed the data types, with nothing left waiting for
    /// approval: a narrowing, a new set for a connection that is not
    /// ACTIVE, or a proposal withdrawn.
    #[strum(serialize = "TYPES_CHANGED")]
    DataTypesChanged,
    /// The source proposed data types the destination has yet to approve
    /// (removed types, if any, stopped at once).
    #[strum(serialize = "TYPES_PROPOSED")]
    DataTypesProposed,
    /// The destination approved the pending data types.
    #[strum(serialize = "TYPES_APPROVED")]
    DataTypesApproved,
    /// The destination declined the pending data types.
    #[strum(serialize = "TYPES_DECLINED")]
    DataTypesDeclined,
}

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
    /// An activation after the pending connection's expire time (before
    /// the service has expired it).
    Expired,
    /// An approval or a decline while no data types are pending.
    NoPendingDataTypes,
    /// A proposal that would remove every data type of an ACTIVE
    /// connection (the added ones only pending): nothing could flow.
    NoDataTypesLeft,
    /// A change of the data types that changes nothing.
    DataTypesUnchanged,
    /// The caller's etag does not match the connection's.
    EtagMismatch,
}

/// The role an action requires, or `None` if either party may take it.
pub fn required_role(action: Action) -> Option<Role> {
    match action {
        Action::Activate
        | Action::NarrowDataTypes
        | Action::ApproveDataTypes
        | Action::DeclineDataTypes => Some(Role::Destination),
        Action::Deactivate => None,
        Action::Reactivate | Action::UpdateDataTypes => Some(Role::Source),
    }
}

/// The state `action` leads to from `from`, or `None` if `from` does not allow it.
pub fn next_state(from: ConnectionState, action: Action) -> Option<ConnectionState> {
    use ConnectionState::{Active, Inactive, Pending};
    match (from, action) {
        (Pending, Action::Activate) => Some(Active),
        (Pending | Active, Action::Deactivate) => Some(Inactive),
        (Inactive, Action::Reactivate) => Some(Pending),
        (state, Action::UpdateDataTypes) => Some(state),
        (Active, Action::NarrowDataTypes | Action::ApproveDataTypes | Action::DeclineDataTypes) => {
            Some(Active)
        }
        (Active | Inactive, Action::Activate)
        | (Inactive, Action::Deactivate)
        | (Pending | Active, Action::Reactivate)
        | (
            Pending | Inactive,
            Action::NarrowDataTypes | Action::ApproveDataTypes | Action::DeclineDataTypes,
        ) => None,
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

/// A state change asked of a connection: what, by whom, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What to do.
    pub action: Action,
    /// Who asks: the organization, and the API key it calls with.
    pub caller: Caller,
    /// If given, the change applies only to the version with this etag.
    pub etag: Option<String>,
    /// Why, for a deactivation or a decline (other actions ignore it;
    /// empty means none).
    pub reason: Option<String>,
    /// When the change happens.
    pub at: DateTime<Utc>,
    /// The invitation message, for a reactivation (other actions ignore
    /// it; already trimmed and checked).
    pub message: Option<String>,
    /// How long a connection this change makes PENDING may stay so before
    /// the service expires it; `None`: for ever.
    pub pending_lifetime: Option<TimeDelta>,
    /// The full new set of data types, for [`Action::UpdateDataTypes`]
    /// (other actions ignore it).
    pub data_types: Option<DataTypes>,
}

/// A change of a connection's data types, as its event records it: the
/// types allowed and the types waiting for the destination's approval,
/// before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataTypesChange {
    /// The types allowed before.
    pub previous: DataTypes,
    /// The types pending before, if any.
    pub previous_pending: Option<DataTypes>,
    /// The types allowed after.
    pub current: DataTypes,
    /// The types pending after, if any.
    pub pending: Option<DataTypes>,
}

/// Who made a change: a party to the connection, or the service itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventActor {
    /// A party, through one of its API keys.
    Party {
        /// The organization.
        organization: OrganizationId,
        /// Its role in the connection.
        role: Role,
        /// The key it called with; `None` for events recorded before keys
        /// were recorded.
        key: Option<ActorKey>,
    },
    /// The service, on its own (an expiry).
    Service,
}

impl EventActor {
    /// The acting organization, if a party acted.
    pub fn organization(&self) -> Option<OrganizationId> {
        match self {
            Self::Party { organization, .. } => Some(*organization),
            Self::Service => None,
        }
    }

    /// The acting party's role, if a party acted.
    pub fn role(&self) -> Option<Role> {
        match self {
            Self::Party { role, .. } => Some(*role),
            Self::Service => None,
        }
    }

    /// The API key the acting party called with, if known.
    pub fn key(&self) -> Option<&ActorKey> {
        match self {
            Self::Party { key, .. } => key.as_ref(),
            Self::Service => None,
        }
    }

    fn of(caller: &Caller, role: Role) -> Self {
        Self::Party {
            organization: caller.organization,
            role,
            key: Some(caller.key()),
        }
    }
}

/// An entry for a connection's history, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The connection it belongs to.
    pub connection_id: ConnectionId,
    /// Equals the version of the connection the change produced.
    pub sequence: i64,
    /// What happened.
    pub event_type: EventType,
    /// State before; `None` for the creation.
    pub from_state: Option<ConnectionState>,
    /// State after.
    pub to_state: ConnectionState,
    /// Who did it.
    pub actor: EventActor,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// The invitation message (creations and reactivations), if any.
    pub message: Option<String>,
    /// The data types before and after (the DATA_TYPES_* events only).
    pub data_types: Option<DataTypesChange>,
    /// An activation the service made on the destination's behalf, because
    /// the destination's policy trusts the source.
    pub by_policy: bool,
    /// When it happened.
    pub create_time: DateTime<Utc>,
}

impl NewEvent {
    /// The event as recorded with ID `id`.
    pub fn recorded(&self, id: uuid::Uuid) -> ConnectionEvent {
        ConnectionEvent {
            id,
            connection_id: self.connection_id,
            sequence: self.sequence,
            event_type: self.event_type,
            from_state: self.from_state,
            to_state: self.to_state,
            actor: self.actor.clone(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            data_types: self.data_types.clone(),
            by_policy: self.by_policy,
            create_time: self.create_time,
        }
    }
}

impl ConnectionRecord {
    /// A new PENDING connection `id` from `source` (the caller) to
    /// `destination`, created at the time `id` embeds (`created`), and the
    /// event that records its creation.
    pub fn create(
        id: ConnectionId,
        source: &Caller,
        destination: OrganizationId,
        data_types: DataTypes,
        created: DateTime<Utc>,
        invitation: Invitation,
    ) -> (Self, NewEvent) {
        let parties = Parties {
            source: source.organization,
            destination,
        };
        let record = Self {
            id,
            parties,
            state: ConnectionState::Pending,
            data_types,
            version: 1,
            create_time: created,
            update_time: created,
            activate_time: None,
            deactivate_time: None,
            deactivated_by: None,
            deactivation_reason: None,
            invitation_message: invitation.message.clone(),
            expire_time: expiry(created, invitation.pending_lifetime),
            pending_data_types: None,
        };
        let event = NewEvent {
            connection_id: id,
            sequence: record.version,
            event_type: EventType::Created,
            from_state: None,
            to_state: record.state,
            actor: EventActor::of(source, Role::Source),
            reason: None,
            message: invitation.message,
            data_types: None,
            by_policy: false,
            create_time: created,
        };
        (record, event)
    }

    /// Applies `change`: the checks of [`transition`], in its order, then the
    /// next version of the connection and the event that records the change.
    ///
    /// A destination's UpdateDataTypes that only removes types is the
    /// destination's [`Action::NarrowDataTypes`]; any other is the source's
    /// action, refused to the destination by the role check.
    pub fn apply(&self, change: Change) -> Result<(Self, NewEvent), TransitionError> {
        let role = self
            .parties
            .role_of(change.caller.organization)
            .ok_or(TransitionError::NotAParty)?;
        let action = match (change.action, role, &change.data_types) {
            (Action::UpdateDataTypes, Role::Destination, Some(types))
                if types.is_subset_of(&self.data_types) =>
            {
                Action::NarrowDataTypes
            }
            (action, _, _) => action,
        };
        let etag_matches = change.etag.is_none_or(|etag| etag == self.etag());
        let state = transition(self.state, action, Some(role), true)?;
        if action == Action::Activate && self.is_expired_at(change.at) {
            return Err(TransitionError::Expired);
        }
        let data_types = if action.changes_data_types() {
            Some(self.data_types_after(action, change.data_types)?)
        } else {
            None
        };
        if !etag_matches {
            return Err(TransitionError::EtagMismatch);
        }

        let at = change.at;
        let mut next = self.clone();
        next.state = state;
        next.version = self.version + 1;
        next.update_time = at;
        let (mut reason, mut message) = (None, None);
        let mut event_type = action.event_type();
        match action {
            Action::Activate => next.activate_time = Some(at),
            Action::Deactivate => {
                reason = change.reason.filter(|reason| !reason.is_empty());
                next.deactivate_time = Some(at);
                next.deactivated_by = Some(role);
                next.deactivation_reason.clone_from(&reason);
                next.pending_data_types = None;
            }
            Action::Reactivate => {
                message = change.message.filter(|message| !message.is_empty());
                next.invitation_message.clone_from(&message);
                next.expire_time = expiry(at, change.pending_lifetime);
            }
            Action::UpdateDataTypes | Action::NarrowDataTypes | Action::ApproveDataTypes => {}
            Action::DeclineDataTypes => {
                reason = change.reason.filter(|reason| !reason.is_empty());
            }
        }
        if state != ConnectionState::Pending {
            next.expire_time = None;
        }
        if let Some(change) = &data_types {
            next.data_types.clone_from(&change.current);
            next.pending_data_types.clone_from(&change.pending);
            if action == Action::UpdateDataTypes && change.pending.is_some() {
                event_type = EventType::DataTypesProposed;
            }
        }
        let event = NewEvent {
            connection_id: self.id,
            sequence: next.version,
            event_type,
            from_state: Some(self.state),
            to_state: state,
            actor: EventActor::of(&change.caller, role),
            reason,
            message,
            data_types,
            by_policy: false,
            create_time: at,
        };
        Ok((next, event))
    }

    /// The data types `action` (one that [changes
    /// them](Action::changes_data_types), already allowed by the table)
    /// leaves, with `proposed` the set an update asks for.
    fn data_types_after(
        &self,
        action: Action,
        proposed: Option<DataTypes>,
    ) -> Result<DataTypesChange, TransitionError> {
        let pending = self.pending_data_types.clone();
        let (current, next_pending) = match action {
            Action::UpdateDataTypes | Action::NarrowDataTypes => {
                // Callers always give the set; none asks for no change.
                let proposed = proposed.ok_or(TransitionError::DataTypesUnchanged)?;
                if action == Action::NarrowDataTypes {
                    (proposed, pending.clone())
                } else if self.state == ConnectionState::Active {
                    let kept = self.data_types.intersection(&proposed);
                    let added = proposed.difference(&self.data_types);
                    (kept.ok_or(TransitionError::NoDataTypesLeft)?, added)
                } else {
                    (proposed, None)
                }
            }
            Action::ApproveDataTypes => {
                let pending = pending.clone().ok_or(TransitionError::NoPendingDataTypes)?;
                (self.data_types.union(&pending), None)
            }
            Action::DeclineDataTypes => {
                pending
                    .as_ref()
                    .ok_or(TransitionError::NoPendingDataTypes)?;
                (self.data_types.clone(), None)
            }
            Action::Activate | Action::Deactivate | Action::Reactivate => {
                (self.data_types.clone(), pending.clone())
            }
        };
        if current == self.data_types && next_pending == pending {
            return Err(TransitionError::DataTypesUnchanged);
        }
        Ok(DataTypesChange {
            previous: self.data_types.clone(),
            previous_pending: pending,
            current,
            pending: next_pending,
        })
    }

    /// The activation the service makes on the destination's behalf when
    /// the destination's policy trusts the source (PENDING -> ACTIVE, by the
    /// destination, with no key), at `at`; `None` unless it is PENDING and
    /// not past its expire time.
    pub fn activate_by_policy(&self, at: DateTime<Utc>) -> Option<(Self, NewEvent)> {
        if self.state != ConnectionState::Pending || self.is_expired_at(at) {
            return None;
        }
        let mut next = self.clone();
        next.state = ConnectionState::Active;
        next.version = self.version + 1;
        next.update_time = at;
        next.activate_time = Some(at);
        next.expire_time = None;
        let event = NewEvent {
            connection_id: self.id,
            sequence: next.version,
            event_type: EventType::Activated,
            from_state: Some(self.state),
            to_state: next.state,
            actor: EventActor::Party {
                organization: self.parties.destination,
                role: Role::Destination,
                key: None,
            },
            reason: None,
            message: None,
            data_types: None,
            by_policy: true,
            create_time: at,
        };
        Some((next, event))
    }

    /// Whether this connection is PENDING past its expire time at `at`.
    pub fn is_expired_at(&self, at: DateTime<Utc>) -> bool {
        self.state == ConnectionState::Pending && self.expire_time.is_some_and(|time| at >= time)
    }

    /// The service's expiry of a PENDING connection its destination did not
    /// activate in time (PENDING -> INACTIVE, by no party), at `at`; `None`
    /// unless it is PENDING and its expire time has come.
    pub fn expire(&self, at: DateTime<Utc>) -> Option<(Self, NewEvent)> {
        if !self.is_expired_at(at) {
            return None;
        }
        let mut next = self.clone();
        next.state = ConnectionState::Inactive;
        next.version = self.version + 1;
        next.update_time = at;
        next.deactivate_time = Some(at);
        next.deactivated_by = None;
        next.deactivation_reason = None;
        next.expire_time = None;
        next.pending_data_types = None;
        let event = NewEvent {
            connection_id: self.id,
            sequence: next.version,
            event_type: EventType::Expired,
            from_state: Some(self.state),
            to_state: next.state,
            actor: EventActor::Service,
            reason: None,
            message: None,
            data_types: None,
            by_policy: false,
            create_time: at,
        };
        Some((next, event))
    }

    /// The connection as the events of its `history` (in sequence order,
    /// from its creation) up to `history[upto]` leave it, given what no
    /// event records: its parties, and its data types as long as no event of
    /// the whole history changed them. `None` if the history does not start
    /// with a creation, or `upto` is past its end.
    ///
    /// A PENDING connection's expire time is its creation's or latest
    /// reactivation's time plus `pending_lifetime` (the server's setting;
    /// `None`: it never expires).
    pub fn replay(
        parties: Parties,
        data_types: DataTypes,
        history: &[ConnectionEvent],
        upto: usize,
        pending_lifetime: Option<TimeDelta>,
    ) -> Option<Self> {
        let (first, rest) = history.get(..=upto)?.split_first()?;
        if first.event_type != EventType::Created {
            return None;
        }
        // The set at creation is the one the first change of the data types
        // started from; without one, it is still the connection's.
        let created_with = history
            .iter()
            .find_map(|event| event.data_types.as_ref())
            .map_or(data_types, |change| change.previous.clone());
        let mut record = Self {
            id: first.connection_id,
            parties,
            state: first.to_state,
            data_types: created_with,
            version: first.sequence,
            create_time: first.create_time,
            update_time: first.create_time,
            activate_time: None,
            deactivate_time: None,
            deactivated_by: None,
            deactivation_reason: None,
            invitation_message: first.message.clone(),
            expire_time: expiry(first.create_time, pending_lifetime),
            pending_data_types: None,
        };
        for event in rest {
            let at = event.create_time;
            record.state = event.to_state;
            if event.to_state != ConnectionState::Pending {
                record.expire_time = None;
            }
            record.version = event.sequence;
            record.update_time = at;
            match event.event_type {
                EventType::Created => return None,
                EventType::Activated => record.activate_time = Some(at),
                EventType::Deactivated => {
                    record.deactivate_time = Some(at);
                    record.deactivated_by = event.actor.role();
                    record.deactivation_reason.clone_from(&event.reason);
                    record.pending_data_types = None;
                }
                EventType::Reactivated => {
                    record.invitation_message.clone_from(&event.message);
                    record.expire_time = expiry(at, pending_lifetime);
                }
                EventType::Expired => {
                    record.deactivate_time = Some(at);
                    record.deactivated_by = None;
                    record.deactivation_reason = None;
                }
                EventType::DataTypesChanged
                | EventType::DataTypesProposed
                | EventType::DataTypesApproved
                | EventType::DataTypesDeclined => {
                    let change = event.data_types.as_ref()?;
                    record.data_types.clone_from(&change.current);
                    record.pending_data_types.clone_from(&change.pending);
                }
            }
        }
        Some(record)
    }
}

/// A type of data the source shares (stored as `INQUIRY`, ...). Ordered as
/// in the API enum.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
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

/// A stored value that is not one of the expected names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownName {
    kind: &'static str,
    value: String,
}

/// A non-empty set of data types, kept sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// Whether every type of this set is in `other`.
    pub fn is_subset_of(&self, other: &Self) -> bool {
        self.0.iter().all(|t| other.0.contains(t))
    }

    /// The types in both sets; `None` if there are none.
    pub fn intersection(&self, other: &Self) -> Option<Self> {
        Self::new(self.0.iter().copied().filter(|t| other.0.contains(t))).ok()
    }

    /// The types of this set that are not in `other`; `None` if there are
    /// none.
    pub fn difference(&self, other: &Self) -> Option<Self> {
        Self::new(self.0.iter().copied().filter(|t| !other.0.contains(t))).ok()
    }

    /// The types in either set.
    pub fn union(&self, other: &Self) -> Self {
        Self(
            self.0
                .iter()
                .chain(&other.0)
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        )
    }

    /// The stored form: names joined by commas, e.g. `INQUIRY,ACCOUNT`.
    pub fn to_storage(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|t| t.as_str()).collect();
        names.join(",")
    }

    /// Parses the stored form.
    pub fn from_storage(s: &str) -> Result<Self, UnknownName> {
        let unknown = || UnknownName {
            kind: "data types",
            value: s.to_owned(),
        };
        let types = s
            .split(',')
            .map(DataType::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unknown())?;
        Self::new(types).map_err(|_| unknown())
    }
}

/// The two organizations of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The message of the latest invitation (its creation or latest
    /// reactivation), if it had one.
    pub invitation_message: Option<String>,
    /// While PENDING: when the service expires it unless the destination
    /// activates it first; `None` when it never expires, and once it is
    /// not PENDING.
    pub expire_time: Option<DateTime<Utc>>,
    /// While ACTIVE: the types the source proposed that the destination
    /// has yet to approve (not allowed until then); `None` if there are
    /// none, and always once it is not ACTIVE.
    pub pending_data_types: Option<DataTypes>,
}

/// What the source says with a creation: its message, and how long the
/// connection may wait for the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invitation {
    /// The invitation message, already trimmed and checked.
    pub message: Option<String>,
    /// How long it may stay PENDING; `None`: for ever.
    pub pending_lifetime: Option<TimeDelta>,
}

/// When a connection made PENDING at `at` expires, given its lifetime.
fn expiry(at: DateTime<Utc>, lifetime: Option<TimeDelta>) -> Option<DateTime<Utc>> {
    lifetime.and_then(|lifetime| at.checked_add_signed(lifetime))
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
    pub actor: EventActor,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// The invitation message (creations and reactivations), if any.
    pub message: Option<String>,
    /// The data types before and after (the DATA_TYPES_* events only).
    pub data_types: Option<DataTypesChange>,
    /// An activation the service made on the destination's behalf, because
    /// the destination's policy trusts the source.
    pub by_policy: bool,
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
        (
            Action::UpdateDataTypes,
            Some(Role::Source),
            Pending,
            Pending,
        ),
        (Action::UpdateDataTypes, Some(Role::Source), Active, Active),
        (
            Action::UpdateDataTypes,
            Some(Role::Source),
            Inactive,
            Inactive,
        ),
        (
            Action::NarrowDataTypes,
            Some(Role::Destination),
            Active,
            Active,
        ),
        (
            Action::ApproveDataTypes,
            Some(Role::Destination),
            Active,
            Active,
        ),
        (
            Action::DeclineDataTypes,
            Some(Role::Destination),
            Active,
            Active,
        ),
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

    use strum::VariantArray;

    #[test]
    fn every_state_action_role_and_etag_follows_the_spec_in_check_order() {
        let roles = [None, Some(Role::Source), Some(Role::Destination)];
        let mut cases = 0;
        for &state in ConnectionState::VARIANTS {
            for &action in Action::VARIANTS {
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
        assert_eq!(cases, 3 * 7 * 3 * 2);
    }

    #[test]
    fn non_party_is_refused_before_anything_else() {
        for &state in ConnectionState::VARIANTS {
            for &action in Action::VARIANTS {
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
        for &state in ConnectionState::VARIANTS {
            assert_eq!(state.as_str().parse::<ConnectionState>(), Ok(state));
        }
        for role in Role::VARIANTS {
            assert_eq!(role.as_str().parse::<Role>(), Ok(*role));
        }
        for event in EventType::VARIANTS {
            assert_eq!(event.as_str().parse::<EventType>(), Ok(*event));
            // connection_events.event_type holds 16 characters.
            assert!(
                event.as_str().len() <= 16,
                "{event:?} is stored as a longer name"
            );
        }
        for data_type in DataType::VARIANTS {
            assert_eq!(data_type.as_str().parse::<DataType>(), Ok(*data_type));
        }
        assert_eq!(
            ConnectionState::VARIANTS
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            ["PENDING", "ACTIVE", "INACTIVE"]
        );
        assert_eq!(Action::Reactivate.to_string(), "reactivate");
        assert!("pending".parse::<ConnectionState>().is_err());
    }

    /// A caller from `organization` with a key of its own named `name`.
    fn calling(organization: OrganizationId, name: &str) -> Caller {
        Caller {
            organization,
            api_key: crate::domain::ApiKeyId::generate(),
            api_key_name: name.into(),
        }
    }

    fn created() -> ConnectionRecord {
        let id = ConnectionId::generate();
        let source = calling(OrganizationId::generate(), "source's key");
        let types = DataTypes::new([DataType::Inquiry]).unwrap();
        ConnectionRecord::create(
            id,
            &source,
            OrganizationId::generate(),
            types,
            DateTime::UNIX_EPOCH,
            Invitation::default(),
        )
        .0
    }

    fn change(record: &ConnectionRecord, action: Action, caller: OrganizationId) -> Change {
        by_key(record, action, calling(caller, "a key"))
    }

    fn by_key(record: &ConnectionRecord, action: Action, caller: Caller) -> Change {
        Change {
            action,
            caller,
            etag: None,
            reason: Some("audit".to_owned()),
            message: None,
            data_types: None,
            pending_lifetime: None,
            at: DateTime::from_timestamp(1_000, 0).unwrap(),
        }
        .with_etag(record)
    }

    impl Change {
        fn with_etag(mut self, record: &ConnectionRecord) -> Self {
            self.etag = Some(record.etag());
            self
        }
    }

    #[test]
    fn creation_is_pending_version_one_recorded_as_created_by_the_source() {
        let record = created();
        assert_eq!(record.state, Pending);
        assert_eq!(record.version, 1);
        let creator = calling(record.parties.source, "ci-deployer");
        let (again, event) = ConnectionRecord::create(
            record.id,
            &creator,
            record.parties.destination,
            record.data_types.clone(),
            record.create_time,
            Invitation::default(),
        );
        assert_eq!(again, record);
        assert_eq!(event.event_type, EventType::Created);
        assert_eq!((event.from_state, event.to_state), (None, Pending));
        assert_eq!(
            event.actor,
            EventActor::Party {
                organization: record.parties.source,
                role: Role::Source,
                key: Some(ActorKey {
                    id: creator.api_key,
                    display_name: "ci-deployer".to_owned()
                }),
            }
        );
        assert_eq!(event.sequence, 1);
        assert_eq!((record.expire_time, event.message), (None, None));
    }

    #[test]
    fn applying_a_change_moves_the_version_times_and_history_together() {
        let pending = created();
        let destination = pending.parties.destination;
        let at = DateTime::from_timestamp(1_000, 0).unwrap();
        let activator = calling(destination, "activator");
        let (active, event) = pending
            .apply(by_key(&pending, Action::Activate, activator.clone()))
            .unwrap();
        assert_eq!(active.state, Active);
        assert_eq!(active.version, 2);
        assert_eq!((active.update_time, active.activate_time), (at, Some(at)));
        assert_eq!(
            active.deactivation_reason, None,
            "only deactivations keep a reason"
        );
        assert_eq!(
            event,
            NewEvent {
                connection_id: pending.id,
                sequence: 2,
                event_type: EventType::Activated,
                from_state: Some(Pending),
                to_state: Active,
                actor: EventActor::Party {
                    organization: destination,
                    role: Role::Destination,
                    key: Some(ActorKey {
                        id: activator.api_key,
                        display_name: "activator".to_owned(),
                    }),
                },
                reason: None,
                message: None,
                data_types: None,
                by_policy: false,
                create_time: at,
            }
        );

        // Another key of the same organization: the event names it.
        let deactivator = calling(destination, "deactivator");
        let (inactive, event) = active
            .apply(by_key(&active, Action::Deactivate, deactivator.clone()))
            .unwrap();
        assert_eq!(event.actor.organization(), Some(destination));
        assert_eq!(event.actor.key(), Some(&deactivator.key()));
        assert_ne!(event.actor.key().unwrap().id, activator.api_key);
        assert_eq!(inactive.deactivated_by, Some(Role::Destination));
        assert_eq!(inactive.deactivation_reason.as_deref(), Some("audit"));
        assert_eq!(inactive.deactivate_time, Some(at));
        assert_eq!(event.reason.as_deref(), Some("audit"));
        assert_eq!(event.sequence, 3);

        let mut without_reason = change(&inactive, Action::Reactivate, pending.parties.source);
        without_reason.reason = None;
        let (pending_again, _) = inactive.apply(without_reason).unwrap();
        let mut empty_reason = change(&pending_again, Action::Deactivate, pending.parties.source);
        empty_reason.reason = Some(String::new());
        let (inactive_again, event) = pending_again.apply(empty_reason).unwrap();
        assert_eq!(inactive_again.deactivation_reason, None);
        assert_eq!(event.reason, None);
        assert_eq!(inactive_again.deactivated_by, Some(Role::Source));
    }

    #[test]
    fn applying_refuses_strangers_and_stale_etags() {
        let pending = created();
        let stranger = OrganizationId::generate();
        assert_eq!(
            pending.apply(change(&pending, Action::Deactivate, stranger)),
            Err(TransitionError::NotAParty)
        );
        let mut stale = change(&pending, Action::Activate, pending.parties.destination);
        stale.etag = Some(etag(pending.id, 7));
        assert_eq!(pending.apply(stale), Err(TransitionError::EtagMismatch));
        let mut unconditional = change(&pending, Action::Activate, pending.parties.destination);
        unconditional.etag = None;
        assert!(pending.apply(unconditional).is_ok());
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
    fn replaying_a_history_gives_the_connection_every_step_left() {
        let source = calling(OrganizationId::generate(), "source key");
        let destination = calling(OrganizationId::generate(), "destination key");
        let id = ConnectionId::generate();
        let data_types = DataTypes::new([DataType::Inquiry]).unwrap();
        let lifetime = Some(TimeDelta::days(30));
        let (mut record, first) = ConnectionRecord::create(
            id,
            &source,
            destination.organization,
            data_types.clone(),
            Utc::now(),
            // The server's lifetime, which the replay is told: the expire
            // time is not in the history.
            Invitation {
                message: Some("hello".to_owned()),
                pending_lifetime: lifetime,
            },
        );
        let mut events = vec![first.recorded(uuid::Uuid::now_v7())];
        // The text is the reason of a deactivation, the message of a
        // reactivation.
        let steps = [
            (&destination, Action::Activate, None),
            (&source, Action::Deactivate, Some("paused".to_owned())),
            (&source, Action::Reactivate, Some("again?".to_owned())),
            (&destination, Action::Activate, None),
            (&destination, Action::Deactivate, None),
        ];
        for (caller, action, reason) in steps {
            let last = events.len() - 1;
            assert_eq!(
                ConnectionRecord::replay(
                    record.parties,
                    data_types.clone(),
                    &events,
                    last,
                    lifetime
                )
                .as_ref(),
                Some(&record)
            );
            let (next, event) = record
                .apply(Change {
                    action,
                    caller: caller.clone(),
                    etag: None,
                    reason: reason.clone(),
                    message: reason,
                    data_types: None,
                    pending_lifetime: lifetime,
                    at: Utc::now(),
                })
                .unwrap();
            events.push(event.recorded(uuid::Uuid::now_v7()));
            record = next;
        }
        let last = events.len() - 1;
        assert_eq!(
            ConnectionRecord::replay(record.parties, data_types.clone(), &events, last, lifetime)
                .as_ref(),
            Some(&record)
        );
        assert_eq!(
            ConnectionRecord::replay(
                record.parties,
                data_types.clone(),
                &events,
                last + 1,
                lifetime
            ),
            None,
            "past the end of the history"
        );
        assert_eq!(
            ConnectionRecord::replay(record.parties, data_types, &events[1..], last - 1, lifetime),
            None,
            "a history must start with the creation"
        );
    }

    fn with_lifetime(days: i64) -> (ConnectionRecord, Caller, Caller) {
        let source = calling(OrganizationId::generate(), "source key");
        let destination = calling(OrganizationId::generate(), "destination key");
        let (record, _) = ConnectionRecord::create(
            ConnectionId::generate(),
            &source,
            destination.organization,
            DataTypes::new([DataType::Inquiry]).unwrap(),
            DateTime::UNIX_EPOCH,
            Invitation {
                message: Some("Please share inquiries with us".to_owned()),
                pending_lifetime: Some(TimeDelta::days(days)),
            },
        );
        (record, source, destination)
    }

    fn asked(action: Action, caller: &Caller, at: DateTime<Utc>) -> Change {
        Change {
            action,
            caller: caller.clone(),
            etag: None,
            reason: None,
            message: None,
            data_types: None,
            pending_lifetime: Some(TimeDelta::days(30)),
            at,
        }
    }

    #[test]
    fn an_invitation_keeps_its_message_and_expires_after_its_lifetime() {
        let (pending, _, destination) = with_lifetime(30);
        let expiry = DateTime::UNIX_EPOCH + TimeDelta::days(30);
        assert_eq!(pending.expire_time, Some(expiry));
        assert_eq!(
            pending.invitation_message.as_deref(),
            Some("Please share inquiries with us")
        );
        let just_before = expiry - TimeDelta::milliseconds(1);
        assert!(!pending.is_expired_at(just_before));
        assert_eq!(pending.expire(just_before), None);

        // From its expire time on, it cannot be activated, only expired.
        assert_eq!(
            pending.apply(asked(Action::Activate, &destination, expiry)),
            Err(TransitionError::Expired)
        );
        let (expired, event) = pending.expire(expiry).unwrap();
        assert_eq!(
            (expired.state, expired.version, expired.expire_time),
            (Inactive, 2, None)
        );
        assert_eq!(
            (expired.deactivate_time, expired.deactivated_by),
            (Some(expiry), None)
        );
        assert_eq!(event.event_type, EventType::Expired);
        assert_eq!(
            (event.from_state, event.to_state),
            (Some(Pending), Inactive)
        );
        assert_eq!(event.actor, EventActor::Service);
        assert_eq!(expired.expire(expiry + TimeDelta::days(1)), None);
    }

    #[test]
    fn an_expired_activation_is_refused_after_role_and_state_and_before_the_etag() {
        let (pending, source, destination) = with_lifetime(1);
        let late = DateTime::UNIX_EPOCH + TimeDelta::days(2);
        let mut stale = asked(Action::Activate, &destination, late);
        stale.etag = Some("0000000000000000".to_owned());
        assert_eq!(pending.apply(stale), Err(TransitionError::Expired));
        assert_eq!(
            pending.apply(asked(Action::Activate, &source, late)),
            Err(TransitionError::WrongRole {
                required: Role::Destination
            })
        );
        // Deactivating an overdue invitation is still allowed.
        assert!(
            pending
                .apply(asked(Action::Deactivate, &source, late))
                .is_ok()
        );
    }

    #[test]
    fn leaving_pending_ends_the_expiry_and_a_reactivation_starts_a_new_one_with_its_message() {
        let (pending, source, destination) = with_lifetime(30);
        let day = |n| DateTime::UNIX_EPOCH + TimeDelta::days(n);
        let (active, _) = pending
            .apply(asked(Action::Activate, &destination, day(1)))
            .unwrap();
        assert_eq!(active.expire_time, None);
        assert!(!active.is_expired_at(day(100)));
        let (inactive, _) = active
            .apply(asked(Action::Deactivate, &destination, day(2)))
            .unwrap();
        let mut reactivate = asked(Action::Reactivate, &source, day(3));
        reactivate.message = Some("We fixed the mapping".to_owned());
        let (again, event) = inactive.apply(reactivate).unwrap();
        assert_eq!(again.expire_time, Some(day(33)));
        assert_eq!(
            again.invitation_message.as_deref(),
            Some("We fixed the mapping")
        );
        assert_eq!(event.message.as_deref(), Some("We fixed the mapping"));
        // A reactivation without a message: the latest invitation has none.
        let (inactive, _) = again
            .apply(asked(Action::Deactivate, &source, day(4)))
            .unwrap();
        let (silent, event) = inactive
            .apply(asked(Action::Reactivate, &source, day(5)))
            .unwrap();
        assert_eq!((&silent.invitation_message, event.message), (&None, None));
        // Without a lifetime nothing expires.
        let mut forever = asked(Action::Deactivate, &source, day(6));
        let (inactive, _) = silent.apply(forever.clone()).unwrap();
        forever.action = Action::Reactivate;
        forever.pending_lifetime = None;
        let (pending, _) = inactive.apply(forever).unwrap();
        assert_eq!(pending.expire_time, None);
        assert_eq!(pending.expire(day(10_000)), None);
    }

    /// A set of data types as bits (inquiry 1, verification 2, account 4,
    /// transaction 8), so that the expectations below are plain bit
    /// arithmetic rather than the code under test.
    fn types_of(bits: u8) -> Option<DataTypes> {
        DataTypes::new(
            DataType::VARIANTS
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, t)| *t),
        )
        .ok()
    }

    /// What a change of the data types should do, from the product's rules
    /// written out: the types allowed and pending after it, and its event.
    fn expected_types(
        state: ConnectionState,
        (current, pending): (u8, u8),
        role: Role,
        action: Action,
        proposed: u8,
    ) -> Result<(u8, u8, EventType), TransitionError> {
        use TransitionError::*;
        let destination_only = |ok: Result<(u8, u8, EventType), TransitionError>| match role {
            Role::Source => Err(WrongRole {
                required: Role::Destination,
            }),
            Role::Destination if state != Active => Err(InvalidState { current: state }),
            Role::Destination => ok,
        };
        match action {
            Action::ApproveDataTypes => destination_only(if pending == 0 {
                Err(NoPendingDataTypes)
            } else {
                Ok((current | pending, 0, EventType::DataTypesApproved))
            }),
            Action::DeclineDataTypes => destination_only(if pending == 0 {
                Err(NoPendingDataTypes)
            } else {
                Ok((current, 0, EventType::DataTypesDeclined))
            }),
            _ => match role {
                // A destination may only take types away.
                Role::Destination if proposed & !current != 0 => Err(WrongRole {
                    required: Role::Source,
                }),
                Role::Destination if state != Active => Err(InvalidState { current: state }),
                Role::Destination if proposed == current => Err(DataTypesUnchanged),
                Role::Destination => Ok((proposed, pending, EventType::DataTypesChanged)),
                Role::Source if state != Active => {
                    if proposed == current {
                        Err(DataTypesUnchanged)
                    } else {
                        Ok((proposed, 0, EventType::DataTypesChanged))
                    }
                }
                Role::Source => {
                    let (kept, added) = (current & proposed, proposed & !current);
                    if kept == 0 {
                        Err(NoDataTypesLeft)
                    } else if kept == current && added == pending {
                        Err(DataTypesUnchanged)
                    } else if added == 0 {
                        Ok((kept, 0, EventType::DataTypesChanged))
                    } else {
                        Ok((kept, added, EventType::DataTypesProposed))
                    }
                }
            },
        }
    }

    #[test]
    fn every_change_of_the_data_types_follows_the_rules_in_every_state_for_either_party() {
        // Inquiries and accounts allowed; while ACTIVE, transactions may be
        // pending.
        let current = 0b0101;
        let mut cases = 0;
        for &state in ConnectionState::VARIANTS {
            let pendings: &[u8] = if state == Active { &[0, 0b1000] } else { &[0] };
            for &pending in pendings {
                let mut record = created();
                record.state = state;
                record.data_types = types_of(current).unwrap();
                record.pending_data_types = types_of(pending);
                let (source, destination) = (record.parties.source, record.parties.destination);
                for (role, org) in [(Role::Source, source), (Role::Destination, destination)] {
                    for action in [
                        Action::UpdateDataTypes,
                        Action::ApproveDataTypes,
                        Action::DeclineDataTypes,
                    ] {
                        let proposals = if action == Action::UpdateDataTypes {
                            1..16
                        } else {
                            0..1
                        };
                        for proposed in proposals {
                            cases += 1;
                            let case = format!(
                                "{action:?} by {role:?} of {proposed:04b} on {state:?} \
                                 {current:04b} pending {pending:04b}"
                            );
                            let mut asked = change(&record, action, org);
                            asked.reason = Some("why".to_owned());
                            asked.data_types = types_of(proposed);
                            let got = record.apply(asked).map(|(next, event)| {
                                assert_eq!(next.state, state, "{case}");
                                assert_eq!(next.version, record.version + 1, "{case}");
                                assert_eq!(
                                    (event.from_state, event.to_state),
                                    (Some(state), state)
                                );
                                let change = event.data_types.clone().expect("a DATA_TYPES event");
                                assert_eq!(change.previous, record.data_types, "{case}");
                                assert_eq!(change.previous_pending, record.pending_data_types);
                                assert_eq!(Some(&change.current), Some(&next.data_types));
                                assert_eq!(change.pending, next.pending_data_types, "{case}");
                                let reason = (event.event_type == EventType::DataTypesDeclined)
                                    .then(|| "why".to_owned());
                                assert_eq!(event.reason, reason, "{case}");
                                (next.data_types, next.pending_data_types, event.event_type)
                            });
                            let expected =
                                expected_types(state, (current, pending), role, action, proposed)
                                    .map(|(types, pending, event)| {
                                        (types_of(types).unwrap(), types_of(pending), event)
                                    });
                            assert_eq!(got, expected, "{case}");
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 4 * 2 * (15 + 1 + 1));
    }

    #[test]
    fn a_stale_etag_is_refused_after_the_data_type_checks() {
        let mut record = created();
        record.state = Active;
        let destination = record.parties.destination;
        let mut stale = change(&record, Action::ApproveDataTypes, destination);
        stale.etag = Some("stale".to_owned());
        assert_eq!(
            record.apply(stale.clone()),
            Err(TransitionError::NoPendingDataTypes)
        );
        record.pending_data_types = types_of(0b1000);
        assert_eq!(record.apply(stale), Err(TransitionError::EtagMismatch));
    }

    #[test]
    fn a_deactivation_drops_pending_data_types_and_a_replay_follows_every_change() {
        let mut record = created();
        let (source, destination) = (record.parties.source, record.parties.destination);
        let mut events = vec![ConnectionEvent {
            id: uuid::Uuid::nil(),
            connection_id: record.id,
            sequence: 1,
            event_type: EventType::Created,
            from_state: None,
            to_state: Pending,
            actor: EventActor::Service,
            reason: None,
            message: None,
            data_types: None,
            by_policy: false,
            create_time: record.create_time,
        }];
        let mut step = |record: &mut ConnectionRecord, action, org, types: u8| {
            let mut asked = change(record, action, org);
            asked.data_types = types_of(types);
            let (next, event) = record.apply(asked).unwrap();
            events.push(event.recorded(uuid::Uuid::nil()));
            *record = next;
        };
        // Pending: a new set; then active with one proposal and a narrowing.
        step(&mut record, Action::UpdateDataTypes, source, 0b0011);
        step(&mut record, Action::Activate, destination, 0);
        step(&mut record, Action::UpdateDataTypes, source, 0b1011);
        assert_eq!(record.pending_data_types, types_of(0b1000));
        step(&mut record, Action::UpdateDataTypes, destination, 0b0010);
        assert_eq!(record.data_types, types_of(0b0010).unwrap());
        assert_eq!(record.pending_data_types, types_of(0b1000));
        step(&mut record, Action::Deactivate, source, 0);
        assert_eq!(record.pending_data_types, None);

        // The set at creation is not the connection's any more: replay
        // finds it in the first change.
        let last = events.len() - 1;
        let replayed = ConnectionRecord::replay(
            record.parties,
            record.data_types.clone(),
            &events,
            last,
            None,
        );
        assert_eq!(replayed.as_ref(), Some(&record));
        for upto in 0..events.len() {
            let at = ConnectionRecord::replay(
                record.parties,
                record.data_types.clone(),
                &events,
                upto,
                None,
            )
            .unwrap();
            let expected = match upto {
                0 => 0b0001,
                1..=3 => 0b0011,
                _ => 0b0010,
            };
            assert_eq!(
                at.data_types,
                types_of(expected).unwrap(),
                "after {} events",
                upto + 1
            );
        }
    }

    #[test]
    fn a_policy_activates_only_a_pending_connection_before_its_expiry_as_the_destination_with_no_key()
     {
        let (record, _, _) = with_lifetime(30);
        let at = record.create_time + TimeDelta::days(1);
        let (active, event) = record.activate_by_policy(at).unwrap();
        assert_eq!((active.state, active.version), (Active, 2));
        assert_eq!((active.activate_time, active.expire_time), (Some(at), None));
        assert_eq!(event.event_type, EventType::Activated);
        assert!(event.by_policy);
        assert_eq!(
            event.actor,
            EventActor::Party {
                organization: record.parties.destination,
                role: Role::Destination,
                key: None,
            }
        );
        assert_eq!(active.activate_by_policy(at), None, "already active");
        let expired = record.create_time + TimeDelta::days(30);
        assert_eq!(
            record.activate_by_policy(expired),
            None,
            "past its expire time"
        );
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
