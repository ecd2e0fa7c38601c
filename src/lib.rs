//! The `connections` service: one-directional data-sharing agreements between
//! organizations, served over gRPC.
//!
//! Layers, outermost first: [`grpc`] adapters (authenticate, validate, convert)
//! call the [`service`] layer (ownership, transitions, transactions), which uses
//! the pure [`domain`] types and rules and persists through [`entity`].

pub mod background;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod domain;
pub mod entity;
pub mod grpc;
pub mod metrics;
pub mod proto;
pub mod service;
pub mod startup;
pub mod telemetry;
