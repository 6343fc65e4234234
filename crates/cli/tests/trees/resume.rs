//! An interrupted `get -r` continues its large files: each goes to a
//! `.NAME.*.ferry-part` beside its target, as with `ferry get`, so the
//! re-run resumes it instead of starting over, and the small files already
//! there are skipped.

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
