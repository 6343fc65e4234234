//! HTTP/2 transport limits: each holds against a misbehaving peer, and the
//! server keeps serving a well-behaved client afterwards.
//!
//! The abuse is driven below the gRPC client where it has to be: over a raw
//! TCP socket speaking HTTP/2 frames by hand (RFC 9113 framing, RFC 7541
//! HPACK with literal, non-Huffman strings), or through a proxy that can
//! freeze a connection without closing it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_client::Code;
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{Chunk, StatRequest, UploadHeader, UploadRequest};
use ferry_server::{Limits, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::harness::{TestServer, download_bytes, random_bytes, upload_bytes};

/// The server still serves: a fresh client uploads and downloads a file.
async fn still_serves(server: &TestServer, tag: &str) {
    let client = server.client().await;
    let path = format!("probe/{tag}.bin");
    let data = random_bytes(64 * 1024, tag.len() as u64);
    upload_bytes(&client, &path, &data).await.unwrap_or_else(|e| panic!("probe upload after {tag}: {e}"));
    let fetched = download_bytes(&client, &path).await.unwrap_or_else(|e| panic!("probe download after {tag}: {e}"));
    assert!(fetched == data, "probe after {tag}: downloaded bytes differ");
}

// ---------------------------------------------------------------------------
// A hand-driven HTTP/2 connection
// ---------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM, or of a GOAWAY.
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().expect("error code"))
    }

    /// A GOAWAY's last stream id.
    fn last_stream_id(&self) -> u32 {
        u32::from_be_bytes(self.payload[..4].try_into().expect("last stream id")) & 0x7fff_ffff
    }

    /// A GOAWAY's debug data.
    fn debug_data(&self) -> String {
        String::from_utf8_lossy(&self.payload[8..]).into_owned()
    }
}

fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with a `prefix`-bit prefix under `flags` (RFC 7541, 5.1).
fn hpack_int(out: &mut Vec<u8>, prefix: u32, flags: u8, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest % 0x80) as u8 | 0x80);
        rest /= 0x80;
    }
    out.push(rest as u8);
}

