//! Directory-tree transfers: `ferry put -r LOCAL_DIR REMOTE_PREFIX` and
//! `ferry get -r REMOTE_PREFIX LOCAL_DIR`, end to end against a real
//! `ferry serve` over a root in a temporary directory.
//!
//! The server's root is inspected (and, for downloads, populated) directly on
//! disk: a file stored at `P` is `ROOT/P`, with the uploaded mode and mtime.
//! The root is `DIR/root`, so anything escaping it would land in `DIR`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

mod support;
use support::{MIB, random_bytes, sha256_hex};

#[path = "trees/harness.rs"]
mod harness;
use harness::*;

#[path = "trees/dirs.rs"]
mod dirs;
#[path = "trees/resume.rs"]
mod resume;

// ---------------------------------------------------------------------------
// put -r
// ---------------------------------------------------------------------------

/// Varied sizes: empty, tiny, around page and chunk-ish boundaries.
const SIZES: [usize; 13] = [0, 1, 2, 17, 100, 511, 512, 4095, 4096, 4097, 65_535, 65_537, 200_001];

/// Builds the tree for the upload tests under `src`: 50 small files in
/// nested directories, 3 MiB and 9 MiB files, an executable, a 0600 file with an old
/// mtime, names with spaces and non-ASCII, a dotfile, and an empty directory.
fn build_upload_tree(src: &Path) {
    let dirs = ["", "docs", "docs/api", "src/core", "src/core/deep/deeper", "with space/ünïcode"];
    for i in 0..50usize {
        let dir = dirs[i % dirs.len()];
        let name = format!("f{i:02}.dat");
        let path = if dir.is_empty() { src.join(name) } else { src.join(dir).join(name) };
        let secs = 1_600_000_000 + i64::try_from(i).unwrap() * 86_400;
        write_file(&path, &random_bytes(SIZES[i % SIZES.len()], i as u64 + 1), 0o644, time(secs, 123_456_789));
    }
    write_file(&src.join("assets/big.bin"), &random_bytes(3 * MIB + 7, 99), 0o644, time(1_650_000_000, 0));
    // Big enough for whatever path larger files take (a resumable session, say).
    write_file(&src.join("assets/huge.bin"), &random_bytes(9 * MIB + 1, 98), 0o640, time(1_400_000_000, 0));
    write_file(&src.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755, time(1_610_000_000, 5));
    // 2001-09-09T01:46:40Z: old, and private.
    write_file(&src.join("secret.key"), b"do not share\n", 0o600, time(1_000_000_000, 0));
    write_file(&src.join(".hidden"), b"dotfiles are files too\n", 0o640, time(1_620_000_000, 0));
    fs::create_dir_all(src.join("empty/dir")).expect("create an empty directory");
}

