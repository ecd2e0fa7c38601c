//! The reference model: SPEC sections 2, 4 and 5 written out again, on
//! purpose without the crate's own transition table, its rules for changing
//! data types or its error mapping, so that a mistake there is not copied
//! into the expectation.

use std::collections::HashMap;

use connections::domain::{Action, ConnectionState, DataType, EventType, Role};
use tonic::Code;

use ConnectionState::{Active, Inactive, Pending};

/// Index given to an organization or connection the model does not know.
pub const UNKNOWN: usize = usize::MAX;

/// One row of the SPEC section 2 table.
pub struct Rule {
    pub action: Action,
    /// The role that may take the action; `None`: either party.
    pub role: Option<Role>,
    pub from: ConnectionState,
    pub to: ConnectionState,
    pub event: EventType,
}

/// SPEC section 2, written out.
pub const SPEC_TABLE: [Rule; 4] = [
    Rule {
        action: Action::Activate,
        role: Some(Role::Destination),
        from: Pending,
        to: Active,
        event: EventType::Activated,
    },
    Rule {
        action: Action::Deactivate,
        role: None,
        from: Pending,
        to: Inactive,
        event: EventType::Deactivated,
    },
    Rule {
        action: Action::Deactivate,
        role: None,
        from: Active,
        to: Inactive,
        event: EventType::Deactivated,
    },
    Rule {
        action: Action::Reactivate,
        role: Some(Role::Source),
        from: Inactive,
        to: Pending,
        event: EventType::Reactivated,
    },
];

/// What a change of the data types does (issue 26, item 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypesChange {
    /// The source's new set replaces the old one (nothing is pending while
    /// the connection is not ACTIVE).
    Replace,
    /// The source's new set on an ACTIVE connection: the types it leaves
    /// out stop at once, the ones it adds (and only those) become the
    /// pending set, replacing any earlier one; at least one current type
    /// must stay.
    Propose,
    /// The destination keeps a subset of the current types; the pending set
    /// stays as it is.
    Narrow,
    /// The pending types join the allowed ones.
    Approve,
    /// The pending types are dropped; the allowed ones stay.
    Decline,
}

impl TypesChange {
    /// The event types a change of this kind may record.
    pub fn events(self) -> &'static [EventType] {
        match self {
            // A proposal that leaves nothing pending (a narrowing, or a
            // proposal withdrawn) is recorded as a change.
            Self::Propose => &[EventType::DataTypesProposed, EventType::DataTypesChanged],
            Self::Replace | Self::Narrow => &[EventType::DataTypesChanged],
            Self::Approve => &[EventType::DataTypesApproved],
            Self::Decline => &[EventType::DataTypesDeclined],
        }
    }
}

/// One row of the table of changes of the data types: they keep the state.
pub struct TypesRule {
    pub action: Action,
    /// The one role that may take it.
    pub role: Role,
    pub state: ConnectionState,
    pub change: TypesChange,
}

/// Issue 26, item 3, written out: who may change the data types, in which
/// state, and how. UpdateConnectionDataTypes is the source's, except a
/// subset of the current types from the destination (a narrowing).
pub const DATA_TYPES_TABLE: [TypesRule; 6] = [
    TypesRule {
        action: Action::UpdateDataTypes,
        role: Role::Source,
        state: Pending,
        change: TypesChange::Replace,
    },
    TypesRule {
        action: Action::UpdateDataTypes,
        role: Role::Source,
        state: Inactive,
        change: TypesChange::Replace,
    },
    TypesRule {
        action: Action::UpdateDataTypes,
        role: Role::Source,
        state: Active,
        change: TypesChange::Propose,
    },
    TypesRule {
        action: Action::UpdateDataTypes,
        role: Role::Destination,
        state: Active,
        change: TypesChange::Narrow,
    },
    TypesRule {
        action: Action::ApproveDataTypes,
        role: Role::Destination,
        state: Active,
        change: TypesChange::Approve,
    },
    TypesRule {
        action: Action::DeclineDataTypes,
        role: Role::Destination,
        state: Active,
        change: TypesChange::Decline,
    },
];

