//! `smtp`: N connections, each sending M messages of S octets, measuring the time from the
//! end of the message text (CRLF.CRLF written) to the server's reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::Engine;

use crate::net::Conn;
use crate::stats::Counts;

#[derive(Debug, Clone, clap::Args)]
pub struct SmtpArgs {
    /// The server, `host:port`.
    #[arg(long, default_value = "127.0.0.1:25")]
    pub target: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub connections: usize,
    /// Messages per connection.
    #[arg(long, short = 'm', default_value_t = 100)]
    pub messages: usize,
    /// Message size in octets (header included).
    #[arg(long, short = 's', default_value_t = 1024)]
    pub size: usize,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920; the server must offer PIPELINING).
    #[arg(long)]
    pub pipelining: bool,
    /// STARTTLS first, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "CA_PEM")]
    pub starttls: Option<std::path::PathBuf>,
    /// The name to check the server's certificate against (default: the target's host).
    #[arg(long)]
    pub tls_name: Option<String>,
    /// AUTH PLAIN as `user:password`.
    #[arg(long)]
    pub auth: Option<String>,
    #[arg(long, default_value = "bench@bench.test")]
    pub from: String,
    /// Recipient; `{n}` is replaced by the connection's number (0-based).
    #[arg(long, default_value = "bench@example.test")]
    pub to: String,
    /// Send this message (CRLF line ends), the same every time, instead of generated ones
    /// (e.g. one that carries a DKIM signature); --size does not apply.
    #[arg(long, value_name = "FILE")]
    pub message: Option<std::path::PathBuf>,
    /// What generated messages carry: `filler` (lines of one letter, which any compressor
    /// shrinks to nothing), `text` (words, which shrink as prose does) or `attachment` (a
    /// short text part and a base64 file of random octets, as a photo or a PDF is sent).
    #[arg(long, value_enum, default_value_t = Body::Filler)]
    pub body: Body,
    /// Messages per second over all connections, evenly paced (a steady load, as a soak
    /// test wants); unset: each connection sends as fast as the server answers.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// What generated messages carry (`--body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Body {
    Filler,
    Text,
    Attachment,
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct SmtpResult {
    pub accepted: u64,
    pub elapsed: Duration,
    /// End of data → reply, for accepted messages.
    pub latencies: Vec<Duration>,
    /// When each accepted message got its 250, from the start.
    pub accepted_at: Vec<Duration>,
    /// Negative replies by code, and connection errors.
    pub errors: Counts,
}

/// Counters the progress display reads.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub failed: AtomicU64,
}

/// `text` as DATA sends it: lines starting with a dot get another (RFC 5321 4.5.2), then
/// the end of data.
fn data_text(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 16);
    for line in text.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A message of about `size` octets: a header naming it, then 76-character lines.
fn message(size: usize, from: &str, to: &str, id: &str) -> Vec<u8> {
    let mut text = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: pochta-bench {id}\r\nMessage-ID: <{id}@pochta-bench>\r\n\r\n"
    )
    .into_bytes();
    let line = [b'x'; 76];
    while text.len() + 78 <= size {
        text.extend_from_slice(&line);
        text.extend_from_slice(b"\r\n");
    }
    let rest = size.saturating_sub(text.len() + 2);
    text.extend_from_slice(&line[..rest.min(76)]);
    text.extend_from_slice(b"\r\n.\r\n");
    text
}

const BOUNDARY: &str = "pochta-bench-part";

/// The header of a generated message whose body is a `kind`.
fn header(kind: Body, from: &str, to: &str, id: &str) -> String {
    let mime = match kind {
        Body::Attachment => format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\r\n"
        ),
        Body::Text | Body::Filler => String::new(),
    };
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: pochta-bench {id}\r\n\
         Message-ID: <{id}@pochta-bench>\r\n{mime}\r\n"
    )
}

