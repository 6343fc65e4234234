//! ferry's wire protocol: the generated `ferry.v1` messages and service stubs,
//! and the message-size limits both sides must agree on.

/// The `ferry.v1` package, generated from `proto/ferry/v1/ferry.proto`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, missing_debug_implementations)]
    tonic::include_proto!("ferry.v1");
}

/// The classic services ferry serves beside its own API, on the same port.
pub mod compat {
    /// `file_server.FileTransfer`: the tutorial's nameless upload.
    pub mod file_server {
        #![allow(missing_docs, clippy::all, missing_debug_implementations)]
        tonic::include_proto!("file_server");
    }

    /// `FileSrv` (no package): the tutorial's header-then-chunks upload.
    pub mod file_srv {
        #![allow(missing_docs, clippy::all, missing_debug_implementations)]
        include!(concat!(env!("OUT_DIR"), "/_.rs"));
    }

    /// `google.bytestream.ByteStream`.
    pub mod bytestream {
        #![allow(missing_docs, clippy::all, missing_debug_implementations)]
        tonic::include_proto!("google.bytestream");
    }
}

/// The encoded `FileDescriptorSet` of every proto ferry serves (for reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ferry_descriptor.bin"));

/// Default payload bytes per `Chunk` message.
///
/// Chosen by benchmark (README, "Performance"): 1 MiB chunks with 1 MiB HTTP/2
/// frames beat 64 KiB..4 MiB on this class of machine; smaller chunks cost CPU
/// per byte, larger ones cost memory without gaining speed.
pub const DEFAULT_CHUNK_SIZE: usize = 1024 * 1024;

/// Smallest chunk size ferry's clients use. Smaller chunks cost a message
/// and an HTTP/2 frame each; h2 cuts connections that send floods of tiny
/// frames, so a client configured for, say, 16-byte chunks would be cut off.
pub const MIN_CHUNK_SIZE: usize = 1024;

/// Largest `Chunk` payload a peer may send (a client may pick any chunk size
/// up to this; a larger one is rejected by the message-size limit).
pub const MAX_CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// The gRPC message-size limit, set identically for encoding and decoding on
/// both server and client: one maximal chunk plus room for the envelope.
pub const MAX_MESSAGE_SIZE: usize = MAX_CHUNK_SIZE + 64 * 1024;

/// HTTP/2 max frame size the client advertises (so, of download frames).
/// The default 16 KiB splits each 1 MiB chunk into 64 frames; 1 MiB frames
/// were the biggest single throughput lever measured on loopback (README,
/// "Performance").
pub const HTTP2_MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// HTTP/2 max frame size the server advertises (so, of upload frames).
/// Smaller than the client's for memory: tonic reserves a message's whole
/// length on top of the part of it already received, so a 1 MiB chunk that
/// arrives in one 1 MiB frame grows a stream's receive buffer to 2 MiB,
/// while in 256 KiB frames it stays near 1.25 MiB. With 64 uploads over one
/// connection that kept the server under 256 MiB; one upload ran within the
/// noise of 1 MiB frames (docs/performance.md, "Many transfers at once").
pub const HTTP2_SERVER_MAX_FRAME_SIZE: u32 = 256 * 1024;

/// HTTP/2 initial stream flow-control window, both sides (bytes a peer may
/// send on one stream before the receiver's acknowledgement).
pub const HTTP2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// HTTP/2 initial connection flow-control window, both sides.
pub const HTTP2_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// The canonical name of a gRPC status code (`NOT_FOUND`), as the gRPC
/// spec writes it: for messages and metric labels.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
