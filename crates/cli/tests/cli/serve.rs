//! `ferry serve`: one server per root, and a clean stop on SIGTERM (also
//! right after startup).

use std::process::Stdio;

use crate::{EXIT_UNAVAILABLE, TestServer, assert_exit, ferry, run, serve_command, text};

#[test]
fn second_server_on_the_same_root_is_refused() {
    let server = TestServer::start();

    let mut second = serve_command(&server.root);
    second.stderr(Stdio::piped());
    let output = run(second);
    assert!(!output.status.success(), "a second server started on the same root");
    assert!(output.stdout.is_empty(), "the second server printed {:?}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("another ferry server"), "unexpected error: {stderr}");

    // The first server is unaffected.
    assert_exit(&ferry(&server, &["ls"]), 0);
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let mut server = TestServer::start();
    // A completed request shows the server is serving, shutdown handling included.
    assert_exit(&ferry(&server, &["ls"]), 0);

    let status = server.terminate();
    assert!(status.success(), "ferry serve exited with {status} on SIGTERM");
    // Gone for good: the port no longer answers.
    assert_exit(&ferry(&server, &["ls"]), EXIT_UNAVAILABLE);
}

/// `listening on ADDR` is the readiness signal, so a supervisor may stop the
/// server right after it. Before the handlers were registered ahead of that
/// line, each attempt lost the race about half the time; ten attempts catch a
/// regression almost surely.
#[test]
fn serve_stops_cleanly_on_sigterm_right_after_startup() {
    for attempt in 1..=10 {
        let mut server = TestServer::start();
        let status = server.terminate();
        assert!(status.success(), "attempt {attempt}: ferry serve exited with {status} on SIGTERM");
    }
}
