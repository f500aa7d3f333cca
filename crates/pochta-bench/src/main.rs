//! pochta-bench: load for SMTP and POP3 servers, Pochta's or any other's.
//!
//! - `smtp`: N connections × M messages of S octets; accepted messages/s, end-of-data → reply
//!   latency, errors by reply code.
//! - `e2e`: the same load, then waits until every message can be retrieved (over POP3, or as
//!   files in a Maildir for servers that deliver there) and reports end-to-end messages/s and
//!   accept → retrievable latency.
//! - `pop3`: K sessions retrieving every message of their maildrops; retrievals/s, MB/s,
//!   login latency.
//!
//! A progress line on a terminal, a summary at the end, `--json` for machines.

mod net;
mod pop3;
mod smtp;
mod stats;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::stats::{Latency, rate};

#[derive(Debug, Parser)]
#[command(version, about = "Load generator for SMTP and POP3 servers")]
struct Cli {
    /// Print the result as one JSON object.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Acceptance speed.
    Smtp(smtp::SmtpArgs),
    /// Acceptance, then until everything is retrievable.
    E2e(E2eArgs),
    /// Retrieval speed.
    Pop3(pop3::Pop3Args),
}

#[derive(Debug, clap::Args)]
struct E2eArgs {
    #[command(flatten)]
    smtp: smtp::SmtpArgs,
    /// Count retrievable messages over POP3 at this `host:port` (users: the recipients).
    #[arg(long, value_name = "ADDR")]
    pop3: Option<String>,
    /// The recipients' POP3 password.
    #[arg(long, default_value = "")]
    pop3_password: String,
    /// Count retrievable messages as files in this Maildir (`{n}` as in --to), e.g. for
    /// Dovecot.
    #[arg(long, value_name = "DIR", conflicts_with = "pop3")]
    maildir: Option<String>,
    /// How often to count.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Give up waiting after this long.
    #[arg(long, default_value_t = 300)]
    wait_secs: u64,
}

/// Shows `done` counting up on stderr while the load runs, when stderr is a terminal.
fn progress(total: u64, done: impl Fn() -> u64 + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let n = done();
            let width = 30;
            // Unknown total (POP3): a full bar, the count says the rest.
            let filled = (n.min(total) * width as u64)
                .checked_div(total)
                .map_or(width, |f| f as usize);
            eprint!(
                "\r[{}{}] {n}/{total}  {:.0}/s ",
                "#".repeat(filled),
                " ".repeat(width - filled),
                rate(n, start.elapsed())
            );
        }
    })
}

fn end_progress(handle: tokio::task::JoinHandle<()>) {
    handle.abort();
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}

