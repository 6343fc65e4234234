//! The example servers, run in-process on 127.0.0.1:0, called by the example clients' functions
//! in every call mode; plus a graceful stop on the shutdown signal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ferry_examples::demo_client::{self, CLIENT_ID};
use ferry_examples::demo_server::{SERVER_ID, SERVER_STREAM_RESPONSES};
use ferry_examples::greeter_client;
use ferry_examples::greeter_server::STREAM_REPLY_GREETINGS;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server on a free loopback port; dropping `stop` (or sending on it) stops it.
struct Running {
    url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("server did not stop").unwrap().unwrap();
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn start_demo() -> Running {
    let (listener, addr) = listener().await;
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(ferry_examples::serve_demo(listener, async move {
        let _ = stopped.await;
    }));
    Running { url: format!("http://{addr}"), stop, task }
}

async fn start_greeter() -> Running {
    let (listener, addr) = listener().await;
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(ferry_examples::serve_greeter(listener, async move {
        let _ = stopped.await;
    }));
    Running { url: format!("http://{addr}"), stop, task }
}

#[tokio::test]
async fn demo_unary_describes_the_request() {
    let server = start_demo().await;
    let mut client = demo_client::connect(server.url.clone()).await.unwrap();
    let response = demo_client::simple_method(&mut client, "hi there").await.unwrap();
    assert_eq!(response.server_id, SERVER_ID);
    assert_eq!(response.response_data, format!("SimpleMethod received \"hi there\" from client {CLIENT_ID}"));
    server.stop().await;
}

#[tokio::test]
async fn demo_client_streaming_summarises_every_request() {
    let server = start_demo().await;
    let mut client = demo_client::connect(server.url.clone()).await.unwrap();
    let response = demo_client::client_streaming_method(&mut client, &["a", "b", "c"]).await.unwrap();
    assert_eq!(response.server_id, SERVER_ID);
    assert_eq!(
        response.response_data,
        "ClientStreamingMethod received 3 requests: [\"a\" from client 1, \"b\" from client 1, \"c\" from client 1]"
    );
    // An empty stream is a valid call too.
    let response = demo_client::client_streaming_method(&mut client, &[]).await.unwrap();
    assert_eq!(response.response_data, "ClientStreamingMethod received 0 requests: []");
    server.stop().await;
}

#[tokio::test]
async fn demo_server_streaming_sends_several_responses() {
    let server = start_demo().await;
    let mut client = demo_client::connect(server.url.clone()).await.unwrap();
    let mut responses = Vec::new();
    let count =
        demo_client::server_streaming_method(&mut client, "stream please", |r| responses.push(r)).await.unwrap();
    assert_eq!(count, SERVER_STREAM_RESPONSES);
    assert_eq!(responses.len(), SERVER_STREAM_RESPONSES);
    for (i, response) in responses.iter().enumerate() {
        assert_eq!(response.server_id, SERVER_ID);
        assert_eq!(
            response.response_data,
            format!(
                "ServerStreamingMethod response {} of {SERVER_STREAM_RESPONSES} to \"stream please\" from client 1",
                i + 1
            )
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn demo_bidirectional_echoes_each_request_as_it_arrives() {
    let server = start_demo().await;
    let mut client = demo_client::connect(server.url.clone()).await.unwrap();
    let mut echoes = Vec::new();
    // The client waits for each echo before sending the next request: this only completes if
    // the server answers while the request stream is still open.
    demo_client::bidirectional_streaming_method(&mut client, &["one", "two", "three"], |request, echo| {
        echoes.push((request.request_data.clone(), echo))
    })
    .await
    .unwrap();
    let sent: Vec<&str> = echoes.iter().map(|(sent, _)| sent.as_str()).collect();
    assert_eq!(sent, ["one", "two", "three"]);
    for (sent, echo) in &echoes {
        assert_eq!(echo.server_id, SERVER_ID);
        assert_eq!(echo.response_data, format!("BidirectionalStreamingMethod echo of {sent:?} from client 1"));
    }
    server.stop().await;
}

#[tokio::test]
async fn bidirectional_calls_without_requests_end_cleanly() {
    let demo = start_demo().await;
    let mut client = demo_client::connect(demo.url.clone()).await.unwrap();
    demo_client::bidirectional_streaming_method(&mut client, &[], |_, _| panic!("an echo of nothing")).await.unwrap();
    demo.stop().await;
    let greeter = start_greeter().await;
    let mut client = greeter_client::connect(greeter.url.clone()).await.unwrap();
    greeter_client::say_hello_bidi_stream(&mut client, &[], |_, _| panic!("a greeting of nobody")).await.unwrap();
    greeter.stop().await;
}

#[tokio::test]
async fn greeter_unary_says_hello() {
    let server = start_greeter().await;
    let mut client = greeter_client::connect(server.url.clone()).await.unwrap();
    assert_eq!(greeter_client::say_hello(&mut client, "Ferry").await.unwrap(), "Hello, Ferry!");
    assert_eq!(greeter_client::say_hello(&mut client, "world").await.unwrap(), "Hello, world!");
    server.stop().await;
}

#[tokio::test]
async fn greeter_stream_reply_sends_several_greetings() {
    let server = start_greeter().await;
    let mut client = greeter_client::connect(server.url.clone()).await.unwrap();
    let mut greetings = Vec::new();
    let count = greeter_client::say_hello_stream_reply(&mut client, "Ferry", |g| greetings.push(g)).await.unwrap();
    assert_eq!(count, STREAM_REPLY_GREETINGS);
    let expected: Vec<String> = (1..=STREAM_REPLY_GREETINGS)
        .map(|n| format!("Hello, Ferry! (greeting {n} of {STREAM_REPLY_GREETINGS})"))
        .collect();
    assert_eq!(greetings, expected);
    server.stop().await;
}

#[tokio::test]
async fn greeter_bidi_answers_each_name() {
    let server = start_greeter().await;
    let mut client = greeter_client::connect(server.url.clone()).await.unwrap();
    let mut greetings = Vec::new();
    greeter_client::say_hello_bidi_stream(&mut client, &["Ann", "Bob", "Cy"], |name, greeting| {
        greetings.push((name.to_owned(), greeting))
    })
    .await
    .unwrap();
    let expected: Vec<(String, String)> =
        ["Ann", "Bob", "Cy"].iter().map(|n| ((*n).to_owned(), format!("Hello, {n}!"))).collect();
    assert_eq!(greetings, expected);
    server.stop().await;
}

#[tokio::test]
async fn a_stopped_server_refuses_new_connections() {
    let server = start_greeter().await;
    let url = server.url.clone();
    let mut client = greeter_client::connect(url.clone()).await.unwrap();
    greeter_client::say_hello(&mut client, "before").await.unwrap();
    drop(client);
    server.stop().await;
    assert!(greeter_client::connect(url).await.is_err());
}

#[tokio::test]
async fn shutdown_cuts_a_call_left_open_after_the_grace_period() {
    let (listener, addr) = listener().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ferry_examples::serve_demo(listener, async move {
        let _ = stopped.await;
    }));
    let mut client = demo_client::connect(format!("http://{addr}")).await.unwrap();
    // A bidirectional call whose request stream never closes.
    let (requests, outgoing) = tokio::sync::mpsc::channel(1);
    requests.send(demo_client::request("open")).await.unwrap();
    let mut responses = client
        .bidirectional_streaming_method(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    responses.message().await.unwrap().unwrap();
    stop.send(()).unwrap();
    let began = std::time::Instant::now();
    tokio::time::timeout(ferry_examples::SHUTDOWN_GRACE * 2, task)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
    assert!(began.elapsed() >= ferry_examples::SHUTDOWN_GRACE, "the open call was cut before the grace period");
    drop(requests);
}
