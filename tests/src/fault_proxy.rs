//! A TCP proxy between an xDS client and its ADS server that a test
//! switches between control-plane faults (issue 5, "Control-plane faults";
//! rules A4.1, A4.2, A4.4, A4.10 and A5.2 of the rules reference, section E.4
//! "Fault injection in integration tests").
//!
//! The client is pointed at [`FaultProxy::uri`]; every stream attempt of the
//! client is one TCP connection (the ADS client makes a fresh channel per
//! attempt), so [`Counters::accepted`] counts reconnect attempts.
//!
//! The proxy reads the server → client direction as HTTP/2 frames (RFC 9113
//! §4.1: a 9-byte header, then the payload) and the DATA payloads as
//! length-prefixed gRPC messages (gRPC "PROTOCOL-HTTP2", Length-Prefixed
//! Message), so it can count complete responses and act exactly between two
//! of them, or in the middle of one. The client → server direction is copied
//! as it comes and read the same way, to see the client acknowledge a
//! response.
//!
//! A connection accepted while the fault forwards ([`Fault::Pass`],
//! [`Fault::KillBefore`], the two resets) follows the fault live; a change
//! to any fault but [`Fault::Pass`] or [`Fault::KillBefore`] cuts it (the
//! server went away, or restarted into the new behaviour), so that the
//! client's next attempt meets the fault. A connection accepted under a
//! non-forwarding fault is handled by that fault and ends with the next
//! change of fault.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_xds::TypeUrl;
use mesh_xds::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does to the control-plane connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// The server is dead: open connections are cut, new ones are accepted
    /// and closed at once.
    Kill,
    /// Forward until the server starts a response that carries resources
    /// of `type_url` (found by its type URL in the message bytes); then cut
    /// the connection before that response reaches the client, or, with
    /// `torn`, after the first half of its first HTTP/2 frame (the server
    /// died while writing it). The fault then becomes [`Fault::Kill`].
    KillBefore {
        /// The type whose response is not delivered.
        type_url: TypeUrl,
        /// Deliver half of the frame before cutting.
        torn: bool,
    },
    /// Open connections are cut; new ones are accepted and held open in
    /// silence: nothing is forwarded, nothing answered (the client's
    /// connect timeout must fire, A4.10).
    Blackhole,
    /// The listener stops accepting: connections wait in the kernel's
    /// backlog, completed by the kernel but never served.
    NeverAccept,
    /// New connections are answered with bytes that are not HTTP/2.
    Garbage,
    /// New connections get a well-formed HTTP/2 gRPC response whose one
    /// message is not a `DiscoveryResponse` (undecodable protobuf).
    GrpcGarbage,
    /// Open connections are cut; new ones are forwarded and closed after
    /// their first response, once the client acknowledged it (the server
    /// of rule A4.4: one response, then the stream dies). The proxy reads
    /// the client's requests as SotW `DiscoveryRequest`s: an ACK or NACK is
    /// one with a `response_nonce`.
    ResetAfterResponse,
    /// Open connections are cut; new ones are forwarded, and the HTTP/2
    /// stream is reset (RST_STREAM, CANCEL) toward the client after every
    /// response, once the client acknowledged it (as for
    /// [`Fault::ResetAfterResponse`]); the connection stays up.
    ResetStreamAfterResponse,
}

impl Fault {
    /// Whether a switch to this fault leaves open connections alone.
    fn keeps_connections(self) -> bool {
        matches!(self, Fault::Pass | Fault::KillBefore { .. })
    }

    /// Whether connections under this fault are forwarded to the server.
    fn forwards(self) -> bool {
        matches!(
            self,
            Fault::Pass
                | Fault::KillBefore { .. }
                | Fault::ResetAfterResponse
                | Fault::ResetStreamAfterResponse
        )
    }
}

/// What the proxy has seen since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted: the client's connection attempts.
    pub accepted: u64,
    /// Complete gRPC messages forwarded from the server to the client.
    pub responses: u64,
    /// Connections the proxy closed because of a fault (not counting the
    /// ones the client closed).
    pub cut: u64,
    /// Times a [`Fault::KillBefore`] fired.
    pub fired: u64,
    /// Streams reset by [`Fault::ResetStreamAfterResponse`].
    pub stream_resets: u64,
    /// Client requests that acknowledged a response (ACK or NACK: a
    /// `response_nonce`), read as SotW `DiscoveryRequest`s.
    pub acks: u64,
}

/// The bytes [`Fault::Garbage`] answers with: an HTTP/1 status line, which
/// an HTTP/2 client reads as a frame header of an impossible size.
pub const GARBAGE: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\nx-fault: not http/2\r\n\r\n\xff\xfe\xfd";

/// The message [`Fault::GrpcGarbage`] sends: field 1 with wire type 7,
/// which no protobuf decoder accepts, then text.
pub const GRPC_GARBAGE: &[u8] = b"\x0fnot a DiscoveryResponse";