/// Every regular file of the local tree arrives at PREFIX/<relative path>
/// with its bytes, mode and mtime; symlinks are skipped and reported, never
/// followed.
#[test]
fn put_r_uploads_a_tree_with_modes_and_mtimes_and_skips_symlinks() {
    let env = Env::start();
    let src = env.local("src");
    build_upload_tree(&src);
    let expected = files(&scan(&src));
    assert_eq!(expected.len(), 55, "the test tree itself");

    // Symlinks: to a file inside the tree, to a directory outside it (with a
    // file that must not be uploaded), and dangling.
    let outside = env.local("outside");
    write_file(&outside.join("outside.txt"), b"outside the tree\n", 0o644, time(1_600_000_000, 0));
    std::os::unix::fs::symlink("docs/f01.dat", src.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("docs/link-to-dir")).unwrap();
    std::os::unix::fs::symlink("nowhere", src.join("dangling-link")).unwrap();
    // A FIFO is not a regular file: opening it would block until a writer comes.
    let fifo = Command::new("mkfifo").arg(src.join("docs/pipe")).status().expect("run mkfifo");
    assert!(fifo.success(), "mkfifo failed");

    let started = Instant::now();
    let output = env.ferry(&["put", "-r", utf8(&src), "up/tree"]);
    eprintln!("put -r of {} files: {:?}", expected.len(), started.elapsed());
    assert_success(&output, "put -r");

    let stored = env.root.join("up/tree");
    assert_same_tree(&files(&scan(&stored)), &expected, "server root after put -r");
    let server_tree = scan(&stored);
    for (path, node) in &server_tree {
        assert!(matches!(node, Node::File { .. } | Node::Dir), "{path} on the server is {node:?}");
    }
    assert!(!stored.join("link-to-file").exists(), "a symlink to a file was uploaded");
    assert!(!stored.join("docs/link-to-dir").exists(), "a symlink to a directory was followed");
    assert!(!stored.join("dangling-link").exists(), "a dangling symlink was uploaded");
    assert!(!stored.join("docs/pipe").exists(), "a FIFO was uploaded");

    // The 0600 file and its 2001 mtime, spelled out.
    let secret = fs::metadata(stored.join("secret.key")).expect("secret.key was uploaded");
    assert_eq!(secret.mode() & 0o777, 0o600, "mode of secret.key");
    assert_eq!(secret.mtime(), 1_000_000_000, "mtime of secret.key");
    assert_eq!(fs::metadata(stored.join("bin/run.sh")).unwrap().mode() & 0o777, 0o755, "mode of bin/run.sh");
    assert_eq!(fs::metadata(stored.join("assets/big.bin")).unwrap().len(), 3 * MIB as u64 + 7);
    let huge = fs::metadata(stored.join("assets/huge.bin")).expect("assets/huge.bin was uploaded");
    assert_eq!((huge.len(), huge.mode() & 0o777, huge.mtime()), (9 * MIB as u64 + 1, 0o640, 1_400_000_000));

    // Each skipped symlink is reported on stderr.
    let stderr = text(&output.stderr);
    for link in ["link-to-file", "link-to-dir", "dangling-link"] {
        assert!(stderr.contains(link), "the skipped symlink {link} is not reported:\n{}", show(&output));
    }
    // Nothing was written anywhere else in the server's root.
    let top: Vec<String> = scan(&env.root).into_keys().filter(|p| !p.contains('/') && p != ".ferry").collect();
    assert_eq!(top, ["up"], "entries at the top of the server root");
}

/// A second `put -r` sends only what is missing or different: a file whose
/// bytes changed (same size and mtime, so only the digest tells), a new file,
/// and one removed from the server (as after an interrupted run). The rest
/// keep their inodes on the server (ferry replaces a file by rename).
#[test]
fn put_r_again_sends_only_changed_and_missing_files() {
    let env = Env::start();
    let src = env.local("src");
    for i in 0..20usize {
        let path = src.join(format!("d{}/file{i:02}.txt", i % 4));
        write_file(&path, &random_bytes(100 + i * 37, 1000 + i as u64), 0o644, time(1_600_000_000, 0));
    }
    write_file(&src.join("big.bin"), &random_bytes(MIB + 3, 7), 0o644, time(1_600_000_000, 0));

    let output = env.ferry(&["put", "-r", "-q", utf8(&src), "tree"]);
    assert_success(&output, "first put -r -q");
    assert!(output.stdout.is_empty(), "put -r -q wrote to stdout:\n{}", show(&output));
    let stored = env.root.join("tree");
    assert_same_tree(&files(&scan(&stored)), &files(&scan(&src)), "server root after the first put -r");
    let before = inodes(&stored);

    // Same size, same mtime, different bytes.
    let changed = "d1/file05.txt";
    let old = fs::read(src.join(changed)).unwrap();
    rewrite_keeping_mtime(&src.join(changed), &random_bytes(old.len(), 4242));
    assert_ne!(fs::read(src.join(changed)).unwrap(), old);
    let added = "d9/new.txt";
    write_file(&src.join(added), b"a new file\n", 0o600, time(1_700_000_000, 0));
    let removed = "d2/file10.txt";
    fs::remove_file(stored.join(removed)).unwrap();

    let output = env.ferry(&["put", "-r", utf8(&src), "tree"]);
    assert_success(&output, "second put -r");
    assert_same_tree(&files(&scan(&stored)), &files(&scan(&src)), "server root after the second put -r");
    let after = inodes(&stored);
    for (path, ino) in &before {
        if path != changed && path != removed {
            assert_eq!(after.get(path), Some(ino), "{path} was re-uploaded although unchanged:\n{}", show(&output));
        }
    }
    assert_ne!(after[changed], before[changed], "{changed} (new bytes, same size and mtime) was not re-uploaded");
    assert_eq!(put_summary(&output), (3, 19, 0), "summary of the second run:\n{}", show(&output));

    // A third run has nothing to do.
    let output = env.ferry(&["put", "-r", utf8(&src), "tree"]);
    assert_success(&output, "third put -r");
    assert_eq!(inodes(&stored), after, "a run with nothing to do replaced files");
    assert_eq!(put_summary(&output), (0, 22, 0), "summary of the third run:\n{}", show(&output));
}

