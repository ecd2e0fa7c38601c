//! Model-based property test of the connections service (SPEC sections 2, 4
//! and 5, and the changes of data types of issue 26).
//!
//! Random sequences of calls by three "player" organizations and one canary
//! run against a layer under test and against a small reference model of the
//! SPEC (`reference`): creations, activations, deactivations, reactivations,
//! changes of the data types (the source's proposals, the destination's
//! narrowings, approvals and declines), reads, lists and retries. Every call's
//! outcome must match the model's: the returned connection, or the refusal
//! with its gRPC code and ErrorInfo reason. After each sequence every
//! connection, its history and every organization's listing must match too,
//! and the canary, never a party to anything, must see nothing and leave no
//! trace.
//!
//! The reference model is kept independent of `src/domain` on purpose: it is
//! a second statement of the SPEC's rules, written out again, so that a wrong
//! rule in the code is caught as a difference here instead of being copied
//! into the expectation. It takes only the names of states, actions, roles,
//! event types and data types from the crate, never its transition table
//! (`domain::transition`, `next_state`, `required_role`), its rules for the
//! data types (`ConnectionRecord::apply`, `DataTypes` and its set
//! operations), its error-to-status mapping or its protobuf conversions.
//!
//! The same operations (`operations`), model and checks (`harness`) run
//! through two layers, which differ only in the [`harness::Layer`] adapter:
//! - here, the service layer (`connections::service`), called directly on a
//!   database set up as the server sets it up;
//! - in the `api` test binary (`tests/api/model.rs`, which shares these
//!   files), the gRPC server (`spawn_app`) through real clients, so that
//!   request validation, the conversions to and from protobuf and the error
//!   mapping (codes, ErrorInfo reasons and metadata, BadRequest fields) are
//!   checked as well.
//!
//! Both run on the backend of the pass: PostgreSQL when `TEST_DATABASE_URL` is
//! set, a SQLite file otherwise. Each test makes one database; its cases are
//! independent because each makes organizations of its own, and everything
//! the model covers (connections, histories, listings, request_ids) is scoped
//! to the organizations of the case.
//!
//! Failing seeds persist: a failure appends its seed to
//! `model.proptest-regressions`, next to this file, and every run of either
//! variant replays all the seeds listed there before any new case (they share
//! the generator). To replay a failure, run the variant that failed again
//! (`cargo test --test model`, or `cargo test --test api model::`, with the
//! same `TEST_DATABASE_URL` if it failed on PostgreSQL); commit the line to
//! keep the case as a regression test. `PROPTEST_CASES=N` runs N new cases
//! instead of the default (`PROPTEST_CASES=0`: only the saved seeds).
//!
//! A seed stands for its case only under the generator that found it: a
//! change to `operations` (a new operation, another weight) makes every saved
//! seed generate some other case. Such a change finds the saved cases again
//! (bring the fixed bug back, in the model if not in the code, and replace
//! the seed with the one the failure saves).

mod harness;
mod operations;
mod reference;
mod runner;
mod service_layer;

// The per-test database of the api tests; this target uses only part of it.
#[allow(dead_code)]
#[path = "../api/support/database.rs"]
mod database;

use self::service_layer::ServiceLayer;

/// New cases, unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 128;

#[test]
fn service_layer_matches_the_reference_model_for_random_operation_sequences() {
    let runtime = runner::runtime();
    let layer = runtime.block_on(ServiceLayer::new());
    runner::check_against_the_model(&runtime, &layer, CASES);
    runtime.block_on(layer.close());
}