/// An HPACK string literal, not Huffman-coded (RFC 7541, 5.2).
fn hpack_str(out: &mut Vec<u8>, value: &str) {
    hpack_int(out, 7, 0, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// "Literal Header Field without Indexing", name from the static table.
fn hpack_indexed_name(out: &mut Vec<u8>, index: usize, value: &str) {
    hpack_int(out, 4, 0x00, index);
    hpack_str(out, value);
}

/// "Literal Header Field without Indexing", new name: byte 0x00, name, value.
fn hpack_new_name(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_str(out, name);
    hpack_str(out, value);
}

/// A gRPC Stat request's header block, plus `extra` header fields.
fn stat_headers(authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    block.push(0x83); // :method POST (static index 3)
    block.push(0x86); // :scheme http (static index 6)
    hpack_indexed_name(&mut block, 4, "/ferry.v1.Ferry/Stat"); // :path
    hpack_indexed_name(&mut block, 1, authority); // :authority
    hpack_indexed_name(&mut block, 31, "application/grpc"); // content-type
    hpack_new_name(&mut block, "te", "trailers");
    for (name, value) in extra {
        hpack_new_name(&mut block, name, value);
    }
    block
}

/// A client connection spoken by hand.
struct Conn {
    socket: TcpStream,
    authority: String,
}

impl Conn {
    /// Preface and an empty SETTINGS; the server's SETTINGS is read and acked.
    async fn open(addr: SocketAddr) -> Self {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        let mut hello = PREFACE.to_vec();
        hello.extend(encode(SETTINGS, 0, 0, &[]));
        socket.write_all(&hello).await.expect("write preface");
        let mut conn = Self { socket, authority: addr.to_string() };
        let settings = conn.read_frame().await.expect("the server's SETTINGS");
        assert_eq!((settings.kind, settings.flags & ACK), (SETTINGS, 0), "first frame: {settings:?}");
        conn.send(SETTINGS, ACK, 0, &[]).await;
        conn
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.socket.write_all(&encode(kind, flags, stream, payload)).await.expect("write frame");
    }

    /// A header block on `stream`: one HEADERS frame, or HEADERS and
    /// CONTINUATIONs when it exceeds the 16 KiB frame every peer accepts.
    async fn headers(&mut self, stream: u32, block: &[u8], end_stream: bool) {
        let end_stream = if end_stream { END_STREAM } else { 0 };
        let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
        let mut frames = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let (kind, flags) = if i == 0 { (HEADERS, end_stream) } else { (CONTINUATION, 0) };
            let last = if i + 1 == pieces.len() { END_HEADERS } else { 0 };
            frames.extend(encode(kind, flags | last, stream, piece));
        }
        self.socket.write_all(&frames).await.expect("write header block");
    }

    /// A Stat request whose header block carries `extra` fields, with
    /// END_STREAM and no body: a bad field makes it a malformed request.
    async fn bad_stat(&mut self, stream: u32, extra: &[(&str, &str)]) {
        let block = stat_headers(&self.authority, extra);
        self.headers(stream, &block, true).await;
    }

    /// A well-formed gRPC Stat call: HEADERS, then one DATA frame with the
    /// length-prefixed `StatRequest { path: "absent" }` and END_STREAM.
    async fn good_stat(&mut self, stream: u32) {
        let block = stat_headers(&self.authority, &[]);
        self.headers(stream, &block, false).await;
        let message = [0x0a, 6, b'a', b'b', b's', b'e', b'n', b't'];
        let mut body = vec![0];
        body.extend_from_slice(&u32::try_from(message.len()).expect("length").to_be_bytes());
        body.extend_from_slice(&message);
        self.send(DATA, END_STREAM, stream, &body).await;
    }

    /// The next frame; `None` once the server closed the connection.
    async fn read_frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.socket.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.socket.read_exact(&mut payload).await.ok()?;
        let stream = u32::from_be_bytes(head[5..9].try_into().expect("stream id")) & 0x7fff_ffff;
        Some(Frame { kind: head[3], flags: head[4], stream, payload })
    }

    /// Frames until `done` says so (inclusive) or the connection closes
    /// (then the last element is `None`); panics after `within`.
    async fn read_until(&mut self, within: Duration, mut done: impl FnMut(&[Frame]) -> bool) -> (Vec<Frame>, bool) {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.read_frame()).await {
                Err(_) => panic!("no end within {within:?}; frames so far: {frames:?}"),
                Ok(None) => return (frames, true),
                Ok(Some(frame)) => {
                    frames.push(frame);
                    if done(&frames) {
                        return (frames, false);
                    }
                }
            }
        }
    }

    /// Sends a PING and reads until its ACK has arrived and `resets`
    /// RST_STREAMs with it (their order relative to the ACK is h2's
    /// business): what the server made of everything sent before.
    async fn settle(&mut self, tag: u64, resets_expected: usize) -> Vec<Frame> {
        let data = tag.to_be_bytes();
        self.send(PING, 0, 0, &data).await;
        let (frames, closed) = self
            .read_until(Duration::from_secs(3), |frames| {
                let acked = frames.iter().any(|f| f.kind == PING && f.flags & ACK != 0 && f.payload == data);
                acked && resets(frames).len() >= resets_expected
            })
            .await;
        assert!(!closed, "the connection closed before the PING ACK; frames: {frames:?}");
        frames
    }

    /// Reads until the response to `stream` ends (a HEADERS frame with
    /// END_STREAM: trailers, or a trailers-only response).
    async fn answered(&mut self, stream: u32) -> Vec<Frame> {
        let (frames, closed) = self
            .read_until(Duration::from_secs(3), |frames| {
                frames.last().is_some_and(|f| f.kind == HEADERS && f.stream == stream && f.flags & END_STREAM != 0)
            })
            .await;
        assert!(!closed, "the connection closed before stream {stream} was answered; frames: {frames:?}");
        assert!(resets(&frames).is_empty(), "a well-formed call must not be reset: {frames:?}");
        frames
    }

    /// Reads until the server closes the connection (bounded).
    async fn until_closed(&mut self) -> Vec<Frame> {
        let (frames, closed) = self.read_until(Duration::from_secs(3), |_| false).await;
        assert!(closed);
        frames
    }
}

/// The one GOAWAY among `frames`.
#[track_caller]
fn goaway(frames: &[Frame]) -> &Frame {
    let goaways: Vec<&Frame> = frames.iter().filter(|f| f.kind == GOAWAY).collect();
    assert_eq!(goaways.len(), 1, "expected one GOAWAY: {frames:?}");
    goaways[0]
}

