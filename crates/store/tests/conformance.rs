//! The storage semantics, as one conformance suite: every rule of the
//! `Store` and `Upload` contracts (`src/lib.rs`) is written once, as an
//! async function over a `Fixture` (`support/mod.rs`), and instantiated for
//! every backend by `conformance!`: `local::RULE` runs against a temporary directory,
//! `s3::RULE` (feature `s3`) against a moto server (`support/s3.rs` says how
//! it is found, started and stopped, and why each S3 test runs in a child
//! process).
//!
//! Where the backends differ by design (their module docs), a rule asks the
//! fixture for the documented behaviour instead of accepting either: the
//! committed offset after `sync` (everything received locally, the last part
//! boundary in S3), whether empty directories exist, whether two instances
//! may serve one root at once.
//!
//! The rules are in `conformance/`, a file per group (below); this file
//! registers them all and holds the helpers they share.
//!
//! ```text
//! cargo test -p ferry-store --test conformance                  # local only
//! cargo test -p ferry-store --features s3 --test conformance    # local and S3
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use bytes::Bytes;
use ferry_store::{NewFile, Sha256, WriteOptions};

use support::{Entry, Fixture, path};

/// Round trips: boundary sizes, metadata, ranges of a download.
#[path = "conformance/round_trips.rs"]
mod round_trips;
use round_trips::{metadata_is_kept, ranges, round_trips_at_boundary_sizes};

/// Publishing and replacing: create-only, atomic overwrites, snapshot downloads.
#[path = "conformance/publish.rs"]
mod publish;
use publish::{create_only, downloads_are_snapshots, overwrite_is_atomic};

/// Listings: pagination, prefixes, the store's own state never listed.
#[path = "conformance/listing.rs"]
mod listing;
use listing::{list_pagination_and_prefixes, reserved_name_is_never_listed};

/// Deletes, and paths that conflict with what is there.
#[path = "conformance/delete.rs"]
mod delete;
use delete::{delete, path_conflicts};

/// Resumable sessions: resume, takeover, abort, expiry, chosen ids, counting.
#[path = "conformance/sessions.rs"]
mod sessions;
use sessions::{
    a_taken_upload_id_is_refused_while_streaming, abort, abort_preempts_a_live_stream, chosen_upload_ids,
    count_uploads, gc_expires_abandoned_sessions, resume_preempts_the_older_stream, session_resume,
};

/// A declared size or digest the data does not have leaves nothing.
#[path = "conformance/mismatches.rs"]
mod mismatches;
use mismatches::{digest_mismatch_leaves_nothing, size_mismatch_leaves_nothing};

/// Batches of whole files (`put_files`).
#[path = "conformance/put_files.rs"]
mod put_files;
use put_files::{put_files_failures_are_per_file, put_files_round_trip, put_files_same_path_twice_last_wins};

/// Empty directories (`create_dir`).
#[path = "conformance/create_dir.rs"]
mod create_dir;
use create_dir::{
    create_dir_makes_empty_directories, create_dir_refuses_files_in_the_way,
    created_directories_delete_like_directories, files_in_a_created_directory,
};

/// Directories' times and permission bits (`set_dir_metadata`).
#[path = "conformance/dirs.rs"]
mod dirs;
use dirs::{dir_metadata_is_kept, dir_metadata_needs_a_directory};

/// The rules of ranged upload sessions: the helpers and the core rules.
#[path = "conformance/ranged.rs"]
mod ranged;
use ranged::{
    ranged_and_ordinary_sessions_do_not_mix, ranged_calls_leave_a_live_stream_alone, ranged_commit_checks,
    ranged_conflicts, ranged_range_lengths, ranged_round_trip,
};

/// The rules of ranged upload sessions: their limits and edges.
#[path = "conformance/ranged_limits.rs"]
mod ranged_limits;
use ranged_limits::{
    ranged_a_granted_range_can_be_finished, ranged_abort_preempts_writers, ranged_create_refusals, ranged_empty_file,
    ranged_expiry, ranged_recovery, ranged_target_in_the_way, ranged_too_many_ranges,
};