/// The proxy. Dropping it stops it and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    counters: watch::Sender<Counters>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("fault", &*self.fault.borrow())
            .field("counters", &*self.counters.borrow())
            .finish()
    }
}

/// What the accept loop and the connections share.
#[derive(Clone)]
struct Shared {
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    counters: watch::Sender<Counters>,
}

impl Shared {
    fn count(&self, f: impl FnOnce(&mut Counters)) {
        self.counters.send_modify(f);
    }
}

// === impl FaultProxy ===

impl FaultProxy {
    /// A proxy on a fresh 127.0.0.1 port in front of the ADS server at
    /// `upstream`, passing traffic.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, _) = watch::channel(Fault::Pass);
        let (counters, _) = watch::channel(Counters::default());
        let shared = Shared {
            upstream,
            fault: fault.clone(),
            counters: counters.clone(),
        };
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(Self {
            addr,
            fault,
            counters,
            task,
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server URI to give the xDS client (`127.0.0.1:<port>`).
    pub fn uri(&self) -> String {
        self.addr.to_string()
    }

    /// Switches to `fault`.
    pub fn set(&self, fault: Fault) {
        tracing::info!(?fault, "fault proxy: switching");
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        *self.counters.borrow()
    }

    /// Waits until the counters satisfy `pred` and returns them; panics,
    /// naming `what`, if that takes longer than 20 s (a generous bound for
    /// events that take milliseconds to seconds).
    pub async fn wait_for(&self, what: &str, mut pred: impl FnMut(&Counters) -> bool) -> Counters {
        let mut rx = self.counters.subscribe();
        match tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|c| pred(c))).await {
            Ok(Ok(c)) => *c,
            Ok(Err(_)) => panic!("fault proxy stopped while waiting for {what}"),
            Err(_) => panic!(
                "fault proxy: no {what} within 20 s (counters {:?}, fault {:?})",
                self.counters(),
                self.fault()
            ),
        }
    }
}

// === the accept loop ===

async fn accept_loop(listener: TcpListener, shared: Shared) {
    let mut conns = JoinSet::new();
    let mut faults = shared.fault.subscribe();
    loop {
        if *faults.borrow_and_update() == Fault::NeverAccept {
            tokio::select! {
                r = faults.changed() => if r.is_err() { return },
                Some(_) = conns.join_next() => {}
            }
            continue;
        }
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "fault proxy: accept failed");
                    continue;
                }
            },
            r = faults.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
            Some(_) = conns.join_next() => continue,
        };
        let _ = stream.set_nodelay(true);
        shared.count(|c| c.accepted += 1);
        let fault = *shared.fault.borrow();
        tracing::debug!(?fault, "fault proxy: connection accepted");
        let shared = shared.clone();
        match fault {
            Fault::Kill => {
                shared.count(|c| c.cut += 1);
                drop(stream);
            }
            f if f.forwards() => {
                conns.spawn(forward(stream, shared));
            }
            Fault::Blackhole => {
                conns.spawn(until_fault_changes(shared, blackhole(stream)));
            }
            Fault::Garbage => {
                conns.spawn(until_fault_changes(shared, garbage(stream)));
            }
            Fault::GrpcGarbage => {
                conns.spawn(until_fault_changes(shared, grpc_garbage(stream)));
            }
            // Not accepted in that state; unreachable in practice.
            _ => drop(stream),
        }
    }
}

/// Runs `conn` until it ends or the fault changes.
async fn until_fault_changes(shared: Shared, conn: impl Future<Output = ()>) {
    let mut faults = shared.fault.subscribe();
    faults.borrow_and_update();
    tokio::select! {
        () = conn => {}
        _ = faults.changed() => shared.count(|c| c.cut += 1),
    }
}

/// Holds the connection open and reads nothing back: the client's bytes
/// stay in the socket buffers, no byte is ever answered.
async fn blackhole(stream: TcpStream) {
    let _held = stream;
    std::future::pending::<()>().await;
}

/// Answers with [`GARBAGE`] and drains the client until it gives up.
async fn garbage(mut stream: TcpStream) {
    if stream.write_all(GARBAGE).await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Serves HTTP/2 and answers every request with a gRPC response holding
/// one [`GRPC_GARBAGE`] message and an OK status.
async fn grpc_garbage(stream: TcpStream) {
    let service = hyper::service::service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
        let mut message = Vec::with_capacity(5 + GRPC_GARBAGE.len());
        message.push(0);
        message.extend_from_slice(&(GRPC_GARBAGE.len() as u32).to_be_bytes());
        message.extend_from_slice(GRPC_GARBAGE);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from(message))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures::stream::iter(frames));
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(body)
            .expect("a valid response");
        Ok::<_, Infallible>(response)
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

