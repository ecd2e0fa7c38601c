//! The HTTP client of webhook deliveries: it POSTs one signed delivery to a
//! partner's endpoint and tells what came of it, as an [`Attempt`], without
//! letting an endpoint lead the server into its own network.
//!
//! Built on `reqwest` (HTTP/1.1 and HTTP/2 by ALPN over rustls with `ring`,
//! one pooled client), which connects only to addresses that either came from
//! the resolver it is given or are the URL's own IP literal: so the resolver
//! here drops every blocked address (see [`blocked`]) and fails when none is
//! left, and [`Sender::post`] checks an IP literal before it sends. Proxies
//! from the environment are off (a proxy would connect in our place, past
//! these checks) and redirects are never followed, so no other address is ever
//! connected to. Unless private addresses are allowed, only `https` is sent.

use std::{
    error::Error as StdError,
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, header::RETRY_AFTER};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::time::Instant;
use tokio_rustls::rustls;

use crate::domain::webhook::{BlockedAddress, WebhookUrl, blocked};

/// The most of a response body that is read; the rest is left unread.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The most of a response body kept in [`Attempt::excerpt`].
const EXCERPT_BYTES: usize = 1024;

/// The longest wait a `Retry-After` header can ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// How a [`Sender`] is set up.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// Admits `http` and blocked addresses (for development and tests).
    pub allow_private: bool,
    /// Bounds a whole attempt: up to the status, and the body read after it.
    pub timeout: Duration,
    /// The `User-Agent` of every delivery.
    pub user_agent: String,
    /// DER certificates trusted as roots besides the system's (for tests).
    pub extra_root_certificates: Vec<Vec<u8>>,
}

impl Default for SenderOptions {
    fn default() -> Self {
        Self {
            allow_private: false,
            timeout: Duration::from_secs(15),
            user_agent: concat!("connections/", env!("CARGO_PKG_VERSION")).to_owned(),
            extra_root_certificates: Vec::new(),
        }
    }
}

/// Why a [`Sender`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// No usable root certificates: an extra one is malformed, or the system
    /// has none and none was given.
    #[error("cannot set up TLS for webhook deliveries: {0}")]
    Tls(#[from] rustls::Error),
    /// The client refused its settings (such as a malformed user agent).
    #[error("cannot set up the webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Posts webhook deliveries; cheap to clone, and clones share connections.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
    timeout: Duration,
}

impl Sender {
    /// A sender with `options`, trusting the system's root certificates and
    /// the extra ones; fails if there are none at all, or an extra one is
    /// malformed.
    pub fn new(options: SenderOptions) -> Result<Self, SenderError> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(&options.extra_root_certificates)?)
            .dns_resolver(CheckedResolver {
                allow_private: options.allow_private,
            })
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .https_only(!options.allow_private)
            .connect_timeout(options.timeout)
            .user_agent(options.user_agent)
            .build()?;
        Ok(Self {
            client,
            allow_private: options.allow_private,
            timeout: options.timeout,
        })
    }

    /// POSTs `body` with `headers` to `url`; never follows redirects; never
    /// panics; never returns Err: every failure is an Attempt.
    pub async fn post(&self, url: &WebhookUrl, headers: HeaderMap, body: Bytes) -> Attempt {
        let start = Instant::now();
        // A timeout too long to add up is as good as none.
        let deadline = start
            .checked_add(self.timeout)
            .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 60 * 60));
        let failed = |failure| Attempt {
            status: None,
            failure: Some(failure),
            retry_after: None,
            excerpt: String::new(),
            duration: start.elapsed(),
        };
        if !self.allow_private
            && let Some(class) = literal_blocked(url)
        {
            return failed(Failure::AddressNotAllowed(class));
        }
        let sending = self.client.post(url.as_str()).headers(headers).body(body);
        let response = match tokio::time::timeout_at(deadline, sending.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                let failure = failure_of(&err);
                let error = chain(&err.without_url());
                tracing::debug!(%failure, %error, "webhook attempt failed");
                return failed(failure);
            }
            Err(_) => return failed(Failure::Timeout),
        };
        let duration = start.elapsed();
        let status = response.status().as_u16();
        let retry_after = retry_after(status, response.headers(), SystemTime::now());
        let excerpt = read_excerpt(response, deadline).await;
        Attempt {
            status: Some(status),
            failure: None,
            retry_after,
            excerpt,
            duration,
        }
    }
}

