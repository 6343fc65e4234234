//! A declared or final SHA-256, or a declared size, that the data does not
//! have fails the upload, leaving nothing visible, no session and nothing
//! staged.

use ferry_store::{Error, Sha256, WriteOptions};

use crate::support::{Fixture, PART_SIZE, content, data, path, put, write_all};
use crate::{check_listed_digest, resumable};

/// A declared or final SHA-256 that the data does not have fails the commit
/// with DigestMismatch: nothing visible (an existing file stays as it
/// was), no session left, nothing staged.
pub(crate) async fn digest_mismatch_leaves_nothing(fixture: &Fixture) {
    let store = fixture.open().await;
    let bytes = data(PART_SIZE + 5, 91);
    let (real, wrong) = (Sha256::of(&bytes), Sha256::of(b"something else"));

    let options = WriteOptions { size: Some(bytes.len() as u64), sha256: Some(wrong), ..WriteOptions::default() };
    let mut upload = store.create_upload(&path("dm/declared"), options).await.unwrap();
    write_all(&mut upload, &bytes).await.unwrap();
    expect_err!(
        upload.commit(None).await,
        Error::DigestMismatch { expected, actual } if expected == wrong && actual == real,
        "a wrong declared digest"
    );
    expect_err!(store.stat(&path("dm/declared")).await, Error::NotFound { .. }, "after a digest mismatch");
    fixture.assert_nothing_staged("after a declared digest mismatch").await;

    let mut upload = store.create_upload(&path("dm/final"), resumable()).await.unwrap();
    let id = upload.id().clone();
    write_all(&mut upload, &bytes).await.unwrap();
    upload.sync().await.unwrap();
    expect_err!(
        upload.commit(Some(wrong)).await,
        Error::DigestMismatch { expected, actual } if expected == wrong && actual == real,
        "a wrong final digest"
    );
    expect_err!(store.stat(&path("dm/final")).await, Error::NotFound { .. }, "after a final digest mismatch");
    expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "the mismatching session");
    assert_eq!(store.count_uploads().await.unwrap(), 0, "count_uploads after a mismatch");
    fixture.assert_nothing_staged("after a final digest mismatch").await;

    let old = data(1000, 92);
    put(store.as_ref(), "dm/existing", &old).await;
    let options = WriteOptions { sha256: Some(wrong), ..resumable() };
    let mut upload = store.create_upload(&path("dm/existing"), options).await.unwrap();
    write_all(&mut upload, &bytes).await.unwrap();
    expect_err!(upload.commit(None).await, Error::DigestMismatch { .. }, "a mismatching overwrite");
    assert!(content(store.as_ref(), "dm/existing").await == old, "a mismatching overwrite replaced the file");
    let stat = store.stat(&path("dm/existing")).await.unwrap();
    assert_eq!(stat.size, 1000, "stat after a mismatching overwrite");
    check_listed_digest(fixture, "stat after a mismatching overwrite", stat.sha256, Sha256::of(&old));
    fixture.assert_nothing_staged("after a mismatching overwrite").await;
}

/// A declared size that the data does not have fails the upload with
/// SizeMismatch (more bytes: at the write or the commit; fewer: at the
/// commit), leaving nothing visible and nothing staged.
pub(crate) async fn size_mismatch_leaves_nothing(fixture: &Fixture) {
    let store = fixture.open().await;
    for resumable in [false, true] {
        let short = format!("sm/short-{resumable}");
        let options = WriteOptions { size: Some(100), resumable, ..WriteOptions::default() };
        let mut upload = store.create_upload(&path(&short), options.clone()).await.unwrap();
        let id = upload.id().clone();
        write_all(&mut upload, &data(99, 101)).await.unwrap();
        expect_err!(
            upload.commit(None).await,
            Error::SizeMismatch { declared: 100, received: 99 },
            "{short}: fewer bytes than declared"
        );
        expect_err!(store.stat(&path(&short)).await, Error::NotFound { .. }, "{short}");
        expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "{short}: the session");

        let long = format!("sm/long-{resumable}");
        let mut upload = store.create_upload(&path(&long), options).await.unwrap();
        let id = upload.id().clone();
        match write_all(&mut upload, &data(101, 102)).await {
            Err(Error::SizeMismatch { declared: 100, .. }) => {
                // Refused at the write: the stream ends here; a resumable session stays at its committed offset.
                drop(upload);
                if resumable {
                    assert_eq!(store.upload_status(&id).await.unwrap().committed, 0, "{long}: the session");
                    store.abort_upload(&id).await.unwrap();
                }
            }
            Err(other) => panic!("{long}: more bytes than declared: expected SizeMismatch, got {other:?}"),
            Ok(()) => {
                expect_err!(
                    upload.commit(None).await,
                    Error::SizeMismatch { declared: 100, received: 101 },
                    "{long}: more bytes than declared"
                );
                expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "{long}: the session");
            }
        }
        expect_err!(store.stat(&path(&long)).await, Error::NotFound { .. }, "{long}");
    }
    fixture.assert_nothing_staged("after size mismatches").await;
}
