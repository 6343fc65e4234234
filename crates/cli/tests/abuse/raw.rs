//! Just enough HTTP/2 (RFC 9113, cleartext with prior knowledge) to be a
//! gRPC client that misbehaves on purpose; its HPACK (RFC 7541) is
//! `hpack.rs`. One task owns a connection: it writes when told to and reads
//! frames while it waits (for flow-control window, or for a stream to end),
//! answering SETTINGS and PING.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hpack::{Hpack, hpack_int, hpack_str};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
/// DATA frames we send: the size every peer must accept.
const FRAME: usize = 16_384;
/// The initial flow-control window (RFC 9113, 6.9.2).
const DEFAULT_WINDOW: i64 = 65_535;

/// How a stream ended, as seen by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Trailers (or a trailers-only response) arrived.
    Status { grpc_status: Option<u32>, grpc_message: String },
    /// RST_STREAM with this error code, before any trailers.
    Reset(u32),
    /// The connection ended with a GOAWAY with this error code.
    GoAway(u32),
    /// The connection closed first.
    Closed,
}

impl End {
    pub fn grpc_status(&self) -> Option<u32> {
        match self {
            End::Status { grpc_status, .. } => *grpc_status,
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Conn {
    sock: TcpStream,
    authority: String,
    hpack: Hpack,
    next_id: u32,
    opened: Vec<u32>,
    /// Send windows: the connection's and each stream's.
    conn_window: i64,
    initial_window: i64,
    windows: HashMap<u32, i64>,
    /// Header fields received so far, per stream.
    fields: HashMap<u32, Vec<(String, String)>>,
    /// A header block awaiting CONTINUATION: stream, END_STREAM, bytes.
    continuation: Option<(u32, bool, Vec<u8>)>,
    ended: HashMap<u32, End>,
    end_counter: Option<Arc<AtomicUsize>>,
    /// The error code of the server's GOAWAY, if one arrived.
    goaway: Option<u32>,
    /// A write failed: the server has gone; what it sent can still be read.
    write_broken: bool,
    closed: bool,
}

impl Conn {
    pub async fn connect(addr: &str) -> Self {
        let sock = TcpStream::connect(addr).await.expect("connect to ferry serve");
        sock.set_nodelay(true).expect("TCP_NODELAY");
        let mut conn = Self {
            sock,
            authority: addr.to_owned(),
            hpack: Hpack::default(),
            next_id: 1,
            opened: Vec::new(),
            conn_window: DEFAULT_WINDOW,
            initial_window: DEFAULT_WINDOW,
            windows: HashMap::new(),
            fields: HashMap::new(),
            continuation: None,
            ended: HashMap::new(),
            end_counter: None,
            goaway: None,
            write_broken: false,
            closed: false,
        };
        let mut hello = PREFACE.to_vec();
        // SETTINGS_ENABLE_PUSH = 0.
        frame(&mut hello, SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]);
        conn.write(&hello).await;
        conn
    }

    /// Counts every stream of this connection that ends into `counter`.
    pub fn count_ends(&mut self, counter: Arc<AtomicUsize>) {
        self.end_counter = Some(counter);
    }

    /// Opens a gRPC call to `method` (`/package.Service/Method`): request
    /// headers only, the stream left open.
    pub async fn open(&mut self, method: &str) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let mut block = vec![0x80 | 3, 0x80 | 6]; // :method POST, :scheme http (static table)
        for (index, value) in [(4, method), (1, self.authority.as_str()), (31, "application/grpc")] {
            hpack_int(&mut block, 4, 0, index); // literal, not indexed, name from the static table
            hpack_str(&mut block, value);
        }
        block.push(0);
        hpack_str(&mut block, "te");
        hpack_str(&mut block, "trailers");
        let mut out = Vec::new();
        frame(&mut out, HEADERS, END_HEADERS, id, &block);
        self.write(&out).await;
        self.opened.push(id);
        self.windows.insert(id, self.initial_window);
        id
    }

    /// Sends one gRPC message on stream `id`; see [`Conn::send_data`].
    pub async fn send_message(&mut self, id: u32, message: &[u8], end_stream: bool) -> bool {
        self.send_data(id, &super::proto::grpc_frame(message), end_stream).await
    }

    /// Sends `data` on stream `id` in 16 KiB DATA frames; see
    /// [`Conn::send_data_in_frames_of`].
    pub async fn send_data(&mut self, id: u32, data: &[u8], end_stream: bool) -> bool {
        self.send_data_in_frames_of(id, data, FRAME, end_stream).await
    }

    /// Sends `data` on stream `id` in DATA frames of `frame_size` bytes,
    /// as flow control allows (reading frames while the window is shut),
    /// writing up to 64 KiB of frames at a time. Returns false if the
    /// stream or the connection ended before all of it was sent.
    pub async fn send_data_in_frames_of(
        &mut self,
        id: u32,
        mut data: &[u8],
        frame_size: usize,
        end_stream: bool,
    ) -> bool {
        let mut out = Vec::new();
        loop {
            if self.closed || self.write_broken || self.ended.contains_key(&id) {
                return false;
            }
            let window = self.conn_window.min(self.windows[&id]).max(0) as usize;
            let n = data.len().min(frame_size).min(window);
            if n == 0 && !data.is_empty() {
                if out.is_empty() {
                    self.read_frame().await;
                } else {
                    self.write(&out).await;
                    out.clear();
                }
                continue;
            }
            let last = n == data.len();
            frame(&mut out, DATA, if last && end_stream { END_STREAM } else { 0 }, id, &data[..n]);
            self.conn_window -= n as i64;
            *self.windows.get_mut(&id).expect("open stream") -= n as i64;
            data = &data[n..];
            if last || out.len() >= 64 * 1024 {
                self.write(&out).await;
                out.clear();
            }
            if last {
                return !self.write_broken;
            }
        }
    }

    /// Sends `count` empty DATA frames (without END_STREAM) on stream `id`.
    pub async fn send_empty_data_frames(&mut self, id: u32, count: usize) {
        let mut out = Vec::new();
        for _ in 0..count {
            frame(&mut out, DATA, 0, id, &[]);
        }
        self.write(&out).await;
    }

    /// The error code of the GOAWAY the server sent, if any.
    pub fn goaway(&self) -> Option<u32> {
        self.goaway
    }

    /// Waits for stream `id` to end.
    pub async fn wait(&mut self, id: u32) -> End {
        while !self.ended.contains_key(&id) {
            self.read_frame().await;
        }
        self.ended[&id].clone()
    }

    /// Waits for every stream opened on this connection to end.
    pub async fn wait_all(&mut self) -> Vec<(u32, End)> {
        for id in self.opened.clone() {
            self.wait(id).await;
        }
        self.opened.iter().map(|id| (*id, self.ended[id].clone())).collect()
    }

    async fn write(&mut self, bytes: &[u8]) {
        if self.closed || self.write_broken {
            return;
        }
        if self.sock.write_all(bytes).await.is_err() {
            self.write_broken = true;
        }
    }

    fn end(&mut self, id: u32, end: End) {
        if let Entry::Vacant(slot) = self.ended.entry(id) {
            slot.insert(end);
            if let Some(counter) = &self.end_counter {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// The connection is gone: every stream still open ends with it.
    fn close(&mut self) {
        self.closed = true;
        let end = self.goaway.map_or(End::Closed, End::GoAway);
        for id in self.opened.clone() {
            self.end(id, end.clone());
        }
    }

    /// Reads and handles one frame.
    async fn read_frame(&mut self) {
        if self.closed {
            return;
        }
        let mut head = [0u8; 9];
        if self.sock.read_exact(&mut head).await.is_err() {
            return self.close();
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if self.sock.read_exact(&mut payload).await.is_err() {
            return self.close();
        }
        match kind {
            DATA => {
                // Hand the window back at once: this client reads everything.
                if len > 0 {
                    let mut out = Vec::new();
                    frame(&mut out, WINDOW_UPDATE, 0, 0, &(len as u32).to_be_bytes());
                    if !self.ended.contains_key(&id) {
                        frame(&mut out, WINDOW_UPDATE, 0, id, &(len as u32).to_be_bytes());
                    }
                    self.write(&out).await;
                }
                if flags & END_STREAM != 0 {
                    self.finish_headers(id);
                }
            }
            HEADERS => {
                let block = unpad(flags, &payload).to_vec();
                self.continuation = Some((id, flags & END_STREAM != 0, block));
                if flags & END_HEADERS != 0 {
                    self.header_block_done();
                }
            }
            CONTINUATION => {
                let pending = self.continuation.as_mut().expect("CONTINUATION without HEADERS");
                pending.2.extend_from_slice(&payload);
                if flags & END_HEADERS != 0 {
                    self.header_block_done();
                }
            }
            RST_STREAM => {
                let code = u32::from_be_bytes(payload[..4].try_into().expect("RST_STREAM code"));
                self.end(id, End::Reset(code));
            }
            SETTINGS if flags & ACK == 0 => {
                for setting in payload.chunks_exact(6) {
                    let key = u16::from_be_bytes([setting[0], setting[1]]);
                    let value = u32::from_be_bytes(setting[2..6].try_into().expect("setting")) as i64;
                    if key == SETTINGS_INITIAL_WINDOW_SIZE {
                        let delta = value - self.initial_window;
                        self.initial_window = value;
                        self.windows.values_mut().for_each(|window| *window += delta);
                    }
                }
                let mut out = Vec::new();
                frame(&mut out, SETTINGS, ACK, 0, &[]);
                self.write(&out).await;
            }
            PING if flags & ACK == 0 => {
                let mut out = Vec::new();
                frame(&mut out, PING, ACK, 0, &payload);
                self.write(&out).await;
            }
            GOAWAY => {
                let last = u32::from_be_bytes(payload[..4].try_into().expect("GOAWAY")) & 0x7fff_ffff;
                let code = u32::from_be_bytes(payload[4..8].try_into().expect("GOAWAY"));
                self.goaway = Some(code);
                for id in self.opened.clone().into_iter().filter(|id| *id > last) {
                    self.end(id, End::GoAway(code));
                }
            }
            WINDOW_UPDATE => {
                let increment =
                    (u32::from_be_bytes(payload[..4].try_into().expect("WINDOW_UPDATE")) & 0x7fff_ffff) as i64;
                match id {
                    0 => self.conn_window += increment,
                    id => *self.windows.entry(id).or_insert(0) += increment,
                }
            }
            _ => {}
        }
    }

    fn header_block_done(&mut self) {
        let (id, end_stream, block) = self.continuation.take().expect("a header block");
        let decoded = self.hpack.decode(&block);
        self.fields.entry(id).or_default().extend(decoded);
        if end_stream {
            self.finish_headers(id);
        }
    }

    /// The stream ended normally: its trailers carry the gRPC status.
    fn finish_headers(&mut self, id: u32) {
        let fields = self.fields.remove(&id).unwrap_or_default();
        let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let grpc_status = field("grpc-status").map(|code| code.parse().expect("numeric grpc-status"));
        self.end(id, End::Status { grpc_status, grpc_message: field("grpc-message").unwrap_or_default() });
    }
}

/// Appends a frame to `out`.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, id: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A HEADERS payload without padding and priority.
fn unpad(flags: u8, payload: &[u8]) -> &[u8] {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = rest[0] as usize;
        rest = &rest[1..];
    }
    if flags & PRIORITY != 0 {
        rest = &rest[5..];
    }
    &rest[..rest.len() - pad]
}
