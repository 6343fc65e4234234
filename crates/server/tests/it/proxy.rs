//! A fault-injecting TCP proxy for the tests: forwards 127.0.0.1 traffic to
//! a server and cuts every connection once it has carried a byte budget from
//! client to server, like a flaky link that drops mid-transfer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FaultProxy {
    pub url: String,
    upstream: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Proxies to `target`, cutting each connection after `budget` bytes
    /// have gone from client to server on it.
    pub async fn start(target: SocketAddr, budget: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let (upstream, cuts) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (up, cut) = (upstream.clone(), cuts.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                tokio::spawn(relay(client, server, budget, up.clone(), cut.clone()));
            }
        });
        Self { url, upstream, cuts, accept }
    }

    /// Bytes carried from clients to the server, over all connections.
    pub fn upstream_bytes(&self) -> u64 {
        self.upstream.load(Ordering::Relaxed)
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, budget: u64, upstream: Arc<AtomicU64>, cuts: Arc<AtomicU64>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut carried = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n.min((budget - carried) as usize),
            };
            if server_write.write_all(&buf[..n]).await.is_err() {
                return false;
            }
            carried += n as u64;
            upstream.fetch_add(n as u64, Ordering::Relaxed);
            if carried >= budget {
                return true;
            }
        }
    };
    let down = tokio::io::copy(&mut server_read, &mut client_write);
    // Whichever side ends first ends the connection: both sockets are dropped.
    tokio::select! {
        cut = up => if cut { cuts.fetch_add(1, Ordering::Relaxed); },
        _ = down => {}
    }
}
