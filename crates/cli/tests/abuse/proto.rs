//! Hand-encoded `ferry.v1` messages (field numbers from `proto/ferry/v1/ferry.proto`).

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field.
pub fn bytes_field(field: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    varint(&mut out, field << 3 | 2);
    varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

/// `UploadRequest{header: UploadHeader{path, size, mode: OVERWRITE}}`.
pub fn upload_header(path: &str, size: Option<u64>) -> Vec<u8> {
    let mut header = bytes_field(1, path.as_bytes());
    if let Some(size) = size {
        varint(&mut header, 2 << 3);
        varint(&mut header, size);
    }
    varint(&mut header, 4 << 3);
    varint(&mut header, 1);
    bytes_field(1, &header)
}

/// `UploadRequest{chunk: Chunk{data}}`.
pub fn upload_chunk(data: &[u8]) -> Vec<u8> {
    bytes_field(2, &bytes_field(1, data))
}

/// `UploadRequest{finish: UploadFinish{sha256}}`.
pub fn upload_finish(sha256: &str) -> Vec<u8> {
    bytes_field(3, &bytes_field(1, sha256.as_bytes()))
}

/// A gRPC length-prefixed message (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}
