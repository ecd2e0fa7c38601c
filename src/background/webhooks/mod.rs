//! Webhook deliveries: the deliverer that sends each endpoint's queue
//! ([`deliver`]) and the HTTP client that posts them to partner endpoints
//! ([`http`]).

pub mod deliver;
pub mod http;
