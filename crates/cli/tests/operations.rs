//! The operator's view of `ferry serve`, through the real binary: the config
//! file, tokens made by `ferry token`, TLS from the command line, JSON logs
//! with a request id on every line, the metrics listener, the refusal to
//! serve plain text beyond loopback, and the open-file limit it raises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use support::random_bytes;

/// `ferry serve ARGS` with stdout read up to its "listening on" line (and
/// a "metrics on" line before it, if any) and stderr kept for the test.
struct Serve {
    child: Child,
    url: String,
    metrics: Option<String>,
}

impl Serve {
    // Every path either panics after killing and reaping the child, or hands
    // it to `Serve`, whose Drop does.
    fn start(args: &[&str], scheme: &str) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command.arg("serve").args(args);
        Self::spawn(command, scheme)
    }

    /// [`Serve::start`] after the shell's `ulimit ULIMIT` (its options and value).
    fn start_with_ulimit(ulimit: &str, args: &[&str]) -> Self {
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!("ulimit {ulimit} && exec \"$0\" serve \"$@\"")).arg(env!("CARGO_BIN_EXE_ferry"));
        command.args(args);
        Self::spawn(command, "http")
    }

    #[allow(clippy::zombie_processes)]
    fn spawn(mut command: Command, scheme: &str) -> Self {
        let mut child = command
            .env_remove("FERRY_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut metrics = None;
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ferry serve exited before listening");
            }
            if let Some(addr) = line.trim().strip_prefix("metrics on ") {
                metrics = Some(addr.to_owned());
            } else if let Some(addr) = line.trim().strip_prefix("listening on ") {
                return Self { child, url: format!("{scheme}://{addr}"), metrics };
            }
        }
    }

    /// Stops the server and returns everything it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut logs = String::new();
        self.child.stderr.take().expect("stderr").read_to_string(&mut logs).expect("read logs");
        logs
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ferry(url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.arg("--server").arg(url).args(args).stdin(Stdio::null());
    for name in ["FERRY_TOKEN", "FERRY_TOKEN_FILE", "FERRY_CA_CERT", "FERRY_CERT", "FERRY_KEY", "FERRY_STATE_DIR"] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run ferry")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exit code")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn json_logs_carry_the_request_id_on_every_line_of_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let server =
        Serve::start(&["--listen", "127.0.0.1:0", "--root", root.to_str().unwrap(), "--log-format", "json"], "http");
    let source = dir.path().join("a.bin");
    std::fs::write(&source, random_bytes(300_000, 1)).unwrap();
    assert_eq!(code(&ferry(&server.url, &["put", source.to_str().unwrap(), "a.bin"], &[])), 0);
    assert_eq!(code(&ferry(&server.url, &["stat", "missing.bin"], &[])), 3);
    let logs = server.stop();

    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let rpc_of = |line: &serde_json::Value| -> Option<(u64, String)> {
        let span = line.get("spans")?.as_array()?.iter().find(|s| s["name"] == "rpc")?;
        Some((span["id"].as_u64()?, span["method"].as_str()?.to_owned()))
    };
    // The commit's log line names its call.
    let committed = lines.iter().find(|l| l["fields"]["message"] == "upload committed").expect("a commit line");
    let (upload_id, method) = rpc_of(committed).expect("the commit line carries its call's span");
    assert!(method == "Upload" || method == "UploadSession", "{method}");
    // Every line logged inside that call carries the same id.
    let same_call: Vec<_> = lines.iter().filter(|l| rpc_of(l).is_some_and(|(id, _)| id == upload_id)).collect();
    assert!(!same_call.is_empty());
    // The refused stat is logged too, under a different id.
    let refused = lines.iter().filter_map(rpc_of).find(|(_, m)| m == "Stat").expect("the stat's call is logged");
    assert_ne!(refused.0, upload_id);
}

#[test]
fn tokens_made_by_ferry_token_gate_the_cli_and_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(env!("CARGO_BIN_EXE_ferry")).args(["token", "new", "--name", "ci"]).output().unwrap();
    assert!(made.status.success());
    let made = String::from_utf8(made.stdout).unwrap();
    let token = made.lines().find_map(|l| l.strip_prefix("token: ")).expect("a token line").to_owned();
    let digest = made.lines().find_map(|l| l.strip_prefix("sha256 = ")).expect("a sha256 line").trim_matches('"');
    // `ferry token hash` agrees with `ferry token new`.
    let mut hash = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["token", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    hash.stdin.take().unwrap().write_all(format!("{token}\n").as_bytes()).unwrap();
    assert_eq!(String::from_utf8(hash.wait_with_output().unwrap().stdout).unwrap().trim(), digest);

    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "root = {root:?}\n[[tokens]]\nname = \"ci\"\nsha256 = \"{digest}\"\n\
             scopes = [{{ prefix = \"builds\", allow = [\"read\", \"write\", \"list\"] }}]\n",
            root = dir.path().join("root")
        ),
    )
    .unwrap();
    let server = Serve::start(&["--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"], "http");
    let source = dir.path().join("a.bin");
    std::fs::write(&source, random_bytes(100_000, 2)).unwrap();
    let source = source.to_str().unwrap();

    let anonymous = ferry(&server.url, &["put", source, "builds/a.bin"], &[]);
    assert_eq!(code(&anonymous), 5, "{}", stderr(&anonymous));
    assert!(stderr(&anonymous).contains("UNAUTHENTICATED"), "{}", stderr(&anonymous));
    let wrong = ferry(&server.url, &["put", source, "builds/a.bin"], &[("FERRY_TOKEN", "not-the-token")]);
    assert_eq!(code(&wrong), 5);
    let put = ferry(&server.url, &["put", source, "builds/a.bin"], &[("FERRY_TOKEN", &token)]);
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    let outside = ferry(&server.url, &["put", source, "elsewhere/a.bin"], &[("FERRY_TOKEN", &token)]);
    assert_eq!(code(&outside), 5);
    assert!(stderr(&outside).contains("PERMISSION_DENIED"), "{}", stderr(&outside));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let copy = dir.path().join("copy.bin");
    let get = ferry(
        &server.url,
        &["--token-file", token_file.to_str().unwrap(), "get", "builds/a.bin", copy.to_str().unwrap()],
        &[],
    );
    assert_eq!(code(&get), 0, "{}", stderr(&get));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(source).unwrap());
    let delete = ferry(&server.url, &["rm", "builds/a.bin"], &[("FERRY_TOKEN", &token)]);
    assert_eq!(code(&delete), 5, "the token has no delete permission");

    let logs = server.stop();
    assert!(logs.contains("ci"), "the token's name appears in the logs");
    assert!(!logs.contains(&token), "the token itself never does");
    assert!(!logs.contains("not-the-token"), "nor a wrong one");
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, as PEM files.
fn make_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
}

