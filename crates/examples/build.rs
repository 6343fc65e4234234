//! Compiles the tutorial contracts `proto/tutorial/{demo,helloworld}.proto` with the pure-Rust
//! `protox` compiler (no system `protoc`), exactly as `crates/proto` does for ferry's own API.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [proto_root.join("tutorial/demo.proto"), proto_root.join("tutorial/helloworld.proto")];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&proto_root])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
