//! Metrics: a scrape of `GET /metrics` after real traffic shows the
//! counters, gauges and histograms moved; anything else is 404.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_client::Code;
use ferry_proto::v1::DownloadRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::harness::{TestServer, download_bytes, random_bytes, upload_bytes};

/// The value of one series (`name{labels}` exactly as the text format
/// writes it), if present.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

/// The server's metrics as a scrape would show them, without a listener.
pub(crate) async fn render(server: &TestServer) -> String {
    server.options().metrics.render(&*server.store()).await
}

/// A test server with its metrics listener (`ferry serve --metrics-listen`).
struct Monitored {
    server: TestServer,
    admin: SocketAddr,
    _stop_admin: oneshot::Sender<()>,
}

impl Monitored {
    async fn start() -> Self {
        let server = TestServer::start().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = listener.local_addr().expect("admin addr");
        let (stop_admin, stopped) = oneshot::channel::<()>();
        let metrics = server.options().metrics.clone();
        tokio::spawn(ferry_server::serve_metrics(listener, metrics, server.store(), async {
            let _ = stopped.await;
        }));
        Self { server, admin, _stop_admin: stop_admin }
    }

    async fn scrape(&self) -> String {
        let (status, content_type, body) = http_get(self.admin, "GET", "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        assert!(content_type.starts_with("text/plain"), "content type {content_type:?}");
        body
    }

    /// Scrapes until `check` holds (bounded): some gauges move when the
    /// server notices a stream or connection ended, which is asynchronous.
    async fn scrape_until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let mut text = self.scrape().await;
        for _ in 0..200 {
            if check(&text) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            text = self.scrape().await;
        }
        panic!("{what}: not seen in a scrape within ~5 s:\n{text}");
    }
}

/// A minimal HTTP/1.1 request: (status, content type, body).
async fn http_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the metrics listener");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("the metrics listener answers and closes")
        .expect("read response");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|code| code.parse().ok());
    let content_type = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    (status.expect("a status line"), content_type, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Calls `path` with an empty message: for methods no stub knows.
async fn call_unknown(url: &str, path: &'static str) -> tonic::Status {
    let channel = Channel::from_shared(url.to_owned()).expect("url").connect().await.expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(()), path, Empty).await.expect_err("an unknown method fails")
}

/// A codec for empty messages (no prost codec is a dependency here).
#[derive(Debug, Clone, Copy, Default)]
struct Empty;

impl tonic::codec::Codec for Empty {
    type Encode = ();
    type Decode = ();
    type Encoder = Empty;
    type Decoder = Empty;

    fn encoder(&mut self) -> Self::Encoder {
        Empty
    }

    fn decoder(&mut self) -> Self::Decoder {
        Empty
    }
}

impl tonic::codec::Encoder for Empty {
    type Item = ();
    type Error = tonic::Status;

    fn encode(&mut self, (): (), _dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        Ok(())
    }
}

