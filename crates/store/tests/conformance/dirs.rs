//! The rules of directory metadata (`Store::set_dir_metadata`): the local
//! store sets a directory's time and permission bits (the owner keeping
//! `rwx`), on a directory made by `create_dir` or by a file's upload; S3,
//! whose directories are key prefixes, answers `Unsupported` and lists
//! directories with no time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_store::{EntryKind, Error};

use crate::support::{Fixture, data, list_batches, path, put, within};

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// Sets, and `stat` and `list` report, a directory's time and permissions.
pub(crate) async fn dir_metadata_is_kept(fixture: &Fixture) {
    let store = fixture.open().await;
    store.create_dir(&path("made")).await.unwrap();
    put(store.as_ref(), "implied/f", &data(3, 7)).await;
    let made = path("made");
    let set = within("set_dir_metadata", store.set_dir_metadata(&made, Some(at(1_000_000_000)), Some(0o750))).await;
    if !fixture.keeps_dir_metadata() {
        expect_err!(set, Error::Unsupported { .. }, "a store without directory metadata");
        // Its directories have no time: none, never "now" or made up.
        for raw in ["made", "implied"] {
            let stat = store.stat(&path(raw)).await.unwrap();
            assert_eq!((stat.kind, stat.mtime), (EntryKind::Directory, None), "{raw}");
        }
        return;
    }
    let meta = set.unwrap();
    assert_eq!((meta.kind, meta.mtime, meta.permissions), (EntryKind::Directory, Some(at(1_000_000_000)), 0o750));
    let stat = store.stat(&path("made")).await.unwrap();
    assert_eq!((stat.mtime, stat.permissions), (Some(at(1_000_000_000)), 0o750), "stat after setting");

    // Only what is given changes; the owner always keeps rwx.
    store.set_dir_metadata(&path("made"), None, Some(0o055)).await.unwrap();
    let stat = store.stat(&path("made")).await.unwrap();
    assert_eq!((stat.mtime, stat.permissions), (Some(at(1_000_000_000)), 0o755), "permissions only, owner rwx kept");
    store.set_dir_metadata(&path("implied"), Some(at(1_200_000_000)), None).await.unwrap();
    let listed = list_batches(store.as_ref(), None, false).await.unwrap().concat();
    let implied = listed.iter().find(|m| m.path.as_str() == "implied").expect("implied is listed");
    assert_eq!(implied.mtime, Some(at(1_200_000_000)), "list reports the time set");

    // The store can still write into a directory its client made read-only.
    store.set_dir_metadata(&path("made"), None, Some(0o500)).await.unwrap();
    put(store.as_ref(), "made/g", &data(5, 8)).await;
    assert_eq!(store.stat(&path("made/g")).await.unwrap().size, 5);
}

/// No directory at the path: NotFound, for a missing path and for a file;
/// nothing is created and the file is untouched.
pub(crate) async fn dir_metadata_needs_a_directory(fixture: &Fixture) {
    if !fixture.keeps_dir_metadata() {
        return;
    }
    let store = fixture.open().await;
    put(store.as_ref(), "f", &data(4, 9)).await;
    let before = store.stat(&path("f")).await.unwrap();
    expect_err!(
        store.set_dir_metadata(&path("missing"), Some(at(1)), Some(0o700)).await,
        Error::NotFound { .. },
        "a missing directory"
    );
    expect_err!(store.set_dir_metadata(&path("f"), Some(at(1)), Some(0o700)).await, Error::NotFound { .. }, "a file");
    expect_err!(store.stat(&path("missing")).await, Error::NotFound { .. }, "nothing was made");
    assert_eq!(store.stat(&path("f")).await.unwrap(), before, "the file is untouched");
}