/// Skipping identical remote files does not depend on the server having
/// hashed them before: a remote copy put in the server's root by other means
/// (no digest cached; the same as a root on a filesystem without user
/// xattrs) is recognised as identical, and nothing is sent again.
#[test]
fn put_r_skips_identical_remote_files_the_server_has_not_hashed_yet() {
    let env = Env::start();
    let src = env.local("src");
    for i in 0..8usize {
        let path = src.join(format!("d{}/file{i}.txt", i % 2));
        write_file(&path, &random_bytes(500 + i, 900 + i as u64), 0o644, time(1_600_000_000, 0));
    }
    // The same files in the server's root, written directly.
    let stored = env.root.join("tree");
    for rel in files(&scan(&src)).into_keys() {
        let mtime = fs::metadata(src.join(&rel)).unwrap().modified().unwrap();
        write_file(&stored.join(&rel), &fs::read(src.join(&rel)).unwrap(), 0o644, mtime);
    }
    let before = inodes(&stored);

    let output = env.ferry(&["put", "-r", utf8(&src), "tree"]);
    assert_success(&output, "put -r onto an identical remote tree");
    assert_eq!(inodes(&stored), before, "put -r re-sent files the server already had:\n{}", show(&output));
    assert_eq!(put_summary(&output), (0, 8, 0), "summary of a put -r with nothing to send");
}

/// `--no-clobber` is not silently dropped by `-r`: a remote file that
/// differs is not replaced (whether the flag is honoured per file or the
/// combination refused).
#[test]
fn put_r_does_not_ignore_no_clobber() {
    let env = Env::start();
    let src = env.local("src");
    write_file(&src.join("a.txt"), b"local version\n", 0o644, time(1_600_000_000, 0));
    write_file(&src.join("b.txt"), b"only local\n", 0o644, time(1_600_000_000, 0));
    write_file(&env.root.join("tree/a.txt"), b"server version\n", 0o644, time(1_500_000_000, 0));

    let output = env.ferry(&["put", "-r", "--no-clobber", utf8(&src), "tree"]);
    assert_eq!(
        text(&fs::read(env.root.join("tree/a.txt")).unwrap()),
        "server version\n",
        "put -r --no-clobber replaced a remote file:\n{}",
        show(&output)
    );
    assert!(!output.status.success(), "put -r --no-clobber with a clash exits 0:\n{}", show(&output));
}

/// A regular file whose name cannot become a remote path (not UTF-8) is not
/// silently left behind: it is a failure, reported, and the rest transfer.
#[test]
fn put_r_reports_a_file_whose_name_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::start();
    let src = env.local("src");
    write_file(&src.join("good.txt"), b"fine\n", 0o644, time(1_600_000_000, 0));
    let bad = src.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name.txt"));
    fs::write(&bad, b"a Latin-1 name\n").unwrap();

    let output = env.ferry(&["put", "-r", utf8(&src), "tree"]);
    assert_eq!(fs::read(env.root.join("tree/good.txt")).unwrap(), b"fine\n", "the other file");
    assert!(text(&output.stderr).contains("bad-"), "the file is not reported:\n{}", show(&output));
    assert_failure(&output, "put -r with a file it cannot upload");
}

