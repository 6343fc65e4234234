//! A `helloworld.Greeter` client: greets `--name` in each of the greeter's three call modes and
//! prints the replies (code: `crates/examples/src/greeter_client.rs`). Works against `greeter` or
//! the tutorial's Python server.
//!
//! ```sh
//! cargo run --example greeter_client                                      # http://127.0.0.1:50051
//! cargo run --example greeter_client -- --server http://127.0.0.1:PORT --name Ferry
//! ```
//!
//! The default server URL is `ferry serve`'s default too: if ferry answers there instead of a
//! greeter, the calls fail with UNIMPLEMENTED.
//!
//! - `SayHello`, **unary**: one name, one greeting (ferry: `Stat`, `Delete`, `CreateUpload`).
//! - `SayHelloStreamReply`, **server streaming**: one name, greetings printed as they arrive
//!   (ferry: `Download`, `List`).
//! - `SayHelloBidiStream`, **bidirectional streaming**: `--name`, `gRPC` and `ferry` sent one at
//!   a time, each after the greeting of the one before arrived (ferry: `UploadSession`).

use anyhow::Context;
use clap::Parser;
use ferry_examples::greeter_client;

/// Call helloworld.Greeter in its three modes.
#[derive(Debug, Parser)]
struct Args {
    /// The greeter's URL.
    #[arg(long, default_value = ferry_examples::GREETER_DEFAULT_SERVER)]
    server: String,
    /// Who to greet.
    #[arg(long, default_value = "world")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut client = greeter_client::connect(args.server.clone())
        .await
        .with_context(|| format!("cannot connect to {}", args.server))?;

    println!("== SayHello (unary)");
    println!("{}", greeter_client::say_hello(&mut client, &args.name).await?);

    println!("== SayHelloStreamReply (server streaming)");
    greeter_client::say_hello_stream_reply(&mut client, &args.name, |greeting| println!("{greeting}")).await?;

    println!("== SayHelloBidiStream (bidirectional streaming)");
    let names = [args.name.as_str(), "gRPC", "ferry"];
    greeter_client::say_hello_bidi_stream(&mut client, &names, |name, greeting| {
        println!("sent {name:?} -> {greeting}");
    })
    .await?;
    Ok(())
}
