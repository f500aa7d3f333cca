//! The remote mail server the queue hands remote mail to: answers 250 to everything and
//! records each message's token before it acknowledges the message text.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::ledger::Ledger;

/// Starts the sink on a free loopback port; it runs until the test ends.
pub async fn start(ledger: Ledger) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                if write.write_all(b"220 sink.test ESMTP\r\n").await.is_err() {
                    return;
                }
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "DATA" => {
                            if write.write_all(b"354 go ahead\r\n").await.is_err() {
                                return;
                            }
                            let mut token = None;
                            loop {
                                match lines.next_line().await {
                                    Ok(Some(l)) if l == "." => break,
                                    Ok(Some(l)) => {
                                        if let Some(t) = l.strip_prefix("X-Fault-Token: ") {
                                            token = t.trim().parse().ok();
                                        }
                                    }
                                    _ => return,
                                }
                            }
                            if let Some(token) = token {
                                ledger.delivered_remotely(token);
                            }
                            b"250 2.0.0 accepted\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
