//! Crash points for the crash tests: with the `crash-points` feature (test
//! builds only), `FERRY_CRASH_AT=<name>` makes the process SIGKILL itself when
//! it reaches the point of that name, at exactly that step of the write path.
//! Without the feature, every point compiles to nothing.

/// The named points, in write-path order (the tests iterate over these).
pub const POINTS: &[&str] = &[
    "checkpoint.before-data-sync",
    "checkpoint.after-data-sync",
    "checkpoint.after-journal",
    "commit.after-verify",
    "commit.after-file-sync",
    "commit.after-rename",
    "commit.after-dir-sync",
    "range.after-data-sync",
    "recovery.after-first-session",
    "expiry.after-first-removal",
];

/// Dies here if this is the point named by `FERRY_CRASH_AT`.
#[inline]
pub(crate) fn point(name: &'static str) {
    #[cfg(feature = "crash-points")]
    if std::env::var("FERRY_CRASH_AT").is_ok_and(|at| at == name) {
        tracing::warn!(point = name, "crash point reached: killing the process");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    #[cfg(not(feature = "crash-points"))]
    let _ = name;
}