/// A file that cannot be stored (a non-empty directory holds its remote
/// path) fails alone: the rest transfer, the exit code is non-zero, and the
/// failure is named on stderr.
#[test]
fn put_r_reports_a_failed_file_and_still_sends_the_others() {
    let env = Env::start();
    let src = env.local("src");
    for i in 0..10usize {
        write_file(&src.join(format!("ok/f{i}.txt")), &random_bytes(10 + i, i as u64), 0o644, time(1_600_000_000, 0));
    }
    write_file(&src.join("clash"), b"cannot replace a directory\n", 0o644, time(1_600_000_000, 0));
    write_file(&src.join("zz-last.txt"), b"after the failure\n", 0o644, time(1_600_000_000, 0));
    // The server already has a non-empty directory where `clash` should go.
    write_file(&env.root.join("tree/clash/keep.txt"), b"keep me\n", 0o644, time(1_600_000_000, 0));

    let output = env.ferry(&["put", "-r", utf8(&src), "tree"]);
    assert_failure(&output, "put -r with one file that cannot be stored");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("clash"), "the failed file is not named on stderr:\n{}", show(&output));

    let stored = env.root.join("tree");
    let mut expected = files(&scan(&src));
    expected.remove("clash");
    let mut actual = files(&scan(&stored));
    assert!(actual.remove("clash/keep.txt").is_some(), "the server's own file was removed");
    assert_same_tree(&actual, &expected, "the files that could be stored");
    assert_eq!(fs::read(stored.join("clash/keep.txt")).unwrap(), b"keep me\n");
    assert_eq!(put_summary(&output), (11, 0, 1), "summary of a run with one failure:\n{}", show(&output));
}

// ---------------------------------------------------------------------------
// get -r
// ---------------------------------------------------------------------------

/// Builds a tree directly in the server's root under `tree/`, with empty
/// directories, plus neighbours that a `get -r tree` must not fetch.
fn build_server_tree(root: &Path) {
    let tree = root.join("tree");
    write_file(&tree.join("top.txt"), b"top level\n", 0o644, time(1_500_000_000, 1));
    write_file(&tree.join("zero"), b"", 0o644, time(1_500_000_100, 0));
    write_file(&tree.join(".hidden"), b"hidden\n", 0o640, time(1_500_000_200, 0));
    write_file(&tree.join("bin/run.sh"), b"#!/bin/sh\nexit 0\n", 0o755, time(1_510_000_000, 0));
    write_file(&tree.join("private/key"), b"secret\n", 0o600, time(1_000_000_000, 0));
    write_file(&tree.join("a/b/c/deep.bin"), &random_bytes(300 * 1024 + 1, 5), 0o644, time(1_520_000_000, 9));
    write_file(&tree.join("a/b/c/big.bin"), &random_bytes(2 * MIB + 5, 6), 0o640, time(1_530_000_000, 0));
    write_file(&tree.join("with space/ünï.txt"), "ünïcode\n".as_bytes(), 0o644, time(1_540_000_000, 0));
    for (i, size) in SIZES.iter().enumerate().take(12) {
        let path = tree.join(format!("many/m{i:02}"));
        write_file(&path, &random_bytes(*size, 50 + i as u64), 0o644, time(1_550_000_000 + i as i64, 0));
    }
    fs::create_dir_all(tree.join("empty")).unwrap();
    fs::create_dir_all(tree.join("a/b/empty-leaf")).unwrap();
    fs::create_dir_all(tree.join("nested/empty/dirs")).unwrap();
    // Neighbours sharing the prefix as a string, and elsewhere.
    write_file(&root.join("tree-sibling.txt"), b"not under tree/\n", 0o644, time(1_500_000_000, 0));
    write_file(&root.join("treex/other.txt"), b"not under tree/\n", 0o644, time(1_500_000_000, 0));
    write_file(&root.join("elsewhere/x"), b"not under tree/\n", 0o644, time(1_500_000_000, 0));
}

/// `get -r` recreates the remote tree, empty directories included, with the
/// bytes, modes and mtimes, in a LOCAL_DIR it creates; nothing else is left
/// there (no partial files), and nothing outside the prefix is fetched.
#[test]
fn get_r_downloads_a_tree_with_empty_dirs_modes_and_mtimes() {
    let env = Env::start();
    build_server_tree(&env.root);
    let work = env.local("work");
    let dest = work.join("dest");
    assert!(!dest.exists());

    let output = env.ferry(&["get", "-r", "tree", utf8(&dest)]);
    assert_success(&output, "get -r");
    let expected = scan(&env.root.join("tree"));
    assert!(expected.contains_key("nested/empty/dirs") && expected.contains_key("private/key"));
    assert_same_tree(&scan(&dest), &expected, "local tree after get -r");
    assert_eq!(scan(&work).keys().filter(|p| !p.starts_with("dest")).count(), 0, "get -r wrote beside LOCAL_DIR");

    let key = fs::metadata(dest.join("private/key")).unwrap();
    assert_eq!((key.mode() & 0o777, key.mtime()), (0o600, 1_000_000_000), "mode and mtime of private/key");
    assert!(dest.join("empty").is_dir() && dest.join("a/b/empty-leaf").is_dir(), "empty directories");
}

