//! Model-based property test of the service layer (SPEC sections 2 and 4).
//!
//! Random sequences of calls by three "player" organizations and one canary
//! run against the real service layer on a fresh in-memory SQLite database,
//! and against a small reference model of the SPEC written here, without the
//! crate's own transition rules. Every call's outcome must match the model's;
//! after each sequence every connection, its history and every organization's
//! listing must match too, and the canary, never a party to anything, must see
//! nothing and leave no trace.

use std::collections::HashMap;

use connections::{
    db::{DbSettings, connect},
    domain::{
        Action, ConnectionEvent, ConnectionId, ConnectionRecord, ConnectionState, DataType,
        DataTypes, DisplayName, EventType, OrganizationId, PageSize, Role,
    },
    error::ServiceError,
    service::{
        Connections, ListFilter, NewConnection, Organizations, PageTokens, TransitionRequest,
    },
};
use migration::{Migrator, MigratorTrait};
use proptest::{prelude::*, test_runner::TestCaseError};

/// Organizations 0..PLAYERS create and change connections among themselves.
const PLAYERS: usize = 3;
/// The canary: calls everything, is never a party to anything.
const CANARY: usize = PLAYERS;
/// Players and the canary.
const ORGS: usize = PLAYERS + 1;
/// Index given to an organization or connection the test does not know.
const UNKNOWN: usize = usize::MAX;
/// An etag that is never any connection's.
const BOGUS_ETAG: &str = "0123456789abcdef";

use ConnectionState::{Active, Inactive, Pending};

/// One row of the SPEC section 2 table.
struct Rule {
    action: Action,
    /// The role that may take the action; `None`: either party.
    role: Option<Role>,
    from: ConnectionState,
    to: ConnectionState,
    event: EventType,
}

/// SPEC section 2, written out.
const SPEC_TABLE: [Rule; 4] = [
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

// ---------------------------------------------------------------------------
// Operations

/// A connection named by an operation.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The k-th connection created so far (k modulo their number); an
    /// unknown id while there are none.
    Existing(usize),
    /// An id no connection has.
    Unknown,
}

/// The caller of an operation on a connection.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// The target's source (player 0 if the target is unknown).
    Source,
    /// The target's destination (player 1 if the target is unknown).
    Destination,
    /// Organization i: a player, or the canary.
    Org(usize),
}

/// The destination of a create.
#[derive(Debug, Clone, Copy)]
enum Destination {
    /// The player `offset` places after the caller: 0 is the caller itself.
    Player { offset: usize },
    /// An organization that does not exist.
    Unknown,
}

/// The etag sent with a transition.
#[derive(Debug, Clone, Copy)]
enum EtagChoice {
    None,
    /// The target's current etag.
    Current,
    /// The etag of an earlier version (k modulo their number); bogus if there
    /// is none.
    Stale(usize),
    /// Never valid.
    Bogus,
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        caller: usize,
        destination: Destination,
        data_types: Vec<DataType>,
        request_id: Option<u8>,
    },
    Transition {
        caller: Caller,
        action: Action,
        target: Target,
        etag: EtagChoice,
        reason: Option<&'static str>,
        request_id: Option<u8>,
    },
    Get {
        caller: Caller,
        target: Target,
    },
    ListEvents {
        caller: Caller,
        target: Target,
        page_size: i32,
    },
    List {
        caller: usize,
        role: Option<Role>,
        state: Option<ConnectionState>,
        counterparty: Option<usize>,
        page_size: i32,
    },
    /// Sends the `back`-th most recent create or transition (0: the last
    /// one; modulo their number) again, with the same request_id: a client's
    /// retry, possibly with a parameter changed.
    Retry {
        back: usize,
        tweak: Tweak,
    },
}