/// The RST_STREAMs among `frames`, as (stream, error code).
fn resets(frames: &[Frame]) -> Vec<(u32, u32)> {
    frames.iter().filter(|f| f.kind == RST_STREAM).map(|f| (f.stream, f.error_code())).collect()
}

// ---------------------------------------------------------------------------
// 1. SETTINGS_MAX_HEADER_LIST_SIZE
// ---------------------------------------------------------------------------

type Raw = ferry_proto::v1::ferry_client::FerryClient<Channel>;

/// A Stat of an absent file whose metadata carries one `x-big` ASCII value
/// of `len` bytes: the error it ends with.
async fn stat_with_metadata(raw: &mut Raw, len: usize) -> tonic::Status {
    let mut request = tonic::Request::new(StatRequest { path: "absent.bin".to_owned() });
    let value = MetadataValue::try_from("a".repeat(len)).expect("ASCII metadata");
    request.metadata_mut().insert("x-big", value);
    match raw.stat(request).await {
        Ok(response) => panic!("stat with {len} bytes of metadata answered: {response:?}"),
        Err(status) => status,
    }
}

/// h2 measures a header list as the sum of name + value + 32 per field,
/// pseudo-headers included, and has two thresholds:
/// - over SETTINGS_MAX_HEADER_LIST_SIZE (4096 here): the request is refused
///   alone, with an HTTP 431 response, before it reaches tonic. Its HEADERS
///   carry no grpc-status, so tonic's client maps the HTTP status: UNKNOWN,
///   "grpc-status header missing, mapped from HTTP status code 431".
/// - over 4 × that (16 KiB here: h2's MAX_HEADER_LIST_ABUSE_MULTIPLIER), h2
///   stops decoding and ends the whole connection: GOAWAY ENHANCE_YOUR_CALM,
///   "header_list_way_too_large". tonic maps ENHANCE_YOUR_CALM to
///   RESOURCE_EXHAUSTED ("h2 protocol error: ..."), and every other call on
///   that connection fails with it.
///
/// Either way the server goes on serving, and a channel whose connection
/// was ended reconnects for its next call.
#[tokio::test]
async fn header_list_size_is_enforced() {
    let options = ServerOptions { max_header_list_size: 4096, ..ServerOptions::default() };
    let server = TestServer::start_with(options).await;
    let mut raw = server.raw().await;

    // ~16 KiB: over the abuse threshold, the connection is ended.
    let big = stat_with_metadata(&mut raw, 16 * 1024).await;
    assert_eq!(big.code(), Code::ResourceExhausted, "16 KiB of metadata: {big:?}");
    assert!(big.message().contains("h2 protocol error"), "16 KiB of metadata: {big:?}");

    // 8 KiB: over the limit, under the abuse threshold: a 431 for this call.
    let medium = stat_with_metadata(&mut raw, 8 * 1024).await;
    assert_eq!(medium.code(), Code::Unknown, "8 KiB of metadata: {medium:?}");
    assert!(medium.message().contains("431"), "8 KiB of metadata: {medium:?}");

    // Small metadata reaches the service (NOT_FOUND: the file is absent),
    // on the same channel and on a fresh one.
    let small = stat_with_metadata(&mut raw, 1024).await;
    assert_eq!(small.code(), Code::NotFound, "small metadata, same channel: {small:?}");
    let small = stat_with_metadata(&mut server.raw().await, 1024).await;
    assert_eq!(small.code(), Code::NotFound, "small metadata, fresh client: {small:?}");

    // The same ~16 KiB header block on the wire: GOAWAY, then the close.
    let mut conn = Conn::open(server.addr()).await;
    let value = "a".repeat(16 * 1024);
    conn.bad_stat(1, &[("x-big", &value)]).await;
    let frames = conn.until_closed().await;
    let away = goaway(&frames);
    assert_eq!(away.error_code(), ENHANCE_YOUR_CALM, "{away:?}");
    assert_eq!(away.debug_data(), "header_list_way_too_large");
    assert!(resets(&frames).is_empty(), "{frames:?}");

    still_serves(&server, "header-list").await;
}

