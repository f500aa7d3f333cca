//! `pop3`: K sessions, each logging in and retrieving every message of its maildrop (RETR,
//! one at a time or pipelined), leaving them in place. Also the maildrop count `e2e` polls.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::net::Conn;
use crate::stats::Counts;

#[derive(Debug, Clone, clap::Args)]
pub struct Pop3Args {
    /// The server, `host:port`.
    #[arg(long, default_value = "127.0.0.1:110")]
    pub target: String,
    /// Concurrent sessions.
    #[arg(long, short = 'k', default_value_t = 1)]
    pub sessions: usize,
    /// The user; `{n}` is replaced by the session's number (0-based).
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub password: String,
    /// Send every RETR at once (RFC 2449 PIPELINING); the same as `--depth 0`.
    #[arg(long)]
    pub pipelining: bool,
    /// RETRs in flight at a time: 1 waits for each message before asking for the next, N
    /// keeps N asked for (a pipelining client's window), 0 sends them all at once.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Delete each message after retrieving it (DELE, committed by QUIT), as a client that
    /// does not leave mail on the server does.
    #[arg(long)]
    pub delete: bool,
    /// STLS first (RFC 2595), trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "CA_PEM")]
    pub stls: Option<std::path::PathBuf>,
    /// The name to check the server's certificate against (default: the target's host).
    #[arg(long)]
    pub tls_name: Option<String>,
}

#[derive(Debug, Default)]
pub struct Pop3Result {
    pub retrieved: u64,
    pub octets: u64,
    pub elapsed: Duration,
    /// USER sent → +OK to PASS.
    pub logins: Vec<Duration>,
    pub errors: Counts,
}

#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
}

/// A logged-in session (after STLS if asked) and how long the login took.
async fn login(args: &Pop3Args, user: &str) -> anyhow::Result<(Conn, Duration)> {
    let mut conn = Conn::connect(&args.target).await?;
    conn.pop3_status().await.context("greeting")?;
    if let Some(ca) = &args.stls {
        conn.write(b"STLS\r\n").await?;
        conn.pop3_status().await.context("STLS")?;
        let host = args
            .target
            .rsplit_once(':')
            .map_or(args.target.as_str(), |(h, _)| h);
        let name = args.tls_name.as_deref().unwrap_or(host);
        conn = conn.start_tls(&crate::net::connector(ca)?, name).await?;
    }
    let started = Instant::now();
    conn.write(format!("USER {user}\r\n").as_bytes()).await?;
    conn.pop3_status().await.context("USER")?;
    conn.write(format!("PASS {}\r\n", args.password).as_bytes())
        .await?;
    conn.pop3_status().await.context("PASS")?;
    Ok((conn, started.elapsed()))
}

/// How many messages `user`'s maildrop holds now (a fresh session: POP3 shows a snapshot).
pub async fn count(args: &Pop3Args, user: &str) -> anyhow::Result<u64> {
    let (mut conn, _) = login(args, user).await?;
    conn.write(b"STAT\r\n").await?;
    let stat = conn.pop3_status().await?;
    conn.write(b"QUIT\r\n").await?;
    let _ = conn.pop3_status().await;
    stat.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("bad STAT reply {stat:?}"))
}

async fn session(
    args: &Pop3Args,
    index: usize,
    progress: &Progress,
) -> anyhow::Result<(u64, u64, Duration)> {
    let user = args.user.replace("{n}", &index.to_string());
    let (mut conn, login_time) = login(args, &user).await?;
    conn.write(b"STAT\r\n").await?;
    let stat = conn.pop3_status().await?;
    let n: u64 = stat
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("bad STAT reply {stat:?}"))?;
    let mut octets = 0u64;
    let depth = match (args.pipelining, args.depth) {
        (true, _) | (false, 0) => n,
        (false, depth) => depth as u64,
    };
    // Keep `depth` RETRs asked for: one more each time a message has come in.
    let mut asked = 0u64;
    let ask = |from: u64, to: u64| -> String {
        (from + 1..=to).map(|i| format!("RETR {i}\r\n")).collect()
    };
    for received in 0..n {
        if asked < n && asked < received + depth {
            let to = n.min(received + depth);
            conn.write(ask(asked, to).as_bytes()).await?;
            asked = to;
        }
        conn.pop3_status().await?;
        octets += conn.pop3_body().await? as u64;
        progress.done.fetch_add(1, Ordering::Relaxed);
    }
    if args.delete {
        let commands: String = (1..=n).map(|i| format!("DELE {i}\r\n")).collect();
        conn.write(commands.as_bytes()).await?;
        for _ in 1..=n {
            conn.pop3_status().await?;
        }
        conn.write(b"QUIT\r\n").await?;
        conn.pop3_status().await.context("QUIT (the deletions)")?;
        return Ok((n, octets, login_time));
    }
    // RSET first: nothing is marked, but a QUIT must never delete what a benchmark read.
    conn.write(b"RSET\r\nQUIT\r\n").await?;
    conn.pop3_status().await?;
    let _ = conn.pop3_status().await;
    Ok((n, octets, login_time))
}

pub async fn run(args: &Pop3Args, progress: Arc<Progress>) -> Pop3Result {
    let start = Instant::now();
    let sessions: Vec<_> = (0..args.sessions)
        .map(|i| {
            let (args, progress) = (args.clone(), progress.clone());
            tokio::spawn(async move { session(&args, i, &progress).await })
        })
        .collect();
    let mut result = Pop3Result::default();
    for s in sessions {
        match s.await {
            Ok(Ok((n, octets, login))) => {
                result.retrieved += n;
                result.octets += octets;
                result.logins.push(login);
            }
            Ok(Err(e)) => *result.errors.entry(format!("session: {e:#}")).or_default() += 1,
            Err(e) => *result.errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    result.elapsed = start.elapsed();
    result
}