/// What a retry changes.
#[derive(Debug, Clone)]
enum Tweak {
    /// Nothing: sent exactly as before.
    Verbatim,
    /// Creates: the same data types, reordered and duplicated.
    ShuffledDataTypes,
    /// Creates: these data types.
    DataTypes(Vec<DataType>),
    /// Transitions: this etag, resolved now.
    Etag(EtagChoice),
    /// Deactivations: this reason.
    Reason(Option<&'static str>),
    /// Transitions: this target, resolved now (the etag is kept).
    Target(Target),
}

/// A create or transition as sent, its target and etag resolved.
#[derive(Debug, Clone)]
enum Call {
    Create {
        caller: usize,
        /// The model's index of the destination; `UNKNOWN` if none.
        destination: usize,
        destination_id: OrganizationId,
        data_types: Vec<DataType>,
        request_id: Option<u8>,
    },
    Transition {
        caller: usize,
        action: Action,
        /// The model's index of the target; `None` if unknown.
        conn: Option<usize>,
        id: ConnectionId,
        etag: Option<String>,
        reason: Option<&'static str>,
        request_id: Option<u8>,
    },
}

fn request_id() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![2 => Just(None), 3 => (0u8..3).prop_map(Some)]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![14 => (0usize..64).prop_map(Target::Existing), 1 => Just(Target::Unknown)]
}

fn caller() -> impl Strategy<Value = Caller> {
    prop_oneof![
        4 => Just(Caller::Source),
        4 => Just(Caller::Destination),
        2 => (0..ORGS).prop_map(Caller::Org),
    ]
}

fn data_types() -> impl Strategy<Value = Vec<DataType>> {
    let data_type = prop_oneof![
        Just(DataType::Inquiry),
        Just(DataType::Verification),
        Just(DataType::Account),
        Just(DataType::Transaction),
    ];
    prop::collection::vec(data_type, 1..=5)
}

fn etag_choice() -> impl Strategy<Value = EtagChoice> {
    prop_oneof![
        3 => Just(EtagChoice::None),
        3 => Just(EtagChoice::Current),
        2 => (0usize..8).prop_map(EtagChoice::Stale),
        1 => Just(EtagChoice::Bogus),
    ]
}

fn reason() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("")),
        Just(Some("fraud")),
        Just(Some("paused"))
    ]
}

fn tweak() -> impl Strategy<Value = Tweak> {
    prop_oneof![
        4 => Just(Tweak::Verbatim),
        1 => Just(Tweak::ShuffledDataTypes),
        1 => data_types().prop_map(Tweak::DataTypes),
        1 => etag_choice().prop_map(Tweak::Etag),
        1 => reason().prop_map(Tweak::Reason),
        1 => target().prop_map(Tweak::Target),
    ]
}

fn page_size() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), 1i32..4]
}

fn op() -> impl Strategy<Value = Op> {
    let create = (
        0..PLAYERS,
        prop_oneof![
            1 => Just(Destination::Player { offset: 0 }),
            8 => (1..PLAYERS).prop_map(|offset| Destination::Player { offset }),
            1 => Just(Destination::Unknown),
        ],
        data_types(),
        request_id(),
    )
        .prop_map(|(caller, destination, data_types, request_id)| Op::Create {
            caller,
            destination,
            data_types,
            request_id,
        });
    let transition = (
        caller(),
        prop_oneof![
            Just(Action::Activate),
            Just(Action::Deactivate),
            Just(Action::Reactivate),
        ],
        target(),
        etag_choice(),
        reason(),
        request_id(),
    )
        .prop_map(
            |(caller, action, target, etag, reason, request_id)| Op::Transition {
                caller,
                action,
                target,
                etag,
                // Only DeactivateConnection has a reason.
                reason: reason.filter(|_| action == Action::Deactivate),
                request_id,
            },
        );
    let get = (caller(), target()).prop_map(|(caller, target)| Op::Get { caller, target });
    let list_events =
        (caller(), target(), page_size()).prop_map(|(caller, target, page_size)| Op::ListEvents {
            caller,
            target,
            page_size,
        });
    let list = (
        0..ORGS,
        prop::option::of(prop_oneof![Just(Role::Source), Just(Role::Destination)]),
        prop::option::of(prop_oneof![Just(Pending), Just(Active), Just(Inactive)]),
        prop::option::of(0..ORGS),
        page_size(),
    )
        .prop_map(|(caller, role, state, counterparty, page_size)| Op::List {
            caller,
            role,
            state,
            counterparty,
            page_size,
        });
    prop_oneof![
        4 => create,
        8 => transition,
        1 => get,
        1 => list_events,
        1 => list,
        3 => (0usize..4, tweak()).prop_map(|(back, tweak)| Op::Retry { back, tweak }),
    ]
}

// ---------------------------------------------------------------------------
// Outcomes, comparable between the model and the service