// === forwarding ===

/// Forwards one connection until either side closes it or a fault cuts it.
async fn forward(client: TcpStream, shared: Shared) {
    let server = match TcpStream::connect(shared.upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "fault proxy: upstream connect failed");
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let mut faults = shared.fault.subscribe();
    faults.borrow_and_update();
    let (acks, acks_rx) = watch::channel(0u64);
    let up = upstream(&mut client_read, &mut server_write, &acks, &shared);
    let down = downstream(server_read, client_write, acks_rx, &shared);
    let cut = async {
        loop {
            if faults.changed().await.is_err() || !faults.borrow_and_update().keeps_connections() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        d = down => if matches!(d, Down::Cut) {
            shared.count(|c| c.cut += 1);
        },
        () = cut => shared.count(|c| c.cut += 1),
    }
}

/// How the server → client direction ended.
enum Down {
    /// A side closed or failed.
    Closed,
    /// The fault cut the connection.
    Cut,
}

/// HTTP/2 frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
/// DATA flag PADDED.
const PADDED: u8 = 0x8;
/// RST_STREAM error code CANCEL.
const CANCEL: u32 = 0x8;

/// Copies server frames to the client, applying the fault between (or in)
/// frames.
async fn downstream(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut acks: watch::Receiver<u64>,
    shared: &Shared,
) -> Down {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut grpc = GrpcMessages::default();
    loop {
        while let Some(frame) = next_frame(&mut buf) {
            let fault = *shared.fault.borrow();
            let kind = frame[3];
            let flags = frame[4];
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            if grpc.is_reset(stream) {
                // The client no longer has the stream; the server still
                // writes to it.
                continue;
            }
            let needle = match fault {
                Fault::KillBefore { type_url, .. } => Some(type_url.as_str().as_bytes()),
                _ => None,
            };
            let seen = if kind == DATA {
                grpc.feed(stream, data_payload(&frame, flags), needle)
            } else {
                Seen::default()
            };
            if seen.matched
                && let Fault::KillBefore { torn, .. } = fault
            {
                if torn {
                    let half = 9 + (frame.len() - 9) / 2;
                    let _ = to.write_all(&frame[..half]).await;
                }
                tracing::info!(torn, "fault proxy: server killed mid-update");
                shared.fault.send_replace(Fault::Kill);
                shared.count(|c| c.fired += 1);
                return Down::Cut;
            }
            let acked = *acks.borrow_and_update();
            if to.write_all(&frame).await.is_err() {
                return Down::Closed;
            }
            if seen.completed > 0 {
                shared.count(|c| c.responses += seen.completed);
                if matches!(
                    fault,
                    Fault::ResetAfterResponse | Fault::ResetStreamAfterResponse
                ) && acks.wait_for(|a| *a > acked).await.is_err()
                {
                    return Down::Closed;
                }
                match fault {
                    Fault::ResetAfterResponse => return Down::Cut,
                    Fault::ResetStreamAfterResponse => {
                        let mut rst = Vec::with_capacity(13);
                        rst.extend_from_slice(&[0, 0, 4, RST_STREAM, 0]);
                        rst.extend_from_slice(&stream.to_be_bytes());
                        rst.extend_from_slice(&CANCEL.to_be_bytes());
                        if to.write_all(&rst).await.is_err() {
                            return Down::Closed;
                        }
                        grpc.reset(stream);
                        shared.count(|c| c.stream_resets += 1);
                    }
                    _ => {}
                }
            }
        }
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Down::Closed,
            Ok(_) => {}
        }
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4), before the
/// client's first frame.
const PREFACE_LEN: usize = 24;

/// The largest client message the proxy decodes (bigger ones are
/// forwarded unread).
const MAX_REQUEST: usize = 1 << 20;

/// Copies the client's bytes to the server as they come, and counts the
/// requests that acknowledge a response in `acks`.
async fn upstream(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    acks: &watch::Sender<u64>,
    shared: &Shared,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    let mut buf = BytesMut::new();
    let mut preface = PREFACE_LEN;
    let mut requests: HashMap<u32, Vec<u8>> = HashMap::new();
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&chunk[..n]).await.is_err() {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let skip = preface.min(buf.len());
        buf.advance(skip);
        preface -= skip;
        while let Some(frame) = next_frame(&mut buf) {
            if frame[3] != DATA {
                continue;
            }
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            let pending = requests.entry(stream).or_default();
            pending.extend_from_slice(data_payload(&frame, frame[4]));
            let mut acked = 0;
            while let Some(body) = take_message(pending) {
                if DiscoveryRequest::decode(body.as_slice())
                    .is_ok_and(|r| !r.response_nonce.is_empty())
                {
                    acked += 1;
                }
            }
            if acked > 0 {
                acks.send_modify(|a| *a += acked);
                shared.count(|c| c.acks += acked);
            }
        }
    }
}

