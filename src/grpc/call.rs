//! What the server knows of each call: its request ID, the credential it was
//! accepted with, and, with `--access-log`, one JSON line when it ends.
//!
//! [`CallLayer`] wraps the gRPC services inside the gRPC-Web translation, so
//! that it sees every call as gRPC (its status in the headers of a
//! trailers-only response, or in the trailers).
//!
//! - The request ID is the caller's `x-request-id` when it is usable (1 to
//!   [`MAX_REQUEST_ID_LEN`] characters of `A-Z a-z 0-9 - _ . : / + =`, which
//!   UUIDs, trace IDs and base64 fit), else a new UUIDv7. Callers choose
//!   theirs, so request IDs are not unique: they correlate. The
//!   response carries it back in `x-request-id`; logs, the access log and the
//!   audit log name it, so one ID follows a call everywhere.
//! - The credential is noted by the authentication step ([`note`]) in a
//!   task-local slot that the layer reads when the call ends: no handler has
//!   to pass it on.
//! - The access log line names the method, gRPC code and ErrorInfo reason,
//!   the credential's kind, organization and key ID, the duration, the
//!   client's address and the request ID. Never a secret: nothing from the
//!   request's metadata or messages is copied but the request ID.

use std::{
    future::Future,
    io::Write,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic_types::StatusExt;

use crate::domain::{Actor, ApiKeyId, Credential, OrganizationId};

/// The header that carries a call's request ID, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request ID taken from a caller, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A call's request ID (see the [module](self) documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The caller's `x-request-id` in `headers`, if usable, else a new one.
    pub fn of(headers: &HeaderMap) -> Self {
        let given = headers
            .get(REQUEST_ID_HEADER)
            .map(HeaderValue::as_bytes)
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= MAX_REQUEST_ID_LEN
                    && id
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
            })
            .and_then(|id| std::str::from_utf8(id).ok());
        Self(match given {
            Some(id) => id.into(),
            None => new_request_id().to_string().into(),
        })
    }

    /// The ID.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new UUIDv7 for a call that brought no request ID, made without a system
/// call or a lock: the time in milliseconds, then a counter started at a
/// random value once per process (so IDs of one process never repeat, and
/// those of two processes collide only by chance).
fn new_request_id() -> uuid::Uuid {
    use std::sync::LazyLock;
    static COUNTER: LazyLock<AtomicU64> =
        LazyLock::new(|| AtomicU64::new(u64::from_ne_bytes(crate::service::random_bytes::<8>())));
    static SALT: LazyLock<[u8; 2]> = LazyLock::new(crate::service::random_bytes::<2>);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let mut rest = [0u8; 10];
    rest[..2].copy_from_slice(&*SALT);
    rest[2..].copy_from_slice(&count);
    uuid::Builder::from_unix_timestamp_millis(millis, &rest).into_uuid()
}

/// Who makes an audited change: `credential`, from the client's address,
/// under the call's request ID (both read from the request's `extensions`).
pub fn actor(credential: Credential, extensions: &http::Extensions) -> Actor {
    Actor {
        credential,
        peer: peer(extensions).map(|peer| peer.to_string()),
        request_id: extensions
            .get::<RequestId>()
            .map(|id| id.as_str().to_owned()),
    }
}

/// The client's address, from the connect info the server put in the
/// request's extensions (TCP, or TLS over TCP).
pub fn peer(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// The credential a call was accepted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// An organization's API key.
    ApiKey {
        /// The organization it acts for.
        organization: OrganizationId,
        /// The key.
        api_key: ApiKeyId,
    },
    /// The operator's admin token.
    AdminToken,
    /// The access-check token (AccessService only).
    AccessCheckToken,
}

impl Presented {
    fn kind(&self) -> &'static str {
        match self {
            Self::ApiKey { .. } => "api_key",
            Self::AdminToken => "admin_token",
            Self::AccessCheckToken => "access_check_token",
        }
    }
}