/// A second `get -r` skips every file (exit 0, nothing rewritten); a local
/// file that differs is an error for that file alone, and is left alone,
/// unless `-f`, which replaces it (and still skips the identical ones).
#[test]
fn get_r_again_skips_identical_files_and_needs_force_for_changed_ones() {
    let env = Env::start();
    build_server_tree(&env.root);
    let dest = env.local("dest");

    assert_success(&env.ferry(&["get", "-r", "-q", "tree", utf8(&dest)]), "first get -r");
    let expected = scan(&env.root.join("tree"));
    assert_same_tree(&scan(&dest), &expected, "local tree after the first get -r");
    let first = inodes(&dest);

    let output = env.ferry(&["get", "-r", "tree", utf8(&dest)]);
    assert_success(&output, "get -r onto an identical tree");
    assert_eq!(inodes(&dest), first, "get -r rewrote identical files");
    assert_eq!(get_summary(&output), (0, 20, 0), "summary of a get -r with nothing to do");
    assert_same_tree(&scan(&dest), &expected, "local tree after the second get -r");

    // One local file now differs, one is missing.
    let changed = "a/b/c/deep.bin";
    let mine = b"my local edits, which must survive".to_vec();
    fs::write(dest.join(changed), &mine).unwrap();
    fs::remove_file(dest.join("many/m03")).unwrap();

    let output = env.ferry(&["get", "-r", "tree", utf8(&dest)]);
    assert_failure(&output, "get -r onto a tree with a changed file, without -f");
    assert!(text(&output.stderr).contains(changed), "the refused file is not named on stderr:\n{}", show(&output));
    assert_eq!(fs::read(dest.join(changed)).unwrap(), mine, "get -r without -f replaced a changed local file");
    assert_eq!(get_summary(&output), (1, 18, 1), "summary of a get -r with one refused file");
    let mut want = expected.clone();
    want.remove(changed);
    let mut got = scan(&dest);
    assert!(got.remove(changed).is_some());
    assert_same_tree(&got, &want, "the other files after a get -r with one refused file");
    for (path, ino) in &first {
        if path != changed && path != "many/m03" {
            assert_eq!(inode(&dest.join(path)), *ino, "{path} was rewritten although identical");
        }
    }

    let output = env.ferry(&["get", "-r", "-f", "tree", utf8(&dest)]);
    assert_success(&output, "get -r -f");
    assert_eq!(get_summary(&output), (1, 19, 0), "summary of get -r -f");
    assert_same_tree(&scan(&dest), &expected, "local tree after get -r -f");
    for (path, ino) in &first {
        if path != changed && path != "many/m03" {
            assert_eq!(inode(&dest.join(path)), *ino, "get -r -f rewrote the identical {path}");
        }
    }
}

/// Skipping identical local files does not depend on the server having
/// hashed its files before: a tree put in the server's root by other means
/// (no digest cached yet), of which LOCAL_DIR already holds an identical
/// copy, is all skipped, without `-f`, and nothing is rewritten.
#[test]
fn get_r_skips_identical_local_files_the_server_has_not_hashed_yet() {
    let env = Env::start();
    build_server_tree(&env.root);
    let tree = env.root.join("tree");
    let dest = env.local("dest");
    // An identical copy, made without ferry (so the server never read its files).
    for (rel, node) in scan(&tree) {
        match node {
            Node::Dir => fs::create_dir_all(dest.join(&rel)).unwrap(),
            Node::File { mode, .. } => {
                let mtime = fs::metadata(tree.join(&rel)).unwrap().modified().unwrap();
                write_file(&dest.join(&rel), &fs::read(tree.join(&rel)).unwrap(), mode, mtime);
            }
            other => panic!("{rel}: {other:?} in the server tree"),
        }
    }
    assert_same_tree(&scan(&dest), &scan(&tree), "the local copy");
    let before = inodes(&dest);

    let output = env.ferry(&["get", "-r", "tree", utf8(&dest)]);
    assert_success(&output, "get -r onto an identical copy of a tree the server has not hashed");
    assert_eq!(inodes(&dest), before, "get -r rewrote identical files");
    assert_same_tree(&scan(&dest), &scan(&tree), "the local copy after get -r");
    assert_eq!(get_summary(&output), (0, 20, 0), "summary of a get -r with nothing to do");
}