/// What came of posting one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The HTTP status, if one was received.
    pub status: Option<u16>,
    /// Why no status was received (None when `status` is Some).
    pub failure: Option<Failure>,
    /// The wait a 429 or 503 asked for in `Retry-After`, at most 24 hours.
    pub retry_after: Option<Duration>,
    /// The start of the response body (at most 1 KiB), as lossy UTF-8.
    pub excerpt: String,
    /// From the start of the attempt to the status (or the failure).
    pub duration: Duration,
}

impl Attempt {
    /// Whether the endpoint answered with a 2xx status.
    pub fn succeeded(&self) -> bool {
        self.status
            .is_some_and(|status| (200..300).contains(&status))
    }
}

/// Why an attempt received no status. Displays in kebab-case, with the class
/// of a blocked address: `address-not-allowed (loopback)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum Failure {
    /// No status within the sender's timeout.
    Timeout,
    /// The connection was refused, reset or could not be made.
    Connect,
    /// The TLS handshake failed, the certificate among other reasons.
    Tls,
    /// The host name could not be resolved.
    Dns,
    /// The host is, or resolves only to, addresses a delivery may not reach.
    AddressNotAllowed(BlockedAddress),
    /// Anything else, such as a malformed response.
    Other,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name: &'static str = self.into();
        match self {
            Self::AddressNotAllowed(class) => write!(f, "{name} ({class})"),
            _ => f.write_str(name),
        }
    }
}

/// The rustls configuration: `ring`, the system's roots and `extra` ones,
/// and ALPN for HTTP/2 and HTTP/1.1.
fn tls_config(extra: &[Vec<u8>]) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra = extra
        .iter()
        .map(|der| rustls::pki_types::CertificateDer::from(der.clone()));
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Why a host name gave no address to connect to.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("lookup failed: {0}")]
    Lookup(#[source] io::Error),
    #[error("no addresses")]
    NoAddresses,
    #[error("resolves only to {0} addresses")]
    Blocked(BlockedAddress),
}

