//! Listings: batches of at most 1,000, one level or depth-first, prefixes
//! that are directories, a file listed as itself; the store's own state
//! never listed.

use std::collections::BTreeSet;

use bytes::Bytes;
use ferry_store::{ByteRange, EntryKind, Error, Metadata, Sha256, WriteOptions};

use crate::support::{
    Entry, Fixture, PART_SIZE, data, dir, file, list_batches, list_entries, path, put, read_all, write_all,
};
use crate::{assert_listing, check_listed_digest, resumable};

/// The depth-first listing of a tree of files: every directory, then what
/// is in it, siblings by name.
fn model_listing(files: &[&str], under: Option<&str>, recursive: bool) -> Vec<Entry> {
    let mut entries = BTreeSet::new();
    let base: Vec<&str> = under.map(|u| u.split('/').collect()).unwrap_or_default();
    for raw in files {
        let segments: Vec<&str> = raw.split('/').collect();
        if segments.len() <= base.len() || segments[..base.len()] != base[..] {
            continue;
        }
        let depth = if recursive { segments.len() } else { base.len() + 1 };
        for end in base.len() + 1..=depth {
            let kind = if end == segments.len() { EntryKind::File } else { EntryKind::Directory };
            entries.insert((segments[..end].to_vec(), kind == EntryKind::File));
        }
    }
    // BTreeSet of segment vectors: a directory sorts before its contents.
    entries
        .into_iter()
        .map(|(segments, is_file)| (segments.join("/"), if is_file { EntryKind::File } else { EntryKind::Directory }))
        .collect()
}

/// Listings come in batches of at most 1,000; one level or the whole
/// subtree depth-first, each directory's entries by name; a prefix lists
/// only what is under that directory (not its name-prefixed siblings); a
/// path naming a file lists that file; a missing path is NotFound.
///
/// The 2,500 files of `many/` are seeded straight into the backend (moto
/// takes ~25 ms per upload through the store); the tree is uploaded.
pub(crate) async fn list_pagination_and_prefixes(fixture: &Fixture) {
    let store = fixture.open().await;
    let many: Vec<(String, Bytes)> = (0..2500)
        .map(|i| {
            let raw = format!("many/f{i:04}");
            let bytes = Bytes::from(raw.clone());
            (raw, bytes)
        })
        .collect();
    fixture.seed(&many).await;
    let tree = ["top.txt", "tree/a/x", "tree/a/y/z", "tree/a.txt", "tree/ab", "tree/b", "tree/a-b/c"];
    for raw in tree {
        put(store.as_ref(), raw, &Bytes::from(raw)).await;
    }
    let all: Vec<&str> = many.iter().map(|(raw, _)| raw.as_str()).chain(tree).collect();

    for (dir_, recursive) in [(Some("many"), false), (None, true)] {
        let what = format!("list {dir_:?} (recursive: {recursive})");
        let batches = list_batches(store.as_ref(), dir_, recursive).await.unwrap();
        for (i, batch) in batches.iter().enumerate() {
            assert!(batch.len() <= 1000, "{what}: batch {i} holds {} entries", batch.len());
        }
        let entries: Vec<Metadata> = batches.concat();
        let pairs: Vec<Entry> = entries.iter().map(|m| (m.path.as_str().to_owned(), m.kind)).collect();
        assert_listing(&pairs, &model_listing(&all, dir_, recursive), &what);
        for meta in entries.iter().filter(|m| m.kind == EntryKind::File) {
            // Every file holds its own path.
            let (raw, size) = (meta.path.as_str(), meta.size);
            assert_eq!(size, raw.len() as u64, "{what}: size of {raw}");
            let digest = Sha256::of(raw.as_bytes());
            match tree.contains(&raw) {
                true => check_listed_digest(fixture, &format!("{what}: {raw}"), meta.sha256, digest),
                false => assert!(meta.sha256.is_none_or(|d| d == digest), "{what}: wrong sha256 for {raw}"),
            }
        }
    }
    let (download, got) = read_all(store.as_ref(), "many/f1234", ByteRange::ALL).await.unwrap();
    assert_eq!(got, b"many/f1234", "a seeded file's bytes");
    assert_eq!(download.meta.sha256, Some(Sha256::of(b"many/f1234")), "a seeded file's digest, computed");

    let cases: [(Option<&str>, bool, Vec<Entry>); 8] = [
        (None, false, vec![dir("many"), file("top.txt"), dir("tree")]),
        (
            Some("tree"),
            false,
            vec![dir("tree/a"), dir("tree/a-b"), file("tree/a.txt"), file("tree/ab"), file("tree/b")],
        ),
        (Some("tree/a"), false, vec![file("tree/a/x"), dir("tree/a/y")]),
        (Some("tree/a"), true, vec![file("tree/a/x"), dir("tree/a/y"), file("tree/a/y/z")]),
        (
            Some("tree"),
            true,
            vec![
                dir("tree/a"),
                file("tree/a/x"),
                dir("tree/a/y"),
                file("tree/a/y/z"),
                dir("tree/a-b"),
                file("tree/a-b/c"),
                file("tree/a.txt"),
                file("tree/ab"),
                file("tree/b"),
            ],
        ),
        (Some("top.txt"), false, vec![file("top.txt")]),
        (Some("top.txt"), true, vec![file("top.txt")]),
        (Some("tree/a/y/z"), false, vec![file("tree/a/y/z")]),
    ];
    for (dir_, recursive, expected) in cases {
        let what = format!("list {dir_:?} (recursive: {recursive})");
        let listed = list_entries(store.as_ref(), dir_, recursive).await;
        assert_listing(&listed, &expected, &what);
    }
    let single = list_batches(store.as_ref(), Some("top.txt"), false).await.unwrap().concat();
    assert_eq!(single[0].size, 7, "listing a file: its size");

    for missing in ["nothing", "tree/a/nothing", "tree/a/x/below", "tre"] {
        expect_err!(
            list_batches(store.as_ref(), Some(missing), false).await,
            Error::NotFound { .. },
            "listing missing path {missing:?}"
        );
    }
}

/// The store's own state (`.ferry`) never shows in a listing, whatever is in
/// flight; a user's file named `.ferry` below the top level does.
pub(crate) async fn reserved_name_is_never_listed(fixture: &Fixture) {
    let store = fixture.open().await;
    for raw in ["a.txt", "sub/.ferry", "sub/b"] {
        put(store.as_ref(), raw, &data(10, 121)).await;
    }
    let mut kept = store.create_upload(&path("sub/kept"), resumable()).await.unwrap();
    write_all(&mut kept, &data(PART_SIZE + 1, 122)).await.unwrap();
    kept.sync().await.unwrap();
    drop(kept);
    let mut plain = store.create_upload(&path("sub/in-flight"), WriteOptions::default()).await.unwrap();
    write_all(&mut plain, &data(PART_SIZE + 1, 123)).await.unwrap();

    let expected = [file("a.txt"), dir("sub"), file("sub/.ferry"), file("sub/b")];
    assert_listing(&list_entries(store.as_ref(), None, true).await, &expected, "recursive listing of the root");
    assert_listing(&list_entries(store.as_ref(), None, false).await, &[file("a.txt"), dir("sub")], "the root");
    assert_listing(&list_entries(store.as_ref(), Some("sub"), false).await, &expected[2..], "sub");
    assert_eq!(store.stat(&path("sub/.ferry")).await.unwrap().kind, EntryKind::File, "a user's .ferry file");
    drop(plain);
}
