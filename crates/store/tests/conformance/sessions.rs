//! Resumable sessions: a resume continues at the committed offset (also
//! on another instance) and takes over from an older stream; abort and
//! expiry end a session; ids a caller chooses; `count_uploads`.

use std::time::Duration;

use bytes::Bytes;
use ferry_store::{Error, Sha256, UploadId, UploadStatus, WriteOptions};

use crate::resumable;
use crate::support::{Fixture, PART_SIZE, content, data, path, within, write_all};

/// A resumable upload survives its stream and its store instance: `sync`
/// reports the committed offset (local: everything received; S3: the last
/// part boundary), `upload_status` shows it, a resume continues exactly
/// there (any other offset is OffsetMismatch), also on another instance
/// over the same root or bucket (S3: another server, at the same time;
/// local: after a restart), and the commit has the right bytes and digest.
pub(crate) async fn session_resume(fixture: &Fixture) {
    let p = PART_SIZE;
    let total = 2 * p + 12_345;
    let bytes = data(total, 51);
    let digest = Sha256::of(&bytes);
    let raw = "resume/file.bin";
    let options = WriteOptions { size: Some(total), sha256: Some(digest), ..resumable() };

    let store = fixture.open().await;
    let mut upload = store.create_upload(&path(raw), options).await.unwrap();
    let id = upload.id().clone();
    assert_eq!(UploadId::parse(id.as_str()).ok().as_ref(), Some(&id), "a well-formed id");
    let first = p + 1000;
    write_all(&mut upload, &bytes.slice(..first as usize)).await.unwrap();
    assert_eq!(upload.received(), first, "received");
    assert!(upload.committed() <= first, "committed {} > received {first}", upload.committed());
    let committed = upload.sync().await.unwrap();
    assert_eq!(committed, fixture.committed_after_sync(first), "sync's committed offset after {first} bytes");
    assert_eq!(upload.committed(), committed, "committed() after sync");
    drop(upload);

    expect_err!(store.stat(&path(raw)).await, Error::NotFound { .. }, "an unfinished upload is not visible");
    let status = store.upload_status(&id).await.unwrap();
    let expected = UploadStatus { id: id.clone(), path: path(raw), committed, size: Some(total), ranges: None };
    assert_eq!(status, expected, "status of a dropped resumable upload");
    assert_eq!(store.count_uploads().await.unwrap(), 1, "count_uploads");

    for wrong in [committed + 1, committed - 1, 0, total] {
        if wrong == committed {
            continue;
        }
        expect_err!(
            within("a resume at a wrong offset", store.resume_upload(&id, wrong)).await,
            Error::OffsetMismatch { offset, committed: c, .. } if offset == wrong && c == committed,
            "resume at {wrong} (committed {committed})"
        );
    }
    let status = store.upload_status(&id).await.unwrap();
    assert_eq!(status.committed, committed, "a refused resume changed the session");

    let mut upload = within("a resume", store.resume_upload(&id, committed)).await.unwrap();
    assert_eq!(
        (upload.id(), upload.received(), upload.committed(), upload.declared_size()),
        (&id, committed, committed, Some(total)),
        "a resumed upload"
    );
    let second = 2 * p + 100;
    write_all(&mut upload, &bytes.slice(committed as usize..second as usize)).await.unwrap();
    let committed = upload.sync().await.unwrap();
    assert_eq!(committed, fixture.committed_after_sync(second), "sync's committed offset after {second} bytes");
    drop(upload);

    // Another instance: another server at the same time (S3), or the same
    // root after a restart (local: one instance per root).
    let first_store = match fixture.concurrent_instances() {
        true => Some(store),
        false => {
            drop(store);
            None
        }
    };
    let other = fixture.open().await;
    let status = other.upload_status(&id).await.unwrap();
    assert_eq!((status.committed, status.size), (committed, Some(total)), "status on another instance");
    let mut upload = within("a resume on another instance", other.resume_upload(&id, committed)).await.unwrap();
    assert_eq!(upload.received(), committed, "received after a resume on another instance");
    write_all(&mut upload, &bytes.slice(committed as usize..)).await.unwrap();
    let meta = upload.commit(Some(digest)).await.unwrap();
    assert_eq!((meta.size, meta.sha256), (total, Some(digest)), "the resumed upload's commit");
    assert!(content(other.as_ref(), raw).await == bytes, "the resumed upload's bytes");

    expect_err!(other.upload_status(&id).await, Error::UploadNotFound { .. }, "status of a committed session");
    expect_err!(other.resume_upload(&id, total).await, Error::UploadNotFound { .. }, "resume of a committed session");
    assert_eq!(other.count_uploads().await.unwrap(), 0, "count_uploads after the commit");
    if let Some(first_store) = first_store {
        assert!(content(first_store.as_ref(), raw).await == bytes, "the first instance sees the file");
        expect_err!(first_store.upload_status(&id).await, Error::UploadNotFound { .. }, "status on the first");
    }
    expect_err!(
        other.upload_status(&UploadId::derived("never created")).await,
        Error::UploadNotFound { .. },
        "status of an unknown id"
    );
    expect_err!(
        other.resume_upload(&UploadId::derived("never created"), 0).await,
        Error::UploadNotFound { .. },
        "resume of an unknown id"
    );
    fixture.assert_nothing_staged("after a resumed upload").await;
}