/// The parts of a connection the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    conn: usize,
    source: usize,
    destination: usize,
    state: ConnectionState,
    version: i64,
    data_types: Vec<DataType>,
    ever_activated: bool,
    ever_deactivated: bool,
    deactivated_by: Option<Role>,
    deactivation_reason: Option<String>,
}

/// The parts of an event the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelEvent {
    sequence: i64,
    event_type: EventType,
    from: Option<ConnectionState>,
    to: ConnectionState,
    actor: usize,
    actor_role: Role,
    reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok(View),
    Events(Vec<ModelEvent>),
    Listed(Vec<View>),
    NotFound,
    OrganizationNotFound,
    PermissionDenied {
        required: Role,
    },
    FailedPrecondition {
        action: Action,
        current: ConnectionState,
    },
    Aborted,
    AlreadyExists {
        existing: usize,
    },
    SelfConnection,
    RequestIdReused,
    Unexpected(String),
}

// ---------------------------------------------------------------------------
// The reference model

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Method {
    Create,
    Transition(Action),
}

/// A request_id record: (caller, method, request_id), scoped as in SPEC 4.
type RidKey = (usize, Method, u8);

/// What the implementation fingerprints as "the same parameters": for a
/// create, the destination and the data types after normalisation; for a
/// transition, the connection id, the etag and the reason, with "absent" and
/// "empty" alike.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Params {
    Create {
        destination: OrganizationId,
        data_types: Vec<DataType>,
    },
    Transition {
        id: ConnectionId,
        etag: String,
        reason: String,
    },
}

/// What a modelled call did with its request_id.
#[derive(Debug, Clone, Copy)]
enum Effect {
    Nothing,
    /// Returned the response recorded under this key.
    Replayed(RidKey),
    /// Executed and recorded its response under this key.
    Recorded(RidKey),
}

#[derive(Debug, Clone)]
struct ModelConn {
    id: ConnectionId,
    source: usize,
    destination: usize,
    state: ConnectionState,
    version: i64,
    data_types: Vec<DataType>,
    ever_activated: bool,
    ever_deactivated: bool,
    deactivated_by: Option<Role>,
    deactivation_reason: Option<String>,
    /// `etags[v - 1]` is the etag of version v, as the service reported it.
    etags: Vec<String>,
    history: Vec<ModelEvent>,
}

impl ModelConn {
    fn role_of(&self, org: usize) -> Option<Role> {
        if org == self.source {
            Some(Role::Source)
        } else if org == self.destination {
            Some(Role::Destination)
        } else {
            None
        }
    }

    fn current_etag(&self) -> Option<&str> {
        usize::try_from(self.version - 1)
            .ok()
            .and_then(|v| self.etags.get(v))
            .map(String::as_str)
    }

