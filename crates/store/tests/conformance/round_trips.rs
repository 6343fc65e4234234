//! Round trips: files of boundary sizes come back byte for byte with
//! their digest; declared mtimes and permissions are kept; ranges of a
//! download, within and past the end.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_store::{ByteRange, EntryKind, Error, Metadata, Sha256, WriteOptions};

use crate::check_listed_digest;
use crate::support::{Fixture, PART_SIZE, data, list_batches, path, put, read_all, write_all};

/// Files of 0, 1, part-1, part, part+1 and 2*part+3 bytes come back byte for
/// byte, with their SHA-256 in the metadata of the commit, `stat`, `list`
/// and `read`. Even sizes declare size and digest up front; odd ones declare
/// nothing and give the digest at commit.
pub(crate) async fn round_trips_at_boundary_sizes(fixture: &Fixture) {
    let store = fixture.open().await;
    let p = PART_SIZE;
    let sizes = [0, 1, p - 1, p, p + 1, 2 * p + 3];
    for (i, size) in sizes.into_iter().enumerate() {
        let raw = format!("sizes/{size:09}.bin");
        let bytes = data(size, i as u64 + 1);
        let digest = Sha256::of(&bytes);
        let declared = i % 2 == 0;
        let options = match declared {
            true => WriteOptions { size: Some(size), sha256: Some(digest), ..WriteOptions::default() },
            false => WriteOptions::default(),
        };
        let mut upload = store.create_upload(&path(&raw), options).await.unwrap();
        assert_eq!(upload.declared_size(), declared.then_some(size), "{raw}: declared size");
        write_all(&mut upload, &bytes).await.unwrap();
        assert_eq!(upload.received(), size, "{raw}: received");
        let final_sha256 = (!declared).then_some(digest);
        let meta = upload.commit(final_sha256).await.unwrap();
        assert_eq!(
            (meta.path.as_str(), meta.kind, meta.size, meta.sha256),
            (raw.as_str(), EntryKind::File, size, Some(digest)),
            "{raw}: the commit's metadata"
        );

        let stat = store.stat(&path(&raw)).await.unwrap();
        assert_eq!((stat.path.as_str(), stat.kind, stat.size), (raw.as_str(), EntryKind::File, size), "{raw}: stat");
        check_listed_digest(fixture, &format!("{raw}: stat"), stat.sha256, digest);

        let (download, got) = read_all(store.as_ref(), &raw, ByteRange::ALL).await.unwrap();
        assert_eq!(
            (download.offset, download.length, download.meta.size, download.meta.sha256),
            (0, size, size, Some(digest)),
            "{raw}: the download's header"
        );
        assert!(
            got.len() as u64 == size && got == bytes,
            "{raw}: read {} bytes that differ from those written",
            got.len()
        );
    }

    let listed: Vec<Metadata> = list_batches(store.as_ref(), Some("sizes"), false).await.unwrap().concat();
    let listed_sizes: Vec<u64> = listed.iter().map(|m| m.size).collect();
    assert_eq!(listed_sizes, sizes, "list: sizes");
    for (i, meta) in listed.iter().enumerate() {
        let digest = Sha256::of(&data(sizes[i], i as u64 + 1));
        check_listed_digest(fixture, &format!("list: {}", meta.path), meta.sha256, digest);
    }
    fixture.assert_nothing_staged("after the round trips").await;
}