/// A resume takes a session over from a stream still writing to it: that
/// stream's `preempted` completes and its next calls fail with Preempted,
/// without harming the session, which the new stream finishes.
pub(crate) async fn resume_preempts_the_older_stream(fixture: &Fixture) {
    let store = fixture.open().await;
    let p = PART_SIZE;
    let bytes = data(p + 5000, 61);
    let raw = "preempt.bin";
    let mut old = store.create_upload(&path(raw), resumable()).await.unwrap();
    let id = old.id().clone();
    write_all(&mut old, &bytes.slice(..(p + 10) as usize)).await.unwrap();
    let committed = old.sync().await.unwrap();

    let resume = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.resume_upload(&id, committed).await })
    };
    within("the older stream's preempted()", old.preempted()).await;
    expect_err!(old.write(Bytes::from_static(b"late")).await, Error::Preempted { .. }, "a preempted stream's write");
    expect_err!(old.sync().await, Error::Preempted { .. }, "a preempted stream's sync");
    expect_err!(old.commit(None).await, Error::Preempted { .. }, "a preempted stream's commit");

    let mut new = within("the resume", resume).await.unwrap().unwrap();
    assert_eq!(new.received(), committed, "the resumed stream's offset");
    write_all(&mut new, &bytes.slice(committed as usize..)).await.unwrap();
    let meta = new.commit(None).await.unwrap();
    assert_eq!(meta.sha256, Some(Sha256::of(&bytes)), "the new stream's commit");
    assert!(content(store.as_ref(), raw).await == bytes, "the new stream's bytes");
    fixture.assert_nothing_staged("after a takeover").await;
}

/// An aborted session is gone: status, resume and abort say UploadNotFound,
/// nothing is visible and nothing is staged.
pub(crate) async fn abort(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "aborted.bin";
    let mut upload = store.create_upload(&path(raw), resumable()).await.unwrap();
    let id = upload.id().clone();
    write_all(&mut upload, &data(PART_SIZE + 10, 71)).await.unwrap();
    let committed = upload.sync().await.unwrap();
    drop(upload);

    within("an abort", store.abort_upload(&id)).await.unwrap();
    expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "status after an abort");
    expect_err!(store.resume_upload(&id, committed).await, Error::UploadNotFound { .. }, "resume after an abort");
    expect_err!(store.abort_upload(&id).await, Error::UploadNotFound { .. }, "a second abort");
    expect_err!(store.stat(&path(raw)).await, Error::NotFound { .. }, "an aborted upload's path");
    assert_eq!(store.count_uploads().await.unwrap(), 0, "count_uploads after an abort");
    expect_err!(
        store.abort_upload(&UploadId::derived("never created")).await,
        Error::UploadNotFound { .. },
        "abort of an unknown id"
    );
    fixture.assert_nothing_staged("after an abort").await;
}

