//! A raw HTTP/2 client: frames written and read by hand, to break the rules
//! a real client keeps, and gRPC calls made with the `h2` crate, so that the
//! body can be anything.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use percent_encoding::percent_decode_str;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;

use super::bounded;

// Frames (RFC 9113): just enough to break the rules a real client keeps.

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The (identifier, value) pairs of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    /// The error code of a RST_STREAM frame.
    pub fn rst_error(&self) -> u32 {
        u32::from_be_bytes(self.payload[..4].try_into().unwrap())
    }

    /// The error code of a GOAWAY frame.
    pub fn goaway_error(&self) -> u32 {
        u32::from_be_bytes(self.payload[4..8].try_into().unwrap())
    }
}

pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// HPACK integer with an `n`-bit prefix (RFC 7541, 5.1).
fn integer(out: &mut Vec<u8>, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literals without indexing (no Huffman, no table).
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(0x00);
        integer(&mut block, 7, name.len());
        block.extend_from_slice(name.as_bytes());
        integer(&mut block, 7, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// The next frame, or `None` once the server has closed the connection.
pub async fn read(stream: &mut TcpStream) -> Option<Frame> {
    let mut head = [0; 9];
    stream.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Every frame until the server closes the connection (bounded).
pub async fn read_all(stream: &mut TcpStream) -> Vec<Frame> {
    bounded("server closes the connection", async {
        let mut frames = Vec::new();
        while let Some(frame) = read(stream).await {
            frames.push(frame);
        }
        frames
    })
    .await
}

/// Connects, exchanges SETTINGS, and returns the server's settings.
pub async fn handshake(addr: SocketAddr) -> (TcpStream, Vec<(u16, u32)>) {
    handshake_on(TcpStream::connect(addr).await.unwrap()).await
}

/// Exchanges SETTINGS on `stream`, and returns the server's settings.
pub async fn handshake_on(mut stream: TcpStream) -> (TcpStream, Vec<(u16, u32)>) {
    stream.write_all(PREFACE).await.unwrap();
    stream
        .write_all(&encode(SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    let settings = bounded("server SETTINGS", async {
        loop {
            let frame = read(&mut stream).await.expect("server SETTINGS");
            if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                return frame.settings();
            }
        }
    })
    .await;
    stream
        .write_all(&encode(SETTINGS, ACK, 0, &[]))
        .await
        .unwrap();
    (stream, settings)
}

/// Every frame until the server closes the connection, answering its PINGs
/// as a live client does (so keepalive never closes it). Not bounded: the
/// caller bounds it.
pub async fn frames_until_closed(stream: &mut TcpStream) -> Vec<Frame> {
    let mut frames = Vec::new();
    receive_frames(stream, &mut frames).await;
    frames
}

/// The frames the server sends within `period`, answering its PINGs, and
/// whether it closed the connection meanwhile.
pub async fn frames_within(stream: &mut TcpStream, period: Duration) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    let closed = tokio::time::timeout(period, receive_frames(stream, &mut frames))
        .await
        .is_ok();
    (frames, closed)
}

async fn receive_frames(stream: &mut TcpStream, frames: &mut Vec<Frame>) {
    while let Some(frame) = read(stream).await {
        if frame.kind == PING && frame.flags & ACK == 0 {
            let pong = encode(PING, ACK, 0, &frame.payload);
            if stream.write_all(&pong).await.is_err() {
                break;
            }
        }
        frames.push(frame);
    }
}

// gRPC calls with any body.

/// A gRPC length-prefixed message: flag, 4-byte big-endian length, payload.
pub fn grpc_frame(compressed: u8, declared_len: u32, payload: &[u8]) -> Bytes {
    let mut frame = vec![compressed];
    frame.extend_from_slice(&declared_len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.into()
}

/// What the server answered to a hand-made gRPC call.
#[derive(Debug)]
pub struct RawReply {
    pub http_status: http::StatusCode,
    /// `grpc-status`, from the trailers or (trailers-only) the headers.
    pub code: Option<Code>,
    pub message: String,
}

/// A gRPC call made with the `h2` crate so that the body can be anything.
/// `body: None` sends the headers and then stalls, never finishing the upload.
pub async fn raw_grpc_call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> RawReply {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client = client.ready().await.unwrap();
    let (response, mut upload) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    if let Some(body) = body {
        upload.send_data(body, true).unwrap();
    }
    let response = response.await.expect("an HTTP/2 response");
    let http_status = response.status();
    let head = response.headers().clone();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("response body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    drop(upload);
    driver.abort();
    let field = |name: &str| {
        trailers
            .get(name)
            .or_else(|| head.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
    };
    RawReply {
        http_status,
        code: field("grpc-status").map(|s| Code::from_i32(s.parse().unwrap())),
        // `grpc-message` is percent-encoded on the wire.
        message: percent_decode_str(&field("grpc-message").unwrap_or_default())
            .decode_utf8()
            .expect("UTF-8 grpc-message")
            .into_owned(),
    }
}
