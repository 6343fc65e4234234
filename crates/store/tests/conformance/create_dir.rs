//! `create_dir`: empty directories (and their parents) made, idempotently;
//! files in the way refused; made directories delete like directories and
//! hold files like any other.

use ferry_store::{EntryKind, Error, WriteOptions};

use crate::support::{Fixture, content, data, dir, file, list_batches, list_entries, path, put, within};
use crate::{assert_listing, new_file};

/// `create_dir` makes an empty directory (and its missing parents): its
/// metadata says Directory, `stat` agrees, it is listed one level and
/// recursively, and listing it gives nothing. Making it again succeeds.
pub(crate) async fn create_dir_makes_empty_directories(fixture: &Fixture) {
    let store = fixture.open().await;
    let meta = within("create_dir", store.create_dir(&path("empty"))).await.unwrap();
    assert_eq!((meta.path.as_str(), meta.kind, meta.size, meta.sha256), ("empty", EntryKind::Directory, 0, None));
    let stat = store.stat(&path("empty")).await.unwrap();
    assert_eq!((stat.kind, stat.size), (EntryKind::Directory, 0), "stat of an empty directory");
    assert_listing(&list_entries(store.as_ref(), None, false).await, &[dir("empty")], "the root, one level");
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("empty")], "the root, recursive");
    assert_listing(&list_entries(store.as_ref(), Some("empty"), false).await, &[], "the empty directory");
    assert_listing(&list_entries(store.as_ref(), Some("empty"), true).await, &[], "the empty directory, recursive");

    // Idempotent.
    let again = within("create_dir again", store.create_dir(&path("empty"))).await.unwrap();
    assert_eq!((again.path.as_str(), again.kind), ("empty", EntryKind::Directory), "making it again");
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("empty")], "after making it again");

    // Nested: every level is made.
    let meta = within("create_dir nested", store.create_dir(&path("n/a/b"))).await.unwrap();
    assert_eq!((meta.path.as_str(), meta.kind), ("n/a/b", EntryKind::Directory), "a nested directory");
    for level in ["n", "n/a", "n/a/b"] {
        assert_eq!(store.stat(&path(level)).await.unwrap().kind, EntryKind::Directory, "stat {level}");
    }
    let expected = [dir("empty"), dir("n"), dir("n/a"), dir("n/a/b")];
    assert_listing(&list_entries(store.as_ref(), None, true).await, &expected, "the root, recursive");
    assert_listing(&list_entries(store.as_ref(), None, false).await, &[dir("empty"), dir("n")], "the root");
    assert_listing(&list_entries(store.as_ref(), Some("n"), false).await, &[dir("n/a")], "n");
    assert_listing(&list_entries(store.as_ref(), Some("n"), true).await, &expected[2..], "n, recursive");
    // A deeper level under existing ones, and the existing ones again.
    store.create_dir(&path("n/a/c")).await.unwrap();
    store.create_dir(&path("n/a")).await.unwrap();
    assert_listing(
        &list_entries(store.as_ref(), Some("n/a"), false).await,
        &[dir("n/a/b"), dir("n/a/c")],
        "n/a after adding n/a/c",
    );
    // Beside files, in name order.
    put(store.as_ref(), "n/file", &data(3, 241)).await;
    assert_listing(
        &list_entries(store.as_ref(), Some("n"), true).await,
        &[dir("n/a"), dir("n/a/b"), dir("n/a/c"), file("n/file")],
        "n, recursive, with a file",
    );
    fixture.assert_nothing_staged("after create_dir").await;
}

/// A file in the way: at the path itself AlreadyExists, at a parent
/// ParentNotDirectory; the file is untouched and no directory appears.
pub(crate) async fn create_dir_refuses_files_in_the_way(fixture: &Fixture) {
    let store = fixture.open().await;
    let bytes = data(42, 251);
    put(store.as_ref(), "f", &bytes).await;
    put(store.as_ref(), "d/g", &bytes).await;
    expect_err!(store.create_dir(&path("f")).await, Error::AlreadyExists { .. }, "a file at the path");
    expect_err!(store.create_dir(&path("d/g")).await, Error::AlreadyExists { .. }, "a nested file at the path");
    expect_err!(store.create_dir(&path("f/sub")).await, Error::ParentNotDirectory { .. }, "a file as the parent");
    expect_err!(
        store.create_dir(&path("d/g/sub/deeper")).await,
        Error::ParentNotDirectory { .. },
        "a file as a grandparent"
    );
    for raw in ["f", "d/g"] {
        let stat = store.stat(&path(raw)).await.unwrap();
        assert_eq!((stat.kind, stat.size), (EntryKind::File, 42), "{raw}: still the file");
        assert!(content(store.as_ref(), raw).await == bytes, "{raw}: its bytes");
    }
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("d"), file("d/g"), file("f")], "the tree");
}

