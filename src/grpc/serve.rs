//! Serving the accepted client connections: each in a task of its own, over
//! HTTP/2 or HTTP/1.1 (gRPC-Web), closed gracefully once it has had no call
//! in flight for the idle timeout, or once the server stops.
//!
//! tonic's server offers neither a per-connection idle timeout nor a way to
//! close one connection gracefully, so this module serves the connections
//! itself, with hyper's connection builder as tonic does.
//!
//! A graceful close is HTTP/2's two-step GOAWAY (hyper and h2): first a
//! GOAWAY that admits every stream, and a PING; once the client answers,
//! a second GOAWAY naming the last stream served. So a call the client sent
//! while the first GOAWAY was on its way is still served, and the client
//! opens a new connection for its next call. An HTTP/1.1 connection is
//! closed at once if it has no request under way, or after its response.
//!
//! A call is in flight from its request's arrival until its response body
//! has ended or been dropped: a stream (a watch, health's Watch) is in
//! flight for as long as it is open, so its connection is never idle.

use std::{
    future::Future,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::{self, Builder},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tower::ServiceExt;
use tracing::Instrument;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `service` on every connection `incoming` yields until `stopping`
/// is cancelled; then stops accepting (dropping `incoming`: the listener
/// closes), closes each connection gracefully and returns once all have
/// closed. Dropped before that, it ends every connection at once.
///
/// Each request gets its connection's connect info in its extensions (what
/// tonic's `Request::remote_addr` and `peer_certs` read) and runs in a
/// `grpc` span naming its method.
pub async fn serve<I, IO, S, B>(
    incoming: I,
    service: S,
    http: Builder<TokioExecutor>,
    idle_timeout: Duration,
    stopping: CancellationToken,
) where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Send + Sync,
    S: tower::Service<Request<tonic::body::Body>, Response = Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut connections = JoinSet::new();
    {
        // Dropped as soon as the stop begins: new clients are refused while
        // the connections drain.
        let mut incoming = pin!(incoming);
        loop {
            tokio::select! {
                () = stopping.cancelled() => break,
                accepted = incoming.next() => match accepted {
                    Some(Ok(io)) => {
                        let calls = Calls::new();
                        let service = ConnectionService {
                            service: service.clone(),
                            connect_info: io.connect_info(),
                            calls: calls.clone(),
                        };
                        let connection = http.serve_connection(TokioIo::new(io), service);
                        connections.spawn(close_when_idle_or_stopped(
                            connection.into_owned(),
                            auto::Connection::graceful_shutdown,
                            calls,
                            idle_timeout,
                            stopping.clone(),
                        ));
                    }
                    Some(Err(err)) => {
                        tracing::debug!(error = %err, "a client connection failed before its first request");
                    }
                    None => break,
                },
                Some(ended) = connections.join_next() => log_end(ended),
            }
        }
    }
    while let Some(ended) = connections.join_next().await {
        log_end(ended);
    }
}

fn log_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(err) = ended {
        tracing::error!(error = %err, "a client connection's task failed");
    }
}

/// Serves one connection (`connection`, a hyper connection's future) until
/// it closes, closing it with `graceful_shutdown` once its `calls` have
/// been idle for `idle_timeout` or `stopping` is cancelled.
async fn close_when_idle_or_stopped<C, E>(
    connection: C,
    graceful_shutdown: fn(Pin<&mut C>),
    calls: Calls,
    idle_timeout: Duration,
    stopping: CancellationToken,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut connection = pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(error = %err, "a client connection ended with an error");
                }
                return;
            }
            () = stopping.cancelled(), if !closing => {
                closing = true;
                graceful_shutdown(connection.as_mut());
            }
            () = calls.idle_for(idle_timeout), if !closing => {
                tracing::debug!(?idle_timeout, "closing a client connection with no call in flight");
                closing = true;
                graceful_shutdown(connection.as_mut());
            }
        }
    }
}

/// The calls in flight on one connection, and since when it has had none.
#[derive(Debug, Clone)]
struct Calls(Arc<watch::Sender<InFlight>>);

#[derive(Debug, Clone, Copy)]
struct InFlight {
    calls: usize,
    /// When `calls` last became 0 (or the connection opened).
    idle_since: Instant,
}

impl Calls {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(InFlight {
            calls: 0,
            idle_since: Instant::now(),
        })))
    }

    /// A call in flight until the returned guard is dropped.
    fn start(&self) -> Call {
        // Nobody waits for a call to start: no need to wake anyone.
        self.0.send_if_modified(|state| {
            state.calls += 1;
            false
        });
        Call(self.clone())
    }

    /// Completes once the connection has had no call in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        let mut changes = self.0.subscribe();
        loop {
            let state = *changes.borrow_and_update();
            if state.calls > 0 {
                // Woken when the last call ends. The sender lives in `self`.
                let _ = changes.changed().await;
                continue;
            }
            let Some(deadline) = state.idle_since.checked_add(timeout) else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            // A call that started and ended meanwhile moved `idle_since`:
            // look again when this deadline passes.
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One call in flight (see [`Calls::start`]).
#[derive(Debug)]
struct Call(Calls);

impl Drop for Call {
    fn drop(&mut self) {
        self.0.0.send_if_modified(|state| {
            state.calls -= 1;
            if state.calls > 0 {
                return false;
            }
            state.idle_since = Instant::now();
            true
        });
    }
}

/// The service of one connection: `service`, with the connection's connect
/// info in each request, a span per call, and each call counted in `calls`
/// until its response body is done.
#[derive(Debug, Clone)]
struct ConnectionService<S, C> {
    service: S,
    connect_info: C,
    calls: Calls,
}

impl<S, B, C> hyper::service::Service<Request<Incoming>> for ConnectionService<S, C>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    type Response = Response<CallBody<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let call = self.calls.start();
        let mut request = request.map(tonic::body::Body::new);
        request.extensions_mut().insert(self.connect_info.clone());
        let span = tracing::info_span!(
            "grpc",
            method = %request.uri().path(),
            caller = tracing::field::Empty,
            api_key = tracing::field::Empty,
            request_id = tracing::field::Empty
        );
        let response = self.service.clone().oneshot(request).instrument(span);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CallBody { body, _call: call }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call in flight until it is dropped.
    struct CallBody<B> {
        #[pin]
        body: B,
        _call: Call,
    }
}

impl<B: Body> Body for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_once_it_has_had_no_call_for_the_timeout() {
        let timeout = Duration::from_secs(10);
        let calls = Calls::new();
        let opened = Instant::now();
        calls.idle_for(timeout).await;
        assert_eq!(opened.elapsed(), timeout, "idle from the start");

        // A call in flight for longer than the timeout: idle only once it
        // has ended, and the timeout after that.
        let call = calls.start();
        let started = Instant::now();
        let idle = tokio::spawn({
            let calls = calls.clone();
            async move { calls.idle_for(timeout).await }
        });
        tokio::time::sleep(timeout * 3).await;
        assert!(!idle.is_finished(), "idle while a call is in flight");
        drop(call);
        idle.await.unwrap();
        assert_eq!(started.elapsed(), timeout * 4);

        // Short calls now and then, each within the timeout of the last:
        // never idle until they stop.
        drop(calls.start());
        let started = Instant::now();
        let idle = tokio::spawn({
            let calls = calls.clone();
            async move { calls.idle_for(timeout).await }
        });
        for _ in 0..5 {
            tokio::time::sleep(timeout / 2).await;
            drop(calls.start());
        }
        idle.await.unwrap();
        assert_eq!(started.elapsed(), timeout / 2 * 5 + timeout);
    }
}