/// The mtime and permissions an upload declares are what `stat`, `list`
/// and `read` report; without them, the mtime is about now and the
/// permissions are 0644.
pub(crate) async fn metadata_is_kept(fixture: &Fixture) {
    let store = fixture.open().await;
    let cases = [
        ("meta/modern", UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789), 0o640),
        ("meta/old", UNIX_EPOCH + Duration::new(86_400, 5), 0o600),
        ("meta/before-epoch", UNIX_EPOCH - Duration::new(86_400, 0), 0o444),
    ];
    for (raw, mtime, permissions) in cases {
        let bytes = data(100, 3);
        let options = WriteOptions { mtime: Some(mtime), permissions: Some(permissions), ..WriteOptions::default() };
        let mut upload = store.create_upload(&path(raw), options).await.unwrap();
        write_all(&mut upload, &bytes).await.unwrap();
        let meta = upload.commit(None).await.unwrap();
        assert_eq!((meta.mtime, meta.permissions), (Some(mtime), permissions), "{raw}: the commit's metadata");
        let stat = store.stat(&path(raw)).await.unwrap();
        assert_eq!((stat.mtime, stat.permissions), (Some(mtime), permissions), "{raw}: stat");
        let (download, _) = read_all(store.as_ref(), raw, ByteRange::ALL).await.unwrap();
        assert_eq!((download.meta.mtime, download.meta.permissions), (Some(mtime), permissions), "{raw}: read");
        let listed = list_batches(store.as_ref(), Some(raw), false).await.unwrap().concat();
        assert_eq!(listed.len(), 1, "{raw}: listing a file lists the file");
        assert_eq!((listed[0].mtime, listed[0].permissions), (Some(mtime), permissions), "{raw}: list");
    }

    let before = SystemTime::now() - Duration::from_secs(5);
    let meta = put(store.as_ref(), "meta/default", &data(10, 4)).await;
    let after = SystemTime::now() + Duration::from_secs(5);
    let stat = store.stat(&path("meta/default")).await.unwrap();
    assert_eq!(stat.permissions, 0o644, "default permissions");
    assert_eq!(meta.mtime, stat.mtime, "the commit's mtime is the stored one");
    let mtime = stat.mtime.expect("a file has a time");
    assert!(before <= mtime && mtime <= after, "default mtime {mtime:?} is not about now");
}

/// Ranges: start, middle, end, a length past the end (cut), `offset == size`
/// (empty), `offset > size` (error), an overflowing length (error).
pub(crate) async fn ranges(fixture: &Fixture) {
    let store = fixture.open().await;
    let size = 3 * (1 << 20) + 1234; // a few download chunks
    let bytes = data(size, 5);
    let digest = Sha256::of(&bytes);
    put(store.as_ref(), "r.bin", &bytes).await;

    let cases: [(&str, u64, Option<u64>, u64, u64); 8] = [
        ("start", 0, Some(10), 0, 10),
        ("middle", 1_500_000, Some(1_200_000), 1_500_000, 1_200_000),
        ("to the end", size - 10, None, size - 10, 10),
        ("past the end, cut", size - 10, Some(1000), size - 10, 10),
        ("whole", 0, None, 0, size),
        ("empty at the end", size, None, size, 0),
        ("empty at the end, with a length", size, Some(5), size, 0),
        ("zero length", 7, Some(0), 7, 0),
    ];
    for (what, offset, length, want_offset, want_length) in cases {
        let (download, got) = read_all(store.as_ref(), "r.bin", ByteRange { offset, length })
            .await
            .unwrap_or_else(|e| panic!("range {what}: {e}"));
        assert_eq!((download.offset, download.length), (want_offset, want_length), "range {what}: resolved range");
        assert_eq!((download.meta.size, download.meta.sha256), (size, Some(digest)), "range {what}: metadata");
        let (start, end) = (want_offset as usize, (want_offset + want_length) as usize);
        assert!(got == bytes[start..end], "range {what}: {} bytes that differ from bytes {start}..{end}", got.len());
    }

    expect_err!(
        store.read(&path("r.bin"), ByteRange { offset: size + 1, length: None }).await,
        Error::RangeStartsPastEnd { offset, size: s } if offset == size + 1 && s == size,
        "a range starting past the end"
    );
    expect_err!(
        store.read(&path("r.bin"), ByteRange { offset: size + 1, length: Some(1) }).await,
        Error::RangeStartsPastEnd { .. },
        "a range starting past the end, with a length"
    );
    expect_err!(
        store.read(&path("r.bin"), ByteRange { offset: 1, length: Some(u64::MAX) }).await,
        Error::RangeOverflow { offset: 1, length: u64::MAX },
        "an overflowing range"
    );

    put(store.as_ref(), "empty", &Bytes::new()).await;
    let (download, got) = read_all(store.as_ref(), "empty", ByteRange::ALL).await.unwrap();
    assert_eq!((download.offset, download.length, got.len()), (0, 0, 0), "an empty file");
    expect_err!(
        store.read(&path("empty"), ByteRange { offset: 1, length: None }).await,
        Error::RangeStartsPastEnd { offset: 1, size: 0 },
        "past the end of an empty file"
    );
}