/// `get -r` verifies every file's SHA-256: a file whose bytes no longer match
/// the digest the server reports is an error, and does not appear locally.
/// The server's digest is made stale by rewriting a stored file in place with
/// the same size and exact mtime (its cache key).
#[test]
fn get_r_verifies_each_file() {
    let env = Env::start();
    let src = env.local("src");
    for i in 0..5usize {
        write_file(&src.join(format!("f{i}")), &random_bytes(1000 + i, 70 + i as u64), 0o644, time(1_600_000_000, 0));
    }
    assert_success(&env.ferry(&["put", "-r", "-q", utf8(&src), "tree"]), "put -r");
    let stored = env.root.join("tree/f2");
    let original = fs::read(&stored).unwrap();
    rewrite_keeping_mtime(&stored, &random_bytes(original.len(), 666));

    let stat = env.ferry(&["stat", "--json", "tree/f2"]);
    assert_success(&stat, "stat");
    let stat: serde_json::Value = serde_json::from_slice(&stat.stdout).expect("stat --json");
    if stat["sha256"] != sha256_hex(&original).as_str() {
        eprintln!("SKIPPED: the server's filesystem keeps no digest cache (no user xattrs); cannot make it lie");
        return;
    }

    let dest = env.local("dest");
    let output = env.ferry(&["get", "-r", "tree", utf8(&dest)]);
    assert_failure(&output, "get -r of a tree with a corrupt file");
    assert!(text(&output.stderr).contains("f2"), "the corrupt file is not named on stderr:\n{}", show(&output));
    let mut expected = files(&scan(&env.root.join("tree")));
    expected.remove("f2");
    assert_same_tree(&scan(&dest), &expected, "local tree after get -r with a corrupt file");
}