/// The model's name of the request an action stands for: the API has no
/// narrowing of its own, the destination's UpdateConnectionDataTypes is
/// one.
pub fn requested(action: Action) -> Action {
    match action {
        Action::NarrowDataTypes => Action::UpdateDataTypes,
        action => action,
    }
}

// ---------------------------------------------------------------------------
// Outcomes, comparable between the model and either layer

/// The parts of a connection the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub conn: usize,
    pub source: usize,
    pub destination: usize,
    pub state: ConnectionState,
    /// The service layer's version; through gRPC, which does not show it, the
    /// version whose etag the connection carried (see `Harness::view`).
    pub version: i64,
    pub data_types: Vec<DataType>,
    /// The types waiting for the destination's approval; empty if none.
    pub pending_data_types: Vec<DataType>,
    pub ever_activated: bool,
    pub ever_deactivated: bool,
    pub deactivated_by: Option<Role>,
    pub deactivation_reason: Option<String>,
}

/// The parts of an event the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEvent {
    pub sequence: i64,
    pub event_type: EventType,
    pub from: Option<ConnectionState>,
    pub to: ConnectionState,
    pub actor: usize,
    pub actor_role: Role,
    pub reason: Option<String>,
    /// The data types allowed and pending before and after a change of the
    /// data types; all empty for other events.
    pub types: EventTypes,
}

/// What an event says of the data types: as on the wire, sorted, empty
/// when none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventTypes {
    pub previous: Vec<DataType>,
    pub previous_pending: Vec<DataType>,
    pub current: Vec<DataType>,
    pub pending: Vec<DataType>,
}

/// What a call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(View),
    Events(Vec<ModelEvent>),
    Listed(Vec<View>),
    Failed(Failure),
}

/// A call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Refused as SPEC section 5 says: this gRPC code, for this reason.
    Refused(Code, Refusal),
    /// Anything the model never predicts, described.
    Unexpected(String),
}

impl Outcome {
    /// Refused for `refusal`, with the code SPEC section 5 gives it.
    pub fn refused(refusal: Refusal) -> Self {
        Self::Failed(Failure::refused(refusal))
    }
}

impl Failure {
    /// Refused for `refusal`, with the code SPEC section 5 gives it.
    pub fn refused(refusal: Refusal) -> Self {
        Self::Refused(refusal.code(), refusal)
    }
}

/// The refusals the model predicts: SPEC section 5's reasons, with what each
/// carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    ConnectionNotFound,
    OrganizationNotFound,
    CallerNotSource,
    CallerNotDestination,
    InvalidStateTransition {
        current: ConnectionState,
    },
    /// Approving or declining with nothing pending.
    NoPendingDataTypes,
    /// The source's proposal keeps none of an ACTIVE connection's types.
    NoDataTypesLeft,
    /// A change of the data types that changes nothing.
    DataTypesUnchanged,
    EtagMismatch,
    ConnectionAlreadyExists {
        /// The existing connection's id.
        existing: String,
    },
    SelfConnection,
    RequestIdReused,
}

impl Refusal {
    /// The gRPC code of SPEC section 5's table.
    pub fn code(&self) -> Code {
        match self {
            Self::ConnectionNotFound | Self::OrganizationNotFound => Code::NotFound,
            Self::CallerNotSource | Self::CallerNotDestination => Code::PermissionDenied,
            Self::InvalidStateTransition { .. }
            | Self::NoPendingDataTypes
            | Self::NoDataTypesLeft
            | Self::DataTypesUnchanged => Code::FailedPrecondition,
            Self::EtagMismatch => Code::Aborted,
            Self::ConnectionAlreadyExists { .. } => Code::AlreadyExists,
            Self::SelfConnection | Self::RequestIdReused => Code::InvalidArgument,
        }
    }

