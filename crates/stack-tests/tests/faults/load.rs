//! The senders: several SMTP clients sending numbered messages through the ingresses, each
//! message until it is acknowledged (250 after its text), refused for good (5xx), or its
//! answer is lost with the connection (then nobody can know whether it was stored, and it is
//! not sent again: counted as unanswered).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::ledger::{Ledger, Route};

pub const LOCAL: &str = "alice@example.org";
pub const REMOTE: &str = "someone@remote.example";

/// How one attempt ended.
enum Attempt {
    Acknowledged,
    /// Refused or failed before the end of the text: not stored, try again.
    Again,
    /// Refused after the text (4xx: try again; 5xx: never).
    Refused {
        permanent: bool,
    },
    /// The end of the text got no answer.
    Unanswered,
}

/// Sends tokens `0..messages` with `clients` concurrent senders, spread over `ingresses`;
/// gives up on a message still unacknowledged at `deadline`.
pub async fn send(
    ingresses: Vec<SocketAddr>,
    messages: u64,
    clients: usize,
    ledger: Ledger,
    deadline: Instant,
) {
    let next = Arc::new(AtomicU64::new(0));
    let turn = Arc::new(AtomicUsize::new(0));
    let ingresses = Arc::new(ingresses);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, turn, ingresses, ledger) = (
            next.clone(),
            turn.clone(),
            ingresses.clone(),
            ledger.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let token = next.fetch_add(1, Ordering::Relaxed);
                if token >= messages {
                    return;
                }
                while Instant::now() < deadline {
                    let at = ingresses[turn.fetch_add(1, Ordering::Relaxed) % ingresses.len()];
                    match attempt(at, token).await {
                        Attempt::Acknowledged => {
                            ledger.acknowledged(token);
                            break;
                        }
                        Attempt::Unanswered => {
                            ledger.unanswered(token);
                            break;
                        }
                        Attempt::Refused { permanent } => {
                            ledger.refused(token);
                            if permanent {
                                break;
                            }
                        }
                        Attempt::Again => {}
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

struct Conn {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Conn {
    /// The code of the next complete reply; None if the connection ended or went silent.
    async fn reply(&mut self) -> Option<u16> {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                .await
                .ok()?
                .ok()??;
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.get(..3)?.parse().ok();
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> Option<u16> {
        self.write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .ok()?;
        self.reply().await
    }
}

async fn attempt(ingress: SocketAddr, token: u64) -> Attempt {
    let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(ingress)).await
    else {
        return Attempt::Again;
    };
    let (read, write) = stream.into_split();
    let mut c = Conn {
        lines: BufReader::new(read).lines(),
        write,
    };
    if c.reply().await != Some(220) || c.cmd("EHLO sender.test").await != Some(250) {
        return Attempt::Again;
    }
    if c.cmd("MAIL FROM:<bob@sender.test>").await != Some(250) {
        return Attempt::Again;
    }
    let route = Route::of(token);
    for (wanted, rcpt) in [(route.local(), LOCAL), (route.remote(), REMOTE)] {
        if wanted && c.cmd(&format!("RCPT TO:<{rcpt}>")).await != Some(250) {
            return Attempt::Again;
        }
    }
    if c.cmd("DATA").await != Some(354) {
        return Attempt::Again;
    }
    let text = format!(
        "Subject: fault token {token}\r\nX-Fault-Token: {token}\r\n\r\nA message of the fault suite.\r\n.\r\n"
    );
    if c.write.write_all(text.as_bytes()).await.is_err() {
        // Some of the text may have gone; without its end the message cannot be stored.
        return Attempt::Again;
    }
    let outcome = match c.reply().await {
        Some(250) => Attempt::Acknowledged,
        Some(code) => Attempt::Refused {
            permanent: code >= 500,
        },
        None => Attempt::Unanswered,
    };
    let _ = c.cmd("QUIT").await;
    outcome
}

/// One RCPT for `rcpt` in a fresh session; the reply line (or what went wrong).
pub async fn probe_rcpt(ingress: SocketAddr, rcpt: &str) -> String {
    let Ok(stream) = TcpStream::connect(ingress).await else {
        return "no connection".into();
    };
    let (read, write) = stream.into_split();
    let mut c = Conn {
        lines: BufReader::new(read).lines(),
        write,
    };
    let _ = c.reply().await;
    let _ = c.cmd("EHLO probe.test").await;
    let _ = c.cmd("MAIL FROM:<probe@sender.test>").await;
    c.write
        .write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
        .await
        .ok();
    match tokio::time::timeout(Duration::from_secs(60), c.lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        other => format!("no reply: {other:?}"),
    }
}
