//! Exit codes and error messages: missing paths (3), an existing file (4),
//! an unreachable server (6), bad flags (2), paths escaping the root.

use std::fs;

use crate::{
    EXIT_EXISTS, EXIT_NOT_FOUND, EXIT_OTHER, EXIT_UNAVAILABLE, EXIT_USAGE, TestServer, assert_exit, dir_entries,
    error_line, ferry, ferry_command, put, put_bytes, run, text, unused_port, utf8,
};

#[test]
fn missing_remote_paths_exit_3() {
    let server = TestServer::start();
    let commands: [&[&str]; 4] =
        [&["get", "no/such/file", "-"], &["stat", "no/such/file"], &["ls", "no/such/dir"], &["rm", "no/such/file"]];
    for args in commands {
        let output = ferry(&server, args);
        assert_exit(&output, EXIT_NOT_FOUND);
        let line = error_line(&output);
        assert!(line.contains("NOT_FOUND"), "ferry {args:?}: {line}");
        assert!(output.stdout.is_empty(), "ferry {args:?} wrote to stdout: {}", text(&output.stdout));
    }
}

#[test]
fn put_no_clobber_onto_an_existing_file_exits_4() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let original = work.path().join("original.txt");
    let replacement = work.path().join("replacement.txt");
    fs::write(&original, b"original").expect("write the local file");
    fs::write(&replacement, b"replacement").expect("write the local file");
    put(&server, &original, "file.txt");

    let output = ferry(&server, &["put", "--no-clobber", utf8(&replacement), "file.txt"]);
    assert_exit(&output, EXIT_EXISTS);
    assert!(error_line(&output).contains("ALREADY_EXISTS"), "{}", text(&output.stderr));
    assert_eq!(fs::read(server.stored("file.txt")).expect("read the stored file"), b"original");

    // Without --no-clobber the same upload replaces the file.
    put(&server, &replacement, "file.txt");
    assert_eq!(fs::read(server.stored("file.txt")).expect("read the stored file"), b"replacement");
}

#[test]
fn get_replaces_an_existing_local_file_only_with_force() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let uploads = tempfile::tempdir().expect("create a directory for upload sources");
    put_bytes(&server, uploads.path(), "remote.txt", b"from the server");
    let local = work.path().join("local.txt");
    fs::write(&local, b"precious local data").expect("write the local file");

    let output = ferry(&server, &["get", "remote.txt", utf8(&local)]);
    assert_exit(&output, EXIT_EXISTS);
    let line = error_line(&output);
    assert!(line.contains("already exists") && line.contains("--force"), "{line}");
    assert_eq!(fs::read(&local).expect("read the local file"), b"precious local data");
    assert_eq!(dir_entries(work.path()), ["local.txt"], "a refused get left files behind");

    let output = ferry(&server, &["get", "--force", "remote.txt", utf8(&local)]);
    assert_exit(&output, 0);
    assert_eq!(fs::read(&local).expect("read the local file"), b"from the server");
    assert_eq!(dir_entries(work.path()), ["local.txt"], "get --force left files behind");
}

#[test]
fn unreachable_server_exits_6() {
    let url = format!("http://127.0.0.1:{}", unused_port());
    let url = url.as_str();
    for args in [&["stat", "--server", url, "x"][..], &["ls", "--server", url], &["get", "--server", url, "x", "-"]] {
        let mut command = ferry_command();
        command.args(args);
        let output = run(command);
        assert_exit(&output, EXIT_UNAVAILABLE);
        let line = error_line(&output);
        assert!(line.contains(url), "the error should name the server: {line}");
    }
}

#[test]
fn bad_flags_and_arguments_exit_2() {
    // clap rejects these before any connection is attempted.
    for args in [
        &["put", "--no-such-flag", "x"][..],
        &["get"],
        &["frobnicate"],
        &["put", "--chunk-size", "0", "x"],
        &["get", "--offset", "minus-one", "x", "-"],
        &["serve", "--listen", "not-an-address"],
    ] {
        let mut command = ferry_command();
        command.args(args);
        let output = run(command);
        assert_exit(&output, EXIT_USAGE);
        assert!(output.stdout.is_empty(), "ferry {args:?} wrote to stdout: {}", text(&output.stdout));
        assert!(text(&output.stderr).contains("error"), "ferry {args:?}: no usage error: {}", text(&output.stderr));
    }
}

#[test]
fn paths_escaping_the_root_are_refused() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let local = work.path().join("x");
    fs::write(&local, b"must not leave the root").expect("write the local file");

    let output = ferry(&server, &["put", utf8(&local), "../x"]);
    assert_exit(&output, EXIT_OTHER);
    let line = error_line(&output);
    assert!(line.contains("invalid path") && line.contains("'..'"), "{line}");
    assert!(line.contains("INVALID_ARGUMENT"), "{line}");
    // `../x` from the root is `dir/x`, beside the root.
    assert!(!server.dir.path().join("x").exists(), "put ../x wrote outside the root");

    let output = ferry(&server, &["put", utf8(&local), "/tmp/x"]);
    assert_exit(&output, EXIT_OTHER);
    assert!(error_line(&output).contains("must be relative"), "{}", text(&output.stderr));

    for args in [&["get", "../x", "-"][..], &["stat", "a/../../x"], &["rm", "../root"], &["ls", ".."]] {
        let output = ferry(&server, args);
        assert_exit(&output, EXIT_OTHER);
        let line = error_line(&output);
        assert!(line.contains("invalid path"), "ferry {args:?}: {line}");
    }
    assert!(server.root.is_dir(), "rm ../root removed the root");
}
