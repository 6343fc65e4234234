//! `ferry ls`: directories marked with a slash, recursive listings, JSON
//! lines and the long format.

use std::fs;

use serde_json::Value;

use crate::{TestServer, Uploaded, assert_exit, ferry, put_bytes, stdout_lines, text};

/// Files uploaded by [`populate`], with their contents.
const TREE: [(&str, &[u8]); 3] =
    [("a.txt", b"alpha\n"), ("dir/b.txt", b"bravo, a little longer\n"), ("dir/sub/c.txt", b"charlie\n")];

/// Uploads [`TREE`] and makes an empty directory beside it; returns each
/// file's upload summary in `TREE` order.
fn populate(server: &TestServer) -> Vec<Uploaded> {
    let sources = tempfile::tempdir().expect("create a directory for upload sources");
    let uploaded = TREE.iter().map(|(remote, content)| put_bytes(server, sources.path(), remote, content)).collect();
    // Made directly in the root: ferry creates directories only as parents of files.
    fs::create_dir(server.stored("empty")).expect("create an empty directory in the root");
    uploaded
}

#[test]
fn ls_marks_directories_with_a_trailing_slash() {
    let server = TestServer::start();
    populate(&server);

    // Sorted; the server's own `.ferry` directory is never listed.
    let output = ferry(&server, &["ls"]);
    assert_exit(&output, 0);
    assert_eq!(stdout_lines(&output), ["a.txt", "dir/", "empty/"]);

    // A subdirectory lists root-relative paths, one level only.
    let output = ferry(&server, &["ls", "dir"]);
    assert_exit(&output, 0);
    assert_eq!(stdout_lines(&output), ["dir/b.txt", "dir/sub/"]);

    let output = ferry(&server, &["ls", "empty"]);
    assert_exit(&output, 0);
    assert!(output.stdout.is_empty(), "an empty directory listed {:?}", text(&output.stdout));
}

#[test]
fn ls_recursive_lists_nested_files() {
    let server = TestServer::start();
    populate(&server);

    let output = ferry(&server, &["ls", "-r"]);
    assert_exit(&output, 0);
    assert_eq!(stdout_lines(&output), ["a.txt", "dir/", "dir/b.txt", "dir/sub/", "dir/sub/c.txt", "empty/"]);

    let output = ferry(&server, &["ls", "--recursive", "dir"]);
    assert_exit(&output, 0);
    assert_eq!(stdout_lines(&output), ["dir/b.txt", "dir/sub/", "dir/sub/c.txt"]);
}

#[test]
fn ls_json_prints_one_object_per_line() {
    let server = TestServer::start();
    let uploaded = populate(&server);

    let output = ferry(&server, &["ls", "-r", "--json"]);
    assert_exit(&output, 0);
    let entries: Vec<Value> = stdout_lines(&output)
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object: {line:?}: {e}")))
        .collect();
    let paths: Vec<&str> = entries.iter().map(|e| e["path"].as_str().expect("path is a string")).collect();
    assert_eq!(paths, ["a.txt", "dir", "dir/b.txt", "dir/sub", "dir/sub/c.txt", "empty"]);

    for entry in &entries {
        let object = entry.as_object().expect("each line is a JSON object");
        let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["mtime", "path", "permissions", "sha256", "size", "type"], "{entry}");

        let permissions = entry["permissions"].as_str().expect("permissions is a string");
        assert!(
            permissions.len() == 4 && permissions.bytes().all(|b| (b'0'..=b'7').contains(&b)),
            "permissions should be 4 octal digits: {entry}"
        );
        let mtime = entry["mtime"].as_str().expect("mtime is a string");
        assert!(mtime.contains('T') && mtime.ends_with('Z'), "mtime should be RFC 3339 UTC: {entry}");

        let path = entry["path"].as_str().expect("path is a string");
        match TREE.iter().position(|(remote, _)| *remote == path) {
            Some(i) => {
                assert_eq!(entry["type"], "file", "{entry}");
                assert_eq!(entry["size"], TREE[i].1.len() as u64, "{entry}");
                assert_eq!(entry["sha256"], uploaded[i].sha256.as_str(), "{entry}");
            }
            None => {
                assert_eq!(entry["type"], "dir", "{entry}");
                assert_eq!(entry["sha256"], Value::Null, "{entry}");
            }
        }
    }
}

#[test]
fn ls_long_shows_type_permissions_size_and_name() {
    let server = TestServer::start();
    populate(&server);

    let output = ferry(&server, &["ls", "-l"]);
    assert_exit(&output, 0);
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 3, "{lines:?}");
    // PERMISSIONS SIZE MTIME NAME
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split_whitespace().collect()).collect();
    for (line, fields) in lines.iter().zip(&fields) {
        assert_eq!(fields.len(), 4, "expected `PERMS SIZE MTIME NAME`: {line:?}");
    }
    assert!(lines[0].starts_with("-rw"), "{:?}", lines[0]);
    assert_eq!(fields[0][1], TREE[0].1.len().to_string(), "{:?}", lines[0]);
    assert_eq!(fields[0][3], "a.txt");
    assert!(lines[1].starts_with('d'), "{:?}", lines[1]);
    assert_eq!(fields[1][3], "dir/");
    assert!(lines[2].starts_with('d'), "{:?}", lines[2]);
    assert_eq!(fields[2][3], "empty/");
}
