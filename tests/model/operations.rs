//! The operations a case runs, and their generator. Both layers run the same
//! ones.

use connections::domain::{Action, ConnectionState, DataType, Role};
use proptest::prelude::*;

use ConnectionState::{Active, Inactive, Pending};

/// Organizations 0..PLAYERS create and change connections among themselves.
pub const PLAYERS: usize = 3;
/// The canary: calls everything, is never a party to anything.
pub const CANARY: usize = PLAYERS;
/// Players and the canary.
pub const ORGS: usize = PLAYERS + 1;

/// A connection named by an operation.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The k-th connection created so far (k modulo their number); an
    /// unknown id while there are none.
    Existing(usize),
    /// An id no connection has.
    Unknown,
}

/// The caller of an operation on a connection.
#[derive(Debug, Clone, Copy)]
pub enum Caller {
    /// The target's source (player 0 if the target is unknown).
    Source,
    /// The target's destination (player 1 if the target is unknown).
    Destination,
    /// Organization i: a player, or the canary.
    Org(usize),
}

/// The destination of a create.
#[derive(Debug, Clone, Copy)]
pub enum Destination {
    /// The player `offset` places after the caller: 0 is the caller itself.
    Player { offset: usize },
    /// An organization that does not exist.
    Unknown,
}

/// The etag sent with a transition.
#[derive(Debug, Clone, Copy)]
pub enum EtagChoice {
    None,
    /// The target's current etag.
    Current,
    /// The etag of an earlier version (k modulo their number); bogus if there
    /// is none.
    Stale(usize),
    /// Never valid.
    Bogus,
}

/// One call of a case, its parameters named relative to what the case has
/// made so far.
#[derive(Debug, Clone)]
pub enum Op {
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
pub enum Tweak {
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

/// One operation.
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

/// The operations of one case: at least one, at most 40.
pub fn operation_sequences() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..=40)
}
