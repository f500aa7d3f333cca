//! A TCP proxy in front of PostgreSQL that can lose a commit's answer: armed, it withholds
//! the answer to the next enqueue (the row naming the stored queue id) and cuts the connection
//! once PostgreSQL says it is ready for the next query (the statement's implicit transaction
//! has committed), so the client never learns that its statement committed. Services under test
//! connect through it (`sslmode=disable`, so the stream is the plain wire protocol).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The proxy; it stops when dropped.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU32::new(0));
        let (a, c) = (armed.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, a.clone(), c.clone()));
            }
        });
        Ok(CuttingProxy {
            addr,
            armed,
            cuts,
            task,
        })
    }

    /// Cuts the connection that next carries a committed enqueue's answer.
    pub fn cut_next_commit(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many answers were cut.
    pub fn cuts(&self) -> u32 {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, armed: Arc<AtomicBool>, cuts: Arc<AtomicU32>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    // Server to client, message by message (type, length including itself, payload). Once
    // an enqueue's answer is seen while armed, nothing more is forwarded, and the connection
    // is cut at the ReadyForQuery that follows the commit.
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut cutting = false;
    'relay: loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let (mut at, mut forward) = (0, 0);
        while pending.len() - at >= 5 {
            let len = u32::from_be_bytes(pending[at + 1..at + 5].try_into().unwrap());
            let end = at + 1 + len as usize;
            if pending.len() < end {
                break;
            }
            let message = &pending[at..end];
            if cutting && message[0] == b'Z' {
                cuts.fetch_add(1, Ordering::SeqCst);
                break 'relay;
            }
            if !cutting && is_enqueue_answer(message) && armed.swap(false, Ordering::SeqCst) {
                cutting = true;
            }
            at = end;
            if !cutting {
                forward = at;
            }
        }
        if client_write.write_all(&pending[..forward]).await.is_err() {
            break;
        }
        pending.drain(..at);
    }
    upstream.abort();
}

/// A DataRow of three columns whose first is a queue id: what the enqueue statement returns,
/// sent once PostgreSQL has committed it.
fn is_enqueue_answer(message: &[u8]) -> bool {
    if message.first() != Some(&b'D') || message.len() < 11 {
        return false;
    }
    let columns = u16::from_be_bytes([message[5], message[6]]);
    let len = i32::from_be_bytes(message[7..11].try_into().unwrap());
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    let Some(first) = message.get(11..11 + len) else {
        return false;
    };
    columns == 3
        && (8..=32).contains(&len)
        && first
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}
