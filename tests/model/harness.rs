//! Runs one case: its operations against a layer under test and against the
//! reference model, comparing every outcome, then the final state.

use std::{collections::HashMap, fmt::Debug};

use connections::domain::{Action, ConnectionState, DataType, EventType, Role};
use proptest::{prelude::*, test_runner::TestCaseError};
use uuid::Uuid;

use super::{
    operations::{
        CANARY, Caller, Destination, EtagChoice, ORGS, Op, PLAYERS, Target, Tweak, TypesChoice,
        Way, has_reason,
    },
    reference::{
        DATA_TYPES_TABLE, Effect, EventTypes, Failure, Model, ModelConn, ModelEvent, Outcome,
        Refusal, RidKey, SPEC_TABLE, UNKNOWN, View,
    },
};

/// Every data type, in the API's order.
const ALL_TYPES: [DataType; 4] = [
    DataType::Inquiry,
    DataType::Verification,
    DataType::Account,
    DataType::Transaction,
];

/// An etag that is never any connection's.
const BOGUS_ETAG: &str = "0123456789abcdef";

/// A connection as a layer returned it, in the terms the model compares.
/// Identifiers are kept as the client sees them: canonical UUID strings.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub source: String,
    pub destination: String,
    pub state: ConnectionState,
    /// The version, where the layer shows it (gRPC does not).
    pub version: Option<i64>,
    pub etag: String,
    pub data_types: Vec<DataType>,
    pub pending_data_types: Vec<DataType>,
    pub ever_activated: bool,
    pub ever_deactivated: bool,
    pub deactivated_by: Option<Role>,
    pub deactivation_reason: Option<String>,
}

/// An event as a layer returned it.
#[derive(Debug, Clone)]
pub struct SeenEvent {
    pub connection_id: String,
    pub sequence: i64,
    pub event_type: EventType,
    pub from: Option<ConnectionState>,
    pub to: ConnectionState,
    pub actor: String,
    pub actor_role: Role,
    pub reason: Option<String>,
    /// The data types it carries, as listed.
    pub types: EventTypes,
}

/// ListConnections filters; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub role: Option<Role>,
    pub state: Option<ConnectionState>,
    pub counterparty: Option<String>,
    pub data_type: Option<DataType>,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// `None` on the last page.
    pub next_page_token: Option<String>,
}

/// A layer under test: the service layer, or the gRPC server. Each method
/// makes one call and reports a failure as the model describes failures.
pub trait Layer {
    /// A connection as this layer returns it; a replay must return the first
    /// response's record exactly.
    type Record: Clone + Debug + PartialEq;
    /// How this layer acts as one organization.
    type Caller;

    /// A new organization: its id, and how to call as it.
    async fn organization(&self, name: &str) -> (String, Self::Caller);

    /// CreateConnection.
    async fn create(
        &self,
        caller: &Self::Caller,
        destination: &str,
        data_types: &[DataType],
        request_id: Option<&str>,
    ) -> Result<Self::Record, Failure>;

    /// ActivateConnection, DeactivateConnection, ReactivateConnection,
    /// UpdateConnectionDataTypes (`UpdateDataTypes`, with `data_types`; the
    /// destination's narrowing too), ApproveDataTypes or DeclineDataTypes.
    #[allow(clippy::too_many_arguments)]
    async fn transition(
        &self,
        caller: &Self::Caller,
        action: Action,
        id: &str,
        etag: Option<&str>,
        reason: Option<&str>,
        data_types: Option<&[DataType]>,
        request_id: Option<&str>,
    ) -> Result<Self::Record, Failure>;

    /// GetConnection.
    async fn get(&self, caller: &Self::Caller, id: &str) -> Result<Self::Record, Failure>;

    /// One page of ListConnections.
    async fn list(
        &self,
        caller: &Self::Caller,
        filter: &Filter,
        page_size: i32,
        page_token: Option<&str>,
    ) -> Result<Page<Self::Record>, Failure>;

    /// One page of ListConnectionEvents.
    async fn list_events(
        &self,
        caller: &Self::Caller,
        id: &str,
        page_size: i32,
        page_token: Option<&str>,
    ) -> Result<Page<SeenEvent>, Failure>;