    fn view(&self, conn: usize) -> View {
        View {
            conn,
            source: self.source,
            destination: self.destination,
            state: self.state,
            version: self.version,
            data_types: self.data_types.clone(),
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

#[derive(Debug, Default)]
struct Model {
    conns: Vec<ModelConn>,
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
            (Outcome::RequestIdReused, Effect::Nothing)
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

    /// `new_id` is the id the service gave the connection, if it made one.
    fn create(
        &mut self,
        caller: usize,
        destination: usize,
        destination_id: OrganizationId,
        data_types: &[DataType],
        request_id: Option<u8>,
        new_id: ConnectionId,
    ) -> (Outcome, Effect) {
        if destination == caller {
            return (Outcome::SelfConnection, Effect::Nothing);
        }
        let key = request_id.map(|r| (caller, Method::Create, r));
        let params = Params::Create {
            destination: destination_id,
            data_types: normalised(data_types),
        };
        if let Some(decided) = self.replay(key, &params) {
            return decided;
        }
        if destination == UNKNOWN {
            return (Outcome::OrganizationNotFound, Effect::Nothing);
        }
        if let Some(existing) = self
            .conns
            .iter()
            .position(|c| c.source == caller && c.destination == destination)
        {
            return (Outcome::AlreadyExists { existing }, Effect::Nothing);
        }
        let conn = ModelConn {
            id: new_id,
            source: caller,
            destination,
            state: Pending,
            version: 1,
            data_types: normalised(data_types),
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
            }],
        };
        self.conns.push(conn);
        let index = self.conns.len() - 1;
        let view = self.conns[index].view(index);
        let effect = self.record(key, params, &view);
        (Outcome::Ok(view), effect)
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &mut self,
        caller: usize,
        action: Action,
        conn: Option<usize>,
        id: ConnectionId,
        etag: Option<&str>,
        reason: Option<&str>,
        request_id: Option<u8>,
    ) -> (Outcome, Effect) {
        let key = request_id.map(|r| (caller, Method::Transition(action), r));
        let params = Params::Transition {
            id,
            etag: etag.unwrap_or_default().to_owned(),
            reason: reason.unwrap_or_default().to_owned(),
        };
        if let Some(decided) = self.replay(key, &params) {
            return decided;
        }
        let Some(index) = self.party_conn(caller, conn) else {
            return (Outcome::NotFound, Effect::Nothing);
        };
        let c = &self.conns[index];
        let role = c.role_of(caller).expect("a party");
        let rules: Vec<&Rule> = SPEC_TABLE.iter().filter(|r| r.action == action).collect();
        if let Some(required) = rules.iter().find_map(|r| r.role)
            && required != role
        {
            return (Outcome::PermissionDenied { required }, Effect::Nothing);
        }
        let Some(rule) = rules.iter().find(|r| r.from == c.state) else {
            return (
                Outcome::FailedPrecondition {
                    action,
                    current: c.state,
                },
                Effect::Nothing,
            );
        };
        if let Some(etag) = etag
            && Some(etag) != c.current_etag()
        {
            return (Outcome::Aborted, Effect::Nothing);
        }

        let c = &mut self.conns[index];
        let reason = reason.filter(|r| !r.is_empty()).map(str::to_owned);
        c.state = rule.to;
        c.version += 1;
        let mut event_reason = None;
        match action {
            Action::Activate => c.ever_activated = true,
            Action::Deactivate => {
                c.ever_deactivated = true;
                c.deactivated_by = Some(role);
                c.deactivation_reason = reason.clone();
                event_reason = reason;
            }
            Action::Reactivate => {}
        }
        let sequence = c.version;
        c.history.push(ModelEvent {
            sequence,
            event_type: rule.event,
            from: Some(rule.from),
            to: rule.to,
            actor: caller,
            actor_role: role,
            reason: event_reason,
        });
        let view = c.view(index);
        let effect = self.record(key, params, &view);
        (Outcome::Ok(view), effect)
    }

    fn get(&self, caller: usize, conn: Option<usize>) -> Outcome {
        match self.party_conn(caller, conn) {
            Some(i) => Outcome::Ok(self.conns[i].view(i)),
            None => Outcome::NotFound,
        }
    }

    fn list_events(&self, caller: usize, conn: Option<usize>) -> Outcome {
        match self.party_conn(caller, conn) {
            Some(i) => Outcome::Events(self.conns[i].history.clone()),
            None => Outcome::NotFound,
        }
    }

    fn list(
        &self,
        caller: usize,
        role: Option<Role>,
        state: Option<ConnectionState>,
        counterparty: Option<usize>,
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
            {
                continue;
            }
            views.push(c.view(i));
        }
        Outcome::Listed(views)
    }
}

// ---------------------------------------------------------------------------
// The service under test

struct Harness {
    service: Connections,
    orgs: [OrganizationId; ORGS],
    unknown_org: OrganizationId,
    unknown_conn: ConnectionId,
    model: Model,
    /// The service's first response for each recorded request_id.
    first_responses: HashMap<RidKey, ConnectionRecord>,
    /// Every create and transition sent so far, for retries.
    calls: Vec<Call>,
}

fn rid(n: u8) -> String {
    format!("r{n}")
}

impl Harness {
    async fn new() -> Self {
        let db = connect(&DbSettings::new("sqlite::memory:"))
            .await
            .expect("in-memory SQLite");
        Migrator::up(&db, None).await.expect("migrations");
        let tokens = PageTokens::new([7; 32]);
        let organizations = Organizations::new(db.clone(), db.clone().into(), tokens.clone());
        let mut orgs = Vec::new();
        for name in ["player 0", "player 1", "player 2", "canary"] {
            let org = organizations
                .create(DisplayName::parse(name).unwrap())
                .await
                .expect("create organization");
            orgs.push(org.id);
        }
        Self {
            service: Connections::new(db.clone(), db.into(), tokens),
            orgs: orgs.try_into().unwrap(),
            unknown_org: OrganizationId::generate(),
            unknown_conn: ConnectionId::generate(),
            model: Model::default(),
            first_responses: HashMap::new(),
            calls: Vec::new(),
        }
    }