#[test]
fn tls_from_the_command_line_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let server = Serve::start(
        &["--listen", "127.0.0.1:0", "--root", &path("root"), "--tls-cert", &cert, "--tls-key", &key],
        "https",
    );
    let source = path("a.bin");
    std::fs::write(&source, random_bytes(2_000_000, 3)).unwrap();

    let untrusted = ferry(&server.url, &["put", &source, "a.bin"], &[]);
    assert_eq!(code(&untrusted), 6, "a server certificate nobody vouches for: {}", stderr(&untrusted));
    let put = ferry(&server.url, &["--ca-cert", &ca, "put", &source, "a.bin"], &[]);
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    let copy = path("copy.bin");
    let get = ferry(&server.url, &["get", "a.bin", &copy], &[("FERRY_CA_CERT", &ca)]);
    assert_eq!(code(&get), 0, "{}", stderr(&get));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&source).unwrap());
    let plain = ferry(&server.url.replace("https://", "http://"), &["stat", "a.bin"], &[]);
    assert_ne!(code(&plain), 0, "plain text is not served on a TLS port");
}

#[test]
fn plain_text_beyond_loopback_and_bad_config_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--root", root.to_str().unwrap()])
            .args(args)
            .env_remove("FERRY_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let open = run(&["--listen", "0.0.0.0:0"]);
    assert_eq!(code(&open), 2);
    assert!(stderr(&open).contains("--insecure"), "{}", stderr(&open));

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[limits]\nmax_conections = 5\n").unwrap();
    let bad = run(&["--config", config.to_str().unwrap()]);
    assert_eq!(code(&bad), 2);
    assert!(stderr(&bad).contains("max_conections"), "the unknown key is named: {}", stderr(&bad));
}

#[test]
fn the_metrics_listener_serves_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let server = Serve::start(
        &["--listen", "127.0.0.1:0", "--root", root.to_str().unwrap(), "--metrics-listen", "127.0.0.1:0"],
        "http",
    );
    let source = dir.path().join("a.bin");
    std::fs::write(&source, random_bytes(1_500_000, 4)).unwrap();
    assert_eq!(code(&ferry(&server.url, &["put", "--no-resume", source.to_str().unwrap(), "a.bin"], &[])), 0);
    assert_eq!(code(&ferry(&server.url, &["stat", "nope"], &[])), 3);

    let addr = server.metrics.clone().expect("a metrics line on stdout");
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let value = |name: &str| -> f64 {
        response
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in:\n{response}"))
    };
    assert_eq!(value("ferry_requests_total{method=\"/ferry.v1.Ferry/Upload\",code=\"OK\"}"), 1.0);
    assert_eq!(value("ferry_requests_total{method=\"/ferry.v1.Ferry/Stat\",code=\"NOT_FOUND\"}"), 1.0);
    assert!(value("ferry_transfer_bytes_total{direction=\"upload\"}") >= 1_500_000.0);
    assert!(value("ferry_storage_free_bytes") > 0.0);
    assert_eq!(value("ferry_upload_sessions"), 0.0);
}

/// `(soft, hard)` "Max open files" of a running process.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_owned(), fields[4].to_owned())
}

#[test]
fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    let root = tempfile::tempdir().unwrap();
    let serve =
        Serve::start_with_ulimit("-S -n 256", &["--listen", "127.0.0.1:0", "--root", root.path().to_str().unwrap()]);
    let (soft, hard) = open_file_limits(serve.child.id());
    assert_ne!(soft, "256", "the soft limit was not raised");
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
    let logs = serve.stop();
    assert!(!logs.contains("open-file limit"), "no warning when the hard limit leaves room: {logs}");
}

#[test]
fn serve_warns_when_the_hard_open_file_limit_is_below_its_connection_limit() {
    let root = tempfile::tempdir().unwrap();
    let serve =
        Serve::start_with_ulimit("-n 512", &["--listen", "127.0.0.1:0", "--root", root.path().to_str().unwrap()]);
    // Still serves.
    let listed = ferry(&serve.url, &["ls"], &[]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let logs = serve.stop();
    assert!(logs.contains("open-file limit is below the connection limit"), "{logs}");
}