// ---------------------------------------------------------------------------
// 2. Locally reset streams ("rapid reset"-style abuse)
// ---------------------------------------------------------------------------
//
// h2 (0.4.20, proto/streams/counts.rs) counts every stream *it* resets
// because of the peer's protocol error ("library" resets) over the whole
// life of the connection, never decrementing. While the count is under
// `max_local_error_reset_streams` the stream gets RST_STREAM; the reset
// that would exceed it becomes GOAWAY ENHANCE_YOUR_CALM
// "too_many_internal_resets" and the connection is closed.
//
// The bad stream used: a request carrying a connection-specific field
// (`connection: keep-alive`). h2's HPACK loader marks the block malformed
// (RFC 9113, 8.2.2) and the codec returns a stream error, PROTOCOL_ERROR,
// which is counted. An uppercase field name is *not* usable for this: h2's
// decoder rejects the name itself (`HeaderName::from_lowercase`) and treats
// that as a connection error, GOAWAY PROTOCOL_ERROR on the first one (see
// `uppercase_field_name_is_a_connection_error`).

const BAD: (&str, &str) = ("connection", "keep-alive");

fn reset_limit(limit: usize) -> ServerOptions {
    ServerOptions { max_local_error_reset_streams: limit, ..ServerOptions::default() }
}

/// With the limit at 5: five bad streams get RST_STREAM PROTOCOL_ERROR and
/// the connection still answers a good call; the sixth gets GOAWAY
/// ENHANCE_YOUR_CALM and the connection closes.
#[tokio::test]
async fn reset_streams_over_the_limit_end_the_connection() {
    let server = TestServer::start_with(reset_limit(5)).await;
    let mut conn = Conn::open(server.addr()).await;
    let bad: Vec<u32> = (0..5).map(|i| 2 * i + 1).collect();
    for &stream in &bad {
        conn.bad_stat(stream, &[BAD]).await;
    }
    let frames = conn.settle(1, bad.len()).await;
    let expected: Vec<(u32, u32)> = bad.iter().map(|&stream| (stream, PROTOCOL_ERROR)).collect();
    assert_eq!(resets(&frames), expected, "at the limit, each bad stream is reset: {frames:?}");
    assert!(frames.iter().all(|f| f.kind != GOAWAY), "at the limit, no GOAWAY yet: {frames:?}");
    // Good calls do not count: the connection is still useful.
    conn.good_stat(11).await;
    conn.answered(11).await;

    // One more bad stream: over the limit.
    conn.bad_stat(13, &[BAD]).await;
    let frames = conn.until_closed().await;
    let away = goaway(&frames);
    assert_eq!(away.error_code(), ENHANCE_YOUR_CALM, "{away:?}");
    assert_eq!(away.debug_data(), "too_many_internal_resets");
    assert_eq!(away.last_stream_id(), 11, "the last stream the server processed: {away:?}");
    assert!(resets(&frames).is_empty(), "the stream over the limit gets the GOAWAY, not a reset: {frames:?}");

    still_serves(&server, "reset-limit").await;
}

/// A burst of bad streams in one write, rapid-reset style, with the limit
/// at 5: GOAWAY ENHANCE_YOUR_CALM and a closed connection. The resets h2
/// queued for the first five are typically never written (it processes the
/// whole read before flushing, and the GOAWAY discards them), so at most
/// five may appear, and only for the first five streams. (The burst is kept
/// to one small write, which the server reads whole: bytes left unread when
/// it closes would make its close a TCP RST, which may discard the GOAWAY.)
#[tokio::test]
async fn a_burst_of_bad_streams_ends_the_connection() {
    let server = TestServer::start_with(reset_limit(5)).await;
    let mut conn = Conn::open(server.addr()).await;
    let mut burst = Vec::new();
    for i in 0..20 {
        burst.extend(encode(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &stat_headers(&conn.authority, &[BAD])));
    }
    assert!(burst.len() < 4096, "one small write: {} bytes", burst.len());
    conn.socket.write_all(&burst).await.expect("write the burst");
    let frames = conn.until_closed().await;
    let away = goaway(&frames);
    assert_eq!(away.error_code(), ENHANCE_YOUR_CALM, "{away:?}");
    assert_eq!(away.debug_data(), "too_many_internal_resets");
    let resets = resets(&frames);
    assert!(
        resets.len() <= 5 && resets.iter().all(|&(stream, code)| stream <= 9 && code == PROTOCOL_ERROR),
        "{resets:?}"
    );

    still_serves(&server, "reset-burst").await;
}