    fn org_index(&self, id: OrganizationId) -> usize {
        self.orgs.iter().position(|&o| o == id).unwrap_or(UNKNOWN)
    }

    /// The model's index of a connection; a new id gets the next index.
    fn conn_index(&self, id: ConnectionId) -> usize {
        self.model
            .conns
            .iter()
            .position(|c| c.id == id)
            .unwrap_or(self.model.conns.len())
    }

    fn view(&self, r: &ConnectionRecord) -> View {
        View {
            conn: self.conn_index(r.id),
            source: self.org_index(r.parties.source),
            destination: self.org_index(r.parties.destination),
            state: r.state,
            version: r.version,
            data_types: r.data_types.as_slice().to_vec(),
            ever_activated: r.activate_time.is_some(),
            ever_deactivated: r.deactivate_time.is_some(),
            deactivated_by: r.deactivated_by,
            deactivation_reason: r.deactivation_reason.clone(),
        }
    }

    fn event(&self, id: ConnectionId, e: &ConnectionEvent) -> Result<ModelEvent, TestCaseError> {
        prop_assert_eq!(e.connection_id, id, "an event of another connection");
        Ok(ModelEvent {
            sequence: e.sequence,
            event_type: e.event_type,
            from: e.from_state,
            to: e.to_state,
            actor: self.org_index(e.actor_organization_id),
            actor_role: e.actor_role,
            reason: e.reason.clone(),
        })
    }

    fn error(&self, err: &ServiceError) -> Outcome {
        match *err {
            ServiceError::ConnectionNotFound => Outcome::NotFound,
            ServiceError::OrganizationNotFound => Outcome::OrganizationNotFound,
            ServiceError::CallerNotSource => Outcome::PermissionDenied {
                required: Role::Source,
            },
            ServiceError::CallerNotDestination => Outcome::PermissionDenied {
                required: Role::Destination,
            },
            ServiceError::InvalidStateTransition { action, current } => {
                Outcome::FailedPrecondition { action, current }
            }
            ServiceError::EtagMismatch => Outcome::Aborted,
            ServiceError::ConnectionAlreadyExists { connection_id } => Outcome::AlreadyExists {
                existing: self
                    .model
                    .conns
                    .iter()
                    .position(|c| c.id == connection_id)
                    .unwrap_or(UNKNOWN),
            },
            ServiceError::SelfConnection => Outcome::SelfConnection,
            ServiceError::RequestIdReused => Outcome::RequestIdReused,
            ref other => Outcome::Unexpected(format!("{other:?}")),
        }
    }

    fn record_outcome(&self, result: &Result<ConnectionRecord, ServiceError>) -> Outcome {
        match result {
            Ok(record) => Outcome::Ok(self.view(record)),
            Err(err) => self.error(err),
        }
    }

    /// The model's index and the id an operation's target resolves to.
    fn resolve(&self, target: Target) -> (Option<usize>, ConnectionId) {
        match target {
            Target::Existing(k) if !self.model.conns.is_empty() => {
                let i = k % self.model.conns.len();
                (Some(i), self.model.conns[i].id)
            }
            _ => (None, self.unknown_conn),
        }
    }

    fn resolve_caller(&self, caller: Caller, conn: Option<usize>) -> usize {
        let c = conn.map(|i| &self.model.conns[i]);
        match caller {
            Caller::Source => c.map_or(0, |c| c.source),
            Caller::Destination => c.map_or(1, |c| c.destination),
            Caller::Org(i) => i,
        }
    }

    fn resolve_etag(&self, conn: Option<usize>, choice: EtagChoice) -> Option<String> {
        let c = conn.map(|i| &self.model.conns[i]);
        match choice {
            EtagChoice::None => None,
            EtagChoice::Current => Some(
                c.and_then(ModelConn::current_etag)
                    .unwrap_or(BOGUS_ETAG)
                    .to_owned(),
            ),
            EtagChoice::Stale(k) => Some(match c {
                Some(c) if c.version > 1 => {
                    let earlier = usize::try_from(c.version - 1).unwrap();
                    c.etags[k % earlier].clone()
                }
                _ => BOGUS_ETAG.to_owned(),
            }),
            EtagChoice::Bogus => Some(BOGUS_ETAG.to_owned()),
        }
    }