/// Resolves with the system resolver and keeps only the addresses a delivery
/// may reach.
struct CheckedResolver {
    allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(ResolveError::Lookup)?;
            let allowed = allowed_addresses(found, allow_private)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The addresses of `found` that may be connected to: all of them when
/// `allow_private`, else those not [`blocked`].
fn allowed_addresses(
    found: impl IntoIterator<Item = SocketAddr>,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let mut first_blocked = None;
    let allowed: Vec<SocketAddr> = found
        .into_iter()
        .filter(|address| {
            let class = (!allow_private).then(|| blocked(address.ip())).flatten();
            first_blocked = first_blocked.or(class);
            class.is_none()
        })
        .collect();
    match (allowed.is_empty(), first_blocked) {
        (false, _) => Ok(allowed),
        (true, Some(class)) => Err(ResolveError::Blocked(class)),
        (true, None) => Err(ResolveError::NoAddresses),
    }
}

/// The class that keeps the URL's host from being reached, when the host is
/// an IP address, which the client connects to without resolving it.
fn literal_blocked(url: &WebhookUrl) -> Option<BlockedAddress> {
    let url = url::Url::parse(url.as_str()).ok()?;
    let host = url.host_str()?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    blocked(ip)
}

/// The failure behind an error of the client.
fn failure_of(err: &reqwest::Error) -> Failure {
    if let Some(failure) = cause_in_chain(err) {
        failure
    } else if err.is_timeout() {
        Failure::Timeout
    } else if err.is_dns() {
        Failure::Dns
    } else if err.is_connect() {
        Failure::Connect
    } else {
        Failure::Other
    }
}

/// The failure told by a cause that `err` carries, if it carries one this
/// module knows: the resolver's, a TLS error, or a connection's I/O error.
fn cause_in_chain(err: &(dyn StdError + 'static)) -> Option<Failure> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(resolve) = err.downcast_ref::<ResolveError>() {
            return Some(match resolve {
                ResolveError::Blocked(class) => Failure::AddressNotAllowed(*class),
                ResolveError::Lookup(_) | ResolveError::NoAddresses => Failure::Dns,
            });
        }
        if err.is::<rustls::Error>() {
            return Some(Failure::Tls);
        }
        let io = err.downcast_ref::<io::Error>();
        if let Some(io) = io {
            use io::ErrorKind as K;
            match io.kind() {
                K::TimedOut => return Some(Failure::Timeout),
                K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NetworkUnreachable
                | K::HostUnreachable
                | K::AddrNotAvailable => return Some(Failure::Connect),
                _ => {}
            }
        }
        // An io::Error's source() is that of the error it wraps, skipping it.
        next = match io.and_then(|io| io.get_ref()) {
            Some(wrapped) => Some(wrapped as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}

/// `err` and its causes, for a log line.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(err) = next {
        text.push_str(": ");
        text.push_str(&err.to_string());
        next = err.source();
    }
    text
}

/// The wait a 429 or 503 asks for: delta-seconds or an HTTP-date (a past
/// date is no wait), at most [`MAX_RETRY_AFTER`].
fn retry_after(status: u16, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value
            .parse::<u64>()
            .map_or(MAX_RETRY_AFTER, Duration::from_secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Reads at most [`MAX_BODY_BYTES`] of the body until `deadline`, and gives
/// the start of it as text. A body cut short, by either, is no failure.
async fn read_excerpt(mut response: reqwest::Response, deadline: Instant) -> String {
    let mut kept = Vec::with_capacity(EXCERPT_BYTES);
    let mut read = 0;
    let mut cut = false;
    while read < MAX_BODY_BYTES {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await else {
            break;
        };
        read += chunk.len();
        let room = EXCERPT_BYTES - kept.len();
        cut |= chunk.len() > room;
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    excerpt_text(&kept, cut)
}

/// `bytes` as lossy UTF-8 of at most [`EXCERPT_BYTES`]; when `cut` (more
/// followed), a character split by the cut is left out rather than replaced.
fn excerpt_text(bytes: &[u8], cut: bool) -> String {
    let mut end = bytes.len();
    if cut {
        // The last lead byte, if the sequence it starts is incomplete.
        for i in (end.saturating_sub(3)..end).rev() {
            let byte = bytes[i];
            if byte & 0b1100_0000 == 0b1000_0000 {
                continue;
            }
            let needed = match byte {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            if end - i < needed {
                end = i;
            }
            break;
        }
    }
    let mut text = String::from_utf8_lossy(&bytes[..end]).into_owned();
    // Replacement characters can be longer than the bytes they replace.
    let mut limit = text.len().min(EXCERPT_BYTES);
    while !text.is_char_boundary(limit) {
        limit -= 1;
    }
    text.truncate(limit);
    text
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        sync::{
            Mutex,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use http::{HeaderValue, Method, Request, Response, Version};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        task::JoinHandle,
    };
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// A request as a receiver saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        path: String,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
    }

    /// A local endpoint that counts the connections it accepts.
    struct Receiver {
        address: SocketAddr,
        connections: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Seen>>>,
        task: JoinHandle<()>,
    }

    impl Receiver {
        fn url(&self, path: &str) -> WebhookUrl {
            url(&format!("http://{}{path}", self.address))
        }

        fn paths(&self) -> Vec<String> {
            let seen = self.seen.lock().unwrap();
            seen.iter().map(|seen| seen.path.clone()).collect()
        }
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Answers each request, by its path, with `answer`; over TLS with `tls`.
    async fn receiver(
        tls: Option<TlsAcceptor>,
        answer: fn(&str) -> Response<Full<Bytes>>,
    ) -> Receiver {
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (counted, kept) = (connections.clone(), seen.clone());
        let (address, task) = listen(move |stream| {
            counted.fetch_add(1, Ordering::SeqCst);
            let (kept, tls) = (kept.clone(), tls.clone());
            async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let path = parts.uri.path().to_owned();
                        kept.lock().unwrap().push(Seen {
                            method: parts.method,
                            path: path.clone(),
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        });
                        Ok::<_, hyper::Error>(answer(&path))
                    }
                });
                let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            let _ = server.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = server.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            }
        })
        .await;
        Receiver {
            address,
            connections,
            seen,
            task,
        }
    }

    /// Accepts connections on loopback and hands each to `serve`.
    async fn listen<F, Fut>(serve: F) -> (SocketAddr, JoinHandle<()>)
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        (address, task)
    }

