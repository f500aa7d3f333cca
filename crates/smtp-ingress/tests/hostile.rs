//! Hostile input over real TCP against the real binary: malformed and random commands,
//! over-long lines, smuggling, half-closed and slow clients, connection floods. No panic, no
//! crash, nothing half-stored, and the server keeps serving.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pochta_testkit::{ServiceProcess, TestDb, free_addr, grpc_health, until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BINARY: &str = env!("CARGO_BIN_EXE_smtp-ingress");

struct Server {
    db: TestDb,
    process: ServiceProcess,
    mx: SocketAddr,
    grpc: SocketAddr,
}

async fn server(extra_smtp: &str) -> Server {
    let db = TestDb::new().await.unwrap();
    // add_account adds example.org as a local domain.
    db.add_account("alice@example.org", "pw").await.unwrap();
    let (mx, grpc) = (free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 4\n\n[smtp]\ngrpc_listen = \"{grpc}\"\n\
         queue_endpoint = \"http://{}\"\nhostname = \"mx.test\"\nmx_listen = [\"{mx}\"]\n\
         submission_listen = []\nsubmissions_listen = []\nmax_message_size = 100000\n{extra_smtp}\n",
        db.url(),
        free_addr()
    );
    let process = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();
    Server {
        db,
        process,
        mx,
        grpc,
    }
}

