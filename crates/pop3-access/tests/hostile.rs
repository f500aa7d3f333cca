//! Hostile input and long sessions over real TCP against the real binary.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pochta_testkit::{ServiceProcess, TestDb, free_addr, grpc_health};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

const BINARY: &str = env!("CARGO_BIN_EXE_pop3-access");

async fn server(extra: &str) -> (TestDb, ServiceProcess, SocketAddr, SocketAddr) {
    let db = TestDb::new().await.unwrap();
    // add_account adds example.org as a local domain.
    db.add_account("alice@example.org", "pw").await.unwrap();
    let (grpc, pop3) = (free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 4\n\n[pop3]\ngrpc_listen = \"{grpc}\"\npop3_listen = [\"{pop3}\"]\n\
         pop3s_listen = []\nplaintext_auth = \"loopback\"\nmax_errors = 1000\n{extra}\n",
        db.url()
    );
    let p = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();
    (db, p, pop3, grpc)
}

struct Client {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let (read, write) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut c = Client {
            lines: BufReader::new(read).lines(),
            write,
        };
        assert!(c.line().await.starts_with("+OK"));
        c
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_default()
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.line().await
    }

    async fn login(&mut self) -> String {
        assert!(self.cmd("USER alice@example.org").await.starts_with("+OK"));
        self.cmd("PASS pw").await
    }
}

#[tokio::test]
async fn bad_commands_get_err_and_the_server_survives() {
    let (_db, process, pop3, grpc) = server("").await;
    let mut c = Client::connect(pop3).await;
    for (cmd, reply) in [
        ("RETR 1", "-ERR Command not valid before login"),
        ("PASS pw", "-ERR USER first"),
        ("FROB", "-ERR Unknown command"),
    ] {
        assert_eq!(c.cmd(cmd).await, reply, "{cmd}");
    }
    assert!(
        c.cmd(&"X".repeat(10_000))
            .await
            .starts_with("-ERR Line too long")
    );
    assert!(
        c.login()
            .await
            .starts_with("+OK Maildrop locked and ready, 0 messages")
    );
    for (cmd, reply) in [
        ("RETR 1", "-ERR No such message 1"),
        ("RETR 18446744073709551616", "-ERR Invalid message number"),
        ("DELE -3", "-ERR Invalid message number"),
        ("TOP 1 -1", "-ERR No such message 1"),
        ("LIST 0", "-ERR No such message 0"),
        ("USER bob", "-ERR Command not valid after login"),
    ] {
        let got = c.cmd(cmd).await;
        assert!(got.starts_with(reply), "{cmd}: {got}");
    }
    assert!(c.cmd("QUIT").await.starts_with("+OK"));

    // Random bytes from several clients at once.
    let mut seed = 0xD1B54A32D192ED03u64;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut junk = Vec::new();
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(match seed % 5 {
                0 => b'\n',
                1 => b' ',
                _ => (seed >> 8) as u8,
            });
        }
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(pop3).await.unwrap();
            let _ = s.write_all(&junk).await;
            let _ = s.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(grpc_health(grpc).await.unwrap());
    let mut after = Client::connect(pop3).await;
    assert!(after.login().await.starts_with("+OK"));
    assert!(!process.output().contains("panicked"));
}