    /// Reads the request's head, then writes `head` and calls `body` until it
    /// returns false or the client goes away.
    async fn raw_receiver(head: &'static str, pause: Duration, chunk: &'static [u8]) -> SocketAddr {
        let (address, _task) = listen(move |mut stream| async move {
            let mut buffer = vec![0; 64 * 1024];
            let _ = stream.read(&mut buffer).await;
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            loop {
                if chunk.is_empty() {
                    // Never answer; hold the connection open.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                if stream.write_all(chunk).await.is_err() {
                    return;
                }
                tokio::time::sleep(pause).await;
            }
        })
        .await;
        address
    }

    fn url(value: &str) -> WebhookUrl {
        WebhookUrl::parse(value, true).unwrap()
    }

    fn sender(allow_private: bool, timeout: Duration) -> Sender {
        Sender::new(SenderOptions {
            allow_private,
            timeout,
            ..SenderOptions::default()
        })
        .unwrap()
    }

    fn answer(
        status: u16,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Response<Full<Bytes>> {
        let mut response = Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(Full::new(body.into())).unwrap()
    }

    fn long_body() -> String {
        format!("a{}", "é".repeat(1000))
    }

    fn self_signed() -> (CertificateDer<'static>, TlsAcceptor) {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        (cert, TlsAcceptor::from(Arc::new(config)))
    }

    #[tokio::test]
    async fn a_delivery_arrives_as_given_and_the_answer_is_kept() {
        let endpoint = receiver(None, |path| match path {
            "/long" => answer(200, &[], long_body()),
            _ => answer(200, &[], "thanks"),
        })
        .await;
        let options = SenderOptions {
            allow_private: true,
            ..SenderOptions::default()
        };
        let user_agent = options.user_agent.clone();
        assert!(user_agent.starts_with("connections/"));
        let sender = Sender::new(options).unwrap();
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", "v1,abc="),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let body = Bytes::from_static(br#"{"type":"connection.created"}"#);

        let attempt = sender
            .post(&endpoint.url("/hook"), headers.clone(), body.clone())
            .await;
        assert_eq!(attempt.status, Some(200));
        assert!(attempt.succeeded());
        assert_eq!(attempt.failure, None);
        assert_eq!(attempt.retry_after, None);
        assert_eq!(attempt.excerpt, "thanks");
        assert!(attempt.duration > Duration::ZERO);
        let seen = endpoint.seen.lock().unwrap()[0].clone();
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/hook");
        assert_eq!(seen.headers["user-agent"], user_agent.as_str());
        for (name, value) in &headers {
            assert_eq!(seen.headers.get(name), Some(value), "{name}");
        }
        assert_eq!(seen.body, body);

        // Cut to 1 KiB, and before the character that the cut would split.
        let attempt = sender.post(&endpoint.url("/long"), headers, body).await;
        assert_eq!(attempt.status, Some(200));
        assert_eq!(attempt.excerpt, format!("a{}", "é".repeat(511)));
    }

    #[tokio::test]
    async fn redirects_are_returned_and_never_followed() {
        let endpoint = receiver(None, |path| match path {
            "/found" => answer(302, &[("location", "/other")], ""),
            "/temporary" => answer(307, &[("location", "/other")], ""),
            _ => answer(200, &[], "other"),
        })
        .await;
        let sender = sender(true, Duration::from_secs(5));
        for (path, status) in [("/found", 302), ("/temporary", 307)] {
            let attempt = sender
                .post(
                    &endpoint.url(path),
                    HeaderMap::new(),
                    Bytes::from_static(b"{}"),
                )
                .await;
            assert_eq!(attempt.status, Some(status), "{path}");
            assert!(!attempt.succeeded());
        }
        assert_eq!(endpoint.paths(), ["/found", "/temporary"]);
    }

    #[tokio::test]
    async fn error_statuses_are_kept_and_retry_after_is_read_on_429_and_503() {
        let endpoint = receiver(None, |path| match path {
            "/500" => answer(500, &[("retry-after", "7")], "broken"),
            "/429" => answer(429, &[("retry-after", "7")], ""),
            "/503" => {
                let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
                answer(503, &[("retry-after", &later)], "")
            }
            _ => answer(200, &[("retry-after", "7")], ""),
        })
        .await;
        let sender = sender(true, Duration::from_secs(5));
        let post = async |path: &str| {
            sender
                .post(&endpoint.url(path), HeaderMap::new(), Bytes::new())
                .await
        };

        let attempt = post("/500").await;
        assert_eq!((attempt.status, attempt.retry_after), (Some(500), None));
        assert!(!attempt.succeeded());
        assert_eq!(attempt.excerpt, "broken");
        let attempt = post("/429").await;
        assert_eq!(attempt.status, Some(429));
        assert_eq!(attempt.retry_after, Some(Duration::from_secs(7)));
        let attempt = post("/503").await;
        assert_eq!(attempt.status, Some(503));
        let wait = attempt.retry_after.unwrap();
        assert!(
            (Duration::from_secs(100)..=Duration::from_secs(120)).contains(&wait),
            "{wait:?}"
        );
        let attempt = post("/200").await;
        assert_eq!((attempt.status, attempt.retry_after), (Some(200), None));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_waits_at_most_a_day() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let wait = |status, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
            retry_after(status, &headers, now)
        };
        let in_an_hour = httpdate::fmt_http_date(now + Duration::from_secs(3600));
        let an_hour_ago = httpdate::fmt_http_date(now - Duration::from_secs(3600));
        assert_eq!(wait(429, "7"), Some(Duration::from_secs(7)));
        assert_eq!(wait(503, " 0 "), Some(Duration::ZERO));
        assert_eq!(wait(503, &in_an_hour), Some(Duration::from_secs(3600)));
        assert_eq!(wait(503, &an_hour_ago), Some(Duration::ZERO));
        assert_eq!(wait(429, "86401"), Some(MAX_RETRY_AFTER));
        assert_eq!(wait(429, "99999999999999999999999"), Some(MAX_RETRY_AFTER));
        let in_two_days = httpdate::fmt_http_date(now + Duration::from_secs(2 * 86400));
        assert_eq!(wait(429, &in_two_days), Some(MAX_RETRY_AFTER));
        assert_eq!(wait(429, "soon"), None);
        assert_eq!(wait(429, "-5"), None);
        assert_eq!(wait(429, "1.5"), None);
        assert_eq!(wait(500, "7"), None);
        assert_eq!(wait(301, "7"), None);
        assert_eq!(retry_after(429, &HeaderMap::new(), now), None);
    }

