//! The S3 backend under test: a moto server (Python `moto[server]`), one per
//! test binary, and a fresh bucket per test.
//!
//! **Why each S3 test runs in a child process.** `S3Store::open` takes its
//! credentials and region from the environment, and setting environment
//! variables is `unsafe` in edition 2024, which the workspace forbids. So an
//! S3 test, run normally, starts moto (once per binary), then runs *itself*
//! again as a child process (`current_exe() --exact s3::RULE`) with
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` and
//! [`ENDPOINT_VAR`] set; the child sees [`ENDPOINT_VAR`] and runs the rule
//! against that moto. The child's output is printed by the parent, which
//! fails if the child did.
//!
//! **moto's lifetime.** Statics are never dropped, so no guard could stop
//! moto at exit. Instead moto runs under `sh`, whose stdin is a pipe from this
//! process: when the test binary exits (however: even SIGKILL), the pipe
//! closes, `read` returns and `sh` kills moto. Nothing is registered anywhere.
//!
//! **Where moto is.** `$FERRY_MOTO_SERVER`, else `target/py-test-env/bin/moto_server`
//! (the virtualenv `scripts/test.sh` builds). If there is none, the S3 tests
//! print SKIPPED and pass, unless `FERRY_REQUIRE_S3=1` (as in CI): then they fail.
//!
//! **Another S3 server.** With `FERRY_TEST_S3_ENDPOINT` set (and `AWS_*`
//! credentials that may create buckets), the rules run against that server
//! instead of moto: Ceph RGW, say (`eval "$(scripts/ceph-rgw.sh start)"`).
//! The fixture's own requests are then signed (SigV4, with object_store's
//! signer), as a real server demands.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_store::Store;
use ferry_store::s3::{S3Config, S3Store};

use super::{PART_SIZE, RULE_TIMEOUT};

/// Set in the child process: the moto endpoint to test against.
pub const ENDPOINT_VAR: &str = "FERRY_CONFORMANCE_S3_ENDPOINT";

/// The key prefix the store lives under, inside the bucket.
const PREFIX: &str = "some/prefix";

/// A fresh bucket on the moto server.
#[derive(Debug)]
pub struct S3Fixture {
    /// `host:port`.
    authority: String,
    bucket: String,
}

impl S3Fixture {
    /// In the child process: a new bucket on the parent's moto.
    pub fn new(endpoint: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let authority = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let bucket = format!("ferry-{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let (status, body) = http(&authority, "PUT", &format!("/{bucket}"));
        assert!(status == 200, "creating bucket {bucket}: HTTP {status}: {body}");
        Self { authority, bucket }
    }

    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(format!("http://{}", self.authority)),
            prefix: PREFIX.into(),
            part_size: PART_SIZE as usize,
            ..S3Config::from_url(&format!("s3://{}", self.bucket)).expect("a valid s3:// url")
        }
    }

    pub async fn open(&self) -> Arc<dyn Store> {
        Arc::new(S3Store::open(self.config()).await.expect("opening the S3 store"))
    }

    /// Multipart uploads in progress and session records, straight from the
    /// server (S3's own API, not the store's view).
    pub async fn staged(&self) -> Vec<String> {
        let (authority, bucket) = (self.authority.clone(), self.bucket.clone());
        tokio::task::spawn_blocking(move || {
            let mut staged = Vec::new();
            let (status, body) = http(&authority, "GET", &format!("/{bucket}?uploads"));
            assert!(status == 200, "listing multipart uploads: HTTP {status}: {body}");
            for upload in elements(&body, "Upload") {
                staged.push(format!("multipart upload of {}", elements(upload, "Key").first().copied().unwrap_or("?")));
            }
            let query = format!("/{bucket}?list-type=2&prefix={PREFIX}/.ferry/uploads/");
            let (status, body) = http(&authority, "GET", &query);
            assert!(status == 200, "listing session records: HTTP {status}: {body}");
            for key in elements(&body, "Key") {
                staged.push(format!("session record {key}"));
            }
            staged.sort();
            staged
        })
        .await
        .expect("listing what is staged")
    }
}

impl S3Fixture {
    /// Puts objects straight into the bucket under the store's prefix, as
    /// another program would (no file records): many at once, quickly.
    pub async fn seed(&self, files: &[(String, Bytes)]) {
        let (authority, bucket) = (self.authority.clone(), self.bucket.clone());
        let files = files.to_vec();
        tokio::task::spawn_blocking(move || {
            let per_thread = files.len().div_ceil(SEED_THREADS).max(1);
            std::thread::scope(|scope| {
                for share in files.chunks(per_thread) {
                    let (authority, bucket) = (&authority, &bucket);
                    scope.spawn(move || {
                        for (raw, bytes) in share {
                            assert!(
                                raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)),
                                "{raw:?} would need URL-encoding"
                            );
                            let (status, body) = request(authority, "PUT", &format!("/{bucket}/{PREFIX}/{raw}"), bytes);
                            assert!(status == 200, "seeding {raw}: HTTP {status}: {body}");
                        }
                    });
                }
            });
        })
        .await
        .expect("seeding the bucket");
    }
}

/// Connections seeding a bucket at once.
const SEED_THREADS: usize = 8;

/// The contents of every `<name>…</name>` in `xml`.
fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    found
}

/// One HTTP/1.1 request without a body: status and body.
fn http(authority: &str, method: &str, target: &str) -> (u16, String) {
    request(authority, method, target, &[])
}

/// The SigV4 headers for a request, with the credentials in the environment
/// (moto ignores them; a real server checks them).
fn signature(authority: &str, method: &str, target: &str, body: &[u8]) -> String {
    use object_store::aws::{AwsAuthorizer, AwsCredential};
    let var = |name| std::env::var(name).unwrap_or_default();
    let credential = AwsCredential {
        key_id: var("AWS_ACCESS_KEY_ID"),
        secret_key: var("AWS_SECRET_ACCESS_KEY"),
        token: std::env::var("AWS_SESSION_TOKEN").ok(),
    };
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let mut signed = http::Request::builder()
        .method(method)
        .uri(format!("http://{authority}{target}"))
        .body(object_store::client::HttpRequestBody::from(body.to_vec()))
        .expect("a request to sign");
    AwsAuthorizer::new(&credential, "s3", &region).try_authorize(&mut signed, None).expect("signing a request");
    signed.headers().iter().map(|(name, value)| format!("{name}: {}\r\n", value.to_str().unwrap_or_default())).collect()
}

fn request(authority: &str, method: &str, target: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(authority).unwrap_or_else(|e| panic!("connecting to S3 at {authority}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("setting a read timeout");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {authority}\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n",
        signature(authority, method, target, body),
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("sending a request to moto");
    stream.write_all(body).expect("sending a request body to moto");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("reading moto's response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The moto server this test binary started, if any.
#[derive(Debug)]
struct Moto {
    endpoint: String,
    /// Holds the pipe to `sh`'s stdin open for the life of the process.
    _shell: Mutex<Child>,
}

/// What a test in the parent process should do.
#[derive(Debug)]
pub enum Plan {
    /// This is the child: run the rule against this endpoint.
    Run(String),
    /// The parent: the rule ran in a child (which passed), or was skipped.
    Done,
}

/// Decides how the S3 test `name` (`s3::RULE`) runs; see the module docs.
pub fn plan(name: &str) -> Plan {
    if let Ok(endpoint) = std::env::var(ENDPOINT_VAR) {
        return Plan::Run(endpoint);
    }
    let external = std::env::var("FERRY_TEST_S3_ENDPOINT").ok();
    let endpoint = match external.clone().map(Ok).unwrap_or_else(|| moto().map(|moto| moto.endpoint.clone())) {
        Ok(endpoint) => endpoint,
        Err(why) if std::env::var("FERRY_REQUIRE_S3").is_ok_and(|v| v == "1") => {
            panic!("FERRY_REQUIRE_S3=1 but the S3 tests cannot run: {why}")
        }
        Err(why) => {
            println!("SKIPPED: no moto_server (run scripts/test.sh, or set FERRY_MOTO_SERVER): {why}");
            eprintln!("SKIPPED: no moto_server (run scripts/test.sh, or set FERRY_MOTO_SERVER): {why}");
            return Plan::Done;
        }
    };
    let exe = std::env::current_exe().expect("finding the test binary");
    let (stdout, stderr) = (tempfile::tempfile().expect("a temporary file"), tempfile::tempfile().expect("a file"));
    let mut command = Command::new(exe);
    command.args([name, "--exact", "--nocapture", "--test-threads=1"]).env(ENDPOINT_VAR, &endpoint);
    if external.is_none() {
        // moto takes any credentials; keep the caller's out of it.
        command
            .env("AWS_ACCESS_KEY_ID", "conformance")
            .env("AWS_SECRET_ACCESS_KEY", "conformance")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_SESSION_TOKEN");
    }
    let mut child = command
        .env_remove("AWS_ENDPOINT")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_BUCKET")
        .env_remove("AWS_BUCKET_NAME")
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("a file handle"))
        .stderr(stderr.try_clone().expect("a file handle"))
        .spawn()
        .expect("running the rule in a child process");
    // The rule has its own timeout; this one catches a child that hangs anyway.
    let deadline = Instant::now() + RULE_TIMEOUT + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child process") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (read_back(stdout), read_back(stderr));
    println!("--- child process ({name}) stdout:\n{stdout}--- stderr:\n{stderr}---");
    let status = status.unwrap_or_else(|| panic!("{name}: the child process hung; killed it; its output is above"));
    assert!(status.success(), "{name} failed against {endpoint} ({status}); its output is above");
    assert!(stdout.contains("1 passed"), "{name}: the child process did not run exactly this test");
    Plan::Done
}

fn read_back(mut file: std::fs::File) -> String {
    use std::io::Seek;
    file.rewind().expect("rewinding an output file");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).expect("reading an output file");
    String::from_utf8_lossy(&bytes).into_owned()
}

fn moto() -> Result<&'static Moto, String> {
    static MOTO: OnceLock<Result<Moto, String>> = OnceLock::new();
    MOTO.get_or_init(start_moto).as_ref().map_err(Clone::clone)
}

fn moto_executable() -> Result<PathBuf, String> {
    let exe = match std::env::var_os("FERRY_MOTO_SERVER") {
        Some(exe) => PathBuf::from(exe),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/py-test-env/bin/moto_server"),
    };
    match exe.is_file() {
        true => Ok(exe),
        false => Err(format!("{} does not exist", exe.display())),
    }
}

fn start_moto() -> Result<Moto, String> {
    let exe = moto_executable()?;
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
        listener.local_addr().map_err(|e| format!("finding a free port: {e}"))?.port()
    };
    // moto in the background; when our end of the pipe closes (this process
    // exited), `read` returns and moto is killed.
    let script = r#""$0" -H 127.0.0.1 -p "$1" </dev/null & moto=$!; read line; kill "$moto"; wait "$moto""#;
    let mut shell = Command::new("sh")
        .args(["-c", script])
        .arg(&exe)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let authority = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(&authority).is_ok() {
            break;
        }
        if let Ok(Some(status)) = shell.try_wait() {
            return Err(format!("{} exited at start-up ({status})", exe.display()));
        }
        if Instant::now() > deadline {
            drop(shell.stdin.take()); // sh kills moto and exits
            return Err(format!("{} did not listen on {authority} within 30 s", exe.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Moto { endpoint: format!("http://{authority}"), _shell: Mutex::new(shell) })
}
