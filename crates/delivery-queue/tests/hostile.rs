//! Hostile remote servers against the real delivery-queue: servers that trickle, never read,
//! send a line without end, NUL bytes, a reply code out of range, close mid-transaction or
//! after the message. Each recipient is deferred within the transaction deadline, the remote
//! sees one DATA per attempt at most, the queue's memory stays bounded, and local mail sent
//! meanwhile is delivered at once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pochta_store::{NewEnvelope, RecipientState, Store};
use pochta_testkit::{
    ServiceProcess, TestDb, envelope, grpc_health, local_recipient, maildrop, recipient, until,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The queue's deadline for one remote transaction in these tests.
const DEADLINE_SECS: u64 = 3;

/// What a hostile server does.
#[derive(Debug, Clone, Copy)]
enum Evil {
    /// `220-` and then one byte every 300 ms, never a whole line.
    Trickle,
    /// A proper server until DATA's 354, then it never reads again.
    NeverReads,
    /// A greeting line of 100 MB.
    EndlessLine,
    /// NUL bytes and escapes in its replies; rejects the recipient with them.
    NulBytes,
    /// A greeting with the reply code 999.
    Code999,
    /// 421 in answer to MAIL, then it closes.
    Closes421,
    /// Takes the whole message, then closes without a reply.
    ClosesAfterData,
}

/// What a hostile server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    data_commands: AtomicUsize,
}

async fn evil_server(evil: Evil) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let stats = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            stats.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(behave(tcp, evil, stats.clone()));
        }
    });
    (addr, seen)
}

