//! Client calls of `demo.GRPCDemo`, one function per call mode, as `examples/grpc_demo_client.rs`
//! makes them.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::demo;
use crate::demo::grpc_demo_client::GrpcDemoClient;

/// The `client_id` of every request (the tutorial's client uses 1 too).
pub const CLIENT_ID: i64 = 1;

/// A connected `demo.GRPCDemo` client. Cloning it is cheap and shares the connection.
pub type DemoClient = GrpcDemoClient<Channel>;

/// Connects to `server`, a URL such as `http://127.0.0.1:23333`.
pub async fn connect(server: String) -> Result<DemoClient, tonic::transport::Error> {
    GrpcDemoClient::connect(server).await
}

/// A request from [`CLIENT_ID`] carrying `data`.
pub fn request(data: &str) -> demo::Request {
    demo::Request { client_id: CLIENT_ID, request_data: data.to_owned() }
}

/// **Unary**: send one request, wait for the one response. ferry's `Stat`, `Delete` and
/// `CreateUpload` are called like this.
pub async fn simple_method(client: &mut DemoClient, data: &str) -> Result<demo::Response, Status> {
    Ok(client.simple_method(request(data)).await?.into_inner())
}

/// **Client streaming**: send one request per item of `data` (any `Stream` will do: here an
/// in-memory one), close the stream, then get the server's one response. ferry's `Upload` sends
/// a file's chunks like this.
pub async fn client_streaming_method(client: &mut DemoClient, data: &[&str]) -> Result<demo::Response, Status> {
    let requests: Vec<demo::Request> = data.iter().map(|item| request(item)).collect();
    Ok(client.client_streaming_method(tokio_stream::iter(requests)).await?.into_inner())
}

/// **Server streaming**: send one request, then handle the responses one by one as they arrive
/// (`on_response` sees each); returns how many came. ferry's `Download` and `List` are read like
/// this.
pub async fn server_streaming_method(
    client: &mut DemoClient,
    data: &str,
    mut on_response: impl FnMut(demo::Response),
) -> Result<usize, Status> {
    let mut responses = client.server_streaming_method(request(data)).await?.into_inner();
    let mut count = 0;
    // `message()` yields each response as it arrives and `None` once the server has finished.
    while let Some(response) = responses.message().await? {
        on_response(response);
        count += 1;
    }
    Ok(count)
}

/// **Bidirectional streaming**: open the call with a channel as the request stream, then send
/// one request per item of `data` and wait for its echo before sending the next, which shows that
/// both directions are live at once. `on_echo` sees each request with its echo. ferry's
/// `UploadSession` works like this: chunks go out while committed offsets come back.
///
/// The first request is queued *before* awaiting the call: that `.await` waits for the server's
/// response headers, and a server may send those only with its first response (grpcio's Python
/// server does), which this server sends only once a request has arrived.
pub async fn bidirectional_streaming_method(
    client: &mut DemoClient,
    data: &[&str],
    mut on_echo: impl FnMut(&demo::Request, demo::Response),
) -> Result<(), Status> {
    let (sender, outgoing) = mpsc::channel(1);
    let mut sender = Some(sender);
    let mut requests = data.iter().map(|item| request(item));
    let mut in_flight = crate::send_next(&mut requests, &mut sender).await?;
    let mut responses = client.bidirectional_streaming_method(ReceiverStream::new(outgoing)).await?.into_inner();
    while let Some(request) = in_flight {
        let echo =
            responses.message().await?.ok_or_else(|| Status::internal("the server ended the call without an echo"))?;
        on_echo(&request, echo);
        // The next request, or, after the last, the end of our side; the server then ends its side.
        in_flight = crate::send_next(&mut requests, &mut sender).await?;
    }
    if responses.message().await?.is_some() {
        return Err(Status::internal("the server sent more responses than requests"));
    }
    Ok(())
}