/// Instantiates every rule for every backend: `local::RULE`, `s3::RULE`.
macro_rules! conformance {
    ($($rule:ident),* $(,)?) => {
        mod local {
            $(
                #[test]
                fn $rule() {
                    let fixture = crate::support::Fixture::local();
                    crate::support::run(crate::$rule(&fixture));
                }
            )*
        }

        #[cfg(feature = "s3")]
        mod s3 {
            use crate::support::s3::{Plan, S3Fixture, plan};

            $(
                #[test]
                fn $rule() {
                    if let Plan::Run(endpoint) = plan(concat!("s3::", stringify!($rule))) {
                        let fixture = crate::support::Fixture::S3(S3Fixture::new(&endpoint));
                        crate::support::run(crate::$rule(&fixture));
                    }
                }
            )*
        }
    };
}

conformance!(
    round_trips_at_boundary_sizes,
    metadata_is_kept,
    ranges,
    create_only,
    overwrite_is_atomic,
    downloads_are_snapshots,
    list_pagination_and_prefixes,
    delete,
    path_conflicts,
    session_resume,
    resume_preempts_the_older_stream,
    abort,
    abort_preempts_a_live_stream,
    gc_expires_abandoned_sessions,
    digest_mismatch_leaves_nothing,
    size_mismatch_leaves_nothing,
    chosen_upload_ids,
    a_taken_upload_id_is_refused_while_streaming,
    reserved_name_is_never_listed,
    count_uploads,
    put_files_round_trip,
    put_files_failures_are_per_file,
    put_files_same_path_twice_last_wins,
    create_dir_makes_empty_directories,
    create_dir_refuses_files_in_the_way,
    created_directories_delete_like_directories,
    files_in_a_created_directory,
    dir_metadata_is_kept,
    dir_metadata_needs_a_directory,
    // Ranged upload sessions (conformance/ranged.rs, conformance/ranged_limits.rs).
    ranged_round_trip,
    ranged_conflicts,
    ranged_range_lengths,
    ranged_commit_checks,
    ranged_and_ordinary_sessions_do_not_mix,
    ranged_calls_leave_a_live_stream_alone,
    ranged_abort_preempts_writers,
    ranged_too_many_ranges,
    ranged_a_granted_range_can_be_finished,
    ranged_expiry,
    ranged_target_in_the_way,
    ranged_recovery,
    ranged_empty_file,
    ranged_create_refusals,
);

fn resumable() -> WriteOptions {
    WriteOptions { resumable: true, ..WriteOptions::default() }
}

/// The digest `stat` or `list` reported is right; a backend that always
/// knows it must report it.
fn check_listed_digest(fixture: &Fixture, what: &str, listed: Option<Sha256>, expected: Sha256) {
    match listed {
        Some(listed) => assert_eq!(listed, expected, "{what}: wrong sha256"),
        None => assert!(!fixture.stat_knows_digest(), "{what}: no sha256, but this backend always knows it"),
    }
}

/// Compares listings entry by entry, reporting the first difference (a
/// listing of thousands would be unreadable whole).
fn assert_listing(actual: &[Entry], expected: &[Entry], what: &str) {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a, e, "{what}: entry {i} differs");
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {} entries listed, {} expected (first extra: {:?})",
        actual.len(),
        expected.len(),
        actual.get(expected.len()).or(expected.get(actual.len()))
    );
}

/// A whole file for `put_files`, declaring nothing.
fn new_file(raw: &str, bytes: &Bytes) -> NewFile {
    NewFile { path: path(raw), options: WriteOptions::default(), data: bytes.clone() }
}

/// A whole file for `put_files` with its size and digest declared.
fn declared_file(raw: &str, bytes: &Bytes) -> NewFile {
    let options =
        WriteOptions { size: Some(bytes.len() as u64), sha256: Some(Sha256::of(bytes)), ..WriteOptions::default() };
    NewFile { path: path(raw), options, data: bytes.clone() }
}