/// A raw SMTP client: writes bytes, reads replies.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let mut raw = Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        };
        let greeting = raw.reply().await;
        assert!(greeting.starts_with("220 mx.test"), "{greeting}");
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// One complete reply (all its lines), or what arrived before the connection closed.
    async fn reply(&mut self) -> String {
        loop {
            if let Some(end) = complete_reply(&self.buf) {
                let reply: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8_lossy(&reply).into_owned();
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!(
                    "no reply within 10 s; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// True once the server has closed the connection.
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// The length of the first complete reply in `buf` (through its final `NNN ` line).
fn complete_reply(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl + 1];
        start += nl + 1;
        if line.len() >= 4 && line[3] == b' ' {
            return Some(start);
        }
    }
    None
}

async fn assert_still_serving(s: &Server) {
    assert!(grpc_health(s.grpc).await.unwrap(), "health after abuse");
    let mut c = Raw::connect(s.mx).await;
    assert!(c.cmd("EHLO after.test").await.starts_with("250-mx.test"));
}

async fn stored(s: &Server) -> i64 {
    s.db.store().counts().await.unwrap().envelopes
}

#[tokio::test]
async fn malformed_commands_get_proper_errors() {
    let s = server("").await;
    let mut c = Raw::connect(s.mx).await;
    for (line, expected) in [
        ("MAIL FROM:<a@b.test>", "503 5.5.1"),
        ("EHLO", "501 5.5.4"),
        ("EHLO client.test", "250-mx.test"),
        ("RCPT TO:<alice@example.org>", "503 5.5.1"),
        ("MAIL FROM:alice", "501 5.5.4"),
        ("MAIL FROM:<a@b.test> SIZE=99999999", "552 5.3.4"),
        ("MAIL FROM:<a@b.test> X-UNKNOWN=1", "555 5.5.4"),
        ("MAIL FROM:<a@b.test> RET=NOPE", "501 5.5.4"),
        ("MAIL FROM:<a@b.test>", "250 2.1.0"),
        (
            "RCPT TO:<alice@example.org> NOTIFY=NEVER,SUCCESS",
            "501 5.5.4",
        ),
        ("RCPT TO:<alice@example.org> ORCPT=garbage", "501 5.5.4"),
        ("RCPT TO:<nobody@example.org>", "550 5.1.1"),
        ("RCPT TO:<x@elsewhere.test>", "250 2.1.5"), // loopback is a trusted network by default
        ("DATA extra", "501 5.5.4"),
        ("\u{7f}\u{1}junk", "500 5.5.2"),
        ("VRFY alice", "252 2.5.0"),
        ("RSET", "250 2.0.0"),
        ("QUIT", "221 2.0.0"),
    ] {
        let reply = c.cmd(line).await;
        assert!(reply.starts_with(expected), "{line:?}: {reply}");
    }
    assert!(c.closed().await);
    assert_eq!(stored(&s).await, 0);
}

#[tokio::test]
async fn over_long_lines_are_refused_and_the_session_goes_on() {
    let s = server("").await;
    let mut c = Raw::connect(s.mx).await;
    c.send(&vec![b'A'; 100_000]).await;
    c.send(b"\r\n").await;
    assert!(c.reply().await.starts_with("500 5.5.2 Line too long"));
    assert!(c.cmd("NOOP").await.starts_with("250 2.0.0"));
    c.cmd("EHLO x").await;
    c.cmd("MAIL FROM:<a@b.test>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(&[vec![b'x'; 5000], b"\r\n.\r\n".to_vec()].concat())
        .await;
    assert!(
        c.reply()
            .await
            .starts_with("500 5.5.2 Message has a line longer")
    );
    assert_eq!(stored(&s).await, 0);
    // A body over max_message_size: 552 after DATA, and the session is still usable.
    c.cmd("MAIL FROM:<a@b.test>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    c.cmd("DATA").await;
    for _ in 0..200 {
        c.send(&[vec![b'y'; 998], b"\r\n".to_vec()].concat()).await;
    }
    c.send(b".\r\n").await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert_eq!(stored(&s).await, 0);
}

#[tokio::test]
async fn smuggled_commands_never_run() {
    let s = server("").await;
    let mut c = Raw::connect(s.mx).await;
    c.cmd("EHLO x").await;
    c.cmd("MAIL FROM:<a@b.test>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: a\r\n\r\nfirst\n.\nMAIL FROM:<admin@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nforged\r\n.\r\n").await;
    let reply = c.reply().await;
    assert!(
        reply.starts_with("550 5.6.0"),
        "one reply for the whole message: {reply}"
    );
    assert!(
        c.cmd("NOOP").await.starts_with("250 2.0.0 Ok"),
        "nothing else was pending"
    );
    assert_eq!(stored(&s).await, 0);
}

#[tokio::test]
async fn pipelined_batch_in_one_write() {
    let s = server("").await;
    let mut c = Raw::connect(s.mx).await;
    c.send(b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\n").await;
    assert!(c.reply().await.starts_with("250-mx.test"));
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("550 5.1.1"));
    assert!(c.reply().await.starts_with("354"));
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    assert!(c.reply().await.starts_with("221"));
    assert_eq!(stored(&s).await, 1);
}

#[tokio::test]
async fn half_closed_connection_mid_data_stores_nothing() {
    let s = server("").await;
    let mut c = Raw::connect(s.mx).await;
    c.cmd("EHLO x").await;
    c.cmd("MAIL FROM:<a@b.test>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: cut\r\n\r\nhalf a message").await;
    c.stream.shutdown().await.unwrap();
    assert!(c.closed().await, "the server closes its side");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stored(&s).await, 0);
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn silent_clients_time_out() {
    let s = server("command_timeout_secs = 1\ndata_timeout_secs = 1\n").await;
    let mut idle = Raw::connect(s.mx).await;
    let mut in_data = Raw::connect(s.mx).await;
    in_data.cmd("EHLO x").await;
    in_data.cmd("MAIL FROM:<a@b.test>").await;
    in_data.cmd("RCPT TO:<alice@example.org>").await;
    in_data.cmd("DATA").await;
    in_data.send(b"partial\r\n").await;
    assert!(idle.reply().await.starts_with("421 4.4.2 mx.test Timeout"));
    assert!(in_data.reply().await.starts_with("421 4.4.2"));
    assert!(idle.closed().await && in_data.closed().await);
    assert_eq!(stored(&s).await, 0);
}

#[tokio::test]
async fn connection_floods_are_limited_per_address() {
    let s = server("max_connections_per_ip = 3\n").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Raw::connect(s.mx).await);
    }
    let mut extra = TcpStream::connect(s.mx).await.unwrap();
    let mut reply = String::new();
    extra.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.starts_with("421 4.7.0 Too many connections from your address"),
        "{reply}"
    );
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_still_serving(&s).await;
}

/// Random bytes and random command soup from several clients at once.
#[tokio::test]
async fn random_garbage_does_not_hurt() {
    let s = server("max_errors = 1000\n").await;
    let mut seed = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let words: [&[u8]; 14] = [
        b"EHLO ",
        b"MAIL FROM:<",
        b"RCPT TO:<",
        b"DATA",
        b"AUTH PLAIN ",
        b"STARTTLS",
        b"BDAT ",
        b"@",
        b">",
        b"\r\n",
        b"\n",
        b".",
        b"\x00\xff",
        b"NOTIFY=",
    ];
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut script = Vec::new();
        for _ in 0..2000 {
            match next() % 3 {
                0 => script.extend_from_slice(words[(next() % words.len() as u64) as usize]),
                1 => script.push((next() % 256) as u8),
                _ => script.extend_from_slice(b"\r\n"),
            }
        }
        let mx = s.mx;
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(mx).await.unwrap();
            let _ = stream.write_all(&script).await;
            let _ = stream.shutdown().await;
            let mut sink = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_still_serving(&s).await;
    assert!(
        !s.process.output().contains("panicked"),
        "{}",
        s.process.output()
    );
}

/// A client that pipelines commands and never reads its replies is cut off by the write
/// timeout, and holds nothing; another client is served meanwhile.
#[tokio::test]
async fn a_client_that_never_reads_is_cut_off() {
    let s = server("write_timeout_secs = 1\nmax_commands = 10000000\n").await;
    let mut greedy = TcpStream::connect(s.mx).await.unwrap();
    let writer = {
        let noops = b"NOOP\r\n".repeat(1 << 20);
        let (_, mut write) = greedy.split();
        async move {
            // Blocks once the server stops reading; fails once it has cut us off.
            let _ = write.write_all(&noops).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    assert_still_serving(&s).await;
    // Whatever the server had sent, then the end: it closed its side.
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), greedy.read_to_end(&mut sink)).await;
    assert!(ended.is_ok(), "the server still holds the session");
    assert!(!s.process.output().contains("panicked"));
}

/// A client that sends a byte now and then never times out on a read, but its session ends
/// at `max_session_secs`.
#[tokio::test]
async fn a_trickling_client_is_cut_off_at_the_session_age() {
    let s = server("max_session_secs = 2\ncommand_timeout_secs = 5\n").await;
    let mut c = Raw::connect(s.mx).await;
    let started = std::time::Instant::now();
    let trickle = async {
        for byte in b"NOOP\r\n".iter().cycle() {
            if c.stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if started.elapsed() > Duration::from_secs(10) {
                return;
            }
        }
    };
    trickle.await;
    let mut rest = String::new();
    let _ = c.stream.read_to_string(&mut rest).await;
    let all = String::from_utf8_lossy(&c.buf).into_owned() + &rest;
    assert!(all.contains("421 4.4.2 mx.test Timeout"), "{all}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "cut off after {:?}",
        started.elapsed()
    );
}

/// Multi-byte UTF-8 in every place of every command: proper replies, never a panic.
#[tokio::test]
async fn utf8_everywhere_gets_proper_replies() {
    let s = server("max_errors = 1000\n").await;
    let mut c = Raw::connect(s.mx).await;
    for line in [
        "EHLO ёжик.example",
        "MAIL FROMé:<a@b.example>",
        "MAIL FRé:<a@b.example>",
        "MAIL FROM:<é@b.example>",
        "MAIL FROM:<a@b.example> ENVIDé=1",
        "MAIL FROM:<a@b.example> SMTPUTF8 BODY=é",
        "RCPT TOé:<alice@example.org>",
        "RCPT TO:<é@example.org> NOTIFY=é",
        "DATA é",
        "AUTH é",
        "ETRN é",
        "ETRN @é",
        "VRFY é",
        "é",
        "EHLO é é",
        "NOOP é",
    ] {
        let reply = c.cmd(line).await;
        let code = reply.get(..3).unwrap_or_default();
        assert!(
            [
                "250", "252", "500", "501", "502", "503", "504", "530", "538", "555"
            ]
            .contains(&code),
            "{line:?}: {reply:?}"
        );
    }
    assert_still_serving(&s).await;
    assert!(
        !s.process.output().contains("panicked"),
        "{}",
        s.process.output()
    );
}

/// NOOP, RSET or ETRN without end: the command budget ends the session, and repeated
/// temporary failures count as errors.
#[tokio::test]
async fn endless_commands_and_temporary_failures_are_cut_off() {
    let s = server("max_commands = 100\n").await;
    let mut c = Raw::connect(s.mx).await;
    c.send(&b"RSET\r\n".repeat(150)).await;
    for _ in 0..100 {
        assert!(c.reply().await.starts_with("250"));
    }
    let last = c.reply().await;
    assert!(last.starts_with("421 4.7.0 Too many commands"), "{last}");
    assert!(c.closed().await);

    // ETRN with the queue unreachable answers 458: each counts toward max_errors (20).
    let mut e = Raw::connect(s.mx).await;
    e.cmd("EHLO x").await;
    let mut closed_by = String::new();
    for _ in 0..30 {
        let reply = e.cmd("ETRN example.org").await;
        if reply.contains("421") {
            closed_by = reply;
            break;
        }
        assert!(reply.starts_with("458"), "{reply}");
    }
    assert!(
        closed_by.contains("421 4.7.0 Too many errors"),
        "{closed_by:?}"
    );
}

/// A user name is the client's text, and AUTH PLAIN carries any octets: logged, it must not
/// forge a log line or reach the terminal raw.
#[tokio::test]
async fn a_user_name_cannot_forge_log_lines() {
    let s = server("plaintext_auth = \"loopback\"\nauth_failure_delay_ms = 0\n").await;
    let mut c = Raw::connect(s.mx).await;
    c.cmd("EHLO x").await;
    // "\0bob\r\n2026-12-05T00:00:00.000000Z  INFO forged: login ok\x1b[2J\0pw"
    let reply = c
        .cmd("AUTH PLAIN AGJvYg0KMjAyNi0xMi0wNVQwMDowMDowMC4wMDAwMDBaICBJTkZPIGZvcmdlZDogbG9naW4gb2sbWzJKAHB3")
        .await;
    assert!(reply.starts_with("535"), "{reply}");
    until(
        "the failure in the log",
        Duration::from_secs(10),
        async || s.process.output().contains("login failed"),
    )
    .await;
    let log = s.process.output();
    assert!(
        log.contains(r"bob\u{d}\u{a}2026-12-05T00:00:00.000000Z  INFO forged: login ok\u{1b}[2J"),
        "{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-05T00:00:00")),
        "{log}"
    );
    assert!(!log.contains('\x1b'), "{log}");
}

