//! A fault-injecting TCP proxy for the tests: forwards 127.0.0.1 traffic to
//! a server and cuts every connection once it has carried a byte budget in
//! either direction, like a flaky link that drops mid-transfer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FaultProxy {
    pub url: String,
    upstream: Arc<AtomicU64>,
    downstream: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Proxies to `target`, cutting each connection after `up_budget` bytes
    /// from client to server, or `down_budget` bytes back, on it.
    pub async fn start(target: SocketAddr, up_budget: u64, down_budget: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let counters = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let [upstream, downstream, cuts] = counters.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let [up, down, cut] = counters.clone();
                tokio::spawn(relay(client, server, [up_budget, down_budget], [up, down], cut));
            }
        });
        Self { url, upstream, downstream, cuts, accept }
    }

    /// Bytes carried from the server to clients, over all connections.
    pub fn downstream_bytes(&self) -> u64 {
        self.downstream.load(Ordering::Relaxed)
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

async fn relay(
    client: TcpStream,
    server: TcpStream,
    budgets: [u64; 2],
    carried: [Arc<AtomicU64>; 2],
    cuts: Arc<AtomicU64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let [up_carried, down_carried] = carried;
    let up = pipe(&mut client_read, &mut server_write, budgets[0], &up_carried);
    let down = pipe(&mut server_read, &mut client_write, budgets[1], &down_carried);
    // Whichever side ends first ends the connection: both sockets are dropped.
    let cut = tokio::select! {
        cut = up => cut,
        cut = down => cut,
    };
    if cut {
        cuts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies until EOF, an error, or `budget` bytes (then true: a cut).
async fn pipe(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    budget: u64,
    counter: &AtomicU64,
) -> bool {
    let mut carried = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n.min((budget - carried) as usize),
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
        carried += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if carried >= budget {
            return true;
        }
    }
}
