//! Alice's mail client: logs in over POP3 again and again, retrieves every message (noting
//! its UID and token), deletes them and quits. A session cut short deletes nothing, so its
//! messages are read again by a later one: a message's copies are its distinct UIDs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::ledger::Ledger;

struct Pop3 {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Pop3 {
    async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .ok()?
            .ok()?
    }

    async fn cmd(&mut self, line: &str) -> Option<String> {
        self.write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .ok()?;
        self.line().await
    }

    /// The lines of a multi-line answer, dot-unstuffed.
    async fn multiline(&mut self) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            if line == "." {
                return Some(lines);
            }
            lines.push(line.strip_prefix('.').map(str::to_owned).unwrap_or(line));
        }
    }
}

/// One session: everything retrieved and deleted. Some(n): QUIT answered +OK after deleting
/// n messages; None: the session failed (nothing was deleted).
pub async fn drain_once(pop3: SocketAddr, ledger: &Ledger) -> Option<usize> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(pop3))
        .await
        .ok()?
        .ok()?;
    let (read, write) = stream.into_split();
    let mut c = Pop3 {
        lines: BufReader::new(read).lines(),
        write,
    };
    c.line().await.filter(|l| l.starts_with("+OK"))?;
    c.cmd("USER alice@example.org")
        .await
        .filter(|l| l.starts_with("+OK"))?;
    c.cmd("PASS alice's password")
        .await
        .filter(|l| l.starts_with("+OK"))?;
    c.cmd("UIDL").await.filter(|l| l.starts_with("+OK"))?;
    let listing = c.multiline().await?;
    for entry in &listing {
        let (n, uid) = entry.split_once(' ')?;
        c.cmd(&format!("RETR {n}"))
            .await
            .filter(|l| l.starts_with("+OK"))?;
        let text = c.multiline().await?;
        let token = text
            .iter()
            .find_map(|l| l.strip_prefix("X-Fault-Token: "))
            .and_then(|t| t.trim().parse().ok())?;
        ledger.delivered_locally(token, uid);
        c.cmd(&format!("DELE {n}"))
            .await
            .filter(|l| l.starts_with("+OK"))?;
    }
    c.cmd("QUIT").await.filter(|l| l.starts_with("+OK"))?;
    Some(listing.len())
}

/// Drains the maildrop over and over until `stop`.
pub async fn keep_draining(pop3: SocketAddr, ledger: Ledger, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let _ = drain_once(pop3, &ledger).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// USER and PASS for Alice in a fresh session; the answer to PASS (or what went wrong).
pub async fn probe_login(pop3: SocketAddr) -> String {
    let Ok(stream) = TcpStream::connect(pop3).await else {
        return "no connection".into();
    };
    let (read, write) = stream.into_split();
    let mut c = Pop3 {
        lines: BufReader::new(read).lines(),
        write,
    };
    let _ = c.line().await;
    let _ = c.cmd("USER alice@example.org").await;
    c.cmd("PASS alice's password")
        .await
        .unwrap_or_else(|| "no answer".into())
}
