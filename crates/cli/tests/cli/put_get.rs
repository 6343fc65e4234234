//! `ferry put` and `ferry get`: a multi-chunk round trip, mtime and
//! permissions, `-` for stdin and stdout, a closed stdout pipe, a stalled
//! download, and no partial file after a failed get.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, UNIX_EPOCH};

use crate::{
    EXIT_NOT_FOUND, EXIT_OTHER, MIB, TestServer, assert_exit, assert_same_bytes, client_command, dir_entries,
    error_line, ferry, parse_uploaded, put, put_bytes, random_bytes, stat_json, text, utf8, wait_output,
};

#[test]
fn put_then_get_round_trips_a_multi_chunk_file() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    // Several 1 MiB chunks and a partial last one.
    let data = random_bytes(3 * MIB + 12_345, 1);
    let local = work.path().join("big.bin");
    fs::write(&local, &data).expect("write the local file");

    let uploaded = put(&server, &local, "nested/dir/big.bin");
    assert_eq!(uploaded.path, "nested/dir/big.bin");
    assert_eq!(uploaded.size, data.len() as u64);

    // The server stores it at the same relative path, parents created.
    let stored = fs::read(server.stored("nested/dir/big.bin")).expect("the upload is under the server root");
    assert_same_bytes(&stored, &data, "stored file");

    // stat agrees with what put reported.
    let stat = stat_json(&server, "nested/dir/big.bin");
    assert_eq!(stat["path"], "nested/dir/big.bin");
    assert_eq!(stat["type"], "file");
    assert_eq!(stat["size"], data.len() as u64);
    assert_eq!(stat["sha256"], uploaded.sha256.as_str());

    let copy = work.path().join("copy.bin");
    let output = ferry(&server, &["get", "nested/dir/big.bin", utf8(&copy)]);
    assert_exit(&output, 0);
    assert!(output.stdout.is_empty(), "get to a file wrote to stdout");
    assert_same_bytes(&fs::read(&copy).expect("get wrote the local copy"), &data, "downloaded copy");
}

#[test]
fn put_and_get_preserve_mtime_and_permissions() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let local = work.path().join("kept.txt");
    fs::write(&local, b"metadata travels with the data\n").expect("write the local file");
    // 2017-07-14T02:40:00.123456789Z: a fixed past time, with nanoseconds to catch truncation.
    let mtime = UNIX_EPOCH + Duration::new(1_500_000_000, 123_456_789);
    let file = fs::File::options().write(true).open(&local).expect("open the local file");
    file.set_modified(mtime).expect("set the local mtime");
    file.set_permissions(fs::Permissions::from_mode(0o640)).expect("set the local mode");
    drop(file);

    put(&server, &local, "kept.txt");
    let stored = fs::metadata(server.stored("kept.txt")).expect("the upload is under the server root");
    assert_eq!(stored.permissions().mode() & 0o777, 0o640, "mode of the stored file");
    assert_eq!(stored.modified().expect("stored mtime"), mtime, "mtime of the stored file");

    let stat = stat_json(&server, "kept.txt");
    assert_eq!(stat["permissions"], "0640");
    assert_eq!(stat["mtime"], "2017-07-14T02:40:00.123456789Z");

    let copy = work.path().join("copy.txt");
    assert_exit(&ferry(&server, &["get", "kept.txt", utf8(&copy)]), 0);
    let restored = fs::metadata(&copy).expect("get wrote the local copy");
    assert_eq!(restored.permissions().mode() & 0o777, 0o640, "mode of the downloaded copy");
    assert_eq!(restored.modified().expect("copy mtime"), mtime, "mtime of the downloaded copy");
}

#[test]
fn dash_reads_stdin_for_put_and_writes_stdout_for_get() {
    let server = TestServer::start();
    let content = b"data from stdin, back out through stdout\n";

    // `... | ferry put - remote.txt`
    let mut command = client_command(&server, &["put", "-", "remote.txt"]);
    let mut child = command.stdin(Stdio::piped()).spawn().expect("spawn ferry put -");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(content).expect("write to ferry put's stdin");
    drop(stdin); // end of input
    let output = wait_output(child, "ferry put -");
    assert_exit(&output, 0);
    let uploaded = parse_uploaded(&text(&output.stderr));
    assert_eq!((uploaded.path.as_str(), uploaded.size), ("remote.txt", content.len() as u64));
    let stored = fs::read(server.stored("remote.txt")).expect("the upload is under the server root");
    assert_same_bytes(&stored, content, "stored file");

    // `ferry get remote.txt -` prints exactly the bytes and nothing else.
    let output = ferry(&server, &["get", "remote.txt", "-"]);
    assert_exit(&output, 0);
    assert_same_bytes(&output.stdout, content, "get - output");
    assert!(output.stderr.is_empty(), "get - wrote to stderr: {}", text(&output.stderr));

    // A range: `--offset 5 --length 4` is "from".
    let output = ferry(&server, &["get", "--offset", "5", "--length", "4", "remote.txt", "-"]);
    assert_exit(&output, 0);
    assert_eq!(text(&output.stdout), "from");

    // An offset alone runs to the end.
    let output = ferry(&server, &["get", "--offset", "16", "remote.txt", "-"]);
    assert_exit(&output, 0);
    assert_same_bytes(&output.stdout, &content[16..], "get --offset 16 output");
}

