//! Accepting client connections: at most a configured number open at once,
//! and each must start its first request within a deadline.
//!
//! A connection that stalls before its HTTP/2 preface (or, with TLS, in its
//! handshake) would otherwise hold a file descriptor forever: hyper waits for
//! the preface without a timeout. The deadline runs from the moment the
//! connection is accepted; it covers the TLS handshake, and then the first
//! [`PREFACE_LEN`] bytes of the request (decrypted, with TLS). Once they have
//! arrived it no longer applies; from then on HTTP/2 keepalive pings close
//! peers that went away.

use std::{
    io,
    pin::Pin,
    sync::Arc,
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

/// The client connections on `listener`: at most `max_open` open at once
/// (further ones wait in the listen queue), each closed if it has not sent
/// [`PREFACE_LEN`] bytes within `handshake_timeout`.
pub fn accept(
    listener: TcpListener,
    max_open: u32,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<ClientConnection<TcpStream>>> {
    accept_tcp(listener, max_open, handshake_timeout).map(|accepted| {
        accepted.map(|(stream, deadline, slot)| ClientConnection::new(stream, deadline, slot))
    })
}

/// Like [`accept`], with TLS: the handshake and then the first
/// [`PREFACE_LEN`] decrypted bytes must both arrive within
/// `handshake_timeout`. Handshakes run concurrently, each in a task of its
/// own, aborted if the stream is dropped (the server stops); one that fails
/// or runs out of time yields an error (tonic logs it and goes on accepting).
pub fn accept_tls(
    listener: TcpListener,
    max_open: u32,
    handshake_timeout: Duration,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = io::Result<ClientConnection<TlsStream<TcpStream>>>> {
    let acceptor = TlsAcceptor::from(config);
    accept_tcp(listener, max_open, handshake_timeout)
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
        .buffer_unordered(max_open.max(1) as usize)
}

/// Accepted TCP connections, each with its deadline and its slot among the
/// `max_open`.
fn accept_tcp(
    listener: TcpListener,
    max_open: u32,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<(TcpStream, Instant, OwnedSemaphorePermit)>> {
    let slots = Arc::new(Semaphore::new(max_open as usize));
    futures_util::stream::unfold((listener, slots), move |(listener, slots)| async move {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let accepted = match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                Ok((stream, Instant::now() + handshake_timeout, slot))
            }
            Err(err) => {
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                Err(err)
            }
        };
        Some((accepted, (listener, slots)))
    })
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
    _slot: OwnedSemaphorePermit,
}

impl<S> ClientConnection<S> {
    fn new(stream: S, deadline: Instant, slot: OwnedSemaphorePermit) -> Self {
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
