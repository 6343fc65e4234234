//! Stat, List and Delete semantics.

use ferry_client::{Client, Code, RemoteFile};

use crate::harness::{TestServer, download_bytes, sha256_hex, upload_bytes};

async fn list_all(client: &Client, path: &str, recursive: bool) -> (Vec<RemoteFile>, usize) {
    let mut listing = client.list(path, recursive).await.expect("list");
    let (mut entries, mut batches) = (Vec::new(), 0);
    while let Some(batch) = listing.next_batch().await.expect("batch") {
        batches += 1;
        entries.extend(batch);
    }
    (entries, batches)
}

fn paths(entries: &[RemoteFile]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_reports_files_and_directories() {
    let server = TestServer::start().await;
    let client = server.client().await;
    upload_bytes(&client, "d/f.txt", b"hello").await.expect("upload");

    let file = client.stat("d/f.txt").await.expect("stat file");
    assert!(!file.is_dir);
    assert_eq!((file.size, file.sha256.as_deref()), (5, Some(sha256_hex(b"hello").as_str())));
    let dir = client.stat("d").await.expect("stat dir");
    assert!(dir.is_dir);
    assert_eq!((dir.size, dir.sha256), (0, None));
    let missing = client.stat("d/nope").await.expect_err("missing");
    assert_eq!(missing.code(), Some(Code::NotFound));
    let under_file = client.stat("d/f.txt/x").await.expect_err("a file has no children");
    assert_eq!(under_file.code(), Some(Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_one_level_and_recursive_in_order() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for path in ["b.txt", "a/2.txt", "a/1.txt", "a/sub/deep.txt", "c/x.txt"] {
        upload_bytes(&client, path, path.as_bytes()).await.expect("upload");
    }
    std::fs::create_dir(server.root().join("empty")).expect("empty dir");

    let (top, _) = list_all(&client, "", false).await;
    assert_eq!(paths(&top), ["a", "b.txt", "c", "empty"], "the reserved .ferry directory is never listed");
    assert!(top[0].is_dir && !top[1].is_dir);

    let (tree, _) = list_all(&client, "", true).await;
    assert_eq!(
        paths(&tree),
        ["a", "a/1.txt", "a/2.txt", "a/sub", "a/sub/deep.txt", "b.txt", "c", "c/x.txt", "empty"],
        "depth-first, each directory sorted"
    );
    let uploaded = tree.iter().find(|e| e.path == "a/1.txt").expect("a/1.txt");
    assert_eq!(uploaded.sha256.as_deref(), Some(sha256_hex(b"a/1.txt").as_str()), "listings carry cached digests");

    let (sub, _) = list_all(&client, "a", false).await;
    assert_eq!(paths(&sub), ["a/1.txt", "a/2.txt", "a/sub"]);
    let (single, _) = list_all(&client, "b.txt", false).await;
    assert_eq!(paths(&single), ["b.txt"], "listing a file lists just that file");

    let missing = client.list("nope", false).await.expect_err("missing dir");
    assert_eq!(missing.code(), Some(Code::NotFound));
}

/// A big directory arrives in several messages, none of them huge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_listing_streams_in_batches() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let dir = server.root().join("many");
    std::fs::create_dir(&dir).expect("dir");
    for i in 0..2500 {
        std::fs::write(dir.join(format!("f{i:05}")), b"x").expect("file");
    }
    let (entries, batches) = list_all(&client, "many", false).await;
    assert_eq!(entries.len(), 2500);
    assert!(batches >= 3, "expected several batches, got {batches}");
    assert!(entries.windows(2).all(|w| w[0].path < w[1].path), "sorted");
}

/// Files placed in the root by other means are served and verified too: the
/// digest is computed on first download and cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_outside_ferry_get_a_digest_on_first_download() {
    let server = TestServer::start().await;
    let client = server.client().await;
    std::fs::write(server.root().join("foreign.txt"), b"placed by hand").expect("write");
    assert_eq!(client.stat("foreign.txt").await.expect("stat").sha256, None, "not hashed by stat");
    assert_eq!(download_bytes(&client, "foreign.txt").await.expect("download"), b"placed by hand");
    let expected = sha256_hex(b"placed by hand");
    assert_eq!(client.stat("foreign.txt").await.expect("stat").sha256.as_deref(), Some(expected.as_str()));

    // Changed in place (new size and mtime): the cached digest no longer applies.
    std::fs::write(server.root().join("foreign.txt"), b"changed by hand!").expect("rewrite");
    assert_eq!(download_bytes(&client, "foreign.txt").await.expect("download"), b"changed by hand!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_files_and_empty_directories_only() {
    let server = TestServer::start().await;
    let client = server.client().await;
    upload_bytes(&client, "d/f.txt", b"x").await.expect("upload");

    let not_empty = client.delete("d").await.expect_err("non-empty directory");
    assert_eq!(not_empty.code(), Some(Code::FailedPrecondition));
    client.delete("d/f.txt").await.expect("delete file");
    assert!(!server.root().join("d/f.txt").exists());
    client.delete("d").await.expect("delete empty dir");
    assert!(!server.root().join("d").exists());
    let again = client.delete("d").await.expect_err("already gone");
    assert_eq!(again.code(), Some(Code::NotFound));
}