impl tonic::codec::Decoder for Empty {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        use bytes::Buf as _;
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

const UPLOAD: &str = "/ferry.v1.Ferry/Upload";
const DOWNLOAD: &str = "/ferry.v1.Ferry/Download";
const STAT: &str = "/ferry.v1.Ferry/Stat";

fn requests(method: &str, code: &str) -> String {
    format!("ferry_requests_total{{method=\"{method}\",code=\"{code}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_shows_real_traffic() {
    let server = Monitored::start().await;
    let before = server.scrape().await;
    if std::env::var_os("FERRY_PRINT_SCRAPE").is_some() {
        println!("--- scrape before any traffic ---\n{before}");
    }
    assert_eq!(sample(&before, "ferry_connections"), Some(0.0), "no client yet");

    let client = server.server.client().await;
    let n = 3 * 1024 * 1024 + 17;
    let data = random_bytes(n, 8);
    upload_bytes(&client, "m/data.bin", &data).await.expect("upload");
    assert!(download_bytes(&client, "m/data.bin").await.expect("download") == data);
    let missing = client.stat("m/missing").await.expect_err("missing");
    assert_eq!(missing.code(), Some(Code::NotFound));
    let unknown_method = call_unknown(&server.server.url, "/ferry.v1.Ferry/Nope").await;
    assert_eq!(unknown_method.code(), Code::Unimplemented);
    let unknown_service = call_unknown(&server.server.url, "/nope.v1.Nope/Nope").await;
    assert_eq!(unknown_service.code(), Code::Unimplemented);

    // Transfers end asynchronously (the download's slot is released when the
    // server drops the finished response stream).
    let text = server
        .scrape_until("both transfers over", |text| {
            sample(text, "ferry_active_transfers{direction=\"upload\"}") == Some(0.0)
                && sample(text, "ferry_active_transfers{direction=\"download\"}") == Some(0.0)
        })
        .await;
    if std::env::var_os("FERRY_PRINT_SCRAPE").is_some() {
        println!("--- scrape after traffic ---\n{text}");
    }
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"));

    assert!(value(&requests(UPLOAD, "OK")) >= 1.0);
    assert!(value(&requests(DOWNLOAD, "OK")) >= 1.0);
    assert_eq!(value(&requests(STAT, "NOT_FOUND")), 1.0, "the NOT_FOUND stat is counted under its code");
    assert_eq!(sample(&text, &requests(STAT, "OK")), None, "no stat succeeded");
    assert_eq!(value(&requests("unknown", "UNIMPLEMENTED")), 2.0, "unknown methods share one label");
    assert!(value("ferry_transfer_bytes_total{direction=\"upload\"}") >= n as f64);
    assert!(value("ferry_transfer_bytes_total{direction=\"download\"}") >= n as f64);
    assert!(value("ferry_connections") >= 1.0, "a client is connected");
    assert_eq!(value("ferry_connections_refused_total"), 0.0);
    // Histograms: a count, a sum, cumulative buckets ending at +Inf.
    for method in [UPLOAD, DOWNLOAD, STAT] {
        let count = value(&format!("ferry_request_duration_seconds_count{{method=\"{method}\"}}"));
        assert!(count >= 1.0, "{method} has a duration count");
        assert!(value(&format!("ferry_request_duration_seconds_sum{{method=\"{method}\"}}")) >= 0.0);
        let inf = value(&format!("ferry_request_duration_seconds_bucket{{le=\"+Inf\",method=\"{method}\"}}"));
        assert_eq!(inf, count, "{method}: the +Inf bucket holds every observation");
    }
    for direction in ["upload", "download"] {
        let count = value(&format!("ferry_transfer_duration_seconds_count{{direction=\"{direction}\"}}"));
        assert_eq!(count, 1.0, "one {direction} stream lived and ended");
    }
    assert!(value("ferry_storage_free_bytes") > 0.0, "read from the store at scrape");
    assert_eq!(value("ferry_upload_sessions"), 0.0);
    // No quota configured: the gauge is there, at 0.
    assert_eq!(value("ferry_quota_used_bytes"), 0.0);

    // A resumable session is counted at scrape, until it is aborted.
    let id = client.create_upload("m/session.bin", &Default::default()).await.expect("create upload");
    assert_eq!(sample(&server.scrape().await, "ferry_upload_sessions"), Some(1.0));
    client.abort_upload(&id).await.expect("abort");
    assert_eq!(sample(&server.scrape().await, "ferry_upload_sessions"), Some(0.0));

    // A download held unread is an active transfer; dropping it cancels it.
    let big = random_bytes(16 * 1024 * 1024, 3);
    std::fs::write(server.server.root().join("m/big.bin"), &big).expect("write");
    let mut raw = server.server.raw().await;
    let held = raw.download(DownloadRequest { path: "m/big.bin".into(), offset: 0, length: None }).await.expect("held");
    let text = server.scrape().await;
    assert_eq!(sample(&text, "ferry_active_transfers{direction=\"download\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, &requests(DOWNLOAD, "CANCELLED")), None);
    drop(held);
    server
        .scrape_until("the dropped download counted as CANCELLED and no longer active", |text| {
            sample(text, "ferry_active_transfers{direction=\"download\"}") == Some(0.0)
                && sample(text, &requests(DOWNLOAD, "CANCELLED")) == Some(1.0)
        })
        .await;

    // Every client gone: no connection left.
    drop((client, raw));
    server.scrape_until("no connections", |text| sample(text, "ferry_connections") == Some(0.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_only_get_metrics() {
    let server = Monitored::start().await;
    let (status, _, body) = http_get(server.admin, "GET", "/other").await;
    assert_eq!(status, 404, "GET /other: {body}");
    assert!(body.contains("/metrics"), "the 404 says where the metrics are: {body}");
    assert_eq!(http_get(server.admin, "GET", "/").await.0, 404);
    assert_eq!(http_get(server.admin, "GET", "/metrics/extra").await.0, 404);
    assert_eq!(http_get(server.admin, "POST", "/metrics").await.0, 404);
    // The listener keeps serving after those.
    let text = server.scrape().await;
    assert!(text.contains("# TYPE ferry_connections gauge"), "{text}");
    // prometheus-client leaves out a labelled family until it has a series:
    // no RPC has been made, so no `ferry_requests` at all (not even a 0).
    assert!(!text.contains("ferry_requests"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics-style end marker: {text}");
}