/// ETRN costs the queue a store query: past `etrn_per_minute` a client gets 458 without the
/// queue being asked, on any connection, while another address is still served.
#[tokio::test]
async fn etrn_is_rate_limited_per_client() {
    let s = server("etrn_per_minute = 3\n").await;
    let mut c = Raw::connect(s.mx).await;
    c.cmd("EHLO x").await;
    for _ in 0..3 {
        let reply = c.cmd("ETRN example.org").await;
        assert!(
            reply.starts_with("458 4.3.0"),
            "the queue was asked: {reply}"
        );
    }
    let limited = "458 4.7.0 Unable to queue messages for node example.org: too many ETRN requests";
    assert!(c.cmd("ETRN example.org").await.starts_with(limited));
    let mut again = Raw::connect(s.mx).await;
    again.cmd("EHLO x").await;
    assert!(again.cmd("ETRN example.org").await.starts_with(limited));

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = Raw {
        stream: socket.connect(s.mx).await.unwrap(),
        buf: Vec::new(),
    };
    assert!(other.reply().await.starts_with("220"));
    other.cmd("EHLO y").await;
    assert!(other.cmd("ETRN example.org").await.starts_with("458 4.3.0"));
}

/// A thousand connections from one address: all beyond its limit are refused, and a client
/// at another address is served normally meanwhile.
#[tokio::test]
async fn a_thousand_connections_from_one_address_leave_room_for_others() {
    let s = server("max_connections_per_ip = 50\nmax_connections = 2000\n").await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        let mut tcp = TcpStream::connect(s.mx).await.unwrap();
        let mut first = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut first))
            .await
            .unwrap()
            .unwrap_or(0);
        if first[..n].starts_with(b"421 4.7.0 Too many connections from your address") {
            refused += 1;
        } else {
            assert!(first[..n].starts_with(b"220"), "{:?}", &first[..n]);
            open.push(tcp);
        }
    }
    assert_eq!((open.len(), refused), (50, 950));
    // Another address, at the same time.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(s.mx).await.unwrap();
    let mut other = Raw {
        stream,
        buf: Vec::new(),
    };
    assert!(other.reply().await.starts_with("220 mx.test"));
    assert!(
        other
            .cmd("EHLO other.test")
            .await
            .starts_with("250-mx.test")
    );
}

/// Message text in memory is bounded for all sessions together: past the budget, sessions in
/// DATA are read one at a time, and every one still finishes (no deadlock).
#[tokio::test]
async fn the_data_memory_budget_applies_back_pressure_and_everyone_finishes() {
    let s = server("max_data_memory_bytes = 60000\n").await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mx = s.mx;
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(mx).await;
            c.cmd("EHLO x").await;
            c.cmd("MAIL FROM:<a@b.test>").await;
            c.cmd("RCPT TO:<alice@example.org>").await;
            assert!(c.cmd("DATA").await.starts_with("354"));
            c.send(format!("Subject: {i}\r\n\r\n").as_bytes()).await;
            for _ in 0..45 {
                c.send(&[vec![b'z'; 998], b"\r\n".to_vec()].concat()).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c.send(b".\r\n").await;
            c.reply().await
        }));
    }
    for t in tasks {
        let reply = t.await.unwrap();
        assert!(reply.starts_with("250 2.0.0 Ok: queued"), "{reply}");
    }
    assert_eq!(stored(&s).await, 4);
}
