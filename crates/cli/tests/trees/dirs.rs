//! Directories' times and permission bits in tree copies. `put -r` sets
//! them on the server once a directory's entries are in place, `get -r`
//! sets them locally the same way (on directories it made, and on ones that
//! were there only with `-f`), and the owner always keeps `rwx`. A server
//! over S3 keeps none, says so once, and `get -r` from it leaves directories
//! as made (never dated 1970).

use std::fs::{self, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::support::{Moto, Server};
use super::{Env, assert_success, text, utf8};

/// Relative directory, mode as made locally, mtime (seconds).
const DIRS: [(&str, u32, i64); 6] = [
    ("private", 0o700, 1_100_000_000),
    ("private/inner", 0o750, 1_000_000_000),
    // Empty, inside a directory with a file: making it on the far side must
    // not disturb its parent's time once that is set.
    ("private/inner/hollow", 0o700, 1_050_000_000),
    ("shared", 0o755, 1_200_000_000),
    ("empty", 0o711, 1_300_000_000),
    // Not writable by its owner: the copies keep owner rwx, so that the
    // same command can run again.
    ("sealed", 0o555, 1_400_000_000),
];

/// A tree whose directories have the modes and times of [`DIRS`].
fn build(src: &Path) {
    for (rel, _, _) in DIRS {
        fs::create_dir_all(src.join(rel)).unwrap();
    }
    fs::write(src.join("private/inner/a.txt"), b"a").unwrap();
    fs::write(src.join("private/b.txt"), b"b").unwrap();
    fs::write(src.join("shared/c.txt"), b"c").unwrap();
    fs::write(src.join("sealed/d.txt"), b"d").unwrap();
    for (rel, mode, mtime) in DIRS {
        set(&src.join(rel), mode, mtime);
    }
}

fn set(dir: &Path, mode: u32, mtime: i64) {
    let mtime = UNIX_EPOCH + Duration::from_secs(mtime.try_into().unwrap());
    fs::File::open(dir).unwrap().set_modified(mtime).unwrap();
    fs::set_permissions(dir, Permissions::from_mode(mode)).unwrap();
}

/// `(mode & 0o777, mtime seconds)` of a directory.
fn attributes(dir: &Path) -> (u32, i64) {
    let meta = fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(meta.is_dir(), "{} is not a directory", dir.display());
    (meta.mode() & 0o777, meta.mtime())
}

#[track_caller]
fn assert_dirs(top: &Path, what: &str) {
    for (rel, mode, mtime) in DIRS {
        let expected = (mode | 0o700, mtime);
        assert_eq!(attributes(&top.join(rel)), expected, "{what}: {rel} (mode, mtime)");
    }
}

/// Leaves every directory writable, so that the temporary directory can go.
fn unseal(top: &Path) {
    if top.join("sealed").exists() {
        fs::set_permissions(top.join("sealed"), Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn directory_times_and_modes_survive_put_r_and_get_r() {
    let env = Env::start();
    let src = env.local("src");
    build(&src);

    assert_success(&env.ferry(&["put", "-r", utf8(&src), "tree"]), "put -r");
    assert_dirs(&env.root.join("tree"), "on the server after put -r");
    // The top directory is the caller's place, not part of the copy.
    assert_ne!(attributes(&env.root.join("tree")).1, 1_100_000_000);

    let dst = env.dir.path().join("dst");
    assert_success(&env.ferry(&["get", "-r", "tree", utf8(&dst)]), "get -r");
    assert_dirs(&dst, "locally after get -r");
    assert_eq!(fs::read(dst.join("sealed/d.txt")).unwrap(), b"d");

    // Both again: every file skipped, the directories' attributes intact.
    let again = env.ferry(&["put", "-r", utf8(&src), "tree"]);
    assert_success(&again, "put -r again");
    assert!(text(&again.stderr).contains("0 uploaded, 4 skipped"), "{}", text(&again.stderr));
    assert_dirs(&env.root.join("tree"), "on the server after put -r again");
    let again = env.ferry(&["get", "-r", "tree", utf8(&dst)]);
    assert_success(&again, "get -r again");
    assert!(text(&again.stderr).contains("0 downloaded, 4 skipped"), "{}", text(&again.stderr));
    assert_dirs(&dst, "locally after get -r again");

    unseal(&src);
    unseal(&dst);
}

/// `get -r` leaves the time and bits of a directory that was already there
/// alone (a server must not loosen `~/.ssh` by listing it), unless `-f`.
#[test]
fn get_r_changes_an_existing_directory_only_with_force() {
    let env = Env::start();
    let src = env.local("src");
    build(&src);
    assert_success(&env.ferry(&["put", "-r", utf8(&src), "tree"]), "put -r");

    let dst = env.dir.path().join("dst");
    fs::create_dir_all(dst.join("shared")).unwrap();
    set(&dst.join("shared"), 0o700, 1_600_000_000);
    assert_success(&env.ferry(&["get", "-r", "tree", utf8(&dst)]), "get -r");
    // Its bits stay; its time is the time a file was added to it, not the server's.
    let (mode, mtime) = attributes(&dst.join("shared"));
    assert_eq!(mode, 0o700, "an existing directory keeps its bits");
    assert_ne!(mtime, 1_200_000_000, "an existing directory does not get the server's time");
    assert_eq!(attributes(&dst.join("private")), (0o700, 1_100_000_000), "a directory it made is set");

    assert_success(&env.ferry(&["get", "-r", "-f", "tree", utf8(&dst)]), "get -r -f");
    assert_eq!(attributes(&dst.join("shared")), (0o755, 1_200_000_000), "with -f, as the server lists it");
    unseal(&src);
    unseal(&dst);
}

/// A file replaced on the server changes its directory's time there; the
/// run that replaced it sets the directory's time again, although the
/// local directory (and so the listing before the run) did not change.
#[test]
fn replacing_a_file_does_not_leave_its_directory_with_the_wrong_time() {
    let env = Env::start();
    let src = env.local("src");
    build(&src);
    assert_success(&env.ferry(&["put", "-r", utf8(&src), "tree"]), "put -r");
    // New content in the same file; the directory's own time put back as it was.
    fs::write(src.join("shared/c.txt"), b"changed").unwrap();
    set(&src.join("shared"), 0o755, 1_200_000_000);
    let again = env.ferry(&["put", "-r", utf8(&src), "tree"]);
    assert_success(&again, "put -r after a change");
    assert!(text(&again.stderr).contains("1 uploaded"), "{}", text(&again.stderr));
    assert_eq!(fs::read(env.root.join("tree/shared/c.txt")).unwrap(), b"changed");
    assert_dirs(&env.root.join("tree"), "on the server after replacing a file");
    unseal(&src);
}

/// A directory changed after a copy is put right by the next one.
#[test]
fn a_second_put_r_brings_changed_directory_attributes_across() {
    let env = Env::start();
    let src = env.local("src");
    build(&src);
    assert_success(&env.ferry(&["put", "-r", utf8(&src), "tree"]), "put -r");
    set(&src.join("shared"), 0o750, 1_500_000_000);
    assert_success(&env.ferry(&["put", "-r", utf8(&src), "tree"]), "put -r again");
    assert_eq!(attributes(&env.root.join("tree/shared")), (0o750, 1_500_000_000));
    unseal(&src);
}

#[test]
fn an_s3_server_keeps_no_directory_attributes_and_says_so() {
    let Some(moto) = Moto::start() else { return };
    let bucket = moto.bucket("tree-dirs");
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let server = Server::start_s3(&moto, &format!("s3://{bucket}/tree-dirs-{nanos}"));
    let env = Env::with_server(server);
    let src = env.local("src");
    build(&src);

    let put = env.ferry(&["put", "-r", utf8(&src), "tree"]);
    assert_success(&put, "put -r to S3");
    let stderr = text(&put.stderr);
    assert_eq!(stderr.matches("keeps no directory times or permissions").count(), 1, "one note: {stderr}");
    assert!(stderr.contains("4 uploaded, 0 skipped (identical), 0 failed"), "{stderr}");

    // Listed without a time: null in JSON, `-` in the long format (a column all the same).
    let listed = env.ferry(&["ls", "--json", "tree"]);
    assert_success(&listed, "ls --json");
    let private: serde_json::Value = text(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .find(|entry: &serde_json::Value| entry["path"] == "tree/private")
        .expect("tree/private is listed");
    assert!(private["mtime"].is_null(), "{private}");
    let long = env.ferry(&["ls", "-l", "tree"]);
    let line = text(&long.stdout).lines().find(|l| l.ends_with("tree/private/")).map(str::to_owned);
    let fields: Vec<String> = line.expect("ls -l lists tree/private").split_whitespace().map(str::to_owned).collect();
    assert_eq!(fields.len(), 4, "kind+bits, size, time, name: {fields:?}");
    assert_eq!(fields[2], "-", "{fields:?}");

    let dst = env.dir.path().join("dst");
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_success(&env.ferry(&["get", "-r", "tree", utf8(&dst)]), "get -r from S3");
    // The empty directory came back, and every directory is as made now.
    for (rel, _, _) in DIRS {
        let (_, mtime) = attributes(&dst.join(rel));
        assert!(mtime >= started - 5, "{rel} dated {mtime}, before the copy started");
    }
    unseal(&src);
}
