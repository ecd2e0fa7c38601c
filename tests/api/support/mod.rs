//! What the tests share. `spawn_app()` starts a server on a database of its
//! own; the rest is for talking to it and for what some themes need.
//!
//! - `app`: the server under test (`spawn_app`, `spawn_replicas`, `TestApp`).
//! - `database`: a database per test, on SQLite or PostgreSQL.
//! - `clients`: credentials, clients and assertions on statuses.
//! - `rpcs`: every RPC, from the file descriptor set, and calls of any of them.
//! - `http2`: a raw HTTP/2 client, for hostile input.
//! - `own_postgres`: a PostgreSQL cluster of the test's own.
//! - `proxy`: a TCP proxy that can cut connections, for outages.
//! - `process`: the real binary in processes of its own.
//! - `rng`: the one seeded random generator.
//! - `watching`: WatchConnectionEvents requests and reading streams.
//! - `receiver`: an HTTP receiver of webhook deliveries.

pub mod app;
pub mod clients;
pub mod database;
pub mod http2;
pub mod own_postgres;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod rng;
pub mod rpcs;
pub mod watching;

use std::{future::Future, time::Duration};

pub use app::{
    AppOptions, TestApp, spawn_app, spawn_app_on, spawn_app_with, spawn_replica_of, spawn_replicas,
};
pub use clients::{
    ADMIN_TOKEN, Bearer, FIRST_KEY_NAME, TestOrg, assert_error, metric_sample, unknown_id,
    violated_fields,
};
pub use database::{TestDatabase, postgres_url, require_postgres};

/// Upper bound for a single step that must not hang.
pub const STEP: Duration = Duration::from_secs(30);

/// `future`, or a panic naming `what` if it takes longer than [`STEP`].
pub async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}