fn errors_text(errors: &stats::Counts) -> String {
    if errors.is_empty() {
        "none".into()
    } else {
        errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn run_smtp(args: &smtp::SmtpArgs, as_json: bool) -> anyhow::Result<()> {
    let counters = Arc::new(smtp::Progress::default());
    let c = counters.clone();
    let total = (args.connections * args.messages) as u64;
    let bar = progress(total, move || {
        c.done.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed)
    });
    let result = smtp::run(args, counters).await;
    end_progress(bar);
    let latency = Latency::of(result.latencies.clone());
    let per_sec = rate(result.accepted, result.elapsed);
    if as_json {
        println!(
            "{}",
            json!({
                "workload": "smtp", "target": args.target, "connections": args.connections,
                "messages_per_connection": args.messages, "size": args.size,
                "pipelining": args.pipelining, "starttls": args.starttls.is_some(),
                "accepted": result.accepted, "seconds": result.elapsed.as_secs_f64(),
                "accepted_per_sec": per_sec, "end_of_data_latency": latency.to_json(),
                "errors": result.errors,
            })
        );
    } else {
        println!(
            "SMTP {} × {} messages of {} octets to {}{}{}",
            args.connections,
            args.messages,
            args.size,
            args.target,
            if args.pipelining { ", pipelined" } else { "" },
            if args.starttls.is_some() {
                ", STARTTLS"
            } else {
                ""
            }
        );
        println!(
            "  accepted        {} in {:.2} s: {per_sec:.1} msg/s",
            result.accepted,
            result.elapsed.as_secs_f64()
        );
        println!("  end of data→250 {}", latency.to_text());
        println!("  errors          {}", errors_text(&result.errors));
    }
    if result.accepted == 0 {
        bail!("no message was accepted: {}", errors_text(&result.errors));
    }
    Ok(())
}

/// Messages retrievable now, over all the recipients.
async fn retrievable(e: &E2eArgs, users: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for user in users {
        total += if let Some(addr) = &e.pop3 {
            let args = pop3::Pop3Args {
                target: addr.clone(),
                sessions: 1,
                user: user.clone(),
                password: e.pop3_password.clone(),
                pipelining: false,
                depth: 1,
                delete: false,
                stls: None,
                tls_name: None,
            };
            pop3::count(&args, user).await?
        } else if let Some(dir) = &e.maildir {
            let dir = dir.replace("{n}", user);
            let mut n = 0;
            for sub in ["new", "cur"] {
                if let Ok(entries) = std::fs::read_dir(format!("{dir}/{sub}")) {
                    n += entries.count() as u64;
                }
            }
            n
        } else {
            bail!("say where to look: --pop3 ADDR or --maildir DIR");
        };
    }
    Ok(total)
}

async fn run_e2e(e: E2eArgs, as_json: bool) -> anyhow::Result<()> {
    let mut users: Vec<String> = (0..e.smtp.connections)
        .map(|n| {
            let to = e.smtp.to.replace("{n}", &n.to_string());
            if e.maildir.is_some() {
                to.split('@').next().unwrap_or(&to).to_owned()
            } else {
                to
            }
        })
        .collect();
    users.sort();
    users.dedup();
    let before = retrievable(&e, &users).await?;
    let e = Arc::new(e);
    let users = Arc::new(users);
    let start = Instant::now();
    let accepted_total = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    // Count retrievable messages while the load runs, noting when each count was reached.
    let poller = {
        let (e, users, accepted_total) = (e.clone(), users.clone(), accepted_total.clone());
        tokio::spawn(async move {
            let mut seen: Vec<(u64, Duration)> = Vec::new();
            let deadline = Duration::from_secs(e.wait_secs);
            loop {
                let now = retrievable(&e, &users).await?.saturating_sub(before);
                if seen.last().is_none_or(|(n, _)| now > *n) {
                    seen.push((now, start.elapsed()));
                }
                if now >= accepted_total.load(Ordering::SeqCst) {
                    return anyhow::Ok(seen);
                }
                if start.elapsed() > deadline {
                    bail!("only {now} messages retrievable after {deadline:?}");
                }
                tokio::time::sleep(Duration::from_millis(e.poll_ms)).await;
            }
        })
    };
    let counters = Arc::new(smtp::Progress::default());
    let c = counters.clone();
    let bar = progress((e.smtp.connections * e.smtp.messages) as u64, move || {
        c.done.load(Ordering::Relaxed)
    });
    let result = smtp::run(&e.smtp, counters).await;
    accepted_total.store(result.accepted, Ordering::SeqCst);
    let seen = poller.await??;
    end_progress(bar);
    let all_retrievable = seen.last().map_or(Duration::ZERO, |(_, t)| *t);
    // The k-th accepted message counts as retrievable when the k-th message was.
    let latencies: Vec<Duration> = result
        .accepted_at
        .iter()
        .enumerate()
        .map(|(k, accepted)| {
            let at = seen
                .iter()
                .find(|(n, _)| *n > k as u64)
                .map_or(all_retrievable, |(_, t)| *t);
            at.saturating_sub(*accepted)
        })
        .collect();
    let latency = Latency::of(latencies);
    let per_sec = rate(result.accepted, all_retrievable);
    if as_json {
        println!(
            "{}",
            json!({
                "workload": "e2e", "target": e.smtp.target, "connections": e.smtp.connections,
                "messages_per_connection": e.smtp.messages, "size": e.smtp.size,
                "pipelining": e.smtp.pipelining, "accepted": result.accepted,
                "accepted_per_sec": rate(result.accepted, result.elapsed),
                "end_of_data_latency": Latency::of(result.latencies.clone()).to_json(),
                "seconds_until_all_retrievable": all_retrievable.as_secs_f64(),
                "end_to_end_per_sec": per_sec, "accept_to_retrievable_latency": latency.to_json(),
                "poll_ms": e.poll_ms, "errors": result.errors,
            })
        );
    } else {
        println!(
            "E2E {} × {} messages of {} octets to {}",
            e.smtp.connections, e.smtp.messages, e.smtp.size, e.smtp.target
        );
        println!(
            "  accepted          {} at {:.1} msg/s",
            result.accepted,
            rate(result.accepted, result.elapsed)
        );
        println!(
            "  all retrievable   after {:.2} s: {per_sec:.1} msg/s end to end",
            all_retrievable.as_secs_f64()
        );
        println!(
            "  accept→retrievable {} (polled every {} ms)",
            latency.to_text(),
            e.poll_ms
        );
        println!("  errors            {}", errors_text(&result.errors));
    }
    Ok(())
}

async fn run_pop3(args: &pop3::Pop3Args, as_json: bool) -> anyhow::Result<()> {
    let counters = Arc::new(pop3::Progress::default());
    let c = counters.clone();
    let bar = progress(0, move || c.done.load(Ordering::Relaxed));
    let result = pop3::run(args, counters).await;
    end_progress(bar);
    let logins = Latency::of(result.logins.clone());
    let per_sec = rate(result.retrieved, result.elapsed);
    let mb_per_sec = result.octets as f64 / 1e6 / result.elapsed.as_secs_f64().max(1e-9);
    if as_json {
        println!(
            "{}",
            json!({
                "workload": "pop3", "target": args.target, "sessions": args.sessions,
                "pipelining": args.pipelining, "depth": args.depth, "stls": args.stls.is_some(),
                "retrieved": result.retrieved, "octets": result.octets,
                "seconds": result.elapsed.as_secs_f64(), "retrievals_per_sec": per_sec,
                "mb_per_sec": mb_per_sec, "login_latency": logins.to_json(), "errors": result.errors,
            })
        );
    } else {
        println!(
            "POP3 {} session(s) to {}{}{}",
            args.sessions,
            args.target,
            if args.pipelining { ", pipelined" } else { "" },
            if args.stls.is_some() { ", STLS" } else { "" }
        );
        println!(
            "  retrieved  {} messages, {} octets in {:.2} s: {per_sec:.1}/s, {mb_per_sec:.2} MB/s",
            result.retrieved,
            result.octets,
            result.elapsed.as_secs_f64()
        );
        println!("  login      {}", logins.to_text());
        println!("  errors     {}", errors_text(&result.errors));
    }
    if result.retrieved == 0 {
        bail!("nothing was retrieved: {}", errors_text(&result.errors));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Smtp(args) => run_smtp(&args, cli.json).await,
        Command::E2e(args) => run_e2e(args, cli.json).await,
        Command::Pop3(args) => run_pop3(&args, cli.json).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pochta-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