/// Where [`note`] leaves the credential of the call being handled.
type Slot = Arc<Mutex<Option<Presented>>>;

tokio::task_local! {
    static PRESENTED: Slot;
}

/// Notes that the call being handled was accepted with `credential`. Outside
/// a call (a unit test, a background task) it does nothing.
pub fn note(credential: Presented) {
    let _ = PRESENTED.try_with(|slot| {
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(credential);
    });
}

/// Lines waiting for the writer thread, at most; more are dropped (and
/// counted) rather than making a call wait.
const ACCESS_LOG_BACKLOG: usize = 8192;

/// Where access log lines go: one JSON object per line, written by a thread
/// of its own, so that a slow reader of the output (a stalled pipe, a full
/// disk) never blocks a call. While it cannot keep up, lines beyond
/// [`ACCESS_LOG_BACKLOG`] are dropped and counted, and a warning says how
/// many once it catches up.
#[derive(Clone)]
pub struct AccessLog {
    lines: std::sync::mpsc::SyncSender<Vec<u8>>,
    counts: Arc<Counts>,
}

/// Lines queued, written and dropped.
#[derive(Debug, Default)]
struct Counts {
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Lines to standard output.
    pub fn stdout() -> (Self, AccessLogWriter) {
        Self::to(std::io::stdout())
    }

    /// Lines to `writer`, from a thread of its own, which ends once every
    /// clone of the log is dropped and the lines sent are written: wait for
    /// it with [`AccessLogWriter::finish`].
    pub fn to(writer: impl Write + Send + 'static) -> (Self, AccessLogWriter) {
        let (lines, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(ACCESS_LOG_BACKLOG);
        let counts = Arc::new(Counts::default());
        let counted = counts.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(writer);
                let mut reported = 0;
                while let Ok(line) = received.recv() {
                    let _ = out.write_all(&line);
                    let mut written = 1;
                    // Write what is queued together, then flush.
                    while let Ok(line) = received.try_recv() {
                        let _ = out.write_all(&line);
                        written += 1;
                    }
                    let _ = out.flush();
                    counted.written.fetch_add(written, Ordering::SeqCst);
                    let lost = counted.dropped.load(Ordering::Relaxed);
                    if lost > reported {
                        tracing::warn!(
                            dropped = lost - reported,
                            "access log lines dropped: its output could not keep up"
                        );
                        reported = lost;
                    }
                }
            });
        let thread = match spawned {
            Ok(thread) => Some(thread),
            Err(err) => {
                tracing::error!(error = %err, "cannot start the access log's writer");
                None
            }
        };
        let writer = AccessLogWriter {
            thread,
            counts: counts.clone(),
        };
        (Self { lines, counts }, writer)
    }

    /// Lines dropped so far because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    fn write(&self, line: &Line<'_>) {
        let Ok(mut text) = serde_json::to_vec(line) else {
            return;
        };
        text.push(b'\n');
        // Counted before it is sent, so that the writer never finds more
        // written than queued.
        self.counts.queued.fetch_add(1, Ordering::SeqCst);
        if self.lines.try_send(text).is_err() {
            self.counts.queued.fetch_sub(1, Ordering::SeqCst);
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The thread that writes the access log (see [`AccessLog::to`]).
#[derive(Debug)]
pub struct AccessLogWriter {
    thread: Option<std::thread::JoinHandle<()>>,
    counts: Arc<Counts>,
}

impl AccessLogWriter {
    /// Waits, for at most `timeout`, until every line queued so far is
    /// written: once the server has stopped, so that the last calls' lines
    /// are not lost when the process exits.
    pub async fn finish(self, timeout: std::time::Duration) {
        let Some(thread) = self.thread else { return };
        let deadline = tokio::time::Instant::now() + timeout;
        let counts = &self.counts;
        while counts.written.load(Ordering::SeqCst) < counts.queued.load(Ordering::SeqCst)
            && !thread.is_finished()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// One access log line.
#[derive(Debug, Serialize)]
struct Line<'a> {
    /// When the call ended (RFC 3339, UTC).
    time: String,
    /// `/package.Service/Method`.
    method: &'a str,
    /// The gRPC code's name, e.g. `NOT_FOUND`.
    code: String,
    /// The ErrorInfo reason, if the status carries one.
    reason: Option<String>,
    /// `api_key`, `admin_token` or `access_check_token`; none if no
    /// credential was accepted.
    credential: Option<&'static str>,
    /// The calling organization, for an API key.
    organization_id: Option<String>,
    /// The key, for an API key.
    api_key_id: Option<String>,
    /// From the request's arrival to its status.
    duration_ms: f64,
    /// The client's address.
    peer: Option<String>,
    /// The request ID.
    request_id: &'a str,
}

/// Gives each call a [`RequestId`] and a credential slot, and writes its
/// access log line (see the [module](self) documentation).
#[derive(Debug, Clone, Default)]
pub struct CallLayer {
    access_log: Option<AccessLog>,
}

impl CallLayer {
    /// Writes access log lines to `access_log`, if any.
    pub fn new(access_log: Option<AccessLog>) -> Self {
        Self { access_log }
    }
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            access_log: self.access_log.clone(),
        }
    }
}

