//! `ferry rm`: a file, a non-empty directory (refused), an empty one.

use std::fs;

use crate::{EXIT_NOT_FOUND, EXIT_OTHER, TestServer, assert_exit, dir_entries, error_line, ferry, put_bytes, text};

#[test]
fn rm_removes_a_file() {
    let server = TestServer::start();
    let sources = tempfile::tempdir().expect("create a directory for upload sources");
    put_bytes(&server, sources.path(), "doomed.txt", b"short-lived");

    let output = ferry(&server, &["rm", "doomed.txt"]);
    assert_exit(&output, 0);
    assert!(output.stdout.is_empty() && output.stderr.is_empty(), "rm printed something: {output:?}");
    assert!(!server.stored("doomed.txt").exists(), "the file is still under the root");
    assert_exit(&ferry(&server, &["stat", "doomed.txt"]), EXIT_NOT_FOUND);
}

#[test]
fn rm_refuses_a_non_empty_directory() {
    let server = TestServer::start();
    let sources = tempfile::tempdir().expect("create a directory for upload sources");
    put_bytes(&server, sources.path(), "dir/keep.txt", b"still here");

    let output = ferry(&server, &["rm", "dir"]);
    assert_exit(&output, EXIT_OTHER);
    assert!(error_line(&output).contains("FAILED_PRECONDITION"), "{}", text(&output.stderr));
    assert_eq!(fs::read(server.stored("dir/keep.txt")).expect("the file survives"), b"still here");
}

#[test]
fn rm_removes_an_empty_directory() {
    let server = TestServer::start();
    let sources = tempfile::tempdir().expect("create a directory for upload sources");
    put_bytes(&server, sources.path(), "dir/only.txt", b"the last file");

    // Emptied through ferry, then removed through ferry.
    assert_exit(&ferry(&server, &["rm", "dir/only.txt"]), 0);
    assert_eq!(dir_entries(&server.stored("dir")), Vec::<String>::new());
    assert_exit(&ferry(&server, &["rm", "dir"]), 0);
    assert!(!server.stored("dir").exists(), "the directory is still under the root");
    assert_exit(&ferry(&server, &["stat", "dir"]), EXIT_NOT_FOUND);
}
