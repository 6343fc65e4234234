//! Compiles the protos ferry serves (its own `ferry.v1`, and the classic
//! services it stays wire-compatible with) with the pure-Rust `protox`
//! compiler, so building ferry never needs a system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        proto_root.join("ferry/v1/ferry.proto"),
        proto_root.join("compat/fileserver.proto"),
        proto_root.join("compat/file.proto"),
        proto_root.join("google/bytestream/bytestream.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&proto_root])?;

    // Keep the descriptor set: reflection serves it, metrics learn method names from it.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("ferry_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure()
        // Chunk payloads become `bytes::Bytes`: zero-copy from the socket buffer.
        .bytes(".ferry.v1.Chunk.data")
        .bytes(".file_server.RequestSend.data")
        .bytes(".file_server.ResponseStream.data")
        .bytes(".UploadRequest.chunk_data")
        .bytes(".FileResponse.chunk_data")
        .bytes(".google.bytestream.ReadResponse.data")
        .bytes(".google.bytestream.WriteRequest.data")
        .compile_fds(fds)?;
    Ok(())
}
