//! An interrupted tree copy continues its large files on the next run,
//! instead of starting them over: `put -r` remembers each one's session as
//! `ferry put` does, `get -r` keeps a `.NAME.*.ferry-part` beside the target
//! as `ferry get` does.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::support::{MIB, random_bytes};
use super::{Env, TIMEOUT, assert_success, text, utf8};

/// The size of the largest `*.ferry-part` file in `dir`, if any.
fn part_len(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ferry-part"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn get_r_killed_mid_file_resumes_that_file_on_the_next_run() {
    let env = Env::start();
    let big = random_bytes(320 * MIB, 77);
    fs::create_dir_all(env.root.join("tree/data")).unwrap();
    fs::write(env.root.join("tree/data/big.bin"), &big).unwrap();
    fs::write(env.root.join("tree/small.txt"), b"small").unwrap();
    // A first read caches the server's digest, as for any file ferry stored.
    assert_success(&env.ferry(&["get", "-q", "tree/data/big.bin", "-"]), "get to stdout");

    let dst = env.dir.path().join("dst");
    let mut first = env.command(&["get", "-r", "-q", "tree", utf8(&dst)]);
    first.stdout(Stdio::null()).stderr(Stdio::null());
    let mut first = first.spawn().expect("spawn get -r");
    let deadline = Instant::now() + TIMEOUT;
    while part_len(&dst.join("data")) < 64 * MIB as u64 {
        assert!(first.try_wait().expect("poll get -r").is_none(), "get -r finished before it could be killed");
        assert!(Instant::now() < deadline, "the large file's part never grew");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().expect("SIGKILL get -r");
    let _ = first.wait();
    assert!(!dst.join("data/big.bin").exists(), "nothing under the target name before it is verified");

    let second = env.ferry(&["get", "-r", "tree", utf8(&dst)]);
    assert_success(&second, "get -r again");
    let stderr = text(&second.stderr);
    let resumed_at: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("resuming tree/data/big.bin at byte ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the large file was not resumed: {stderr}"));
    assert!(resumed_at >= 64 * MIB as u64, "resumed at byte {resumed_at}");
    assert!(fs::read(dst.join("data/big.bin")).unwrap() == big, "the resumed file's bytes");
    assert_eq!(fs::read(dst.join("small.txt")).unwrap(), b"small");
    assert_eq!(part_len(&dst.join("data")), 0, "no part file left");
}

/// The largest staged upload on the server (its session's data file).
fn staged_len(root: &Path) -> u64 {
    fs::read_dir(root.join(".ferry/uploads"))
        .map(|sessions| {
            sessions.flatten().filter_map(|s| fs::metadata(s.path().join("data")).ok()).map(|m| m.len()).max()
        })
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[test]
fn put_r_killed_mid_file_resumes_that_file_on_the_next_run() {
    let env = Env::start();
    let src = env.local("src");
    let big = random_bytes(320 * MIB, 78);
    fs::create_dir_all(src.join("data")).unwrap();
    fs::write(src.join("data/big.bin"), &big).unwrap();
    fs::write(src.join("small.txt"), b"small").unwrap();

    let mut first = env.command(&["put", "-r", "-q", utf8(&src), "tree"]);
    first.stdout(Stdio::null()).stderr(Stdio::null());
    let mut first = first.spawn().expect("spawn put -r");
    let deadline = Instant::now() + TIMEOUT;
    // Past the server's first 32 MiB checkpoint, so some of it is committed.
    while staged_len(&env.root) < 96 * MIB as u64 {
        assert!(first.try_wait().expect("poll put -r").is_none(), "put -r finished before it could be killed");
        assert!(Instant::now() < deadline, "the large file's session never grew");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().expect("SIGKILL put -r");
    let _ = first.wait();
    assert!(!env.root.join("tree/data/big.bin").exists(), "nothing published before the whole file is in");

    let second = env.ferry(&["put", "-r", utf8(&src), "tree"]);
    assert_success(&second, "put -r again");
    let stderr = text(&second.stderr);
    let prefix = format!("resuming {} at byte ", src.join("data/big.bin").display());
    let resumed_at: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the large file was not resumed: {stderr}"));
    assert!(resumed_at >= 32 * MIB as u64, "resumed at byte {resumed_at}");
    assert!(fs::read(env.root.join("tree/data/big.bin")).unwrap() == big, "the resumed file's bytes");
    assert_eq!(fs::read(env.root.join("tree/small.txt")).unwrap(), b"small");
    let sessions = fs::read_dir(env.root.join(".ferry/uploads")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(sessions, 0, "the session is finished, not left behind");
    let remembered = fs::read_dir(env.dir.path().join("state")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(remembered, 0, "the client forgot the finished session");
}