/// An abort takes the session from a stream still writing to it: the
/// stream is preempted, and the session is gone.
pub(crate) async fn abort_preempts_a_live_stream(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "aborted-live.bin";
    let mut live = store.create_upload(&path(raw), resumable()).await.unwrap();
    let id = live.id().clone();
    write_all(&mut live, &data(PART_SIZE + 10, 72)).await.unwrap();
    live.sync().await.unwrap();

    let abort = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.abort_upload(&id).await })
    };
    within("the live stream's preempted()", live.preempted()).await;
    expect_err!(live.write(Bytes::from_static(b"late")).await, Error::Preempted { .. }, "a preempted write");
    expect_err!(live.commit(None).await, Error::Preempted { .. }, "a preempted commit");
    within("the abort", abort).await.unwrap().unwrap();

    expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "status after an abort");
    expect_err!(store.stat(&path(raw)).await, Error::NotFound { .. }, "an aborted upload's path");
    fixture.assert_nothing_staged("after aborting a live stream").await;
}

/// `expire_uploads` removes sessions idle for longer than it is told, and
/// keeps those with a live stream (which can still commit).
pub(crate) async fn gc_expires_abandoned_sessions(fixture: &Fixture) {
    let store = fixture.open().await;
    let mut abandoned = store.create_upload(&path("gc/abandoned"), resumable()).await.unwrap();
    let abandoned_id = abandoned.id().clone();
    write_all(&mut abandoned, &data(PART_SIZE + 10, 81)).await.unwrap();
    abandoned.sync().await.unwrap();
    drop(abandoned);

    let bytes = data(100, 82);
    let mut live = store.create_upload(&path("gc/live"), resumable()).await.unwrap();
    let live_id = live.id().clone();
    write_all(&mut live, &bytes.slice(..50)).await.unwrap();
    live.sync().await.unwrap();

    assert_eq!(store.expire_uploads(Duration::from_secs(3600)).await.unwrap(), 0, "nothing is an hour old");
    assert_eq!(store.count_uploads().await.unwrap(), 2, "both sessions are still there");

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.expire_uploads(Duration::from_millis(10)).await.unwrap(), 1, "expired sessions");
    expect_err!(store.upload_status(&abandoned_id).await, Error::UploadNotFound { .. }, "an expired session");
    assert_eq!(store.upload_status(&live_id).await.unwrap().path, path("gc/live"), "a live session stays");
    assert_eq!(store.count_uploads().await.unwrap(), 1, "count_uploads after expiry");

    write_all(&mut live, &bytes.slice(50..)).await.unwrap();
    live.commit(None).await.unwrap();
    assert!(content(store.as_ref(), "gc/live").await == bytes, "the live session's commit");
    expect_err!(store.stat(&path("gc/abandoned")).await, Error::NotFound { .. }, "an expired session's path");
    fixture.assert_nothing_staged("after expiry").await;
}