/// A `text` or `attachment` body of about `size` octets, as a connection sends it after each
/// message's own header (made once per connection: generating a megabyte per message would
/// load the client, and the server sees every message anew anyway). `seed` varies it.
fn body(kind: Body, size: usize, mut seed: u64) -> Vec<u8> {
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut out = Vec::with_capacity(size + 128);
    match kind {
        Body::Filler => unreachable!("filler messages are made whole by `message`"),
        Body::Text => {
            const WORDS: &[&str] = &[
                "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was",
                "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at",
                "which", "but", "have", "an", "had", "they", "you", "were", "their", "one", "all",
                "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would",
                "who", "so", "no", "meeting", "report", "quarter", "budget", "please", "review",
                "attached", "thanks", "regards", "tomorrow", "project", "schedule", "customer",
                "delivery", "server", "message", "team",
            ];
            let mut line = 0;
            while out.len() + 2 < size {
                let word = WORDS[(random() % WORDS.len() as u64) as usize].as_bytes();
                if line + word.len() + 1 > 72 {
                    out.extend_from_slice(b"\r\n");
                    line = 0;
                } else if line > 0 {
                    out.push(b' ');
                    line += 1;
                }
                out.extend_from_slice(word);
                line += word.len();
            }
            out.extend_from_slice(b"\r\n");
        }
        Body::Attachment => {
            const BASE64: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            out.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
                     The file is attached.\r\n\r\n--{BOUNDARY}\r\n\
                     Content-Type: application/octet-stream; name=\"data.bin\"\r\n\
                     Content-Disposition: attachment; filename=\"data.bin\"\r\n\
                     Content-Transfer-Encoding: base64\r\n\r\n"
                )
                .as_bytes(),
            );
            let end = format!("--{BOUNDARY}--\r\n");
            // Base64 of random octets: random characters of its alphabet.
            while out.len() + 78 + end.len() <= size {
                for _ in 0..76 {
                    out.push(BASE64[(random() % 64) as usize]);
                }
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(end.as_bytes());
        }
    }
    out
}

struct Session {
    latencies: Vec<Duration>,
    accepted_at: Vec<Duration>,
    errors: Counts,
}

fn note(errors: &mut Counts, key: impl Into<String>) {
    *errors.entry(key.into()).or_default() += 1;
}

async fn expect(conn: &mut Conn, wanted: u16, what: &str) -> anyhow::Result<()> {
    let (code, line) = conn.smtp_reply().await?;
    if code != wanted {
        bail!("{what}: {line}");
    }
    Ok(())
}