    #[tokio::test]
    async fn an_endpoint_that_never_answers_times_out() {
        let address = raw_receiver("", Duration::ZERO, b"").await;
        let timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let attempt = sender(true, timeout)
            .post(
                &url(&format!("http://{address}/")),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert_eq!(attempt.failure, Some(Failure::Timeout));
        assert_eq!(attempt.status, None);
        assert!(attempt.duration >= timeout, "{:?}", attempt.duration);
        assert!(started.elapsed() < timeout + Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let attempt = sender(true, Duration::from_secs(5))
            .post(
                &url(&format!("http://{address}/")),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert_eq!(attempt.failure, Some(Failure::Connect));
        assert_eq!(attempt.status, None);
        assert!(!attempt.succeeded());
    }

    #[tokio::test]
    async fn an_endless_body_is_read_no_further_than_its_start() {
        const HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n";
        let address = raw_receiver(HEAD, Duration::ZERO, &[b'x'; 16 * 1024]).await;
        let started = std::time::Instant::now();
        let attempt = sender(true, Duration::from_secs(5))
            .post(
                &url(&format!("http://{address}/")),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert_eq!(attempt.status, Some(200));
        assert_eq!(attempt.failure, None);
        assert_eq!(attempt.excerpt, "x".repeat(EXCERPT_BYTES));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_body_that_trickles_ends_the_excerpt_not_the_status() {
        const HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n";
        let address = raw_receiver(HEAD, Duration::from_millis(20), b"x").await;
        let timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let attempt = sender(true, timeout)
            .post(
                &url(&format!("http://{address}/")),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert_eq!(attempt.status, Some(200));
        assert_eq!(attempt.failure, None);
        assert!(attempt.succeeded());
        assert!(attempt.duration < timeout);
        assert!(!attempt.excerpt.is_empty() && attempt.excerpt.bytes().all(|b| b == b'x'));
        assert!(started.elapsed() < timeout + Duration::from_millis(500));
    }

    #[tokio::test]
    async fn blocked_addresses_are_never_connected_to() {
        use BlockedAddress as B;
        let endpoint = receiver(None, |_| answer(200, &[], "")).await;
        let port = endpoint.address.port();
        let sender = sender(false, Duration::from_secs(5));
        for (value, class) in [
            (format!("http://127.0.0.1:{port}/"), B::Loopback),
            (format!("https://127.0.0.1:{port}/"), B::Loopback),
            ("https://127.0.0.1/".to_owned(), B::Loopback),
            // A name that resolves only to loopback.
            (format!("https://localhost:{port}/"), B::Loopback),
            ("https://[::1]/".to_owned(), B::Loopback),
            (format!("https://[::ffff:127.0.0.1]:{port}/"), B::Loopback),
            // Reaches this machine too.
            (format!("https://0.0.0.0:{port}/"), B::Unspecified),
        ] {
            let attempt = sender
                .post(&url(&value), HeaderMap::new(), Bytes::new())
                .await;
            assert_eq!(
                attempt.failure,
                Some(Failure::AddressNotAllowed(class)),
                "{value}"
            );
            assert_eq!(attempt.status, None, "{value}");
        }
        assert_eq!(endpoint.connections.load(Ordering::SeqCst), 0);
        assert!(endpoint.paths().is_empty());
    }

    #[test]
    fn resolved_addresses_keep_only_those_allowed() {
        let address = |s: &str| SocketAddr::new(s.parse().unwrap(), 0);
        let mixed = [
            address("127.0.0.1"),
            address("93.184.216.34"),
            address("10.0.0.1"),
            address("2606:4700::1111"),
            address("::1"),
        ];
        let kept = allowed_addresses(mixed, false).unwrap();
        assert_eq!(kept, [address("93.184.216.34"), address("2606:4700::1111")]);
        assert_eq!(allowed_addresses(mixed, true).unwrap(), mixed);
        let blocked_only = [address("169.254.169.254"), address("127.0.0.1")];
        assert!(matches!(
            allowed_addresses(blocked_only, false),
            Err(ResolveError::Blocked(BlockedAddress::LinkLocal))
        ));
        assert!(matches!(
            allowed_addresses([], false),
            Err(ResolveError::NoAddresses)
        ));
    }

    #[tokio::test]
    async fn https_to_a_trusted_certificate_is_delivered_over_http2() {
        let (cert, tls) = self_signed();
        let endpoint = receiver(Some(tls), |_| answer(200, &[], "secure")).await;
        let sender = Sender::new(SenderOptions {
            allow_private: true,
            extra_root_certificates: vec![cert.to_vec()],
            ..SenderOptions::default()
        })
        .unwrap();
        let url = url(&format!("https://{}/hook", endpoint.address));
        let attempt = sender
            .post(&url, HeaderMap::new(), Bytes::from_static(b"{}"))
            .await;
        assert_eq!(attempt.failure, None);
        assert_eq!(attempt.status, Some(200));
        assert_eq!(attempt.excerpt, "secure");
        let seen = endpoint.seen.lock().unwrap()[0].clone();
        assert_eq!(
            (seen.version, seen.body.as_ref()),
            (Version::HTTP_2, &b"{}"[..])
        );
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_tls_failure() {
        let (_, tls) = self_signed();
        let (other, _) = self_signed();
        let endpoint = receiver(Some(tls), |_| answer(200, &[], "")).await;
        let sender = Sender::new(SenderOptions {
            allow_private: true,
            extra_root_certificates: vec![other.to_vec()],
            ..SenderOptions::default()
        })
        .unwrap();
        let url = url(&format!("https://{}/hook", endpoint.address));
        let attempt = sender.post(&url, HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.failure, Some(Failure::Tls));
        assert_eq!(attempt.status, None);
        assert!(endpoint.paths().is_empty());
    }

    #[test]
    fn malformed_extra_roots_are_refused_at_setup() {
        let result = Sender::new(SenderOptions {
            extra_root_certificates: vec![b"not a certificate".to_vec()],
            ..SenderOptions::default()
        });
        assert!(matches!(result, Err(SenderError::Tls(_))));
    }

    #[test]
    fn failure_causes_are_found_inside_wrapped_errors() {
        let wrapped = |err: io::Error| io::Error::other(err);
        let cases: [(io::Error, Option<Failure>); 6] = [
            (
                io::Error::other(ResolveError::Blocked(BlockedAddress::Private)),
                Some(Failure::AddressNotAllowed(BlockedAddress::Private)),
            ),
            (
                wrapped(io::Error::other(ResolveError::Lookup(io::Error::other(
                    "no",
                )))),
                Some(Failure::Dns),
            ),
            (
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
                ),
                Some(Failure::Tls),
            ),
            (
                wrapped(io::ErrorKind::ConnectionRefused.into()),
                Some(Failure::Connect),
            ),
            (io::ErrorKind::TimedOut.into(), Some(Failure::Timeout)),
            (io::Error::other("something else"), None),
        ];
        for (err, failure) in cases {
            assert_eq!(cause_in_chain(&err), failure, "{err}");
        }
    }

    #[test]
    fn failures_display_in_kebab_case_with_the_class() {
        let blocked = Failure::AddressNotAllowed(BlockedAddress::LinkLocal);
        assert_eq!(blocked.to_string(), "address-not-allowed (link-local)");
        assert_eq!(<&str>::from(blocked), "address-not-allowed");
        assert_eq!(Failure::Timeout.to_string(), "timeout");
        assert_eq!(Failure::Dns.to_string(), "dns");
    }

    #[test]
    fn excerpts_are_cut_at_a_character_boundary() {
        let smile = "😀".as_bytes();
        let cut_smile = [b"ab".as_slice(), &smile[..2]].concat();
        assert_eq!(excerpt_text(&cut_smile, true), "ab");
        // A body that ends there is malformed, not cut.
        assert_eq!(excerpt_text(&cut_smile, false), "ab\u{fffd}");
        assert_eq!(
            excerpt_text(&[b"ab".as_slice(), smile].concat(), true),
            "ab😀"
        );
        assert_eq!(excerpt_text(b"a\xffb", false), "a\u{fffd}b");
        // Replacement characters never make it longer than 1 KiB.
        let invalid = excerpt_text(&[0xff; EXCERPT_BYTES], true);
        assert!(invalid.len() <= EXCERPT_BYTES && invalid.chars().all(|c| c == '\u{fffd}'));
    }
}