    /// What the model compares of a record.
    fn seen(&self, record: &Self::Record) -> Result<Seen, TestCaseError>;
}

/// A create or transition as sent, its target and etag resolved.
#[derive(Debug, Clone)]
enum Call {
    Create {
        caller: usize,
        /// The model's index of the destination; `UNKNOWN` if none.
        destination: usize,
        destination_id: String,
        data_types: Vec<DataType>,
        request_id: Option<u8>,
    },
    Transition {
        caller: usize,
        action: Action,
        /// The model's index of the target; `None` if unknown.
        conn: Option<usize>,
        id: String,
        etag: Option<String>,
        reason: Option<&'static str>,
        /// The set sent, for an update of the data types.
        data_types: Option<Vec<DataType>>,
        request_id: Option<u8>,
    },
}

/// The request_id string of the model's request_id `n`.
fn rid(n: u8) -> String {
    format!("r{n}")
}

/// Runs `ops` against `layer` and the model, on organizations made for this
/// case alone, then checks the final state.
pub async fn run<L: Layer>(layer: &L, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut harness = Harness::new(layer).await;
    for (n, op) in ops.iter().enumerate() {
        harness.step(n, op).await?;
    }
    harness.check_final_state().await
}

/// One case: its organizations, the model, and what the layer answered.
struct Harness<'a, L: Layer> {
    layer: &'a L,
    /// The organizations' ids, by the model's index.
    orgs: Vec<String>,
    /// How to call as each organization.
    callers: Vec<L::Caller>,
    unknown_org: String,
    unknown_conn: String,
    model: Model,
    /// The model's index of the connection the last transition changed
    /// (for [`Target::Last`]).
    last_changed: Option<usize>,
    /// The layer's first response for each recorded request_id.
    first_responses: HashMap<RidKey, L::Record>,
    /// Every create and transition sent so far, for retries.
    calls: Vec<Call>,
}

impl<'a, L: Layer> Harness<'a, L> {
    /// Fresh organizations: nothing the case does can meet another case's.
    async fn new(layer: &'a L) -> Self {
        let mut orgs = Vec::new();
        let mut callers = Vec::new();
        for name in ["player 0", "player 1", "player 2", "canary"] {
            let (id, caller) = layer.organization(name).await;
            orgs.push(id);
            callers.push(caller);
        }
        assert_eq!(orgs.len(), ORGS);
        Self {
            layer,
            orgs,
            callers,
            unknown_org: Uuid::now_v7().to_string(),
            unknown_conn: Uuid::now_v7().to_string(),
            model: Model::default(),
            last_changed: None,
            first_responses: HashMap::new(),
            calls: Vec::new(),
        }
    }

    fn org_index(&self, id: &str) -> usize {
        self.orgs.iter().position(|o| o == id).unwrap_or(UNKNOWN)
    }

    /// The model's index of a connection; a new id gets the next index.
    fn conn_index(&self, id: &str) -> usize {
        self.model
            .conns
            .iter()
            .position(|c| c.id == id)
            .unwrap_or(self.model.conns.len())
    }

    fn view(&self, record: &L::Record) -> Result<View, TestCaseError> {
        let r = self.layer.seen(record)?;
        let conn = self.conn_index(&r.id);
        // Where the version is not shown, the etag tells it: the version whose
        // etag this is, or, for an etag never seen, the next one.
        let version = r.version.unwrap_or_else(|| {
            let etags = self.model.conns.get(conn).map_or(&[][..], |c| &c.etags[..]);
            let position = etags
                .iter()
                .position(|e| *e == r.etag)
                .unwrap_or(etags.len());
            i64::try_from(position + 1).unwrap()
        });
        Ok(View {
            conn,
            source: self.org_index(&r.source),
            destination: self.org_index(&r.destination),
            state: r.state,
            version,
            data_types: r.data_types,
            pending_data_types: r.pending_data_types,
            ever_activated: r.ever_activated,
            ever_deactivated: r.ever_deactivated,
            deactivated_by: r.deactivated_by,
            deactivation_reason: r.deactivation_reason,
        })
    }