/// See [`CallLayer`].
#[derive(Debug, Clone)]
pub struct CallService<S> {
    inner: S,
    access_log: Option<AccessLog>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for CallService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes>,
{
    type Response = http::Response<CallBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let request_id = RequestId::of(request.headers());
        tracing::Span::current().record("request_id", request_id.as_str());
        let header = HeaderValue::from_str(request_id.as_str()).ok();
        let slot = Slot::default();
        let record = self.access_log.clone().map(|log| Record {
            log,
            method: request.uri().path().to_owned(),
            peer: peer(request.extensions()),
            request_id: request_id.clone(),
            started,
            slot: slot.clone(),
            written: false,
        });
        request.extensions_mut().insert(request_id);
        let response = PRESENTED.scope(slot, self.inner.call(request));
        Box::pin(async move {
            let mut response = response.await?;
            // As the client will get it (the transport's layers outside
            // make the same change).
            super::limits::message_too_large_is_resource_exhausted(response.headers_mut());
            if let Some(header) = header {
                response.headers_mut().insert(REQUEST_ID_HEADER, header);
            }
            // A trailers-only response (every failed unary call) has its
            // status in the headers.
            let mut record = record;
            if let Some(record) = &mut record
                && let Some(status) = tonic::Status::from_header_map(response.headers())
            {
                record.write(&status);
            }
            Ok(response.map(|body| CallBody { body, record }))
        })
    }
}

/// What the access log line of a call in flight needs.
struct Record {
    log: AccessLog,
    method: String,
    peer: Option<SocketAddr>,
    request_id: RequestId,
    started: Instant,
    slot: Slot,
    written: bool,
}

impl Record {
    /// Writes the line for a call that ended with `status`, once.
    fn write(&mut self, status: &tonic::Status) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let presented = self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (organization_id, api_key_id) = match &presented {
            Some(Presented::ApiKey {
                organization,
                api_key,
            }) => (Some(organization.to_string()), Some(api_key.to_string())),
            _ => (None, None),
        };
        let code = format!("{:?}", status.code());
        self.log.write(&Line {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            method: &self.method,
            code: screaming_snake_case(&code),
            reason: status.get_details_error_info().map(|info| info.reason),
            credential: presented.as_ref().map(Presented::kind),
            organization_id,
            api_key_id,
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            peer: self.peer.map(|peer| peer.to_string()),
            request_id: self.request_id.as_str(),
        });
    }
}