/// A created directory deletes like a directory: empty, it goes (and is
/// then gone: stat, list, a second delete); holding an empty directory, it
/// is DirectoryNotEmpty. A file cannot be uploaded onto it.
pub(crate) async fn created_directories_delete_like_directories(fixture: &Fixture) {
    let store = fixture.open().await;
    store.create_dir(&path("gone")).await.unwrap();
    store.create_dir(&path("p/q")).await.unwrap();
    expect_err!(
        store.create_upload(&path("gone"), WriteOptions::default()).await,
        Error::IsDirectory { .. },
        "an upload onto an empty directory"
    );
    let results = store.put_files(vec![new_file("gone", &data(3, 261))]).await;
    expect_err!(results.into_iter().next().expect("a result"), Error::IsDirectory { .. }, "put_files onto it");

    store.delete(&path("gone")).await.unwrap();
    expect_err!(store.stat(&path("gone")).await, Error::NotFound { .. }, "stat of a deleted empty directory");
    expect_err!(store.delete(&path("gone")).await, Error::NotFound { .. }, "a second delete");
    expect_err!(list_batches(store.as_ref(), Some("gone"), false).await, Error::NotFound { .. }, "listing it");
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("p"), dir("p/q")], "after the delete");

    expect_err!(store.delete(&path("p")).await, Error::DirectoryNotEmpty { .. }, "a directory holding an empty one");
    assert_eq!(store.stat(&path("p/q")).await.unwrap().kind, EntryKind::Directory, "the refused delete kept p/q");
    store.delete(&path("p/q")).await.unwrap();
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("p")], "after deleting p/q");
    store.delete(&path("p")).await.unwrap();
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[], "everything deleted");
    // Made again after its delete.
    store.create_dir(&path("gone")).await.unwrap();
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("gone")], "made again");
}

/// Files go into a created directory (by upload and by put_files); the
/// directory is then listed once, not once as made and once as holding
/// files, and it stays when its last file is deleted (it was made).
pub(crate) async fn files_in_a_created_directory(fixture: &Fixture) {
    let store = fixture.open().await;
    store.create_dir(&path("u/v")).await.unwrap();
    put(store.as_ref(), "u/x", &data(10, 271)).await;
    let results = store.put_files(vec![new_file("u/v/y", &data(20, 272)), new_file("u/z", &data(30, 273))]).await;
    assert!(results.iter().all(Result::is_ok), "put_files into created directories: {results:?}");

    let expected = [dir("u"), dir("u/v"), file("u/v/y"), file("u/x"), file("u/z")];
    assert_listing(&list_entries(store.as_ref(), None, true).await, &expected, "the root, recursive");
    assert_listing(&list_entries(store.as_ref(), None, false).await, &[dir("u")], "the root, one level");
    assert_listing(
        &list_entries(store.as_ref(), Some("u"), false).await,
        &[dir("u/v"), file("u/x"), file("u/z")],
        "u, one level",
    );
    assert_listing(&list_entries(store.as_ref(), Some("u"), true).await, &expected[1..], "u, recursive");
    // Making it again changes nothing.
    store.create_dir(&path("u/v")).await.unwrap();
    assert_listing(&list_entries(store.as_ref(), None, true).await, &expected, "after making u/v again");

    expect_err!(store.delete(&path("u/v")).await, Error::DirectoryNotEmpty { .. }, "u/v holds a file");
    store.delete(&path("u/v/y")).await.unwrap();
    assert_eq!(store.stat(&path("u/v")).await.unwrap().kind, EntryKind::Directory, "a made directory, emptied");
    assert_listing(
        &list_entries(store.as_ref(), Some("u"), true).await,
        &[dir("u/v"), file("u/x"), file("u/z")],
        "u after emptying u/v",
    );
    store.delete(&path("u/v")).await.unwrap();
    expect_err!(store.stat(&path("u/v")).await, Error::NotFound { .. }, "u/v after its delete");
    fixture.assert_nothing_staged("after files in created directories").await;
}