/// `ferry get big - | head -c 10`: the reader going away is not an error.
#[test]
fn get_to_a_closed_stdout_pipe_exits_0() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    // Far more than a pipe buffer plus the client's write queue, so the writes must hit the closed pipe.
    let data = random_bytes(8 * MIB, 8);
    put_bytes(&server, work.path(), "big.bin", &data);

    let mut child = client_command(&server, &["get", "big.bin", "-"]).spawn().expect("spawn ferry get -");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut head = [0u8; 10];
    stdout.read_exact(&mut head).expect("read the first bytes");
    assert_eq!(head, data[..10], "first bytes of get - output");
    drop(stdout); // like `head` exiting

    let output = wait_output(child, "ferry get big.bin - with its stdout closed");
    assert_exit(&output, 0);
    assert!(output.stderr.is_empty(), "a broken pipe printed an error: {}", text(&output.stderr));
}

/// A client that stops reading must not make the server buffer the file:
/// HTTP/2 flow control and the bounded read-ahead stop the server after a few
/// chunks, so its memory stays far below the file's size.
#[test]
fn a_stalled_download_does_not_grow_server_memory() {
    const FILE: usize = 256 * MIB;
    const BOUND_KIB: u64 = 96 * 1024;
    let server = TestServer::start();
    // Written straight into the root (faster than an upload); zeros are as good as any bytes here.
    let mut file = fs::File::create(server.stored("big.bin")).expect("create the big file");
    let block = vec![0u8; MIB];
    for _ in 0..FILE / MIB {
        file.write_all(&block).expect("write the big file");
    }
    drop(file);

    let mut child = client_command(&server, &["get", "big.bin", "-"]).spawn().expect("spawn ferry get -");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut first = vec![0u8; MIB];
    stdout.read_exact(&mut first).expect("the download starts");
    // Stop reading. A server without backpressure would read the whole file
    // into memory well within this pause; a correct one waits.
    std::thread::sleep(Duration::from_secs(1));
    let peak = server_peak_rss_kib(&server);
    assert!(peak < BOUND_KIB, "server peak RSS {peak} KiB while a client stalled on a {FILE}-byte download");

    // Resuming reading completes the download correctly.
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("read the rest");
    assert_eq!(first.len() + rest.len(), FILE, "bytes received after the stall");
    drop(stdout);
    assert_exit(&wait_output(child, "ferry get big.bin -"), 0);
}

/// The server's peak resident memory (VmHWM) so far.
fn server_peak_rss_kib(server: &TestServer) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", server.child.id())).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmHWM value")
}

/// A failed download never leaves a partial file, under the target's name or
/// as a `.NAME.*.ferry-part` temporary beside it.
#[test]
fn failed_get_leaves_no_partial_local_file() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let uploads = tempfile::tempdir().expect("create a directory for upload sources");
    put_bytes(&server, uploads.path(), "small.txt", b"twelve bytes");
    let target = work.path().join("target.bin");

    // Missing remote: NOT_FOUND.
    let output = ferry(&server, &["get", "missing.bin", utf8(&target)]);
    assert_exit(&output, EXIT_NOT_FOUND);
    assert_eq!(dir_entries(work.path()), Vec::<String>::new(), "files left behind by a failed get");

    // A range past the end: refused once the temporary file exists.
    let output = ferry(&server, &["get", "--offset", "100", "small.txt", utf8(&target)]);
    assert_exit(&output, EXIT_OTHER);
    assert!(error_line(&output).contains("OUT_OF_RANGE"), "{}", text(&output.stderr));
    assert_eq!(dir_entries(work.path()), Vec::<String>::new(), "files left behind by a failed get");
}