/// A session that outlives the lock's TTL keeps its lock by renewing it.
#[tokio::test]
async fn a_long_session_keeps_its_lock() {
    let (_db, _process, pop3, _) = server("lock_ttl_secs = 3").await;
    let mut first = Client::connect(pop3).await;
    assert!(first.login().await.starts_with("+OK"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut second = Client::connect(pop3).await;
    assert_eq!(
        second.login().await,
        "-ERR [IN-USE] Maildrop is locked by another session"
    );
    assert!(
        first.cmd("STAT").await.starts_with("+OK 0 0"),
        "the first session still works"
    );
    assert!(first.cmd("QUIT").await.starts_with("+OK"));
    assert!(second.login().await.starts_with("+OK"));
}

/// A client that pipelines without reading is cut off by the write timeout; its maildrop
/// lock goes with it, so the next session gets in.
#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_and_its_lock_released() {
    let (_db, process, pop3, _) = server("write_timeout_secs = 1\nmax_commands = 100000000").await;
    let mut greedy = Client::connect(pop3).await;
    assert!(greedy.login().await.starts_with("+OK"));
    let noops = b"NOOP\r\n".repeat(2 << 20);
    let _ = tokio::time::timeout(Duration::from_secs(15), greedy.write.write_all(&noops)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut next = Client::connect(pop3).await;
    assert!(
        next.login().await.starts_with("+OK Maildrop locked"),
        "the cut-off session released its lock"
    );
    assert!(!process.output().contains("panicked"));
}

/// A session that lasts past `max_session_secs` ends at its next wait for input, deleting
/// nothing.
#[tokio::test]
async fn a_trickling_client_is_cut_off_at_the_session_age() {
    let (_db, _process, pop3, _) = server("max_session_secs = 2").await;
    let mut c = Client::connect(pop3).await;
    assert!(c.login().await.starts_with("+OK"));
    let started = std::time::Instant::now();
    let mut last = String::new();
    for byte in b"NOOP\r\n".iter().cycle().take(60) {
        if c.write.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if *byte == b'\n' {
            last = c.line().await;
            if last.starts_with("-ERR") {
                break;
            }
        }
    }
    // The timeout may have come while a command was half sent (then our write failed).
    while !last.starts_with("-ERR") && !last.is_empty() {
        last = c.line().await;
    }
    assert!(last.starts_with("-ERR Timeout"), "{last}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn endless_commands_are_cut_off() {
    let (_db, _process, pop3, _) = server("max_commands = 100").await;
    let mut c = Client::connect(pop3).await;
    c.write.write_all(&b"NOOP\r\n".repeat(150)).await.unwrap();
    // Before login NOOP is an error (counted, max_errors = 1000 here): 100 of them, then the end.
    for _ in 0..100 {
        assert!(c.line().await.starts_with("-ERR"));
    }
    assert_eq!(c.line().await, "-ERR Too many commands; closing connection");
}

#[tokio::test]
async fn utf8_everywhere_gets_err() {
    let (_db, process, pop3, grpc) = server("").await;
    let mut c = Client::connect(pop3).await;
    for line in ["USÉR x", "USER ёжик", "PASS пароль", "AUTH PLAIN é", "É"] {
        let reply = c.cmd(line).await;
        assert!(
            reply.starts_with("-ERR") || reply.starts_with("+OK"),
            "{line}: {reply}"
        );
    }
    let mut d = Client::connect(pop3).await;
    assert!(d.login().await.starts_with("+OK"));
    for line in ["RETR é", "TOP 1 é", "LIST ١", "DELE ½", "UIDL 𝟙"] {
        assert!(d.cmd(line).await.starts_with("-ERR"), "{line}");
    }
    assert!(grpc_health(grpc).await.unwrap());
    assert!(!process.output().contains("panicked"));
}

/// A RETR that outlasts the lock's TTL (a big message to a slow reader) keeps the lock: it is
/// renewed whatever the session is doing, so no other session gets the maildrop meanwhile and
/// QUIT's deletion still applies.
#[tokio::test]
async fn a_retr_longer_than_the_lock_ttl_keeps_the_lock() {
    let (db, _process, pop3, _) = server("lock_ttl_secs = 3").await;
    let store = db.store();
    let account = store.list_accounts(None).await.unwrap()[0].id;
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.extend(
        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(250_000),
    );
    let envelope = pochta_testkit::envelope(
        "bob@remote.test",
        vec![pochta_testkit::local_recipient("alice@example.org")],
    );
    store.enqueue(&envelope, &big).await.unwrap();
    let claimed = store
        .claim_due("t", pochta_store::Claim::Local, 1, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .deliver_to_maildrop("t", claimed[0].recipient_id, account, b"")
        .await
        .unwrap();

    // A slow reader with a small receive buffer: the 16 MB RETR takes several seconds.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let (read, write) = socket.connect(pop3).await.unwrap().into_split();
    let mut slow = Client {
        lines: BufReader::new(read).lines(),
        write,
    };
    assert!(slow.line().await.starts_with("+OK"));
    assert!(slow.login().await.starts_with("+OK"));
    slow.write.write_all(b"RETR 1\r\n").await.unwrap();
    let reading = tokio::spawn(async move {
        let mut octets = 0usize;
        loop {
            let line = slow.line().await;
            if line == "." {
                break;
            }
            octets += line.len() + 2;
            if octets % (64 * 1024) < 70 {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        (slow, octets)
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !reading.is_finished(),
        "the RETR ended too soon to test anything"
    );
    let mut other = Client::connect(pop3).await;
    assert_eq!(
        other.login().await,
        "-ERR [IN-USE] Maildrop is locked by another session"
    );
    let (mut slow, octets) = reading.await.unwrap();
    assert!(octets > big.len(), "{octets}");
    assert!(slow.cmd("DELE 1").await.starts_with("+OK"));
    assert!(
        slow.cmd("QUIT").await.starts_with("+OK"),
        "the lock was still ours"
    );
    assert!(store.maildrop_entries(account).await.unwrap().is_empty());
}

/// Every login verifies an argon2id hash in a 19 MiB block on a blocking thread; the blocks go
/// back to the system afterwards instead of staying with each thread's allocator arena (which
/// held 531 MiB after 26 logins).
#[tokio::test]
async fn password_checks_give_their_memory_back() {
    let (db, process, pop3, _) =
        server("max_password_checks = 4\nmax_connections_per_ip = 64").await;
    let users: Vec<String> = (0..32).map(|i| format!("user{i}@example.org")).collect();
    for user in &users {
        db.add_account(user, "pw").await.unwrap();
    }
    let before = process.resident_kib() / 1024;
    let mut sessions = tokio::task::JoinSet::new();
    for user in users {
        sessions.spawn(async move {
            let mut c = Client::connect(pop3).await;
            assert!(c.cmd(&format!("USER {user}")).await.starts_with("+OK"));
            let reply = c.cmd("PASS pw").await;
            assert!(reply.starts_with("+OK"), "{user}: {reply}");
            assert!(c.cmd("QUIT").await.starts_with("+OK"));
        });
    }
    while let Some(done) = sessions.join_next().await {
        done.unwrap();
    }
    let after = process.resident_kib() / 1024;
    // 32 checks of 19 MiB each, four at a time: what stays must be far below even one
    // thread's worth of kept blocks.
    assert!(
        after < before + 40,
        "resident memory grew from {before} to {after} MiB over 32 logins"
    );
}