    async fn all_events(
        &self,
        caller: usize,
        id: ConnectionId,
        page_size: i32,
    ) -> Result<Result<Vec<ModelEvent>, ServiceError>, TestCaseError> {
        let size = PageSize::from_request(page_size).unwrap();
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = match self
                .service
                .list_events(self.orgs[caller], id, size, token.as_deref())
                .await
            {
                Ok(page) => page,
                Err(err) => return Ok(Err(err)),
            };
            prop_assert!(page.items.len() <= size.as_usize());
            for e in &page.items {
                events.push(self.event(id, e)?);
            }
            prop_assert!(events.len() <= 1000, "list_events does not end");
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => return Ok(Ok(events)),
            }
        }
    }

    async fn all_connections(
        &self,
        caller: usize,
        filter: ListFilter,
        page_size: i32,
    ) -> Result<Result<Vec<View>, ServiceError>, TestCaseError> {
        let size = PageSize::from_request(page_size).unwrap();
        let mut views = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = match self
                .service
                .list(self.orgs[caller], filter, size, token.as_deref())
                .await
            {
                Ok(page) => page,
                Err(err) => return Ok(Err(err)),
            };
            prop_assert!(page.items.len() <= size.as_usize());
            views.extend(page.items.iter().map(|r| self.view(r)));
            prop_assert!(views.len() <= 1000, "list does not end");
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => return Ok(Ok(views)),
            }
        }
    }

    /// Runs one operation against the service and the model and compares.
    async fn step(&mut self, n: usize, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Create {
                caller,
                destination,
                ref data_types,
                request_id,
            } => {
                let (destination, destination_id) = match destination {
                    Destination::Player { offset } => {
                        let i = (caller + offset) % PLAYERS;
                        (i, self.orgs[i])
                    }
                    Destination::Unknown => (UNKNOWN, self.unknown_org),
                };
                let call = Call::Create {
                    caller,
                    destination,
                    destination_id,
                    data_types: data_types.clone(),
                    request_id,
                };
                self.send(n, call).await?;
            }
            Op::Transition {
                caller,
                action,
                target,
                etag,
                reason,
                request_id,
            } => {
                let (conn, id) = self.resolve(target);
                let call = Call::Transition {
                    caller: self.resolve_caller(caller, conn),
                    action,
                    conn,
                    id,
                    etag: self.resolve_etag(conn, etag),
                    reason,
                    request_id,
                };
                self.send(n, call).await?;
            }
            Op::Retry { back, ref tweak } => {
                if !self.calls.is_empty() {
                    let call = self.calls[self.calls.len() - 1 - back % self.calls.len()].clone();
                    let call = self.tweaked(call, tweak);
                    self.send(n, call).await?;
                }
            }
            Op::Get { caller, target } => {
                let (conn, id) = self.resolve(target);
                let caller = self.resolve_caller(caller, conn);
                let result = self.service.get(self.orgs[caller], id).await;
                let actual = self.record_outcome(&result);
                let expected = self.model.get(caller, conn);
                prop_assert_eq!(&actual, &expected, "step {}: {:?}", n, op);
                if let (Ok(record), Some(i)) = (&result, conn) {
                    let etag = record.etag();
                    prop_assert_eq!(
                        Some(etag.as_str()),
                        self.model.conns[i].current_etag(),
                        "step {}: get returned another etag",
                        n
                    );
                }
            }
            Op::ListEvents {
                caller,
                target,
                page_size,
            } => {
                let (conn, id) = self.resolve(target);
                let caller = self.resolve_caller(caller, conn);
                let actual = match self.all_events(caller, id, page_size).await? {
                    Ok(events) => Outcome::Events(events),
                    Err(err) => self.error(&err),
                };
                let expected = self.model.list_events(caller, conn);
                prop_assert_eq!(&actual, &expected, "step {}: {:?}", n, op);
            }
            Op::List {
                caller,
                role,
                state,
                counterparty,
                page_size,
            } => {
                let filter = ListFilter {
                    role,
                    state,
                    counterparty: counterparty.map(|i| self.orgs[i]),
                };
                let actual = match self.all_connections(caller, filter, page_size).await? {
                    Ok(views) => Outcome::Listed(views),
                    Err(err) => self.error(&err),
                };
                let expected = self.model.list(caller, role, state, counterparty);
                prop_assert_eq!(&actual, &expected, "step {}: {:?}", n, op);
            }
        }
        Ok(())
    }

    /// `call` with `tweak` applied, where it applies.
    fn tweaked(&self, mut call: Call, tweak: &Tweak) -> Call {
        match (&mut call, tweak) {
            (Call::Create { data_types, .. }, Tweak::ShuffledDataTypes) => {
                data_types.reverse();
                data_types.push(data_types[0]);
            }
            (Call::Create { data_types, .. }, Tweak::DataTypes(other)) => {
                data_types.clone_from(other);
            }
            (Call::Transition { conn, etag, .. }, &Tweak::Etag(choice)) => {
                *etag = self.resolve_etag(*conn, choice);
            }
            (
                Call::Transition {
                    action: Action::Deactivate,
                    reason,
                    ..
                },
                &Tweak::Reason(other),
            ) => *reason = other,
            (Call::Transition { conn, id, .. }, &Tweak::Target(target)) => {
                (*conn, *id) = self.resolve(target);
            }
            _ => {}
        }
        call
    }

    /// Sends a create or transition to the service and the model and compares.
    async fn send(&mut self, n: usize, call: Call) -> Result<(), TestCaseError> {
        self.calls.push(call.clone());
        match call {
            Call::Create {
                caller,
                destination,
                destination_id,
                ref data_types,
                request_id,
            } => {
                let result = self
                    .service
                    .create(
                        self.orgs[caller],
                        NewConnection {
                            destination: destination_id,
                            data_types: DataTypes::new(data_types.iter().copied()).unwrap(),
                            request_id: request_id.map(rid),
                        },
                    )
                    .await;
                let actual = self.record_outcome(&result);
                let new_id = result
                    .as_ref()
                    .map_or_else(|_| ConnectionId::generate(), |r| r.id);
                let (expected, effect) = self.model.create(
                    caller,
                    destination,
                    destination_id,
                    data_types,
                    request_id,
                    new_id,
                );
                prop_assert_eq!(&actual, &expected, "step {}: {:?}", n, call);
                self.after_change(n, result, effect)
            }
            Call::Transition {
                caller,
                action,
                conn,
                id,
                ref etag,
                reason,
                request_id,
            } => {
                let result = self
                    .service
                    .transition(
                        self.orgs[caller],
                        TransitionRequest {
                            id,
                            action,
                            etag: etag.clone(),
                            reason: reason.map(str::to_owned),
                            request_id: request_id.map(rid),
                        },
                    )
                    .await;
                let actual = self.record_outcome(&result);
                let (expected, effect) = self.model.transition(
                    caller,
                    action,
                    conn,
                    id,
                    etag.as_deref(),
                    reason,
                    request_id,
                );
                prop_assert_eq!(&actual, &expected, "step {}: {:?}", n, call);
                self.after_change(n, result, effect)
            }
        }
    }

    /// After a create or transition whose outcome matched the model: learns
    /// the new version's etag, and checks replays against first responses.
    fn after_change(
        &mut self,
        n: usize,
        result: Result<ConnectionRecord, ServiceError>,
        effect: Effect,
    ) -> Result<(), TestCaseError> {
        let Ok(record) = result else {
            return Ok(());
        };
        match effect {
            Effect::Replayed(key) => {
                prop_assert_eq!(
                    Some(&record),
                    self.first_responses.get(&key),
                    "step {}: a retry must return the first response unchanged",
                    n
                );
                return Ok(());
            }
            Effect::Recorded(key) => {
                self.first_responses.insert(key, record.clone());
            }
            Effect::Nothing => {}
        }
        let i = self.conn_index(record.id);
        let c = &mut self.model.conns[i];
        let etag = record.etag();
        prop_assert!(
            !c.etags.contains(&etag),
            "step {}: the etag must change with every change",
            n
        );
        prop_assert_eq!(c.etags.len() + 1, usize::try_from(record.version).unwrap());
        c.etags.push(etag);
        Ok(())
    }

    /// The checks after a whole sequence.
    async fn check_final_state(&mut self) -> Result<(), TestCaseError> {
        // The canary sees nothing and changes nothing.
        let canary_list = self
            .all_connections(CANARY, ListFilter::default(), 0)
            .await?;
        prop_assert_eq!(
            canary_list.map_err(|e| format!("{e:?}")),
            Ok(Vec::new()),
            "the canary's list"
        );
        for (i, c) in self.model.conns.iter().enumerate() {
            let canary = self.orgs[CANARY];
            prop_assert!(
                matches!(
                    self.service.get(canary, c.id).await,
                    Err(ServiceError::ConnectionNotFound)
                ),
                "canary get of connection {}",
                i
            );
            prop_assert!(
                matches!(
                    self.all_events(CANARY, c.id, 0).await?,
                    Err(ServiceError::ConnectionNotFound)
                ),
                "canary list_events of connection {}",
                i
            );
            for action in [Action::Activate, Action::Deactivate, Action::Reactivate] {
                for (etag, request_id) in [
                    (None, None),
                    (c.current_etag().map(str::to_owned), Some(rid(0))),
                ] {
                    let result = self
                        .service
                        .transition(
                            canary,
                            TransitionRequest {
                                id: c.id,
                                action,
                                etag,
                                reason: None,
                                request_id,
                            },
                        )
                        .await;
                    prop_assert!(
                        matches!(result, Err(ServiceError::ConnectionNotFound)),
                        "canary {:?} of connection {}: {:?}",
                        action,
                        i,
                        result
                    );
                }
            }
        }

        // Every connection, seen by each party, is the model's; its history
        // is gap-free, follows the SPEC table and ends in its state.
        for (i, c) in self.model.conns.iter().enumerate() {
            for party in [c.source, c.destination] {
                let record = self.service.get(self.orgs[party], c.id).await;
                prop_assert_eq!(
                    self.record_outcome(&record),
                    Outcome::Ok(c.view(i)),
                    "final state of connection {}",
                    i
                );
                let events = self
                    .all_events(party, c.id, 2)
                    .await?
                    .map_err(|e| TestCaseError::fail(format!("list_events: {e:?}")))?;
                check_history(&events, c.state)?;
                prop_assert_eq!(&events, &c.history, "history of connection {}", i);
                prop_assert!(events.iter().all(|e| e.actor != CANARY), "the canary acted");
            }
        }

        // Every player's listing is the model's.
        for player in 0..PLAYERS {
            let listed = self
                .all_connections(player, ListFilter::default(), 1)
                .await?
                .map_err(|e| TestCaseError::fail(format!("list: {e:?}")))?;
            prop_assert_eq!(
                Outcome::Listed(listed),
                self.model.list(player, None, None, None),
                "final list of player {}",
                player
            );
        }
        Ok(())
    }
}