/// The same bad streams under the default limit (1024): each is reset, no
/// GOAWAY, and the connection goes on answering good calls.
#[tokio::test]
async fn reset_streams_under_the_default_limit_are_only_reset() {
    assert_eq!(ServerOptions::default().max_local_error_reset_streams, 1024);
    let server = TestServer::start().await;
    let mut conn = Conn::open(server.addr()).await;
    let bad: Vec<u32> = (0..6).map(|i| 2 * i + 1).collect();
    for &stream in &bad {
        conn.bad_stat(stream, &[BAD]).await;
    }
    let frames = conn.settle(1, bad.len()).await;
    let expected: Vec<(u32, u32)> = bad.iter().map(|&stream| (stream, PROTOCOL_ERROR)).collect();
    assert_eq!(resets(&frames), expected, "{frames:?}");
    assert!(frames.iter().all(|f| f.kind != GOAWAY), "no GOAWAY under the limit: {frames:?}");
    conn.good_stat(13).await;
    conn.answered(13).await;
    let frames = conn.settle(2, 0).await;
    assert!(frames.iter().all(|f| f.kind != GOAWAY), "{frames:?}");

    still_serves(&server, "reset-default").await;
}

/// What h2 does with an uppercase field name (`X-Bad`): RFC 9113 (8.2.1)
/// calls the request malformed, a stream error, but h2's HPACK decoder
/// refuses the name outright and ends the connection at the first one,
/// whatever the reset limit: GOAWAY PROTOCOL_ERROR, last stream 0, no debug
/// data. (RFC 9113, 5.4: an endpoint may treat a stream error as a
/// connection error.) Not counted toward the reset limit, and not needed:
/// one is already fatal to its connection.
#[tokio::test]
async fn uppercase_field_name_is_a_connection_error() {
    let server = TestServer::start().await;
    let mut conn = Conn::open(server.addr()).await;
    conn.bad_stat(1, &[("X-Bad", "1")]).await;
    let frames = conn.until_closed().await;
    let away = goaway(&frames);
    assert_eq!((away.error_code(), away.last_stream_id(), away.debug_data().as_str()), (PROTOCOL_ERROR, 0, ""));
    assert!(resets(&frames).is_empty(), "{frames:?}");

    still_serves(&server, "uppercase").await;
}
// ---------------------------------------------------------------------------
// 3. HTTP/2 keepalive frees a dead peer's upload slot
// ---------------------------------------------------------------------------

/// A TCP proxy that can freeze: stop forwarding in both directions while
/// keeping both sockets open, like a peer that vanished without a FIN.
struct FreezingProxy {
    url: String,
    frozen: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let (frozen, watching) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                tokio::spawn(relay(client, server, watching.clone()));
            }
        });
        Self { url, frozen, accept }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, frozen: watch::Receiver<bool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = pipe(&mut client_read, &mut server_write, frozen.clone());
    let down = pipe(&mut server_read, &mut client_write, frozen);
    // Whichever side ends first ends the connection: both sockets are dropped.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Copies until EOF or an error. While frozen, whatever was read is held
