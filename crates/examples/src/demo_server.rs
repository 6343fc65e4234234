//! The `demo.GRPCDemo` server: one RPC per gRPC call mode.
//!
//! Every response carries [`SERVER_ID`] and, in `response_data`, a description of what the server
//! received, so a client (the Rust one in `examples/grpc_demo_client.rs`, or the tutorial's Python
//! one) can see each mode at work. The server logs each call at `info` level.

use std::future::Future;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::demo;
use crate::demo::grpc_demo_server::{GrpcDemo, GrpcDemoServer};

/// The `server_id` of every response (the tutorial's server uses 1 too).
pub const SERVER_ID: i64 = 1;

/// How many responses `ServerStreamingMethod` sends for its one request.
pub const SERVER_STREAM_RESPONSES: usize = 5;

/// A stream of responses, as the server-streaming and bidirectional methods return.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<demo::Response, Status>> + Send + 'static>>;

/// The service: stateless, each call is answered from its own requests only.
#[derive(Debug, Default, Clone, Copy)]
pub struct DemoService;

fn reply(response_data: String) -> demo::Response {
    demo::Response { server_id: SERVER_ID, response_data }
}

#[tonic::async_trait]
impl GrpcDemo for DemoService {
    /// **Unary** (`SimpleMethod`): one request in, one response out, like a function call. The
    /// default choice whenever both sides fit in one message: a lookup, a command, a small write.
    /// ferry's `Stat`, `Delete` and `CreateUpload` are unary.
    async fn simple_method(&self, request: Request<demo::Request>) -> Result<Response<demo::Response>, Status> {
        let request = request.into_inner();
        tracing::info!(client_id = request.client_id, request_data = %request.request_data, "SimpleMethod");
        Ok(Response::new(reply(format!(
            "SimpleMethod received {:?} from client {}",
            request.request_data, request.client_id
        ))))
    }

    /// **Client streaming** (`ClientStreamingMethod`): the client sends any number of requests,
    /// then the server answers once, after the client has closed its side. Use it to send more
    /// than fits in one message (or than is known up front) and get one verdict at the end.
    /// ferry's `Upload` is client streaming: file chunks in, one summary of the stored file out.
    async fn client_streaming_method(
        &self,
        request: Request<Streaming<demo::Request>>,
    ) -> Result<Response<demo::Response>, Status> {
        let mut requests = request.into_inner();
        let mut received = Vec::new();
        // `message()` yields each request as it arrives and `None` once the client has finished.
        while let Some(request) = requests.message().await? {
            tracing::info!(client_id = request.client_id, request_data = %request.request_data, "ClientStreamingMethod");
            received.push(format!("{:?} from client {}", request.request_data, request.client_id));
        }
        Ok(Response::new(reply(format!(
            "ClientStreamingMethod received {} requests: [{}]",
            received.len(),
            received.join(", ")
        ))))
    }

    type ServerStreamingMethodStream = ResponseStream;

    /// **Server streaming** (`ServerStreamingMethod`): one request in, then any number of
    /// responses out, each reaching the client as soon as it is sent. Use it for results too big
    /// for one message or produced over time. ferry's `Download` (chunks of a file) and `List`
    /// (directory entries) are server streaming.
    async fn server_streaming_method(
        &self,
        request: Request<demo::Request>,
    ) -> Result<Response<Self::ServerStreamingMethodStream>, Status> {
        let request = request.into_inner();
        tracing::info!(client_id = request.client_id, request_data = %request.request_data, "ServerStreamingMethod");
        let responses = (1..=SERVER_STREAM_RESPONSES).map(move |n| {
            Ok(reply(format!(
                "ServerStreamingMethod response {n} of {SERVER_STREAM_RESPONSES} to {:?} from client {}",
                request.request_data, request.client_id
            )))
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(responses))))
    }

    type BidirectionalStreamingMethodStream = ResponseStream;

    /// **Bidirectional streaming** (`BidirectionalStreamingMethod`): both sides send streams at
    /// the same time, independently; here the server echoes each request the moment it arrives.
    /// Use it for a conversation: acknowledgements, flow control, progress, while data still
    /// flows. ferry's `UploadSession` is bidirectional: chunks in, committed offsets back, so an
    /// interrupted upload resumes where the server confirmed.
    async fn bidirectional_streaming_method(
        &self,
        request: Request<Streaming<demo::Request>>,
    ) -> Result<Response<Self::BidirectionalStreamingMethodStream>, Status> {
        // The response stream is the request stream, transformed one message at a time: each
        // answer goes out before the next request is even read. A failed request stream (the
        // client cancelled, a malformed message) ends the call with that status.
        let echoes = request.into_inner().map(|request| {
            let request = request?;
            tracing::info!(client_id = request.client_id, request_data = %request.request_data, "BidirectionalStreamingMethod");
            Ok(reply(format!(
                "BidirectionalStreamingMethod echo of {:?} from client {}",
                request.request_data, request.client_id
            )))
        });
        Ok(Response::new(Box::pin(echoes)))
    }
}

/// Serves `demo.GRPCDemo` on `listener` until `shutdown` completes, then lets the calls in flight
/// finish (for up to [`crate::SHUTDOWN_GRACE`]) and returns.
pub async fn serve_demo(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder().add_service(GrpcDemoServer::new(DemoService));
    crate::serve_router(router, listener, shutdown).await
}