/// Reads one line (up to LF); None at the end of the stream.
async fn line(tcp: &mut TcpStream) -> Option<String> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tcp.read(&mut byte).await {
            Ok(1) => {
                bytes.push(byte[0]);
                if byte[0] == b'\n' {
                    return Some(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
            _ => return None,
        }
    }
}

async fn behave(mut tcp: TcpStream, evil: Evil, seen: Arc<Seen>) {
    match evil {
        Evil::Trickle => {
            let _ = tcp.write_all(b"220-").await;
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if tcp.write_all(b"x").await.is_err() {
                    return;
                }
            }
        }
        Evil::EndlessLine => {
            let _ = tcp.write_all(b"220 ").await;
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..100 {
                if tcp.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
        Evil::Code999 => {
            let _ = tcp.write_all(b"999 hello\r\n").await;
            while line(&mut tcp).await.is_some() {}
        }
        _ => {
            let _ = tcp.write_all(b"220 evil.test\r\n").await;
            while let Some(command) = line(&mut tcp).await {
                let verb = command.to_ascii_uppercase();
                let reply: &[u8] = if verb.starts_with("EHLO") {
                    b"250 evil.test\r\n"
                } else if verb.starts_with("MAIL") && matches!(evil, Evil::Closes421) {
                    let _ = tcp.write_all(b"421 4.3.2 going away\r\n").await;
                    return;
                } else if verb.starts_with("RCPT") && matches!(evil, Evil::NulBytes) {
                    b"550 5.1.1 no\0such\x1b[31m user\0\r\n"
                } else if verb.starts_with("DATA") {
                    seen.data_commands.fetch_add(1, Ordering::SeqCst);
                    let _ = tcp.write_all(b"354 go ahead\r\n").await;
                    match evil {
                        // Never reads again: the queue's writes fill the socket buffers.
                        Evil::NeverReads => {
                            std::future::pending::<()>().await;
                            return;
                        }
                        Evil::ClosesAfterData => {
                            while let Some(l) = line(&mut tcp).await {
                                if l == ".\r\n" {
                                    return;
                                }
                            }
                            return;
                        }
                        _ => b"",
                    }
                } else if verb.starts_with("QUIT") {
                    return;
                } else {
                    b"250 ok\r\n"
                };
                if tcp.write_all(reply).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Queue {
    db: TestDb,
    process: ServiceProcess,
    grpc: SocketAddr,
    alice: i64,
}

/// A queue with short deadlines, `extra` lines in `[queue]` and `routes` for its
/// `[queue.routes]`.
async fn queue(extra: &str, routes: &str) -> Queue {
    let db = TestDb::new().await.unwrap();
    let alice = db.add_account("alice@example.org", "pw").await.unwrap();
    let grpc = pochta_testkit::free_addr();
    let config = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 8\n\n[queue]\ngrpc_listen = \"{grpc}\"\n\
         scan_interval_secs = 1\nreply_timeout_secs = 2\nwrite_timeout_secs = 2\n\
         transaction_timeout_secs = {DEADLINE_SECS}\nslot_wait_secs = 1\nlease_secs = 30\n\
         connection_reuse_secs = 0\nsmarthost = \"{}\"\n{extra}\n\n[queue.routes]\n{routes}\n",
        db.url(),
        pochta_testkit::free_addr()
    );
    let process = ServiceProcess::start_healthy(
        Path::new(env!("CARGO_BIN_EXE_delivery-queue")),
        &config,
        grpc,
    )
    .await
    .unwrap();
    Queue {
        db,
        process,
        grpc,
        alice,
    }
}

async fn enqueue(store: &Store, envelope: &NewEnvelope, body: &[u8]) {
    store.enqueue(envelope, body).await.unwrap();
}

/// The attack that stopped all delivery: a remote server answering one byte at a time, with
/// a dozen messages for it queued. Local mail sent meanwhile must still arrive at once, and
/// the stuck destination costs only its own slots.
#[tokio::test]
async fn a_trickling_server_does_not_hold_up_local_mail() {
    let (evil, seen) = evil_server(Evil::Trickle).await;
    // One envelope per claim, so the trickled mail is spread over every loop that claims it
    // (as when it arrives message by message): before the local and remote loops were apart,
    // every loop ended up waiting on this server and local mail stopped.
    let q = queue("batch_size = 1", &format!("\"trickle.test\" = \"{evil}\"")).await;
    let store = q.db.store();
    for i in 0..12 {
        let to = format!("victim{i}@trickle.test");
        enqueue(
            store,
            &envelope("bob@example.net", vec![recipient(&to)]),
            b"x\r\n",
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let local = envelope(
        "bob@example.net",
        vec![local_recipient("alice@example.org")],
    );
    enqueue(store, &local, b"Subject: meanwhile\r\n\r\nhi\r\n").await;
    maildrop(store, q.alice, 1).await;
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "local delivery took {:?}",
        sent.elapsed()
    );
    // Every trickled recipient is deferred within the deadline (and the slot waits).
    until(
        "every trickled recipient attempted",
        Duration::from_secs(20),
        async || {
            let counts = store.counts().await.unwrap();
            counts.recipients_in(RecipientState::Queued) == 12 && deferred_all(store).await
        },
    )
    .await;
    assert!(
        seen.connections.load(Ordering::SeqCst) <= 2 * 2,
        "at most max_connections_per_destination at a time, per deadline"
    );
    assert!(grpc_health(q.grpc).await.unwrap(), "still serving");
}

/// True when no queued recipient is leased any more and each was attempted.
async fn deferred_all(store: &Store) -> bool {
    let (list, _) = store
        .list_envelopes(&Default::default(), 100)
        .await
        .unwrap();
    list.iter()
        .flat_map(|e| &e.recipients)
        .filter(|r| r.state == RecipientState::Queued)
        .all(|r| r.attempts >= 1 && r.lease_owner.is_none())
}

/// Every kind of hostile server at once, each behind its own route.
#[tokio::test]
async fn hostile_servers_defer_within_the_deadline_and_leave_no_trace_in_memory() {
    let kinds = [
        ("trickle.test", Evil::Trickle),
        ("neverreads.test", Evil::NeverReads),
        ("endless.test", Evil::EndlessLine),
        ("nul.test", Evil::NulBytes),
        ("code999.test", Evil::Code999),
        ("closes421.test", Evil::Closes421),
        ("closesafterdata.test", Evil::ClosesAfterData),
    ];
    let mut routes = String::new();
    let mut seen = Vec::new();
    for (domain, evil) in kinds {
        let (addr, stats) = evil_server(evil).await;
        routes.push_str(&format!("\"{domain}\" = \"{addr}\"\n"));
        seen.push((domain, stats));
    }
    let q = queue("", &routes).await;
    let store = q.db.store();
    let rss_before = q.process.resident_kib();
    // A message large enough that a server which stops reading blocks the queue's writes.
    let big = format!("Subject: big\r\n\r\n{}", "y".repeat(998) + "\r\n").repeat(16_000);
    let started = Instant::now();
    let mut ids = Vec::new();
    for (domain, _) in &kinds {
        let to = format!("someone@{domain}");
        let body = if *domain == "neverreads.test" {
            big.as_bytes()
        } else {
            b"Subject: hi\r\n\r\nhello\r\n"
        };
        let e = envelope("bob@example.net", vec![recipient(&to)]);
        enqueue(store, &e, body).await;
        ids.push((domain, e.queue_id));
    }
    let local = envelope(
        "bob@example.net",
        vec![local_recipient("alice@example.org")],
    );
    enqueue(store, &local, b"Subject: meanwhile\r\n\r\nhi\r\n").await;
    maildrop(store, q.alice, 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "local mail at once"
    );

    for (domain, id) in &ids {
        until(domain, Duration::from_secs(20), async || {
            let d = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
            d.recipients[0].attempts >= 1
        })
        .await;
        let d = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
        let r = &d.recipients[0];
        let first = &r.history[0];
        let diagnostic = first.diagnostic.clone();
        assert!(
            first.attempted_at - d.arrived_at < chrono::Duration::seconds(DEADLINE_SECS as i64 + 5),
            "{domain}: attempted within the deadline"
        );
        assert!(!diagnostic.contains('\0'), "{domain}: {diagnostic:?}");
        match **domain {
            "nul.test" => {
                assert_eq!(r.state, RecipientState::Failed, "{domain}: {r:?}");
                assert!(diagnostic.contains("no such"), "{diagnostic:?}");
                assert!(!diagnostic.chars().any(char::is_control), "{diagnostic:?}");
            }
            _ => assert_eq!(r.state, RecipientState::Queued, "{domain}: deferred, {r:?}"),
        }
        let expected = match **domain {
            "trickle.test" => "did not finish within",
            // The write timeout (2 s) or the deadline (3 s), whichever the buffers let fire
            // first.
            "neverreads.test" if diagnostic.contains("did not finish") => "within 3 s",
            "neverreads.test" => "does not read",
            "endless.test" => "longer than 2048",
            "code999.test" => "malformed reply",
            "closes421.test" => "going away",
            "closesafterdata.test" => "closed the connection",
            _ => "",
        };
        assert!(diagnostic.contains(expected), "{domain}: {diagnostic:?}");
    }
    for (domain, stats) in &seen {
        let (connections, data) = (
            stats.connections.load(Ordering::SeqCst),
            stats.data_commands.load(Ordering::SeqCst),
        );
        assert!(
            data <= connections,
            "{domain}: one DATA per attempt at most"
        );
    }
    let grown = q.process.resident_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "the queue grew by {grown} KiB");
    assert!(grpc_health(q.grpc).await.unwrap(), "still serving");
    assert!(
        !q.process.output().contains("panicked"),
        "{}",
        q.process.output()
    );
}
