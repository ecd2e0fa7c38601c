//! The model test through the gRPC server: the operations, reference model
//! and checks of the `model` test target (`tests/model/`, whose doc comment
//! describes the test), run against the production server through real
//! clients.

#[path = "../model/harness.rs"]
mod harness;
#[path = "../model/operations.rs"]
mod operations;
#[path = "../model/reference.rs"]
mod reference;
#[path = "../model/runner.rs"]
mod runner;

mod grpc_layer;

use self::grpc_layer::GrpcLayer;

/// New cases (each call is a round trip), unless `PROPTEST_CASES` says
/// otherwise.
const CASES: u32 = 64;

#[test]
fn grpc_server_matches_the_reference_model_for_random_operation_sequences() {
    let runtime = runner::runtime();
    let layer = runtime.block_on(GrpcLayer::new());
    runner::check_against_the_model(&runtime, &layer, CASES);
    runtime.block_on(layer.close());
}
