//! Accepting client connections: at most a configured number open at once,
//! at most a configured number of them from one IP address, and each must
//! start its first request within a deadline.
//!
//! A connection over the limit of open connections waits in the listen queue
//! until one closes. One over its address's limit is closed as soon as it is
//! accepted: were it to wait, it would keep every other client waiting
//! behind it in the queue.
//!
//! A connection that stalls before its HTTP/2 preface (or, with TLS, in its
//! handshake) would otherwise hold a file descriptor forever: hyper waits for
//! the preface without a timeout. The deadline runs from the moment the
//! connection is accepted; it covers the TLS handshake, and then the first
//! [`PREFACE_LEN`] bytes of the request (decrypted, with TLS). Once they have
//! arrived it no longer applies; from then on HTTP/2 keepalive pings close
//! peers that went away.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig, server::TlsStream};
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::server::Connected;

/// The length of the HTTP/2 client preface (`PRI * HTTP/2.0...`); any
/// HTTP/1.1 request line with its headers is longer too.
pub const PREFACE_LEN: usize = 24;

/// How long accepting pauses after it failed (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How many client connections may be open, and how soon each must start
/// its first request.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// Client connections open at once; further ones wait in the listen queue.
    pub max_open: u32,
    /// Client connections open at once from one IP address, if limited;
    /// further ones are closed at once.
    pub per_peer: Option<u32>,
    /// How long after it was accepted a connection must have finished its
    /// TLS handshake and sent [`PREFACE_LEN`] bytes.
    pub handshake_timeout: Duration,
}

/// The client connections on `listener`, within `limits` (see
/// [`AcceptLimits`]): each closed if it has not sent [`PREFACE_LEN`] bytes
/// within the handshake timeout.
pub fn accept(
    listener: TcpListener,
    limits: AcceptLimits,
) -> impl Stream<Item = io::Result<ClientConnection<TcpStream>>> {
    accept_tcp(listener, limits).map(|accepted| {
        accepted.map(|(stream, deadline, slot)| ClientConnection::new(stream, deadline, slot))
    })
}

/// Like [`accept`], with TLS: the handshake and then the first
/// [`PREFACE_LEN`] decrypted bytes must both arrive within the handshake
/// timeout. Handshakes run concurrently, each in a task of its own, aborted
/// if the stream is dropped (the server stops); one that fails or runs out
/// of time yields an error (logged; accepting goes on).
pub fn accept_tls(
    listener: TcpListener,
    limits: AcceptLimits,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = io::Result<ClientConnection<TlsStream<TcpStream>>>> {
    let acceptor = TlsAcceptor::from(config);
    accept_tcp(listener, limits)
        .map(move |accepted| {
            let acceptor = acceptor.clone();
            async move {
                let (stream, deadline, slot) = accepted?;
                let handshake = tokio::spawn(async move {
                    let stream = tokio::time::timeout_at(deadline, acceptor.accept(stream))
                        .await
                        .map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the TLS handshake did not end within the handshake deadline",
                            )
                        })??;
                    Ok(ClientConnection::new(stream, deadline, slot))
                });
                AbortOnDropHandle::new(handshake)
                    .await
                    .unwrap_or_else(|err| Err(io::Error::other(err)))
            }
        })
        // Every connection holds a slot, so at most `max_open` handshakes
        // are under way.
        .buffer_unordered(limits.max_open.max(1) as usize)
}

/// Accepted TCP connections, each with its deadline and its slot among the
/// `max_open` (and its address's, if limited).
fn accept_tcp(
    listener: TcpListener,
    limits: AcceptLimits,
) -> impl Stream<Item = io::Result<(TcpStream, Instant, Slot)>> {
    let slots = Arc::new(Semaphore::new(limits.max_open as usize));
    let peers = limits.per_peer.map(Peers::new);
    futures_util::stream::unfold(
        (listener, slots, peers),
        move |(listener, slots, peers)| async move {
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            // A connection over its address's limit is closed, and its slot
            // goes to the next one.
            let accepted = loop {
                match listener.accept().await {
                    Ok((stream, address)) => {
                        let peer = match &peers {
                            None => None,
                            Some(peers) => match peers.admit(address.ip()) {
                                Some(peer) => Some(peer),
                                None => {
                                    tracing::debug!(
                                        peer = %address.ip(),
                                        "closed a connection over its address's limit"
                                    );
                                    continue;
                                }
                            },
                        };
                        let _ = stream.set_nodelay(true);
                        let deadline = Instant::now() + limits.handshake_timeout;
                        break Ok((
                            stream,
                            deadline,
                            Slot {
                                _open: slot,
                                _peer: peer,
                            },
                        ));
                    }
                    Err(err) => {
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        break Err(err);
                    }
                }
            };
            Some((accepted, (listener, slots, peers)))
        },
    )
}

/// A connection's place among those open: released when it closes.
#[derive(Debug)]
struct Slot {
    _open: OwnedSemaphorePermit,
    _peer: Option<PeerSlot>,
}

/// The client connections open from each IP address, each at most `limit`.
#[derive(Debug)]
struct Peers {
    limit: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl Peers {
    fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::default(),
        })
    }

    /// A place for one more connection from `address`, unless it already
    /// has `limit` open. An IPv4 address mapped into IPv6 counts as itself.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<PeerSlot> {
        let address = address.to_canonical();
        let mut open = self.open.lock().expect("never poisoned");
        let count = open.entry(address).or_default();
        if *count >= self.limit {
            if *count == 0 {
                open.remove(&address);
            }
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.clone(),
            address,
        })
    }
}

/// One connection's place among its address's: released on drop.
#[derive(Debug)]
struct PeerSlot {
    peers: Arc<Peers>,
    address: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().expect("never poisoned");
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// An accepted client connection (TCP, or TLS over TCP): holds its slot
/// until it closes, and fails its reads once its deadline passes before
/// [`PREFACE_LEN`] bytes arrived. Its connect info is the inner stream's:
/// `TcpConnectInfo`, or over TLS `TlsConnectInfo<TcpConnectInfo>` (tonic's
/// `Request::remote_addr` and `peer_certs` read either).
#[derive(Debug)]
pub struct ClientConnection<S> {
    stream: S,
    /// Bytes received so far, counted up to [`PREFACE_LEN`].
    received: usize,
    /// Until the preface's length has arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl<S> ClientConnection<S> {
    fn new(stream: S, deadline: Instant, slot: Slot) -> Self {
        Self {
            stream,
            received: 0,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            _slot: slot,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientConnection<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not start its first request within the handshake deadline",
            )));
        }
        let filled = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if this.deadline.is_some() {
            this.received += buf.filled().len() - filled;
            if this.received >= PREFACE_LEN {
                this.deadline = None;
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientConnection<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl<S: Connected> Connected for ClientConnection<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> S::ConnectInfo {
        self.stream.connect_info()
    }
}
