//! Runs the cases: the saved seeds first, then new ones, against a layer.
//! Shared by both variants of the model test, so they replay the same seeds.

use std::path::Path;

use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use tokio::runtime::Runtime;

use super::{harness, harness::Layer, operations};

/// The seeds of failures found so far, replayed before any new case; a new
/// failure appends its seed here.
pub const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/model/model.proptest-regressions"
);

/// The runner's settings: `cases` new cases (unless `PROPTEST_CASES` says
/// otherwise); failures persist in [`REGRESSIONS`].
fn config(cases: u32) -> Config {
    let default = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            cases
        },
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        // Shrink a replayed seed too, even when no new cases run.
        max_shrink_iters: 1024,
        ..default
    }
}

/// A runtime for one test: its database, server and cases all live on it.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs the persisted seeds, then `cases` new cases, against `layer`; panics
/// with the smallest failing sequence found.
pub fn check_against_the_model<L: Layer>(runtime: &Runtime, layer: &L, cases: u32) {
    assert!(
        Path::new(REGRESSIONS).is_file(),
        "the saved seeds are missing: {REGRESSIONS}"
    );
    let mut runner = TestRunner::new(config(cases));
    let result = runner.run(&operations::operation_sequences(), |ops| {
        runtime.block_on(harness::run(layer, &ops))
    });
    if let Err(err) = result {
        panic!("{err}\n{runner}");
    }
}
