//! The `helloworld.Greeter` server: "Hello, NAME!" in three call modes.
//!
//! Its tutorial port is 50051, which is also `ferry serve`'s default: the two cannot both listen
//! there, so start one of them with `--listen 127.0.0.1:PORT`.

use std::future::Future;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::helloworld::greeter_server::{Greeter, GreeterServer};
use crate::helloworld::{HelloReply, HelloRequest};

/// How many greetings `SayHelloStreamReply` sends for one name.
pub const STREAM_REPLY_GREETINGS: usize = 3;

/// A stream of greetings, as the streaming methods return.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send + 'static>>;

/// The greeting for `name`: `Hello, NAME!`.
pub fn greeting(name: &str) -> String {
    format!("Hello, {name}!")
}

/// The service: stateless.
#[derive(Debug, Default, Clone, Copy)]
pub struct GreeterService;

#[tonic::async_trait]
impl Greeter for GreeterService {
    /// **Unary** (`SayHello`): one name in, one greeting out, like a function call. The default
    /// choice whenever both sides fit in one message. ferry's `Stat`, `Delete` and `CreateUpload`
    /// are unary.
    async fn say_hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        tracing::info!(%name, "SayHello");
        Ok(Response::new(HelloReply { message: greeting(&name) }))
    }

    type SayHelloStreamReplyStream = ReplyStream;

    /// **Server streaming** (`SayHelloStreamReply`): one name in, several greetings out, each
    /// reaching the client as soon as it is sent. Use it for results too big for one message or
    /// produced over time. ferry's `Download` and `List` are server streaming.
    async fn say_hello_stream_reply(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<Self::SayHelloStreamReplyStream>, Status> {
        let name = request.into_inner().name;
        tracing::info!(%name, "SayHelloStreamReply");
        let replies = (1..=STREAM_REPLY_GREETINGS).map(move |n| {
            Ok(HelloReply { message: format!("{} (greeting {n} of {STREAM_REPLY_GREETINGS})", greeting(&name)) })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    type SayHelloBidiStreamStream = ReplyStream;

    /// **Bidirectional streaming** (`SayHelloBidiStream`): names stream in, and each is greeted
    /// the moment it arrives, while the client may still be sending. Use it for a conversation
    /// (acknowledgements, progress, flow control). ferry's `UploadSession` is bidirectional:
    /// chunks in, committed offsets back.
    async fn say_hello_bidi_stream(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<Self::SayHelloBidiStreamStream>, Status> {
        // Each reply is the matching request, transformed; a failed request stream ends the call.
        let replies = request.into_inner().map(|request| {
            let name = request?.name;
            tracing::info!(%name, "SayHelloBidiStream");
            Ok(HelloReply { message: greeting(&name) })
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Serves `helloworld.Greeter` on `listener` until `shutdown` completes, then lets the calls in
/// flight finish (for up to [`crate::SHUTDOWN_GRACE`]) and returns.
pub async fn serve_greeter(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder().add_service(GreeterServer::new(GreeterService));
    crate::serve_router(router, listener, shutdown).await
}
