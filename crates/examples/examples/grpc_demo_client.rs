//! A `demo.GRPCDemo` client: calls the demo server in each of gRPC's four call modes and prints
//! what comes back (code: `crates/examples/src/demo_client.rs`). Works against `grpc_demo` or the
//! tutorial's Python server.
//!
//! ```sh
//! cargo run --example grpc_demo_client                                   # http://127.0.0.1:23333
//! cargo run --example grpc_demo_client -- --server http://127.0.0.1:PORT
//! ```
//!
//! - `SimpleMethod`, **unary**: one request, one response (ferry: `Stat`, `Delete`,
//!   `CreateUpload`).
//! - `ClientStreamingMethod`, **client streaming**: five requests, then the server's one summary
//!   (ferry: `Upload`, a file's chunks then one result).
//! - `ServerStreamingMethod`, **server streaming**: one request, then responses printed as they
//!   arrive (ferry: `Download`, `List`).
//! - `BidirectionalStreamingMethod`, **bidirectional streaming**: five requests, each sent only
//!   after the echo of the one before arrived, proving both directions are live at once (ferry:
//!   `UploadSession`).

use anyhow::Context;
use clap::Parser;
use ferry_examples::demo_client;

/// Call demo.GRPCDemo in all four modes.
#[derive(Debug, Parser)]
struct Args {
    /// The demo server's URL.
    #[arg(long, default_value = ferry_examples::DEMO_DEFAULT_SERVER)]
    server: String,
}

const MESSAGES: [&str; 5] = ["message 1", "message 2", "message 3", "message 4", "message 5"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut client = demo_client::connect(args.server.clone())
        .await
        .with_context(|| format!("cannot connect to {}", args.server))?;

    println!("== SimpleMethod (unary)");
    let response = demo_client::simple_method(&mut client, "called by the Rust client").await?;
    println!("server {}: {}", response.server_id, response.response_data);

    println!("== ClientStreamingMethod (client streaming: {} requests, one response)", MESSAGES.len());
    let response = demo_client::client_streaming_method(&mut client, &MESSAGES).await?;
    println!("server {}: {}", response.server_id, response.response_data);

    println!("== ServerStreamingMethod (server streaming: one request, a stream of responses)");
    let count = demo_client::server_streaming_method(&mut client, "called by the Rust client", |response| {
        println!("server {}: {}", response.server_id, response.response_data);
    })
    .await?;
    println!("({count} responses)");

    println!("== BidirectionalStreamingMethod (bidirectional streaming: each request echoed as it arrives)");
    demo_client::bidirectional_streaming_method(&mut client, &MESSAGES, |request, echo| {
        println!("sent {:?} -> server {}: {}", request.request_data, echo.server_id, echo.response_data);
    })
    .await?;
    Ok(())
}