impl Drop for Record {
    /// A call whose body ended without a status (the client went away, or
    /// the deadline passed) was cancelled.
    fn drop(&mut self) {
        self.write(&tonic::Status::cancelled("the call ended without a status"));
    }
}

/// `NotFound` as `NOT_FOUND`: the code's name as gRPC documents it.
fn screaming_snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

pin_project_lite::pin_project! {
    /// A response body that writes its call's access log line when its
    /// trailers pass (or when it is dropped without them).
    pub struct CallBody<B> {
        #[pin]
        body: B,
        record: Option<Record>,
    }
}

impl<B: Default> Default for CallBody<B> {
    /// An empty body that logs nothing (for responses made by layers).
    fn default() -> Self {
        Self {
            body: B::default(),
            record: None,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for CallBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(record)) = (&frame, this.record.as_mut())
            && let Some(trailers) = frame.trailers_ref()
            && let Some(status) = tonic::Status::from_header_map(trailers)
        {
            record.write(&status);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: Option<&[u8]>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(id) = id {
            headers.insert(REQUEST_ID_HEADER, HeaderValue::from_bytes(id).unwrap());
        }
        headers
    }

    #[test]
    fn a_usable_request_id_is_kept_and_anything_else_is_replaced_by_a_new_one() {
        assert_eq!(
            RequestId::of(&headers(Some(b"abc-123"))).as_str(),
            "abc-123"
        );
        let longest = "r".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(
            RequestId::of(&headers(Some(longest.as_bytes()))).as_str(),
            longest
        );
        let too_long = "r".repeat(MAX_REQUEST_ID_LEN + 1);
        for unusable in [
            None,
            Some(too_long.as_bytes()),
            Some(&b"with space"[..]),
            Some(&b"<script>"[..]),
            Some(&b"caf\xc3\xa9"[..]),
        ] {
            let id = RequestId::of(&headers(unusable));
            let parsed = uuid::Uuid::parse_str(id.as_str()).expect("a generated UUID");
            assert_eq!(parsed.get_version_num(), 7, "{unusable:?}");
        }
    }

    /// An output that takes nothing until it is opened, then keeps what it
    /// is given.
    struct Gate {
        open: std::sync::mpsc::Receiver<()>,
        opened: bool,
        kept: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.opened {
                let _ = self.open.recv();
                self.opened = true;
            }
            self.kept.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stalled_output_never_holds_up_a_call_and_lines_beyond_the_backlog_are_counted() {
        let (open, gate) = std::sync::mpsc::channel();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let (log, writer) = AccessLog::to(Gate {
            open: gate,
            opened: false,
            kept: kept.clone(),
        });
        let line = Line {
            time: String::new(),
            method: "/a.B/C",
            code: "OK".to_owned(),
            reason: None,
            credential: None,
            organization_id: None,
            api_key_id: None,
            duration_ms: 1.0,
            peer: None,
            request_id: "r",
        };
        let sent = ACCESS_LOG_BACKLOG + 100;
        let started = Instant::now();
        for _ in 0..sent {
            log.write(&line);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "writing lines waited for the output"
        );
        let dropped = log.dropped() as usize;
        // The channel holds the backlog and the writer's buffer a few lines
        // more: the rest are dropped.
        assert!((1..=100).contains(&dropped), "{dropped} dropped");
        open.send(()).unwrap();
        writer.finish(std::time::Duration::from_secs(10)).await;
        let written = kept.lock().unwrap().split(|&b| b == b'\n').count() - 1;
        assert_eq!(written, sent - dropped, "every line not dropped is written");
    }

    #[test]
    fn codes_are_named_as_grpc_documents_them() {
        assert_eq!(screaming_snake_case("NotFound"), "NOT_FOUND");
        assert_eq!(screaming_snake_case("Ok"), "OK");
        assert_eq!(
            screaming_snake_case("FailedPrecondition"),
            "FAILED_PRECONDITION"
        );
    }
}
