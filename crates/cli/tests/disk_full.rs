//! A full disk: a real `ferry serve` over a small tmpfs. An upload that runs
//! out of space gets RESOURCE_EXHAUSTED, nothing partial is visible, the server
//! keeps serving, and the same session completes once space is freed.
//!
//! Mounting needs root (CI runs as root). Elsewhere the test says so and stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_client::{Client, Code, RetryPolicy, UploadOptions};

mod support;
use support::{MIB, Server};

/// A tmpfs of `size_mib` MiB at `path`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size_mib: usize) -> Option<Self> {
        std::fs::create_dir_all(path).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_cleanly_and_the_upload_resumes_once_space_is_freed() {
    let work = tempfile::tempdir().expect("temp dir");
    let Some(tmpfs) = Tmpfs::mount(&work.path().join("small"), 24) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    // 14 MiB of the 24 taken by something else on the same filesystem.
    let filler = tmpfs.0.join("filler");
    std::fs::write(&filler, vec![1u8; 14 * MIB]).expect("fill the disk");
    let data: Vec<u8> = (0..20 * MIB).map(|i| (i % 251) as u8).collect();
    let source = work.path().join("source.bin");
    std::fs::write(&source, &data).expect("local file");

    let server = Server::start(&tmpfs.0.join("root"), None, &[]);
    let client = Client::connect(server.url()).await.expect("connect");
    // A declared size that cannot fit is refused up front, before a byte is staged.
    let declared = UploadOptions { size: Some(data.len() as u64), ..UploadOptions::default() };
    let refused = client.create_upload("big.bin", &declared).await.expect_err("no room for 20 MiB");
    assert_eq!(refused.code(), Some(Code::ResourceExhausted), "{refused}");
    assert!(refused.to_string().contains("free space"), "{refused}");
    assert_eq!(std::fs::read_dir(tmpfs.0.join("root/.ferry/uploads")).expect("staging").count(), 0);

    // Without a declared size admission cannot know: the disk fills mid-write.
    let id = client.create_upload("big.bin", &UploadOptions::default()).await.expect("create");
    let no_retry = RetryPolicy { max_attempts_without_progress: 0, ..RetryPolicy::default() };
    let full = client.upload_file_resumable(&source, &id, &no_retry, |_| {}).await.expect_err("the disk is full");
    assert_eq!(full.code(), Some(Code::ResourceExhausted), "{full}");
    assert!(!full.to_string().contains(&*tmpfs.0.to_string_lossy()), "no server path in the message: {full}");

    assert!(!tmpfs.0.join("root/big.bin").exists(), "nothing partial is visible");
    let listing = client.list("", true).await.expect("the server still serves");
    drop(listing);
    assert_eq!(client.query_upload(&id).await.expect("the session survives").path, "big.bin");

    std::fs::remove_file(&filler).expect("free the space");
    let stored = client.upload_file_resumable(&source, &id, &RetryPolicy::default(), |_| {}).await.expect("resume");
    assert_eq!(stored.size, data.len() as u64);
    assert!(std::fs::read(tmpfs.0.join("root/big.bin")).expect("stored") == data);
    drop(server);
}
