//! Client calls of `helloworld.Greeter`, one function per call mode, as
//! `examples/greeter_client.rs` makes them.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::helloworld::greeter_client::GreeterClient as Generated;
use crate::helloworld::{HelloReply, HelloRequest};

/// A connected `helloworld.Greeter` client. Cloning it is cheap and shares the connection.
pub type GreeterClient = Generated<Channel>;

/// Connects to `server`, a URL such as `http://127.0.0.1:50051`.
pub async fn connect(server: String) -> Result<GreeterClient, tonic::transport::Error> {
    Generated::connect(server).await
}

/// **Unary**: one name, one greeting. ferry's `Stat`, `Delete` and `CreateUpload` are called
/// like this.
pub async fn say_hello(client: &mut GreeterClient, name: &str) -> Result<String, Status> {
    let reply = client.say_hello(HelloRequest { name: name.to_owned() }).await?.into_inner();
    Ok(reply.message)
}

/// **Server streaming**: one name, then each greeting handed to `on_greeting` as it arrives;
/// returns how many came. ferry's `Download` and `List` are read like this.
pub async fn say_hello_stream_reply(
    client: &mut GreeterClient,
    name: &str,
    mut on_greeting: impl FnMut(String),
) -> Result<usize, Status> {
    let mut replies = client.say_hello_stream_reply(HelloRequest { name: name.to_owned() }).await?.into_inner();
    let mut count = 0;
    while let Some(HelloReply { message }) = replies.message().await? {
        on_greeting(message);
        count += 1;
    }
    Ok(count)
}

/// **Bidirectional streaming**: send the names one at a time on a channel and wait for each
/// greeting before sending the next, so both directions are live at once; `on_greeting` sees each
/// name with its greeting. ferry's `UploadSession` works like this.
///
/// The first name is queued *before* awaiting the call: that `.await` waits for the server's
/// response headers, and a server may send those only with its first reply (grpcio's Python
/// server does), which it can only send once a name has arrived.
pub async fn say_hello_bidi_stream(
    client: &mut GreeterClient,
    names: &[&str],
    mut on_greeting: impl FnMut(&str, String),
) -> Result<(), Status> {
    let (sender, outgoing) = mpsc::channel(1);
    let mut sender = Some(sender);
    let mut requests = names.iter().map(|name| HelloRequest { name: (*name).to_owned() });
    let mut in_flight = crate::send_next(&mut requests, &mut sender).await?;
    let mut replies = client.say_hello_bidi_stream(ReceiverStream::new(outgoing)).await?.into_inner();
    while let Some(request) = in_flight {
        let reply = replies.message().await?.ok_or_else(|| Status::internal("the server ended the call early"))?;
        on_greeting(&request.name, reply.message);
        // The next name, or, after the last, the end of our side; the server then ends its side.
        in_flight = crate::send_next(&mut requests, &mut sender).await?;
    }
    if replies.message().await?.is_some() {
        return Err(Status::internal("the server sent more greetings than names"));
    }
    Ok(())
}