/// A session id the caller chooses (`UploadId::derived`) is the session's;
/// a second session with it is UploadExists; after the commit the id is free.
pub(crate) async fn chosen_upload_ids(fixture: &Fixture) {
    let store = fixture.open().await;
    let id = UploadId::derived("conformance/chosen");
    let chosen = || WriteOptions { upload_id: Some(id.clone()), ..resumable() };
    let bytes = data(300, 111);

    let mut upload = store.create_upload(&path("ids/a"), chosen()).await.unwrap();
    assert_eq!(upload.id(), &id, "the chosen id");
    write_all(&mut upload, &bytes.slice(..100)).await.unwrap();
    let committed = upload.sync().await.unwrap();
    drop(upload);

    expect_err!(
        within("a create with a taken id", store.create_upload(&path("ids/b"), chosen())).await,
        Error::UploadExists { .. },
        "a second session with the same id"
    );
    let status = store.upload_status(&id).await.unwrap();
    assert_eq!((status.path.as_str(), status.committed), ("ids/a", committed), "the first session is untouched");

    let mut upload = within("a resume", store.resume_upload(&id, committed)).await.unwrap();
    write_all(&mut upload, &bytes.slice(committed as usize..)).await.unwrap();
    upload.commit(None).await.unwrap();
    assert!(content(store.as_ref(), "ids/a").await == bytes, "the chosen-id upload's bytes");
    expect_err!(store.stat(&path("ids/b")).await, Error::NotFound { .. }, "the refused upload's path");

    let upload = store.create_upload(&path("ids/b"), chosen()).await.unwrap();
    assert_eq!(upload.id(), &id, "the id is free again after the commit");
    drop(upload);
    store.abort_upload(&id).await.unwrap();
    fixture.assert_nothing_staged("after chosen ids").await;
}

/// A second session with the id of one that a stream is writing to is
/// UploadExists, at once, and the stream goes on undisturbed.
pub(crate) async fn a_taken_upload_id_is_refused_while_streaming(fixture: &Fixture) {
    let store = fixture.open().await;
    let id = UploadId::derived("conformance/taken");
    let chosen = || WriteOptions { upload_id: Some(id.clone()), ..resumable() };
    let bytes = data(300, 112);

    let mut live = store.create_upload(&path("taken/a"), chosen()).await.unwrap();
    write_all(&mut live, &bytes.slice(..100)).await.unwrap();
    expect_err!(
        within("a create with the id of a live session", store.create_upload(&path("taken/b"), chosen())).await,
        Error::UploadExists { .. },
        "a second session with the id of a live one"
    );
    write_all(&mut live, &bytes.slice(100..))
        .await
        .unwrap_or_else(|e| panic!("the live stream, after the refusal: {e}"));
    live.commit(None).await.unwrap();
    assert!(content(store.as_ref(), "taken/a").await == bytes, "the live stream's bytes");
    expect_err!(store.stat(&path("taken/b")).await, Error::NotFound { .. }, "the refused upload's path");
    fixture.assert_nothing_staged("after a refused id").await;
}

/// `count_uploads` counts the resumable sessions the store holds: live or
/// at rest, not plain uploads, not finished or aborted sessions.
pub(crate) async fn count_uploads(fixture: &Fixture) {
    let store = fixture.open().await;
    assert_eq!(store.count_uploads().await.unwrap(), 0, "an empty store");

    let mut plain = store.create_upload(&path("n/plain"), WriteOptions::default()).await.unwrap();
    write_all(&mut plain, &data(10, 131)).await.unwrap();
    let mut live = store.create_upload(&path("n/live"), resumable()).await.unwrap();
    write_all(&mut live, &data(10, 132)).await.unwrap();
    let mut rest = store.create_upload(&path("n/rest"), resumable()).await.unwrap();
    write_all(&mut rest, &data(10, 133)).await.unwrap();
    rest.sync().await.unwrap();
    let rest_id = rest.id().clone();
    drop(rest);
    assert_eq!(store.count_uploads().await.unwrap(), 2, "one live and one resting session (and a plain upload)");

    live.commit(None).await.unwrap();
    assert_eq!(store.count_uploads().await.unwrap(), 1, "after a commit");
    store.abort_upload(&rest_id).await.unwrap();
    assert_eq!(store.count_uploads().await.unwrap(), 0, "after an abort");
    plain.commit(None).await.unwrap();
    assert_eq!(store.count_uploads().await.unwrap(), 0, "after the plain upload");
}
