//! Model-based property test of the connections API (SPEC sections 2, 4 and 5).
//!
//! Random sequences of calls by three "player" organizations and one canary
//! run against a layer under test and against a small reference model of the
//! SPEC (`reference`). Every call's outcome must match the model's: the
//! returned connection, or the refusal with its gRPC code and ErrorInfo
//! reason. After each sequence every connection, its history and every
//! organization's listing must match too, and the canary, never a party to
//! anything, must see nothing and leave no trace.
//!
//! The reference model is the SPEC written out again, independently, on
//! purpose: it does not import the crate's transition table
//! (`domain::transition`), its error-to-status mapping or its protobuf
//! conversions, so that a mistake in those is a difference here rather than
//! an expectation copied from the code under test.
//!
//! The same operations (`operations`), model and checks (`harness`) run
//! through two layers, which differ only in the [`harness::Layer`] adapter:
//! - the service layer (`connections::service`), called directly;
//! - the gRPC server (`spawn_app`) through real clients, so that request
//!   validation, the conversions to and from protobuf and the error mapping
//!   (codes, ErrorInfo reasons and metadata, BadRequest fields) are checked
//!   as well.
//!
//! Both run on the backend of the pass: PostgreSQL when `TEST_DATABASE_URL` is
//! set, a SQLite file otherwise. Each test makes one database; its cases are
//! independent because each makes organizations of its own, and everything
//! the model covers (connections, histories, listings, request_ids) is scoped
//! to the organizations of the case.
//!
//! Failing seeds persist: a failure appends its seed to
//! `model.proptest-regressions`, next to this file, and every run replays the
//! seeds listed there before any new case (both variants replay all of them,
//! since they share the generator). To replay a failure, run
//! `cargo test --test api model::` again (with the same `TEST_DATABASE_URL`,
//! if it failed on PostgreSQL); commit the line to keep the case as a
//! regression test. `PROPTEST_CASES=N` runs N new cases instead of the default
//! (`PROPTEST_CASES=0`: only the saved seeds).

mod grpc_layer;
mod harness;
mod operations;
mod reference;
mod service_layer;

use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use tokio::runtime::Runtime;

use self::{grpc_layer::GrpcLayer, harness::Layer, service_layer::ServiceLayer};

/// New cases of the service-layer variant, unless `PROPTEST_CASES` says
/// otherwise.
const SERVICE_CASES: u32 = 128;
/// New cases of the gRPC variant (each call is a round trip), unless
/// `PROPTEST_CASES` says otherwise.
const GRPC_CASES: u32 = 64;

/// The runner's settings: `cases` new cases; failures persist next to this
/// file.
fn config(cases: u32) -> Config {
    let default = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            cases
        },
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        source_file: Some(file!()),
        // Shrink a replayed seed too, even when no new cases run.
        max_shrink_iters: 1024,
        ..default
    }
}

/// A runtime for one test: its database, server and cases all live on it.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs the persisted seeds, then `cases` new cases, against `layer`; panics
/// with the smallest failing sequence found.
fn check_against_the_model<L: Layer>(runtime: &Runtime, layer: &L, cases: u32) {
    let mut runner = TestRunner::new(config(cases));
    let result = runner.run(&operations::operation_sequences(), |ops| {
        runtime.block_on(harness::run(layer, &ops))
    });
    if let Err(err) = result {
        panic!("{err}\n{runner}");
    }
}

#[test]
fn service_layer_matches_the_reference_model_for_random_operation_sequences() {
    let runtime = runtime();
    let layer = runtime.block_on(ServiceLayer::new());
    check_against_the_model(&runtime, &layer, SERVICE_CASES);
    runtime.block_on(layer.close());
}

#[test]
fn grpc_server_matches_the_reference_model_for_random_operation_sequences() {
    let runtime = runtime();
    let layer = runtime.block_on(GrpcLayer::new());
    check_against_the_model(&runtime, &layer, GRPC_CASES);
    runtime.block_on(layer.close());
}