/// The client is the extractor: it never writes through a symlink it finds
/// in LOCAL_DIR. Files under a planted directory symlink are refused (an
/// error), nothing appears outside LOCAL_DIR, and the other files arrive.
#[test]
fn get_r_never_writes_through_a_symlink_in_local_dir() {
    let env = Env::start();
    let tree = env.root.join("tree");
    let t = time(1_600_000_000, 0);
    write_file(&tree.join("ok.txt"), b"fine\n", 0o644, t);
    write_file(&tree.join("sub/x"), b"must not escape\n", 0o644, t);
    write_file(&tree.join("sub/deeper/y"), b"must not escape either\n", 0o644, t);
    write_file(&tree.join("nested/fine.txt"), b"fine too\n", 0o644, t);
    write_file(&tree.join("nested/inner/z"), b"must not escape\n", 0o644, t);
    write_file(&tree.join("leaf.txt"), b"server content\n", 0o644, t);

    // Outside LOCAL_DIR: two empty directories, and a file a leaf symlink points to.
    let outside = env.local("outside");
    let (out1, out2, out3) = (outside.join("one"), outside.join("two"), outside.join("three"));
    for dir in [&out1, &out2, &out3] {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(out3.join("target.txt"), b"original\n").unwrap();
    let dest = env.local("dest");
    std::os::unix::fs::symlink(&out1, dest.join("sub")).unwrap();
    fs::create_dir(dest.join("nested")).unwrap();
    std::os::unix::fs::symlink("../../outside/two", dest.join("nested/inner")).unwrap();
    assert!(dest.join("nested/inner").is_dir(), "the relative symlink resolves");
    std::os::unix::fs::symlink(out3.join("target.txt"), dest.join("leaf.txt")).unwrap();

    let expect_outside_untouched = |after: &str| {
        assert!(scan(&out1).is_empty(), "{after}: written through dest/sub: {:?}", scan(&out1));
        assert!(scan(&out2).is_empty(), "{after}: written through dest/nested/inner: {:?}", scan(&out2));
        assert_eq!(scan(&out3).len(), 1, "{after}: written beside the leaf symlink's target: {:?}", scan(&out3));
        assert_eq!(fs::read(out3.join("target.txt")).unwrap(), b"original\n", "{after}: written through leaf.txt");
    };
    let expect_good_files = |after: &str| {
        assert_eq!(fs::read(dest.join("ok.txt")).unwrap(), b"fine\n", "{after}: ok.txt");
        assert_eq!(fs::read(dest.join("nested/fine.txt")).unwrap(), b"fine too\n", "{after}: nested/fine.txt");
    };

    let output = env.ferry(&["get", "-r", "tree", utf8(&dest)]);
    assert_failure(&output, "get -r into a LOCAL_DIR with planted symlinks");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("sub"), "the refusal is not reported:\n{}", show(&output));
    expect_outside_untouched("get -r");
    expect_good_files("get -r");

    // Forcing changes nothing about symlinked directories.
    let output = env.ferry(&["get", "-r", "-f", "tree", utf8(&dest)]);
    assert_failure(&output, "get -r -f into a LOCAL_DIR with planted symlinks");
    expect_outside_untouched("get -r -f");
    expect_good_files("get -r -f");
    // If leaf.txt was replaced (the symlink itself, not its target), it holds the server's bytes.
    let leaf = fs::symlink_metadata(dest.join("leaf.txt")).unwrap();
    if leaf.is_file() {
        assert_eq!(fs::read(dest.join("leaf.txt")).unwrap(), b"server content\n");
    }
    // The planted directory links are still links (not replaced by directories to fill).
    assert!(fs::symlink_metadata(dest.join("sub")).unwrap().file_type().is_symlink());
    assert!(fs::symlink_metadata(dest.join("nested/inner")).unwrap().file_type().is_symlink());
    // Nothing escaped into the test's directory either.
    let beside: Vec<String> = fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !["root", "outside", "dest", "state"].contains(&n.as_str()))
        .collect();
    assert!(beside.is_empty(), "unexpected entries beside LOCAL_DIR: {beside:?}");
}

// ---------------------------------------------------------------------------
// Parallelism
// ---------------------------------------------------------------------------

/// `-j 1` and `-j 8` give the same trees both ways, for 200 tiny files.
#[test]
fn put_r_and_get_r_give_the_same_result_with_j1_and_j8() {
    let env = Env::start();
    let src = env.local("src");
    for i in 0..200usize {
        let path = src.join(format!("g{}/h{}/t{i:03}", i % 10, i % 3));
        let secs = 1_600_000_000 + i64::try_from(i).unwrap();
        write_file(
            &path,
            &random_bytes(i % 257, 3000 + i as u64),
            if i % 7 == 0 { 0o600 } else { 0o644 },
            time(secs, 0),
        );
    }
    let expected = files(&scan(&src));
    assert_eq!(expected.len(), 200);

    for jobs in ["1", "8"] {
        let started = Instant::now();
        let output = env.ferry(&["put", "-r", "-q", "-j", jobs, utf8(&src), &format!("j{jobs}")]);
        eprintln!("put -r -j {jobs} of 200 tiny files: {:?}", started.elapsed());
        assert_success(&output, &format!("put -r -j {jobs}"));
        assert!(output.stdout.is_empty(), "put -r -q wrote to stdout:\n{}", show(&output));
        assert_same_tree(&files(&scan(&env.root.join(format!("j{jobs}")))), &expected, &format!("put -r -j {jobs}"));
    }
    for (jobs, from) in [("1", "j8"), ("8", "j1")] {
        let dest = env.dir.path().join(format!("dest-j{jobs}"));
        let started = Instant::now();
        let output = env.ferry(&["get", "-r", "-q", "-j", jobs, from, utf8(&dest)]);
        eprintln!("get -r -j {jobs} of 200 tiny files: {:?}", started.elapsed());
        assert_success(&output, &format!("get -r -j {jobs}"));
        assert_same_tree(&scan(&dest), &scan(&env.root.join(from)), &format!("get -r -j {jobs}"));
        assert_same_tree(&files(&scan(&dest)), &expected, &format!("get -r -j {jobs} against the source"));
    }
}
