//! WatchConnectionEvents from the client's side: the requests, and reading
//! a stream until it falls quiet.

use std::time::Duration;

use connections::proto::{
    ConnectionEvent, WatchConnectionEventsRequest, WatchConnectionEventsResponse,
};
use tonic::Streaming;

use super::{TestApp, TestOrg};

/// A watch from the first event.
pub fn from_beginning() -> WatchConnectionEventsRequest {
    WatchConnectionEventsRequest {
        from_beginning: true,
        ..Default::default()
    }
}

/// A watch after change token `token`.
pub fn after(token: &str) -> WatchConnectionEventsRequest {
    WatchConnectionEventsRequest {
        after_change_token: token.to_owned(),
        ..Default::default()
    }
}

/// Opens a watch of `org`'s events on `app`.
pub async fn watch(
    app: &TestApp,
    org: &TestOrg,
    request: WatchConnectionEventsRequest,
) -> Streaming<WatchConnectionEventsResponse> {
    app.connections(org)
        .watch_connection_events(request)
        .await
        .unwrap()
        .into_inner()
}

/// Every event `stream` sends until nothing has come for `quiet`, and the
/// token of the last message.
pub async fn until_quiet(
    stream: &mut Streaming<WatchConnectionEventsResponse>,
    quiet: Duration,
) -> (Vec<ConnectionEvent>, String) {
    let mut events = Vec::new();
    let mut token = String::new();
    while let Ok(message) = tokio::time::timeout(quiet, stream.message()).await {
        let message = message.unwrap().expect("the stream goes on");
        token = message.change_token;
        events.extend(message.event);
    }
    (events, token)
}

/// (connection, sequence) of each event.
pub fn keys(events: &[ConnectionEvent]) -> Vec<(String, i64)> {
    events
        .iter()
        .map(|e| (e.connection_id.clone(), e.sequence))
        .collect()
}
