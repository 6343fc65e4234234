//! `TestServer`: `ferry_server::serve` on a fresh port over a fresh root.
//! The temp dir holds `root/` (served) and `outside/` (a neighbour that no
//! request may ever touch: symlinks planted by tests point there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_client::Client;
use ferry_proto::v1::ferry_client::FerryClient;
use ferry_server::ServerOptions;
use ferry_store::LocalStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct TestServer {
    pub url: String,
    dir: tempfile::TempDir,
    options: ServerOptions,
    store: Option<Arc<dyn ferry_store::Store>>,
    stop: Option<oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    pub async fn start_with(options: ServerOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("outside")).expect("outside dir");
        std::fs::write(dir.path().join("outside/secret"), b"outside the root").expect("secret file");
        let mut server = Self { url: String::new(), dir, options, store: None, stop: None, running: None };
        server.serve().await;
        server
    }

    /// Serves the root on a fresh port.
    async fn serve(&mut self) {
        // After a stop, the previous store is released when its last task ends.
        self.store = None;
        let mut store = LocalStore::open(self.root());
        for _ in 0..200 {
            if store.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            store = LocalStore::open(self.root());
        }
        let store: Arc<dyn ferry_store::Store> = Arc::new(store.expect("open store"));
        self.store = Some(store.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let scheme = if self.options.tls.is_some() { "https" } else { "http" };
        self.url = format!("{scheme}://{}", listener.local_addr().expect("local addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = ferry_server::serve(listener, store, self.options.clone(), async {
            let _ = stopped.await;
        });
        self.stop = Some(stop);
        self.running = Some(tokio::spawn(async move {
            let _ = serving.await;
        }));
    }

    /// Stops the server (in-flight calls are cut off with their connections
    /// by the caller dropping its clients first) and serves the same root
    /// again on a new port: what a restart looks like to the store.
    pub async fn restart(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            running.await.expect("server task");
        }
        self.serve().await;
    }

    /// The address the server listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url.split_once("://").map_or(self.url.as_str(), |(_, addr)| addr).parse().expect("server address")
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url).await.expect("connect")
    }

    /// A client with its own options (token, TLS files, compression).
    pub async fn client_with(&self, options: ferry_client::ClientOptions) -> Result<Client, ferry_client::Error> {
        Client::connect_with(&self.url, options).await
    }

    /// The store the server serves (for `ferry_server::serve_metrics`).
    pub fn store(&self) -> Arc<dyn ferry_store::Store> {
        self.store.clone().expect("serving")
    }

    /// The options the server runs with (its `metrics` handle among them).
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// The generated stub, for messages the real client would never send.
    /// Its encode limit is raised so that oversize messages reach the server.
    pub async fn raw(&self) -> FerryClient<Channel> {
        let channel = Channel::from_shared(self.url.clone()).expect("url").connect().await.expect("connect raw");
        FerryClient::new(channel)
            .max_encoding_message_size(64 * 1024 * 1024)
            .max_decoding_message_size(ferry_proto::MAX_MESSAGE_SIZE)
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// Where upload sessions live.
    pub fn staging(&self) -> PathBuf {
        self.root().join(".ferry/uploads")
    }

    /// Every file and directory under the temp dir (root and outside), with
    /// sizes: comparing two snapshots shows anything written anywhere.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut entries = BTreeMap::new();
        walk(self.dir.path(), self.dir.path(), &mut entries);
        entries.remove(".ferry/lock");
        entries.retain(|path, _| !path.ends_with(".ferry/lock"));
        entries
    }

    /// Waits (bounded) until the staging area is empty: the server drops an
    /// abandoned upload when it notices the stream reset, which is async.
    pub async fn staging_drains(&self) -> bool {
        for _ in 0..200 {
            if std::fs::read_dir(self.staging()).map(|d| d.count() == 0).unwrap_or(false) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        false
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(base).expect("under base").to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        out.insert(rel, if meta.is_file() { meta.len() } else { 0 });
        if meta.is_dir() {
            walk(base, &path, out);
        }
    }
}

/// Deterministic, incompressible bytes (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// Downloads a whole file into memory with the real client.
pub async fn download_bytes(client: &Client, path: &str) -> Result<Vec<u8>, ferry_client::Error> {
    client.download(path, ferry_client::Range::ALL, Vec::new(), |_| {}).await.map(|(_, bytes)| bytes)
}

/// Uploads bytes with the real client.
pub async fn upload_bytes(
    client: &Client,
    path: &str,
    data: &[u8],
) -> Result<ferry_client::RemoteFile, ferry_client::Error> {
    let options = ferry_client::UploadOptions { size: Some(data.len() as u64), ..Default::default() };
    client.upload(path, std::io::Cursor::new(data.to_vec()), options, |_| {}).await
}