    fn event(&self, id: &str, e: &SeenEvent) -> Result<ModelEvent, TestCaseError> {
        prop_assert_eq!(&e.connection_id, id, "an event of another connection");
        Ok(ModelEvent {
            sequence: e.sequence,
            event_type: e.event_type,
            from: e.from,
            to: e.to,
            actor: self.org_index(&e.actor),
            actor_role: e.actor_role,
            reason: e.reason.clone(),
            types: e.types.clone(),
        })
    }

    fn record_outcome(
        &self,
        result: &Result<L::Record, Failure>,
    ) -> Result<Outcome, TestCaseError> {
        Ok(match result {
            Ok(record) => Outcome::Ok(self.view(record)?),
            Err(failure) => Outcome::Failed(failure.clone()),
        })
    }

    /// The model's index and the id an operation's target resolves to.
    fn resolve(&self, target: Target) -> (Option<usize>, String) {
        match target {
            Target::Existing(k) if !self.model.conns.is_empty() => {
                let i = k % self.model.conns.len();
                (Some(i), self.model.conns[i].id.clone())
            }
            Target::Last if !self.model.conns.is_empty() => {
                let i = self.last_changed.unwrap_or(self.model.conns.len() - 1);
                (Some(i), self.model.conns[i].id.clone())
            }
            _ => (None, self.unknown_conn.clone()),
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

    /// The set a [`TypesChoice`] names for the target, as sent; without the
    /// additions of an edit if `narrowing`.
    fn resolve_types(
        &self,
        conn: Option<usize>,
        choice: &TypesChoice,
        narrowing: bool,
    ) -> Vec<DataType> {
        let current = conn.map_or(&[][..], |i| &self.model.conns[i].data_types[..]);
        let lacking = |from: usize| {
            (0..ALL_TYPES.len())
                .map(|k| ALL_TYPES[(from + k) % ALL_TYPES.len()])
                .find(|t| !current.contains(t))
        };
        match choice {
            TypesChoice::Exactly(types) => types.clone(),
            TypesChoice::Edit { drop, add } => {
                let mut types: Vec<DataType> = current
                    .iter()
                    .copied()
                    .filter(|t| !drop.contains(t))
                    .collect();
                for &t in add.iter().filter(|_| !narrowing) {
                    let from = ALL_TYPES.iter().position(|&a| a == t).unwrap_or_default();
                    types.push(lacking(from).unwrap_or(t));
                }
                if types.is_empty() {
                    types = ALL_TYPES
                        .into_iter()
                        .filter(|t| !current.contains(t))
                        .collect();
                }
                types
            }
        }
    }

    /// Every page of a connection's history, as `caller`.
    async fn all_events(
        &self,
        caller: usize,
        id: &str,
        page_size: i32,
    ) -> Result<Result<Vec<ModelEvent>, Failure>, TestCaseError> {
        // What a page may hold: 0 means 50.
        let limit = if page_size == 0 { 50 } else { page_size };
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = match self
                .layer
                .list_events(&self.callers[caller], id, page_size, token.as_deref())
                .await
            {
                Ok(page) => page,
                Err(failure) => return Ok(Err(failure)),
            };
            prop_assert!(page.items.len() <= usize::try_from(limit).unwrap());
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

    /// Every page of a listing, as `caller`.
    async fn all_connections(
        &self,
        caller: usize,
        filter: &Filter,
        page_size: i32,
    ) -> Result<Result<Vec<View>, Failure>, TestCaseError> {
        let limit = if page_size == 0 { 50 } else { page_size };
        let mut views = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = match self
                .layer
                .list(&self.callers[caller], filter, page_size, token.as_deref())
                .await
            {
                Ok(page) => page,
                Err(failure) => return Ok(Err(failure)),
            };
            prop_assert!(page.items.len() <= usize::try_from(limit).unwrap());
            for r in &page.items {
                views.push(self.view(r)?);
            }
            prop_assert!(views.len() <= 1000, "list does not end");
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => return Ok(Ok(views)),
            }
        }
    }

    /// Runs one operation against the layer and the model and compares.
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
                        (i, self.orgs[i].clone())
                    }
                    Destination::Unknown => (UNKNOWN, self.unknown_org.clone()),
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
                ref data_types,
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
                    data_types: data_types
                        .as_ref()
                        .map(|choice| self.resolve_types(conn, choice, false)),
                    request_id,
                };
                self.send(n, call).await?;
            }
            Op::Advance {
                target,
                etag,
                way,
                reason,
                ref data_types,
                request_id,
            } => {
                let (conn, id) = self.resolve(target);
                let c = conn.map(|i| &self.model.conns[i]);
                let pending = c.is_some_and(|c| !c.pending_data_types.is_empty());
                let (party, action) = match (c.map(|c| c.state), pending, way) {
                    (None | Some(ConnectionState::Pending), _, _) => {
                        (Caller::Destination, Action::Activate)
                    }
                    (Some(ConnectionState::Active), false, Way::Forward) => {
                        (Caller::Source, Action::UpdateDataTypes)
                    }
                    (Some(ConnectionState::Active), false, Way::Aside) => {
                        (Caller::Destination, Action::UpdateDataTypes)
                    }
                    (Some(ConnectionState::Active), true, Way::Forward) => {
                        (Caller::Destination, Action::ApproveDataTypes)
                    }
                    (Some(ConnectionState::Active), true, Way::Aside) => {
                        (Caller::Destination, Action::DeclineDataTypes)
                    }
                    (Some(ConnectionState::Active), _, Way::Back) => {
                        (Caller::Destination, Action::Deactivate)
                    }
                    (Some(ConnectionState::Inactive), _, _) => (Caller::Source, Action::Reactivate),
                };
                let data_types = (action == Action::UpdateDataTypes).then(|| {
                    let narrowing = matches!(party, Caller::Destination);
                    self.resolve_types(conn, data_types, narrowing)
                });
                let call = Call::Transition {
                    caller: self.resolve_caller(party, conn),
                    action,
                    conn,
                    id,
                    etag: self.resolve_etag(conn, etag),
                    reason: reason.filter(|_| has_reason(action)),
                    data_types,
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
                let result = self.layer.get(&self.callers[caller], &id).await;
                let actual = self.record_outcome(&result)?;
                let expected = self.model.get(caller, conn);
                prop_assert_eq!(&actual, &expected, "step {}: {:?}", n, op);
                if let (Ok(record), Some(i)) = (&result, conn) {
                    let etag = self.layer.seen(record)?.etag;
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
                let actual = match self.all_events(caller, &id, page_size).await? {
                    Ok(events) => Outcome::Events(events),
                    Err(failure) => Outcome::Failed(failure),
                };
                let expected = self.model.list_events(caller, conn);
                prop_assert_eq!(&actual, &expected, "step {}: {:?}", n, op);
            }
            Op::List {
                caller,
                role,
                state,
                counterparty,
                data_type,
                page_size,
            } => {
                let filter = Filter {
                    role,
                    state,
                    counterparty: counterparty.map(|i| self.orgs[i].clone()),
                    data_type,
                };
                let actual = match self.all_connections(caller, &filter, page_size).await? {
                    Ok(views) => Outcome::Listed(views),
                    Err(failure) => Outcome::Failed(failure),
                };
                let expected = self
                    .model
                    .list(caller, role, state, counterparty, data_type);
                prop_assert_eq!(&actual, &expected, "step {}: {:?}", n, op);
            }
        }
        Ok(())
    }

    /// `call` with `tweak` applied, where it applies.
    fn tweaked(&self, mut call: Call, tweak: &Tweak) -> Call {
        match (&mut call, tweak) {
            (
                Call::Create { data_types, .. }
                | Call::Transition {
                    data_types: Some(data_types),
                    ..
                },
                Tweak::ShuffledDataTypes,
            ) => {
                data_types.reverse();
                data_types.push(data_types[0]);
            }
            (
                Call::Create { data_types, .. }
                | Call::Transition {
                    data_types: Some(data_types),
                    ..
                },
                Tweak::DataTypes(other),
            ) => {
                data_types.clone_from(other);
            }
            (Call::Transition { conn, etag, .. }, &Tweak::Etag(choice)) => {
                *etag = self.resolve_etag(*conn, choice);
            }
            (Call::Transition { action, reason, .. }, &Tweak::Reason(other))
                if has_reason(*action) =>
            {
                *reason = other;
            }
            (Call::Transition { conn, id, .. }, &Tweak::Target(target)) => {
                (*conn, *id) = self.resolve(target);
            }
            _ => {}
        }
        call
    }

    /// Sends a create or transition to the layer and the model and compares.
    async fn send(&mut self, n: usize, call: Call) -> Result<(), TestCaseError> {
        self.calls.push(call.clone());
        match call {
            Call::Create {
                caller,
                destination,
                ref destination_id,
                ref data_types,
                request_id,
            } => {
                let result = self
                    .layer
                    .create(
                        &self.callers[caller],
                        destination_id,
                        data_types,
                        request_id.map(rid).as_deref(),
                    )
                    .await;
                let actual = self.record_outcome(&result)?;
                let new_id = match &result {
                    Ok(record) => self.layer.seen(record)?.id,
                    Err(_) => Uuid::now_v7().to_string(),
                };
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
                ref id,
                ref etag,
                reason,
                ref data_types,
                request_id,
            } => {
                let result = self
                    .layer
                    .transition(
                        &self.callers[caller],
                        action,
                        id,
                        etag.as_deref(),
                        reason,
                        data_types.as_deref(),
                        request_id.map(rid).as_deref(),
                    )
                    .await;
                let actual = self.record_outcome(&result)?;
                let (expected, effect) = self.model.transition(
                    caller,
                    action,
                    conn,
                    id,
                    etag.as_deref(),
                    reason,
                    data_types.as_deref(),
                    request_id,
                );
                prop_assert_eq!(&actual, &expected, "step {}: {:?}", n, call);
                self.after_change(n, result, effect)
            }
        }
    }

    /// After a create or transition whose outcome matched the model: learns
    /// the new version's etag and which connection a transition changed
    /// last, and checks replays against first responses.
    fn after_change(
        &mut self,
        n: usize,
        result: Result<L::Record, Failure>,
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
        let view = self.view(&record)?;
        let etag = self.layer.seen(&record)?.etag;
        if view.version > 1 {
            self.last_changed = Some(view.conn);
        }
        let c = &mut self.model.conns[view.conn];
        prop_assert!(
            !c.etags.contains(&etag),
            "step {}: the etag must change with every change",
            n
        );
        prop_assert_eq!(c.etags.len() + 1, usize::try_from(view.version).unwrap());
        c.etags.push(etag);
        Ok(())
    }

    /// The checks after a whole sequence.
    async fn check_final_state(&self) -> Result<(), TestCaseError> {
        let not_found = || Outcome::refused(Refusal::ConnectionNotFound);
        // The canary sees nothing and changes nothing.
        let canary_list = self.all_connections(CANARY, &Filter::default(), 0).await?;
        prop_assert_eq!(canary_list, Ok(Vec::new()), "the canary's list");
        let canary = &self.callers[CANARY];
        for (i, c) in self.model.conns.iter().enumerate() {
            let result = self.layer.get(canary, &c.id).await;
            prop_assert_eq!(
                self.record_outcome(&result)?,
                not_found(),
                "canary get of connection {}",
                i
            );
            let events = match self.all_events(CANARY, &c.id, 0).await? {
                Ok(events) => Outcome::Events(events),
                Err(failure) => Outcome::Failed(failure),
            };
            prop_assert_eq!(
                events,
                not_found(),
                "canary list_events of connection {}",
                i
            );
            for action in [
                Action::Activate,
                Action::Deactivate,
                Action::Reactivate,
                Action::UpdateDataTypes,
                Action::ApproveDataTypes,
                Action::DeclineDataTypes,
            ] {
                // An update: to the connection's own types, or to every type
                // (a proposal, from its source).
                let own = &c.data_types[..];
                let all = &ALL_TYPES[..];
                for (etag, request_id, types) in
                    [(None, None, own), (c.current_etag(), Some(rid(0)), all)]
                {
                    let types = Some(types).filter(|_| action == Action::UpdateDataTypes);
                    let result = self
                        .layer
                        .transition(
                            canary,
                            action,
                            &c.id,
                            etag,
                            None,
                            types,
                            request_id.as_deref(),
                        )
                        .await;
                    prop_assert_eq!(
                        self.record_outcome(&result)?,
                        not_found(),
                        "canary {:?} of connection {}",
                        action,
                        i
                    );
                }
            }
        }

        // Every connection, seen by each party, is the model's; its history
        // is gap-free, follows the SPEC table and ends in its state.
        for (i, c) in self.model.conns.iter().enumerate() {
            for party in [c.source, c.destination] {
                let record = self.layer.get(&self.callers[party], &c.id).await;
                prop_assert_eq!(
                    self.record_outcome(&record)?,
                    Outcome::Ok(c.view(i)),
                    "final state of connection {}",
                    i
                );
                let events = self
                    .all_events(party, &c.id, 2)
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
                .all_connections(player, &Filter::default(), 1)
                .await?
                .map_err(|e| TestCaseError::fail(format!("list: {e:?}")))?;
            prop_assert_eq!(
                Outcome::Listed(listed),
                self.model.list(player, None, None, None, None),
                "final list of player {}",
                player
            );
        }
        Ok(())
    }
}

