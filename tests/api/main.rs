//! Integration tests: the production server wiring on 127.0.0.1:0, driven by
//! real tonic clients. SQLite by default; PostgreSQL when `TEST_DATABASE_URL`
//! is set (each test gets a database of its own).

mod access;
mod access_log;
mod actors;
mod admin;
mod audit;
mod auth;
mod batch_access;
mod change_log;
mod cli;
mod cluster_move;
mod concurrency;
mod crash;
mod create_connection;
mod dashboard;
mod data_types;
mod first_hour;
mod hostile_input;
mod invitations;
mod lifecycle;
mod listing;
mod metrics;
mod migrations;
mod model;
mod open_transactions;
mod organizations;
mod outage;
mod ownership;
mod policy;
mod read_pool;
mod resume_points;
mod retries;
mod sqlite_processes;
mod standard_services;
mod support;
mod transitions;
mod transports;
mod upgrade;
mod watch;
mod watch_guarantees;
mod webhook_replicas;
mod webhooks;
