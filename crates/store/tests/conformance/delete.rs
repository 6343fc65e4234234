//! Deletes (files, empty and non-empty directories, missing paths) and
//! path conflicts seen before any data is sent.

use ferry_store::{ByteRange, EntryKind, Error, Sha256, WriteOptions};

use crate::support::{Fixture, data, dir, file, list_entries, path, put};
use crate::{assert_listing, check_listed_digest};

/// Delete removes a file; a non-empty directory is DirectoryNotEmpty; a
/// missing path is NotFound. An emptied directory stays (local) or is gone
/// (S3: directories are key prefixes).
pub(crate) async fn delete(fixture: &Fixture) {
    let store = fixture.open().await;
    for raw in ["d/f1", "d/f2", "d/sub/f3"] {
        put(store.as_ref(), raw, &data(10, 31)).await;
    }

    store.delete(&path("d/f1")).await.unwrap();
    expect_err!(store.stat(&path("d/f1")).await, Error::NotFound { .. }, "stat of a deleted file");
    expect_err!(store.read(&path("d/f1"), ByteRange::ALL).await, Error::NotFound { .. }, "read of a deleted file");
    assert_listing(&list_entries(store.as_ref(), Some("d"), false).await, &[file("d/f2"), dir("d/sub")], "list d");

    expect_err!(store.delete(&path("d")).await, Error::DirectoryNotEmpty { .. }, "delete of a non-empty directory");
    expect_err!(store.delete(&path("d/sub")).await, Error::DirectoryNotEmpty { .. }, "delete of d/sub");
    assert_eq!(store.stat(&path("d/sub/f3")).await.unwrap().size, 10, "a refused delete removed something");

    for missing in ["missing", "d/missing", "missing/deeper", "d/f2/below"] {
        expect_err!(store.delete(&path(missing)).await, Error::NotFound { .. }, "delete of missing {missing:?}");
    }

    store.delete(&path("d/sub/f3")).await.unwrap();
    if fixture.keeps_empty_directories() {
        assert_eq!(store.stat(&path("d/sub")).await.unwrap().kind, EntryKind::Directory, "an emptied directory");
        assert_listing(&list_entries(store.as_ref(), Some("d"), false).await, &[file("d/f2"), dir("d/sub")], "list d");
        store.delete(&path("d/sub")).await.unwrap();
    }
    expect_err!(store.stat(&path("d/sub")).await, Error::NotFound { .. }, "stat of a deleted or emptied directory");
    expect_err!(store.delete(&path("d/sub")).await, Error::NotFound { .. }, "delete of a deleted directory");
    assert_listing(&list_entries(store.as_ref(), Some("d"), false).await, &[file("d/f2")], "list d");

    store.delete(&path("d/f2")).await.unwrap();
    if fixture.keeps_empty_directories() {
        assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("d")], "an emptied tree");
        store.delete(&path("d")).await.unwrap();
    }
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[], "everything deleted");

    // A path can be used again, and its metadata is the new file's.
    let again = data(20, 32);
    put(store.as_ref(), "d/f1", &again).await;
    let stat = store.stat(&path("d/f1")).await.unwrap();
    assert_eq!(stat.size, 20, "a re-created file");
    check_listed_digest(fixture, "a re-created file", stat.sha256, Sha256::of(&again));
}

/// Conflicts that can be seen before any data is sent fail the upload's
/// start; directories are not files to read.
pub(crate) async fn path_conflicts(fixture: &Fixture) {
    let store = fixture.open().await;
    put(store.as_ref(), "dir/file", &data(10, 41)).await;

    expect_err!(
        store.create_upload(&path("dir"), WriteOptions::default()).await,
        Error::IsDirectory { .. },
        "an upload to a directory"
    );
    expect_err!(
        store.create_upload(&path("dir/file/below"), WriteOptions::default()).await,
        Error::ParentNotDirectory { .. },
        "an upload below a file"
    );
    expect_err!(store.read(&path("dir"), ByteRange::ALL).await, Error::IsDirectory { .. }, "reading a directory");
    let stat = store.stat(&path("dir")).await.unwrap();
    assert_eq!((stat.kind, stat.size, stat.sha256), (EntryKind::Directory, 0, None), "stat of a directory");
    for missing in ["missing", "dir/missing", "dir/file/below"] {
        expect_err!(store.stat(&path(missing)).await, Error::NotFound { .. }, "stat of {missing:?}");
        expect_err!(store.read(&path(missing), ByteRange::ALL).await, Error::NotFound { .. }, "read of {missing:?}");
    }
    fixture.assert_nothing_staged("after refused uploads").await;
}
