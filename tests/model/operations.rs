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
    /// The connection the last successful transition (not a replay)
    /// changed; before any, the one created last; an unknown id while there
    /// is none. (So that a connection often goes through several changes in
    /// a row: a proposal needs an ACTIVE connection, an approval a
    /// proposal.)
    Last,
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

/// The set an UpdateConnectionDataTypes sends, named relative to the
/// target's data types when it is sent (so that narrowings, proposals that
/// keep some types and withdrawals come up often).
#[derive(Debug, Clone)]
pub enum TypesChoice {
    /// These, as listed (possibly repeated), whatever the target has.
    Exactly(Vec<DataType>),
    /// The target's types without those in `drop`, then for each of `add`
    /// that type if the target lacks it, else the next one after it in the
    /// API's order (wrapping round) that the target lacks (the type itself
    /// if it lacks none). If that leaves none: every type the target lacks.
    Edit {
        drop: Vec<DataType>,
        add: Vec<DataType>,
    },
}

/// Which of the steps an ACTIVE connection allows an [`Op::Advance`] takes
/// (elsewhere there is one).
#[derive(Debug, Clone, Copy)]
pub enum Way {
    /// The source proposes, or the destination approves the pending types.
    Forward,
    /// The destination narrows (to what the data types choice keeps,
    /// without additions), or declines the pending types.
    Aside,
    /// The destination deactivates the connection (dropping any pending
    /// types).
    Back,
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
        /// The new set, for UpdateConnectionDataTypes only.
        data_types: Option<TypesChoice>,
        request_id: Option<u8>,
    },
    /// The target's next step along its lifecycle, whatever its state: the
    /// destination activates a PENDING connection; on an ACTIVE one, the
    /// source proposes `data_types`, then the destination approves the
    /// pending types; the source reactivates an INACTIVE one. (Random
    /// transitions rarely take a connection that far. Which request this is
    /// depends only on the model's state, never on what it expects.)
    Advance {
        target: Target,
        etag: EtagChoice,
        way: Way,
        reason: Option<&'static str>,
        data_types: TypesChoice,
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
        data_type: Option<DataType>,
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
    /// Creates and updates of the data types: the same data types,
    /// reordered and duplicated.
    ShuffledDataTypes,
    /// Creates and updates of the data types: these data types.
    DataTypes(Vec<DataType>),
    /// Transitions: this etag, resolved now.
    Etag(EtagChoice),
    /// Deactivations and declines: this reason.
    Reason(Option<&'static str>),
    /// Transitions: this target, resolved now (the etag is kept).
    Target(Target),
}

fn request_id() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![2 => Just(None), 3 => (0u8..3).prop_map(Some)]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        8 => (0usize..64).prop_map(Target::Existing),
        6 => Just(Target::Last),
        1 => Just(Target::Unknown),
    ]
}

fn caller() -> impl Strategy<Value = Caller> {
    prop_oneof![
        4 => Just(Caller::Source),
        4 => Just(Caller::Destination),
        2 => (0..ORGS).prop_map(Caller::Org),
    ]
}

fn data_type() -> impl Strategy<Value = DataType> {
    prop_oneof![
        Just(DataType::Inquiry),
        Just(DataType::Verification),
        Just(DataType::Account),
        Just(DataType::Transaction),
    ]
}

fn data_types() -> impl Strategy<Value = Vec<DataType>> {
    prop::collection::vec(data_type(), 1..=5)
}

fn types_choice() -> impl Strategy<Value = TypesChoice> {
    prop_oneof![
        1 => data_types().prop_map(TypesChoice::Exactly),
        // Mostly widenings (proposals, from the source) and narrowings.
        3 => (
            prop_oneof![Just(Vec::new()), prop::collection::vec(data_type(), 1..=2)],
            prop_oneof![Just(Vec::new()), prop::collection::vec(data_type(), 1..=2)],
        )
            .prop_map(|(drop, add)| TypesChoice::Edit { drop, add }),
    ]
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

/// Whether the request for `action` has a reason.
pub fn has_reason(action: Action) -> bool {
    matches!(action, Action::Deactivate | Action::DeclineDataTypes)
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
    // The requests of the API: a narrowing is the destination's
    // UpdateConnectionDataTypes, never an action of its own.
    let transition = (
        caller(),
        prop_oneof![
            2 => Just(Action::Activate),
            2 => Just(Action::Deactivate),
            2 => Just(Action::Reactivate),
            // Either party's: the source's proposals, the destination's
            // narrowings.
            3 => Just(Action::UpdateDataTypes),
            2 => Just(Action::ApproveDataTypes),
            2 => Just(Action::DeclineDataTypes),
        ],
        target(),
        etag_choice(),
        reason(),
        types_choice(),
        request_id(),
    )
        .prop_map(
            |(caller, action, target, etag, reason, data_types, request_id)| Op::Transition {
                caller,
                action,
                target,
                etag,
                // Only DeactivateConnection and DeclineDataTypes have a
                // reason, only UpdateConnectionDataTypes data types.
                reason: reason.filter(|_| has_reason(action)),
                data_types: Some(data_types).filter(|_| action == Action::UpdateDataTypes),
                request_id,
            },
        );
    let advance = (
        target(),
        etag_choice(),
        prop_oneof![
            6 => Just(Way::Forward),
            3 => Just(Way::Aside),
            2 => Just(Way::Back),
        ],
        reason(),
        types_choice(),
        request_id(),
    )
        .prop_map(
            |(target, etag, way, reason, data_types, request_id)| Op::Advance {
                target,
                etag,
                way,
                reason,
                data_types,
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
        prop::option::weighted(0.3, data_type()),
        page_size(),
    )
        .prop_map(
            |(caller, role, state, counterparty, data_type, page_size)| Op::List {
                caller,
                role,
                state,
                counterparty,
                data_type,
                page_size,
            },
        );
    prop_oneof![
        4 => create,
        12 => transition,
        10 => advance,
        1 => get,
        1 => list_events,
        1 => list,
        3 => (0usize..4, tweak()).prop_map(|(back, tweak)| Op::Retry { back, tweak }),
    ]
}

/// The operations of one case: at least one, at most 60.
pub fn operation_sequences() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..=60)
}