/// and an EOF is not passed on: nothing moves and nothing closes (until the
/// proxy is dropped).
async fn pipe(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = from.read(&mut buf).await;
        if frozen.wait_for(|frozen| !*frozen).await.is_err() {
            return;
        }
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One upload slot, held by a peer that then vanishes without a FIN (its
/// proxy freezes). While it answers PINGs it keeps the slot; once frozen,
/// the server's PING goes unanswered, hyper drops the connection after the
/// keepalive timeout, the upload's request stream fails, and the slot (and
/// the staged partial upload) are released: a retry from another client is
/// admitted within about interval + timeout (observed ~0.8 s).
#[tokio::test]
async fn keepalive_frees_a_dead_peers_upload_slot() {
    let options = ServerOptions {
        http2_keepalive_interval: Duration::from_millis(500),
        http2_keepalive_timeout: Duration::from_millis(500),
        limits: Limits { max_concurrent_uploads: 1, ..Limits::default() },
        ..ServerOptions::default()
    };
    let server = TestServer::start_with(options).await;
    let proxy = FreezingProxy::start(server.addr()).await;

    // The peer that will vanish: an upload through the proxy, header and
    // one chunk sent, the stream held open.
    let channel = Channel::from_shared(proxy.url.clone()).expect("url").connect().await.expect("connect via proxy");
    let mut held = ferry_proto::v1::ferry_client::FerryClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let header = UploadHeader { path: "held.bin".to_owned(), ..Default::default() };
    tx.try_send(UploadRequest { kind: Some(Kind::Header(header)) }).expect("queue the header");
    let chunk = Chunk { data: random_bytes(4096, 1).into(), crc32c: None };
    tx.try_send(UploadRequest { kind: Some(Kind::Chunk(chunk)) }).expect("queue a chunk");
    let call = tokio::spawn(async move { held.upload(ReceiverStream::new(rx)).await });
    let admitted = || std::fs::read_dir(server.staging()).map(|d| d.count()).unwrap_or(0) == 1;
    for _ in 0..200 {
        if admitted() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(admitted(), "the held upload must be admitted (staged)");

    let client = server.client().await;
    let data = random_bytes(32 * 1024, 2);
    // A live peer keeps its slot across PING rounds.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let refused = upload_bytes(&client, "second.bin", &data).await;
    assert_eq!(refused.as_ref().err().and_then(|e| e.code()), Some(Code::ResourceExhausted), "{refused:?}");

    proxy.freeze();
    let frozen_at = Instant::now();
    let refused = upload_bytes(&client, "second.bin", &data).await;
    assert_eq!(refused.as_ref().err().and_then(|e| e.code()), Some(Code::ResourceExhausted), "{refused:?}");

    let mut last = None;
    let mut freed_after = None;
    while frozen_at.elapsed() < Duration::from_secs(10) {
        match upload_bytes(&client, "second.bin", &data).await {
            Ok(_) => {
                freed_after = Some(frozen_at.elapsed());
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let freed_after = freed_after.unwrap_or_else(|| panic!("the slot was never freed: {last:?}"));
    // Until then, every refusal was the concurrency limit's.
    if let Some(last) = &last {
        assert_eq!(last.code(), Some(Code::ResourceExhausted), "{last:?}");
    }
    // PING interval + PING timeout is 1 s; the 60 s stream idle timeout is
    // not what freed the slot.
    assert!(freed_after < Duration::from_secs(5), "freed only after {freed_after:?}");
    assert!(download_bytes(&client, "second.bin").await.expect("download") == data);
    assert!(server.staging_drains().await, "the dead peer's upload must leave nothing staged");
    assert!(!call.is_finished(), "the frozen peer never hears back");
    call.abort();
    drop(tx);
    still_serves(&server, "keepalive").await;
}

/// TCP keepalive is on for accepted connections, at the configured idle time:
/// the kernel shows it as a `keepalive` timer on the server's side of the
/// socket (`ss -o`). What happens when probes go unanswered is the kernel's
/// business; the HTTP/2 PING test above shows a dead peer being dropped.
#[tokio::test]
async fn accepted_connections_have_tcp_keepalive() {
    let options = ServerOptions { tcp_keepalive: Duration::from_secs(42), ..ServerOptions::default() };
    let server = TestServer::start_with(options).await;
    let client = server.client().await;
    client.list("", false).await.expect("a call, so the connection is up");
    let port = server.addr().port();
    // The keepalive timer shows once the socket is idle (no unacknowledged data).
    let mut sockets = String::new();
    for _ in 0..40 {
        let output = std::process::Command::new("ss")
            .args(["-tnoH", "state", "established", "sport", "=", &format!(":{port}")])
            .output();
        let Ok(output) = output else {
            eprintln!("SKIPPED: `ss` (iproute2) is not installed");
            return;
        };
        sockets = String::from_utf8_lossy(&output.stdout).into_owned();
        if sockets.contains("keepalive") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sockets.contains("keepalive"), "no keepalive timer on the server side:\n{sockets}");
    // The first probe is due within the configured idle time.
    let due = sockets
        .split("timer:(keepalive,")
        .nth(1)
        .and_then(|rest| rest.split(['s', 'm', ',']).next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(due.is_some_and(|secs| secs <= 42), "keepalive timer {due:?} in:\n{sockets}");
    still_serves(&server, "keepalive").await;
}