/// A history is gap-free from 1, starts with the creation, every later step is
/// a transition the SPEC table allows from the previous step's state or a
/// change of the data types the data types table allows in it, and it ends in
/// the connection's current state. Only changes of the data types carry data
/// types; each starts from what the one before it left (pending types
/// dropped by a deactivation), changes something, and leaves pending types
/// only on an ACTIVE connection.
fn check_history(events: &[ModelEvent], current: ConnectionState) -> Result<(), TestCaseError> {
    prop_assert!(!events.is_empty(), "a connection without history");
    let first = &events[0];
    prop_assert_eq!(
        (first.event_type, first.from, first.to, first.actor_role),
        (
            EventType::Created,
            None,
            ConnectionState::Pending,
            Role::Source
        ),
        "the history starts with the creation"
    );
    prop_assert_eq!(&first.types, &EventTypes::default(), "the creation's types");
    // What the last change of the data types left: the allowed types (not
    // known before the first), and the pending ones.
    let mut allowed: Option<&[DataType]> = None;
    let mut pending: &[DataType] = &[];
    for (i, pair) in events.windows(2).enumerate() {
        let (previous, event) = (&pair[0], &pair[1]);
        let n = i + 2;
        prop_assert_eq!(
            event.from,
            Some(previous.to),
            "event {} starts elsewhere",
            n
        );
        let transition = SPEC_TABLE.iter().any(|rule| {
            rule.event == event.event_type
                && rule.from == previous.to
                && rule.to == event.to
                && rule.role.is_none_or(|r| r == event.actor_role)
        });
        let types_change = DATA_TYPES_TABLE.iter().any(|rule| {
            rule.change.events().contains(&event.event_type)
                && rule.state == previous.to
                && event.to == previous.to
                && rule.role == event.actor_role
        });
        prop_assert!(
            transition || types_change,
            "event {} is not an allowed transition or change of the data types: {:?}",
            n,
            event
        );
        let types = &event.types;
        if !types_change {
            prop_assert_eq!(types, &EventTypes::default(), "event {} has data types", n);
            if event.event_type == EventType::Deactivated {
                pending = &[];
            }
            continue;
        }
        prop_assert!(
            !types.previous.is_empty() && !types.current.is_empty(),
            "event {} leaves no data types: {:?}",
            n,
            event
        );
        if let Some(allowed) = allowed {
            prop_assert_eq!(
                &types.previous[..],
                allowed,
                "event {} starts from other data types",
                n
            );
        }
        prop_assert_eq!(
            &types.previous_pending[..],
            pending,
            "event {} starts from other pending types",
            n
        );
        prop_assert!(
            (&types.previous, &types.previous_pending) != (&types.current, &types.pending),
            "event {} changes nothing: {:?}",
            n,
            event
        );
        prop_assert!(
            types.pending.is_empty() || event.to == ConnectionState::Active,
            "event {} leaves types pending on a connection not ACTIVE",
            n
        );
        (allowed, pending) = (Some(&types.current[..]), &types.pending[..]);
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