async fn session(
    args: &SmtpArgs,
    index: usize,
    start: Instant,
    progress: &Progress,
) -> anyhow::Result<Session> {
    let mut result = Session {
        latencies: Vec::with_capacity(args.messages),
        accepted_at: Vec::with_capacity(args.messages),
        errors: Counts::new(),
    };
    let mut conn = Conn::connect(&args.target).await?;
    expect(&mut conn, 220, "greeting").await?;
    conn.write(b"EHLO pochta-bench.test\r\n").await?;
    expect(&mut conn, 250, "EHLO").await?;
    if let Some(ca) = &args.starttls {
        conn.write(b"STARTTLS\r\n").await?;
        expect(&mut conn, 220, "STARTTLS").await?;
        let host = args
            .target
            .rsplit_once(':')
            .map_or(args.target.as_str(), |(h, _)| h);
        let name = args.tls_name.as_deref().unwrap_or(host);
        conn = conn.start_tls(&crate::net::connector(ca)?, name).await?;
        conn.write(b"EHLO pochta-bench.test\r\n").await?;
        expect(&mut conn, 250, "EHLO after STARTTLS").await?;
    }
    if let Some(credentials) = &args.auth {
        let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        conn.write(format!("AUTH PLAIN {token}\r\n").as_bytes())
            .await?;
        expect(&mut conn, 235, "AUTH").await?;
    }
    let to = args.to.replace("{n}", &index.to_string());
    let envelope = format!("MAIL FROM:<{}>\r\nRCPT TO:<{to}>\r\nDATA\r\n", args.from);
    let (mail, rest) = envelope.split_once("\r\n").expect("three lines");
    let (rcpt, _) = rest.split_once("\r\n").expect("two lines");
    let fixed = match &args.message {
        Some(path) => Some(data_text(&std::fs::read(path)?)),
        None => None,
    };
    let id_length = format!("{index}.{}.{}", args.messages, u64::MAX).len();
    let generated_body = (args.body != Body::Filler).then(|| {
        let header = header(args.body, &args.from, &to, &"0".repeat(id_length));
        let size = args.size.saturating_sub(header.len());
        data_text(&body(args.body, size, 0x9e37_79b9_7f4a_7c15 ^ index as u64))
    });
    // With a rate, connection `index` sends its message m at start + (m + index / n) / r * n.
    let pace = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|rate| Duration::from_secs_f64(args.connections as f64 / rate));
    for m in 0..args.messages {
        if let Some(every) = pace {
            let offset = every.mul_f64(m as f64 + index as f64 / args.connections as f64);
            tokio::time::sleep_until((start + offset).into()).await;
        }
        let id = format!("{index}.{m}.{}", start.elapsed().as_nanos());
        let text = match (&fixed, &generated_body) {
            (Some(text), _) => text.clone(),
            (None, Some(body)) => {
                let header = header(args.body, &args.from, &to, &id);
                [header.as_bytes(), body].concat()
            }
            (None, None) => message(args.size, &args.from, &to, &id),
        };
        let replies = if args.pipelining {
            conn.write(envelope.as_bytes()).await?;
            [
                conn.smtp_reply().await?,
                conn.smtp_reply().await?,
                conn.smtp_reply().await?,
            ]
        } else {
            conn.write(format!("{mail}\r\n").as_bytes()).await?;
            let r1 = conn.smtp_reply().await?;
            conn.write(format!("{rcpt}\r\n").as_bytes()).await?;
            let r2 = conn.smtp_reply().await?;
            conn.write(b"DATA\r\n").await?;
            let r3 = conn.smtp_reply().await?;
            [r1, r2, r3]
        };
        if let Some((code, _)) = replies.iter().find(|(code, _)| !matches!(code, 250 | 354)) {
            note(&mut result.errors, code.to_string());
            progress.failed.fetch_add(1, Ordering::Relaxed);
            if replies[2].0 == 354 {
                // The server went on to DATA anyway: an empty text ends it.
                conn.write(b".\r\n").await?;
                conn.smtp_reply().await?;
            }
            conn.write(b"RSET\r\n").await?;
            conn.smtp_reply().await?;
            continue;
        }
        conn.write(&text).await?;
        let sent = Instant::now();
        let (code, _) = conn.smtp_reply().await?;
        if code == 250 {
            result.latencies.push(sent.elapsed());
            result.accepted_at.push(start.elapsed());
            progress.done.fetch_add(1, Ordering::Relaxed);
        } else {
            note(&mut result.errors, code.to_string());
            progress.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    conn.write(b"QUIT\r\n").await?;
    let _ = conn.smtp_reply().await;
    Ok(result)
}

/// Runs the load; connection failures are counted, not fatal.
pub async fn run(args: &SmtpArgs, progress: Arc<Progress>) -> SmtpResult {
    let start = Instant::now();
    let sessions: Vec<_> = (0..args.connections)
        .map(|i| {
            let (args, progress) = (args.clone(), progress.clone());
            tokio::spawn(async move { session(&args, i, start, &progress).await })
        })
        .collect();
    let mut result = SmtpResult::default();
    for s in sessions {
        match s.await {
            Ok(Ok(s)) => {
                result.latencies.extend(s.latencies);
                result.accepted_at.extend(s.accepted_at);
                for (k, v) in s.errors {
                    *result.errors.entry(k).or_default() += v;
                }
            }
            Ok(Err(e)) => note(&mut result.errors, format!("connection: {e:#}")),
            Err(e) => note(&mut result.errors, format!("task: {e}")),
        }
    }
    result.elapsed = start.elapsed();
    result.accepted = result.latencies.len() as u64;
    result.accepted_at.sort_unstable();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_message_is_dot_stuffed_and_ended() {
        assert_eq!(
            data_text(b"A: b\r\n\r\n.x\r\nend"),
            b"A: b\r\n\r\n..x\r\nend\r\n.\r\n"
        );
        assert_eq!(data_text(b""), b".\r\n");
    }

    #[test]
    fn text_and_attachment_bodies_have_about_the_asked_size() {
        for kind in [Body::Text, Body::Attachment] {
            for size in [1024, 100 * 1024, 1 << 20] {
                let b = body(kind, size, 42);
                assert!(b.len().abs_diff(size) <= 80, "{kind:?} {size}: {}", b.len());
                assert!(b.ends_with(b"\r\n") && !b.starts_with(b"."));
                assert!(b.split(|&c| c == b'\n').all(|l| l.len() <= 78));
            }
        }
        let attachment = body(Body::Attachment, 10_000, 1);
        let text = String::from_utf8(attachment).unwrap();
        assert!(text.contains("Content-Transfer-Encoding: base64\r\n\r\n"));
        assert!(text.ends_with(&format!("--{BOUNDARY}--\r\n")));
        assert_ne!(body(Body::Text, 5000, 1), body(Body::Text, 5000, 2));
    }

    #[test]
    fn messages_have_the_asked_size_and_end_the_data() {
        for size in [200, 1024, 100 * 1024] {
            let m = message(size, "a@b.test", "c@d.test", "1.2");
            assert!(m.ends_with(b"\r\n.\r\n"));
            let text = m.len() - 3;
            assert!(text.abs_diff(size) <= 2, "{size}: {text}");
            assert!(!m[..m.len() - 5].windows(5).any(|w| w == b"\r\n.\r\n"));
        }
    }
}