    /// The refusal an ErrorInfo reason (without its `ERROR_REASON_` prefix)
    /// names, given the metadata it came with (SPEC section 5); `None` for a
    /// reason the model never predicts, or metadata it lacks. (Only the gRPC
    /// variant sees ErrorInfo; the service layer's binary does not use this.)
    #[allow(dead_code)]
    pub fn from_reason(reason: &str, metadata: &HashMap<String, String>) -> Option<Self> {
        Some(match reason {
            "CONNECTION_NOT_FOUND" => Self::ConnectionNotFound,
            "ORGANIZATION_NOT_FOUND" => Self::OrganizationNotFound,
            "CALLER_NOT_SOURCE" => Self::CallerNotSource,
            "CALLER_NOT_DESTINATION" => Self::CallerNotDestination,
            "INVALID_STATE_TRANSITION" => Self::InvalidStateTransition {
                current: match metadata.get("current_state")?.as_str() {
                    "CONNECTION_STATE_PENDING" => Pending,
                    "CONNECTION_STATE_ACTIVE" => Active,
                    "CONNECTION_STATE_INACTIVE" => Inactive,
                    _ => return None,
                },
            },
            "NO_PENDING_DATA_TYPES" => Self::NoPendingDataTypes,
            "NO_DATA_TYPES_LEFT" => Self::NoDataTypesLeft,
            "DATA_TYPES_UNCHANGED" => Self::DataTypesUnchanged,
            "ETAG_MISMATCH" => Self::EtagMismatch,
            "CONNECTION_ALREADY_EXISTS" => Self::ConnectionAlreadyExists {
                existing: metadata.get("connection_id")?.clone(),
            },
            "SELF_CONNECTION" => Self::SelfConnection,
            "REQUEST_ID_REUSED" => Self::RequestIdReused,
            _ => return None,
        })
    }

    /// The request fields its BadRequest detail names: field problems carry
    /// one (SPEC section 5), other refusals none. (Only the gRPC variant sees
    /// BadRequest details.)
    #[allow(dead_code)]
    pub fn fields(&self) -> Vec<&'static str> {
        match self {
            Self::SelfConnection => vec!["destination_organization_id"],
            Self::RequestIdReused => vec!["request_id"],
            _ => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// The model

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Create,
    Transition(Action),
}

/// A request_id record: (caller, method, request_id), scoped as in SPEC 4.
pub type RidKey = (usize, Method, u8);

/// What "the same parameters" are: for a create, the destination and the
/// data types after normalisation; for a transition, the connection id, the
/// etag, the reason and the data types (normalised; none but for an update
/// of them), with "absent" and "empty" alike (on the wire they are the same).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Params {
    Create {
        destination: String,
        data_types: Vec<DataType>,
    },
    Transition {
        id: String,
        etag: String,
        reason: String,
        data_types: Vec<DataType>,
    },
}

/// What a modelled call did with its request_id.
#[derive(Debug, Clone, Copy)]
pub enum Effect {
    Nothing,
    /// Returned the response recorded under this key.
    Replayed(RidKey),
    /// Executed and recorded its response under this key.
    Recorded(RidKey),
}

#[derive(Debug, Clone)]
pub struct ModelConn {
    pub id: String,
    pub source: usize,
    pub destination: usize,
    pub state: ConnectionState,
    pub version: i64,
    pub data_types: Vec<DataType>,
    /// Empty unless ACTIVE with types waiting for approval.
    pub pending_data_types: Vec<DataType>,
    pub ever_activated: bool,
    pub ever_deactivated: bool,
    pub deactivated_by: Option<Role>,
    pub deactivation_reason: Option<String>,
    /// `etags[v - 1]` is the etag of version v, as the layer reported it.
    pub etags: Vec<String>,
    pub history: Vec<ModelEvent>,
}

impl ModelConn {
    pub fn role_of(&self, org: usize) -> Option<Role> {
        if org == self.source {
            Some(Role::Source)
        } else if org == self.destination {
            Some(Role::Destination)
        } else {
            None
        }
    }

    pub fn current_etag(&self) -> Option<&str> {
        usize::try_from(self.version - 1)
            .ok()
            .and_then(|v| self.etags.get(v))
            .map(String::as_str)
    }

    pub fn view(&self, conn: usize) -> View {
        View {
            conn,
            source: self.source,
            destination: self.destination,
            state: self.state,
            version: self.version,
            data_types: self.data_types.clone(),
            pending_data_types: self.pending_data_types.clone(),
            ever_activated: self.ever_activated,
            ever_deactivated: self.ever_deactivated,
            deactivated_by: self.deactivated_by,
            deactivation_reason: self.deactivation_reason.clone(),
        }
    }
}