/// The body of the first whole length-prefixed gRPC message in `pending`,
/// removed from it. A message too big to decode is dropped unread.
fn take_message(pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    if pending.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
    if len > MAX_REQUEST {
        pending.clear();
        return None;
    }
    if pending.len() < 5 + len {
        return None;
    }
    let body = pending[5..5 + len].to_vec();
    pending.drain(..5 + len);
    Some(body)
}

/// The next whole frame at the front of `buf`, if it has arrived.
fn next_frame(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 9 {
        return None;
    }
    let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
    if buf.len() < 9 + len {
        buf.reserve(9 + len - buf.len());
        return None;
    }
    Some(buf.split_to(9 + len).freeze())
}

/// The data of a DATA frame, without its padding.
fn data_payload(frame: &[u8], flags: u8) -> &[u8] {
    let payload = &frame[9..];
    if flags & PADDED == 0 {
        return payload;
    }
    let Some((&pad, rest)) = payload.split_first() else {
        return &[];
    };
    &rest[..rest.len().saturating_sub(usize::from(pad))]
}

/// How many bytes of a message's start are searched for a type URL.
const PREFIX: usize = 4096;

/// Where each HTTP/2 stream is in its sequence of gRPC messages.
#[derive(Default)]
struct GrpcMessages {
    streams: HashMap<u32, Message>,
}

/// The message being read on one stream.
#[derive(Default)]
struct Message {
    /// The bytes of the 5-byte prefix read so far.
    header: Vec<u8>,
    /// Body bytes still to come.
    remaining: usize,
    /// The first [`PREFIX`] bytes of the body.
    start: Vec<u8>,
    /// Whether the needle was already found in this message.
    matched: bool,
    /// The stream was reset toward the client.
    reset: bool,
}

/// What one DATA frame held.
#[derive(Default)]
struct Seen {
    /// Messages that ended in it.
    completed: u64,
    /// A message in it carries the needle (found for the first time).
    matched: bool,
}

impl GrpcMessages {
    fn is_reset(&self, stream: u32) -> bool {
        self.streams.get(&stream).is_some_and(|m| m.reset)
    }

    fn reset(&mut self, stream: u32) {
        self.streams.entry(stream).or_default().reset = true;
    }

    /// Reads `data` of `stream`, searching each message's start for
    /// `needle`.
    fn feed(&mut self, stream: u32, mut data: &[u8], needle: Option<&[u8]>) -> Seen {
        let m = self.streams.entry(stream).or_default();
        let mut seen = Seen::default();
        while !data.is_empty() {
            if m.header.len() < 5 {
                let take = (5 - m.header.len()).min(data.len());
                m.header.extend_from_slice(&data[..take]);
                data.advance(take);
                if m.header.len() == 5 {
                    let len =
                        u32::from_be_bytes([m.header[1], m.header[2], m.header[3], m.header[4]]);
                    m.remaining = len as usize;
                    m.start.clear();
                    m.matched = false;
                    if m.remaining == 0 {
                        m.header.clear();
                        seen.completed += 1;
                    }
                }
                continue;
            }
            let take = m.remaining.min(data.len());
            let room = PREFIX.saturating_sub(m.start.len()).min(take);
            m.start.extend_from_slice(&data[..room]);
            data.advance(take);
            m.remaining -= take;
            if let Some(needle) = needle
                && !m.matched
                && m.start.windows(needle.len()).any(|w| w == needle)
            {
                m.matched = true;
                seen.matched = true;
            }
            if m.remaining == 0 {
                m.header.clear();
                seen.completed += 1;
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn grpc_messages_are_counted_across_frames_and_the_needle_found() {
        let mut g = GrpcMessages::default();
        let mut bytes = message(b"xx type.googleapis.com/envoy.config.cluster.v3.Cluster yy");
        bytes.extend(message(b"other"));
        let needle = TypeUrl::Cluster.as_str().as_bytes();
        let (a, b) = bytes.split_at(3);
        let first = g.feed(1, a, Some(needle));
        assert_eq!((first.completed, first.matched), (0, false));
        let second = g.feed(1, b, Some(needle));
        assert_eq!((second.completed, second.matched), (2, true));
        let third = g.feed(1, &message(b"no type here"), Some(needle));
        assert_eq!((third.completed, third.matched), (1, false));
    }

    #[test]
    fn frames_are_split_at_their_length_and_padding_is_dropped() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0, 4, DATA, PADDED, 0, 0, 0, 1, 1, b'a', b'b', 0]);
        buf.extend_from_slice(&[0, 0, 9]);
        let f = next_frame(&mut buf).unwrap();
        assert_eq!(data_payload(&f, f[4]), b"ab");
        assert!(next_frame(&mut buf).is_none());
        assert_eq!(buf.len(), 3);
    }
}