/// A history is gap-free from 1, starts with the creation, every later step is
/// a transition the SPEC table allows from the previous step's state, and it
/// ends in the connection's current state.
fn check_history(events: &[ModelEvent], current: ConnectionState) -> Result<(), TestCaseError> {
    prop_assert!(!events.is_empty(), "a connection without history");
    let first = &events[0];
    prop_assert_eq!(
        (first.event_type, first.from, first.to, first.actor_role),
        (EventType::Created, None, Pending, Role::Source),
        "the history starts with the creation"
    );
    for (i, pair) in events.windows(2).enumerate() {
        let (previous, event) = (&pair[0], &pair[1]);
        prop_assert_eq!(
            event.from,
            Some(previous.to),
            "event {} starts elsewhere",
            i + 2
        );
        prop_assert!(
            SPEC_TABLE.iter().any(|rule| {
                rule.event == event.event_type
                    && rule.from == previous.to
                    && rule.to == event.to
                    && rule.role.is_none_or(|r| r == event.actor_role)
            }),
            "event {} is not an allowed transition: {:?}",
            i + 2,
            event
        );
    }
    for (i, event) in events.iter().enumerate() {
        prop_assert_eq!(
            event.sequence,
            i64::try_from(i + 1).unwrap(),
            "sequences are 1..n"
        );
    }
    prop_assert_eq!(events.last().map(|e| e.to), Some(current));
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut harness = Harness::new().await;
    for (n, op) in ops.iter().enumerate() {
        harness.step(n, op).await?;
    }
    harness.check_final_state().await
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn service_matches_the_reference_model_for_random_operation_sequences(
        ops in prop::collection::vec(op(), 1..=40)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(ops))?;
    }
}