/// The API enum's order: data types are stored sorted by it.
fn data_type_rank(t: DataType) -> u8 {
    match t {
        DataType::Inquiry => 1,
        DataType::Verification => 2,
        DataType::Account => 3,
        DataType::Transaction => 4,
    }
}

/// Duplicates collapsed, sorted by the API enum's order (SPEC section 3).
fn normalised(types: &[DataType]) -> Vec<DataType> {
    let mut out: Vec<DataType> = Vec::new();
    for &t in types {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out.sort_by_key(|&t| data_type_rank(t));
    out
}

/// The types of `a` that are (`keep`) or are not (`!keep`) in `b`, sorted.
fn filtered(a: &[DataType], b: &[DataType], keep: bool) -> Vec<DataType> {
    normalised(
        &a.iter()
            .copied()
            .filter(|t| b.contains(t) == keep)
            .collect::<Vec<_>>(),
    )
}

/// What an allowed change does, decided before the etag is checked.
struct Next {
    from: ConnectionState,
    to: ConnectionState,
    event: EventType,
    /// For a change of the data types: the types allowed and pending after.
    types: Option<(Vec<DataType>, Vec<DataType>)>,
}

/// The state of everything the organizations of one case did.
#[derive(Debug, Default)]
pub struct Model {
    pub conns: Vec<ModelConn>,
    request_ids: HashMap<RidKey, (Params, View)>,
}

impl Model {
    fn party_conn(&self, caller: usize, conn: Option<usize>) -> Option<usize> {
        conn.filter(|&i| self.conns[i].role_of(caller).is_some())
    }

    /// Looks up a request_id: `Some` decides the call.
    fn replay(&self, key: Option<RidKey>, params: &Params) -> Option<(Outcome, Effect)> {
        let key = key?;
        let (recorded, view) = self.request_ids.get(&key)?;
        Some(if recorded == params {
            (Outcome::Ok(view.clone()), Effect::Replayed(key))
        } else {
            (Outcome::refused(Refusal::RequestIdReused), Effect::Nothing)
        })
    }

    fn record(&mut self, key: Option<RidKey>, params: Params, view: &View) -> Effect {
        match key {
            Some(key) => {
                self.request_ids.insert(key, (params, view.clone()));
                Effect::Recorded(key)
            }
            None => Effect::Nothing,
        }
    }

    /// `new_id` is the id the layer gave the connection, if it made one.
    pub fn create(
        &mut self,
        caller: usize,
        destination: usize,
        destination_id: &str,
        data_types: &[DataType],
        request_id: Option<u8>,
        new_id: String,
    ) -> (Outcome, Effect) {
        if destination == caller {
            return (Outcome::refused(Refusal::SelfConnection), Effect::Nothing);
        }
        let key = request_id.map(|r| (caller, Method::Create, r));
        let params = Params::Create {
            destination: destination_id.to_owned(),
            data_types: normalised(data_types),
        };
        if let Some(decided) = self.replay(key, &params) {
            return decided;
        }
        if destination == UNKNOWN {
            return (
                Outcome::refused(Refusal::OrganizationNotFound),
                Effect::Nothing,
            );
        }
        if let Some(existing) = self
            .conns
            .iter()
            .find(|c| c.source == caller && c.destination == destination)
        {
            let existing = existing.id.clone();
            return (
                Outcome::refused(Refusal::ConnectionAlreadyExists { existing }),
                Effect::Nothing,
            );
        }
        let conn = ModelConn {
            id: new_id,
            source: caller,
            destination,
            state: Pending,
            version: 1,
            data_types: normalised(data_types),
            pending_data_types: Vec::new(),
            ever_activated: false,
            ever_deactivated: false,
            deactivated_by: None,
            deactivation_reason: None,
            etags: Vec::new(),
            history: vec![ModelEvent {
                sequence: 1,
                event_type: EventType::Created,
                from: None,
                to: Pending,
                actor: caller,
                actor_role: Role::Source,
                reason: None,
                types: EventTypes::default(),
            }],
        };
        self.conns.push(conn);
        let index = self.conns.len() - 1;
        let view = self.conns[index].view(index);
        let effect = self.record(key, params, &view);
        (Outcome::Ok(view), effect)
    }

    /// A transition, or a change of the data types (`data_types`: the set
    /// an update asks for, as sent).
    #[allow(clippy::too_many_arguments)]
    pub fn transition(
        &mut self,
        caller: usize,
        action: Action,
        conn: Option<usize>,
        id: &str,
        etag: Option<&str>,
        reason: Option<&str>,
        data_types: Option<&[DataType]>,
        request_id: Option<u8>,
    ) -> (Outcome, Effect) {
        let action = requested(action);
        let proposed = data_types.map(normalised);
        let key = request_id.map(|r| (caller, Method::Transition(action), r));
        let params = Params::Transition {
            id: id.to_owned(),
            etag: etag.unwrap_or_default().to_owned(),
            reason: reason.unwrap_or_default().to_owned(),
            data_types: proposed.clone().unwrap_or_default(),
        };
        if let Some(decided) = self.replay(key, &params) {
            return decided;
        }
        let Some(index) = self.party_conn(caller, conn) else {
            return (
                Outcome::refused(Refusal::ConnectionNotFound),
                Effect::Nothing,
            );
        };
        let c = &self.conns[index];
        let role = c.role_of(caller).expect("a party");
        let decided = match action {
            Action::Activate | Action::Deactivate | Action::Reactivate => {
                Self::decide_transition(c, role, action)
            }
            Action::UpdateDataTypes
            | Action::NarrowDataTypes
            | Action::ApproveDataTypes
            | Action::DeclineDataTypes => {
                Self::decide_types(c, role, action, proposed.as_deref().unwrap_or_default())
            }
        };
        let next = match decided {
            Ok(next) => next,
            Err(refusal) => return (Outcome::refused(refusal), Effect::Nothing),
        };
        if let Some(etag) = etag
            && Some(etag) != c.current_etag()
        {
            return (Outcome::refused(Refusal::EtagMismatch), Effect::Nothing);
        }

        let c = &mut self.conns[index];
        let reason = reason.filter(|r| !r.is_empty()).map(str::to_owned);
        let previous = (c.data_types.clone(), c.pending_data_types.clone());
        c.state = next.to;
        c.version += 1;
        let mut event_reason = None;
        match action {
            Action::Activate => c.ever_activated = true,
            Action::Deactivate => {
                c.ever_deactivated = true;
                c.deactivated_by = Some(role);
                c.deactivation_reason = reason.clone();
                event_reason = reason;
                // Only an ACTIVE connection has types waiting.
                c.pending_data_types.clear();
            }
            Action::DeclineDataTypes => event_reason = reason,
            Action::Reactivate
            | Action::UpdateDataTypes
            | Action::NarrowDataTypes
            | Action::ApproveDataTypes => {}
        }
        let mut types = EventTypes::default();
        if let Some((current, pending)) = next.types {
            c.data_types.clone_from(&current);
            c.pending_data_types.clone_from(&pending);
            types = EventTypes {
                previous: previous.0,
                previous_pending: previous.1,
                current,
                pending,
            };
        }
        let sequence = c.version;
        c.history.push(ModelEvent {
            sequence,
            event_type: next.event,
            from: Some(next.from),
            to: next.to,
            actor: caller,
            actor_role: role,
            reason: event_reason,
            types,
        });
        let view = c.view(index);
        let effect = self.record(key, params, &view);
        (Outcome::Ok(view), effect)
    }

    /// Activate, Deactivate or Reactivate, by the SPEC section 2 table:
    /// role, then state.
    fn decide_transition(c: &ModelConn, role: Role, action: Action) -> Result<Next, Refusal> {
        let rules: Vec<&Rule> = SPEC_TABLE.iter().filter(|r| r.action == action).collect();
        if let Some(required) = rules.iter().find_map(|r| r.role)
            && required != role
        {
            return Err(match required {
                Role::Source => Refusal::CallerNotSource,
                Role::Destination => Refusal::CallerNotDestination,
            });
        }
        let rule = rules
            .iter()
            .find(|r| r.from == c.state)
            .ok_or(Refusal::InvalidStateTransition { current: c.state })?;
        Ok(Next {
            from: rule.from,
            to: rule.to,
            event: rule.event,
            types: None,
        })
    }

    /// A change of the data types, by [`DATA_TYPES_TABLE`]: role, then
    /// state, then what the types allow. `proposed` is an update's set,
    /// normalised.
    fn decide_types(
        c: &ModelConn,
        role: Role,
        action: Action,
        proposed: &[DataType],
    ) -> Result<Next, Refusal> {
        // A destination's update is a narrowing only with a subset of the
        // current types; anything else is the source's to propose.
        let narrowing = proposed.iter().all(|t| c.data_types.contains(t));
        let rules: Vec<&TypesRule> = DATA_TYPES_TABLE
            .iter()
            .filter(|r| r.action == action && (r.change != TypesChange::Narrow || narrowing))
            .collect();
        if let Some(other) = rules.first().map(|r| r.role)
            && !rules.iter().any(|r| r.role == role)
        {
            return Err(match other {
                Role::Source => Refusal::CallerNotSource,
                Role::Destination => Refusal::CallerNotDestination,
            });
        }
        let rule = rules
            .iter()
            .find(|r| r.role == role && r.state == c.state)
            .ok_or(Refusal::InvalidStateTransition { current: c.state })?;
        let (allowed, pending) = (&c.data_types, &c.pending_data_types);
        let after = match rule.change {
            TypesChange::Replace => (proposed.to_vec(), Vec::new()),
            TypesChange::Propose => {
                let kept = filtered(allowed, proposed, true);
                if kept.is_empty() {
                    return Err(Refusal::NoDataTypesLeft);
                }
                (kept, filtered(proposed, allowed, false))
            }
            TypesChange::Narrow => (proposed.to_vec(), pending.clone()),
            TypesChange::Approve | TypesChange::Decline if pending.is_empty() => {
                return Err(Refusal::NoPendingDataTypes);
            }
            TypesChange::Approve => {
                let mut all = allowed.clone();
                all.extend(pending);
                (normalised(&all), Vec::new())
            }
            TypesChange::Decline => (allowed.clone(), Vec::new()),
        };
        if (&after.0, &after.1) == (allowed, pending) {
            return Err(Refusal::DataTypesUnchanged);
        }
        let event = match rule.change {
            TypesChange::Propose if !after.1.is_empty() => EventType::DataTypesProposed,
            TypesChange::Propose | TypesChange::Replace | TypesChange::Narrow => {
                EventType::DataTypesChanged
            }
            TypesChange::Approve => EventType::DataTypesApproved,
            TypesChange::Decline => EventType::DataTypesDeclined,
        };
        Ok(Next {
            from: c.state,
            to: c.state,
            event,
            types: Some(after),
        })
    }

    pub fn get(&self, caller: usize, conn: Option<usize>) -> Outcome {
        match self.party_conn(caller, conn) {
            Some(i) => Outcome::Ok(self.conns[i].view(i)),
            None => Outcome::refused(Refusal::ConnectionNotFound),
        }
    }

    pub fn list_events(&self, caller: usize, conn: Option<usize>) -> Outcome {
        match self.party_conn(caller, conn) {
            Some(i) => Outcome::Events(self.conns[i].history.clone()),
            None => Outcome::refused(Refusal::ConnectionNotFound),
        }
    }

    /// ListConnections; `data_type`: only connections over which it may
    /// flow now (pending types do not count).
    pub fn list(
        &self,
        caller: usize,
        role: Option<Role>,
        state: Option<ConnectionState>,
        counterparty: Option<usize>,
        data_type: Option<DataType>,
    ) -> Outcome {
        let mut views = Vec::new();
        // Newest first.
        for (i, c) in self.conns.iter().enumerate().rev() {
            let Some(own) = c.role_of(caller) else {
                continue;
            };
            let other = match own {
                Role::Source => c.destination,
                Role::Destination => c.source,
            };
            if role.is_some_and(|r| r != own)
                || state.is_some_and(|s| s != c.state)
                || counterparty.is_some_and(|o| o != other)
                || data_type.is_some_and(|t| !c.data_types.contains(&t))
            {
                continue;
            }
            views.push(c.view(i));
        }
        Outcome::Listed(views)
    }
}
