//! Webhook deliveries: the HTTP client that posts them to partner endpoints ([`http`]).

pub mod http;
