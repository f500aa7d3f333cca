//! Hostile input and many sessions over real TCP against the real binary: over-long literals,
//! literals announced and not sent, nesting deep enough to exhaust a recursive parser, bad
//! syntax in bulk, and the memory thousands of idle sessions, half-sent literals and a FETCH
//! its client does not read take.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pochta_testkit::{ServiceProcess, TestDb, free_addr, grpc_health};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

const BINARY: &str = env!("CARGO_BIN_EXE_imap-access");

async fn server(extra: &str) -> (TestDb, ServiceProcess, SocketAddr, SocketAddr) {
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let (grpc, imap) = (free_addr(), free_addr());
    // Thousands of sessions of one account, unless the test sets its own limit.
    let per_account = if extra.contains("max_sessions_per_account") {
        ""
    } else {
        "max_sessions_per_account = 5000\n"
    };
    let config = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 4\n\n[imap]\ngrpc_listen = \"{grpc}\"\nimap_listen = [\"{imap}\"]\n\
         imaps_listen = []\nplaintext_auth = \"loopback\"\nmax_errors = 1000\nmax_connections_per_ip = 5000\n\
         {per_account}{extra}\n",
        db.url()
    );
    let p = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();
    (db, p, imap, grpc)
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
        assert!(c.line().await.starts_with("* OK"));
        c
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .unwrap_or_default()
    }

    /// A literal's octets, after the line announcing it.
    async fn literal(&mut self, len: usize) -> Vec<u8> {
        let mut octets = vec![0; len];
        tokio::time::timeout(
            Duration::from_secs(20),
            self.lines.get_mut().read_exact(&mut octets),
        )
        .await
        .expect("the literal within 20 s")
        .unwrap();
        octets
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    /// Sends a command; the lines up to and including its tagged reply.
    async fn cmd(&mut self, line: &str) -> Vec<String> {
        let tag = line.split(' ').next().unwrap().to_owned();
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.until(&tag).await
    }

    async fn until(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            let done = line.starts_with(&format!("{tag} ")) || line.is_empty();
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// SELECT INBOX, checking the OK.
    async fn select_inbox(&mut self) {
        let reply = self.cmd("s SELECT INBOX").await;
        assert!(reply.last().unwrap().contains(" OK "), "{reply:?}");
    }

    /// APPENDs `message` to INBOX (LITERAL+) and checks the OK.
    async fn append(&mut self, tag: &str, message: &[u8]) {
        self.send(format!("{tag} APPEND INBOX {{{}+}}\r\n", message.len()).as_bytes())
            .await;
        self.send(message).await;
        self.send(b"\r\n").await;
        let reply = self.until(tag).await;
        assert!(reply.last().unwrap().contains(" OK "), "{reply:?}");
    }

    /// Sends IDLE tagged `tag` and checks its continuation.
    async fn idle(&mut self, tag: &str) {
        self.send(format!("{tag} IDLE\r\n").as_bytes()).await;
        assert!(self.line().await.starts_with('+'));
    }

    async fn login(&mut self) {
        let reply = self.cmd("l1 LOGIN alice@example.org pw").await;
        assert!(reply.last().unwrap().starts_with("l1 OK"), "{reply:?}");
    }
}

/// A message of at least `size` octets: a header, then the lines `line` makes from the
/// octets so far.
fn message_of(size: usize, line: impl Fn(usize) -> String) -> Vec<u8> {
    let mut message = b"Subject: test\r\n\r\n".to_vec();
    while message.len() < size {
        message.extend_from_slice(line(message.len()).as_bytes());
    }
    message
}

/// How much more than `before` the server held at its highest over the next two seconds, in
/// which the client reads nothing.
async fn peak_growth_unread(process: &ServiceProcess, before: u64) -> u64 {
    let mut highest = before;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        highest = highest.max(process.resident_kib());
    }
    highest.saturating_sub(before)
}

#[tokio::test]
async fn oversized_literals_and_bad_syntax_get_bad_and_the_session_goes_on() {
    let (_db, process, imap, grpc) = server("max_literal_bytes = 4096").await;
    let mut c = Client::connect(imap).await;
    // A synchronising literal over the limit is refused before any of it is sent.
    c.send(b"a1 LOGIN {99999999}\r\n").await;
    let reply = c.line().await;
    assert_eq!(reply, "a1 BAD Literal too large");
    let reply = c.cmd("a2 NOOP").await;
    assert_eq!(reply.last().unwrap(), "a2 OK NOOP completed");
    for bad in [
        "a3 FROB",
        "a4 FETCH",
        "a5 SELECT",
        "a6 LOGIN \"unterminated",
    ] {
        let reply = c.cmd(bad).await;
        assert!(reply.last().unwrap().contains("BAD"), "{bad}: {reply:?}");
    }
    // No tag to answer with: an untagged BAD.
    c.send(b"(((\r\n").await;
    assert_eq!(c.line().await, "* BAD Syntax error");
    // A line longer than any command may be is refused too.
    let long = format!("a7 NOOP {}", "x".repeat(100_000));
    let reply = c.cmd(&long).await;
    assert!(
        reply.iter().any(|l| l.contains("BAD") || l.contains("BYE")),
        "{reply:?}"
    );
    assert!(grpc_health(grpc).await.unwrap());
    drop(process);
}

#[tokio::test]
async fn nesting_deep_enough_to_exhaust_a_recursive_parser_is_refused() {
    let (_db, process, imap, grpc) = server("").await;
    let mut c = Client::connect(imap).await;
    c.login().await;
    let reply = c.cmd("s1 SELECT INBOX").await;
    assert!(reply.last().unwrap().starts_with("s1 OK"), "{reply:?}");
    for depth in [40, 5_000, 30_000] {
        let search = format!("q1 SEARCH {}ALL{}", "(".repeat(depth), ")".repeat(depth));
        let reply = c.cmd(&search).await;
        let last = reply.last().unwrap();
        assert!(last.starts_with("q1 BAD"), "depth {depth}: {last}");
        let not = format!("q2 SEARCH {}ALL", "NOT ".repeat(depth));
        let reply = c.cmd(&not).await;
        assert!(reply.last().unwrap().starts_with("q2 BAD"), "NOT x{depth}");
    }
    // A section path of many levels names no part: an empty answer, not a crash.
    let path = vec!["1"; 2000].join(".");
    let reply = c.cmd(&format!("f1 FETCH 1:* BODY.PEEK[{path}]")).await;
    assert!(reply.last().unwrap().contains("f1 "), "{reply:?}");
    assert!(grpc_health(grpc).await.unwrap(), "the server survived");
    drop(process);
}

/// Literals announced and sent in part, by many clients at once, are held within the input
/// memory budget: past it, the server stops reading from all but one.
#[tokio::test]
async fn half_sent_literals_stay_within_the_input_memory_budget() {
    let (_db, process, imap, grpc) =
        server("max_literal_bytes = 67108864\nmax_input_memory_bytes = 16777216").await;
    let before = process.resident_kib();
    let mut clients = Vec::new();
    for i in 0..24 {
        let mut c = Client::connect(imap).await;
        c.login().await;
        // LITERAL+: no continuation to wait for; 8 MiB of a 60 MiB message, then silence.
        c.send(format!("a{i} APPEND INBOX {{62914560+}}\r\n").as_bytes())
            .await;
        let chunk = vec![b'x'; 1 << 20];
        let writes = async {
            for _ in 0..8 {
                c.write.write_all(&chunk).await.unwrap();
            }
        };
        // A client the server stopped reading from cannot write it all: that is the point.
        let _ = tokio::time::timeout(Duration::from_secs(2), writes).await;
        clients.push(c);
    }
    let grown = process.resident_kib().saturating_sub(before);
    // 24 clients sent up to 192 MiB; the server holds about the 16 MiB budget plus one
    // session's share (and what the parser copies): far below what was offered.
    assert!(grown < 80 * 1024, "grew {grown} KiB");
    assert!(grpc_health(grpc).await.unwrap());
    drop(clients);
    drop(process);
}

/// A FETCH of a whole mailbox leaves batch by batch: a client that asks for 32 MiB and
/// does not read holds the server to a few batches, not the whole answer.
#[tokio::test]
async fn a_whole_mailbox_fetch_is_held_in_batches_while_the_client_does_not_read() {
    let (_db, process, imap, grpc) = server("max_literal_bytes = 2097152").await;
    let mut c = Client::connect(imap).await;
    c.login().await;
    let message = message_of(1 << 20, |_| format!("{}\r\n", "x".repeat(78)));
    const MESSAGES: usize = 32;
    for i in 0..MESSAGES {
        c.append(&format!("a{i}"), &message).await;
    }
    c.select_inbox().await;
    let before = process.resident_kib();
    c.send(b"f UID FETCH 1:* BODY.PEEK[]\r\n").await;
    // Not read for two seconds: the socket's buffers fill and the server waits for them.
    let grown = peak_growth_unread(&process, before).await;
    // A batch (1 MiB of octets by default, a message here) read ahead, one being sent and
    // what encoding copies: a few MiB. The whole answer would be 32 MiB and more.
    assert!(grown < 12 * 1024, "grew {grown} KiB holding a 32 MiB FETCH");
    // Every message whole (each literal's blank line included), then the tagged OK.
    let (mut fetched, mut last) = (0, String::new());
    for read in 0.. {
        if last.starts_with("f ") {
            break;
        }
        assert!(read < 1 << 20, "no tagged reply");
        last = c.line().await;
        if last.starts_with("* ") && last.contains(" FETCH (") {
            fetched += 1;
        }
    }
    assert_eq!(fetched, MESSAGES);
    assert!(last.starts_with("f OK"), "{last}");
    assert!(grpc_health(grpc).await.unwrap());
    drop(process);
}

/// Header blocks too long to end in their first stored row are read with their whole
/// message: a FETCH of the headers of 24 messages that are 1 MiB of header each is still read
/// a batch at a time (not 24 MiB at once), and each block comes whole.
#[tokio::test]
async fn header_blocks_read_whole_are_held_in_batches() {
    let (_db, process, imap, grpc) = server("max_literal_bytes = 2097152").await;
    let mut c = Client::connect(imap).await;
    c.login().await;
    let mut message = Vec::new();
    while message.len() < 1 << 20 {
        let line = format!("X-Pad-{:07}: {}\r\n", message.len(), "h".repeat(60));
        message.extend_from_slice(line.as_bytes());
    }
    let header_len = message.len() + 2;
    message.extend_from_slice(b"\r\nbody\r\n");
    const MESSAGES: usize = 24;
    for i in 0..MESSAGES {
        c.append(&format!("a{i}"), &message).await;
    }
    c.select_inbox().await;
    let before = process.resident_kib();
    c.send(b"f FETCH 1:* BODY.PEEK[HEADER]\r\n").await;
    let grown = peak_growth_unread(&process, before).await;
    // Read as one batch (4 KiB guessed for each header block), the messages and their
    // answer took 24 MiB twice over; a batch is about 1 MiB here.
    assert!(
        grown < 12 * 1024,
        "grew {grown} KiB fetching 24 MiB of headers"
    );
    for i in 1..=MESSAGES {
        let head = c.line().await;
        assert_eq!(head, format!("* {i} FETCH (BODY[HEADER] {{{header_len}}}"));
        assert_eq!(c.literal(header_len).await, &message[..header_len]);
        assert_eq!(c.line().await, ")");
    }
    assert!(c.line().await.starts_with("f OK"));
    // ENVELOPE reads the same header blocks, the same way.
    let reply = c.cmd("e FETCH 1:* ENVELOPE").await;
    assert_eq!(reply.len(), MESSAGES + 1, "{:?}", &reply[reply.len() - 1..]);
    assert!(reply.last().unwrap().starts_with("e OK"));
    assert!(grpc_health(grpc).await.unwrap());
    drop(process);
}

/// A message far larger than a read batch leaves as the store reads it: a client that
/// fetches 24 MiB and does not read holds the server to a piece or two, and what it then
/// reads is the message, octet for octet, whole and in part.
#[tokio::test]
async fn a_large_message_is_streamed_while_the_client_does_not_read() {
    let (_db, process, imap, grpc) =
        server("max_literal_bytes = 33554432\nread_batch_bytes = 262144").await;
    let mut c = Client::connect(imap).await;
    c.login().await;
    // Numbered lines, so that an octet out of place shows.
    let message = message_of(24 << 20, |at| format!("{at:010} {}\r\n", "y".repeat(66)));
    c.append("a", &message).await;
    c.select_inbox().await;

    let before = process.resident_kib();
    c.send(b"f FETCH 1 (UID BODY.PEEK[])\r\n").await;
    let grown = peak_growth_unread(&process, before).await;
    // A 256 KiB piece being sent, the next read, and what the allocator and the store's
    // connections keep of them: 4.5-9.6 MiB measured (debug build). Held whole, the message
    // and its encoded copy would be 48 MiB.
    assert!(grown < 16 * 1024, "grew {grown} KiB holding a 24 MiB FETCH");
    let head = c.line().await;
    assert_eq!(
        head,
        format!("* 1 FETCH (UID 1 BODY[] {{{}}}", message.len())
    );
    assert_eq!(c.literal(message.len()).await, message);
    assert_eq!(c.line().await, ")");
    assert!(c.line().await.starts_with("f OK"));

    // A partial from the middle: its range, from the pieces that hold it.
    let (from, len) = (10_000_003, 300_000);
    c.send(format!("p FETCH 1 BODY.PEEK[]<{from}.{len}>\r\n").as_bytes())
        .await;
    let head = c.line().await;
    assert_eq!(head, format!("* 1 FETCH (BODY[]<{from}> {{{len}}}"));
    assert_eq!(c.literal(len).await, &message[from..from + len]);
    assert_eq!(c.line().await, ")");
    assert!(c.line().await.starts_with("p OK"));
    assert!(grpc_health(grpc).await.unwrap());
    drop(process);
}

/// A message expunged by another session while it is being streamed: the literal already
/// announced is completed (the rest as spaces), so the client's framing holds, and the session
/// goes on.
#[tokio::test]
async fn a_message_expunged_while_it_is_streamed_keeps_the_framing() {
    let (_db, process, imap, grpc) =
        server("max_literal_bytes = 33554432\nread_batch_bytes = 65536").await;
    let mut c = Client::connect(imap).await;
    c.login().await;
    let message = message_of(16 << 20, |_| format!("{}\r\n", "z".repeat(78)));
    c.append("a", &message).await;
    c.select_inbox().await;
    c.send(b"f FETCH 1 BODY.PEEK[]\r\n").await;
    let head = c.line().await;
    assert_eq!(head, format!("* 1 FETCH (BODY[] {{{}}}", message.len()));
    // The client reads nothing more until another session has expunged the message.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = Client::connect(imap).await;
    other.login().await;
    other.select_inbox().await;
    let reply = other.cmd("e STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert!(reply.last().unwrap().contains(" OK "), "{reply:?}");
    assert!(
        other
            .cmd("x EXPUNGE")
            .await
            .last()
            .unwrap()
            .contains(" OK ")
    );
    let literal = c.literal(message.len()).await;
    // What was sent before the expunge is the message; the rest, spaces.
    let sent = literal
        .iter()
        .zip(&message)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        sent < message.len(),
        "the whole message was sent before the expunge"
    );
    assert!(
        literal[sent..].iter().all(|&b| b == b' '),
        "after {sent} octets"
    );
    assert_eq!(c.line().await, ")");
    let done = c.until("f").await;
    assert!(done.last().unwrap().starts_with("f OK"), "{done:?}");
    // The session goes on, and learns of the expunge.
    let reply = c.cmd("n NOOP").await;
    assert!(reply.iter().any(|l| l == "* 1 EXPUNGE"), "{reply:?}");
    assert!(grpc_health(grpc).await.unwrap());
    drop(process);
}

/// A server whose INBOX holds a message of 900 KiB, APPENDed by a session that has ended
/// (so that what every session reuses, the allocator's arenas and the store's connections,
/// is in place before a measure), and that message.
async fn server_holding_a_large_message()
-> (TestDb, ServiceProcess, SocketAddr, SocketAddr, Vec<u8>) {
    let (db, process, imap, grpc) = server("max_literal_bytes = 4194304").await;
    let message = message_of(900 << 10, |at| format!("{at:078}\r\n"));
    let mut first = Client::connect(imap).await;
    first.login().await;
    first.append("a", &message).await;
    drop(first);
    (db, process, imap, grpc, message)
}

/// Sessions that fetched a large message and then idle give its memory back: a client syncs,
/// then idles for hours, and a thousand of them must not each keep their largest answer's
/// buffer.
#[tokio::test]
async fn sessions_that_fetched_a_large_message_idle_small() {
    const SESSIONS: usize = 60;
    let (_db, process, imap, grpc, message) = server_holding_a_large_message().await;
    let before = process.resident_kib();
    let mut idle = Vec::new();
    for i in 0..SESSIONS {
        let mut c = Client::connect(imap).await;
        c.login().await;
        c.select_inbox().await;
        c.send(b"f FETCH 1 BODY.PEEK[]\r\n").await;
        assert!(c.line().await.ends_with(&format!("{{{}}}", message.len())));
        assert_eq!(c.literal(message.len()).await, message);
        assert!(c.until("f").await.last().unwrap().starts_with("f OK"));
        c.idle(&format!("i{i}")).await;
        idle.push(c);
    }
    let grown = process.resident_kib().saturating_sub(before);
    println!("{SESSIONS} sessions idle after a 900 KiB FETCH: {grown} KiB");
    // Kept, each would hold about a megabyte (60 MiB, as it did); given back, the next session
    // reuses it.
    assert!(grown < 12 * 1024, "grew {grown} KiB");
    assert!(grpc_health(grpc).await.unwrap());
    drop(idle);
    drop(process);
}

/// Sessions that APPENDed a large message and then idle give its memory back: the parser's
/// buffer grew to the literal's size, and a fresh parser replaces it after the command.
#[tokio::test]
async fn sessions_that_appended_a_large_message_idle_small() {
    const SESSIONS: usize = 60;
    let (_db, process, imap, grpc, message) = server_holding_a_large_message().await;
    let before = process.resident_kib();
    let mut idle = Vec::new();
    for i in 0..SESSIONS {
        let mut c = Client::connect(imap).await;
        c.login().await;
        c.append(&format!("a{i}"), &message).await;
        c.select_inbox().await;
        c.idle(&format!("i{i}")).await;
        idle.push(c);
    }
    let grown = process.resident_kib().saturating_sub(before);
    println!("{SESSIONS} sessions idle after a 900 KiB APPEND: {grown} KiB");
    // Kept, each would hold about a megabyte (55 MiB, as it did).
    assert!(grown < 12 * 1024, "grew {grown} KiB");
    // The messages are all there, whole.
    let mut c = Client::connect(imap).await;
    c.login().await;
    let reply = c.cmd("s SELECT INBOX").await;
    assert!(
        reply
            .iter()
            .any(|l| l == &format!("* {} EXISTS", SESSIONS + 1)),
        "{reply:?}"
    );
    c.send(format!("f FETCH {} BODY.PEEK[]\r\n", SESSIONS + 1).as_bytes())
        .await;
    assert!(c.line().await.ends_with(&format!("{{{}}}", message.len())));
    assert_eq!(c.literal(message.len()).await, message);
    assert!(grpc_health(grpc).await.unwrap());
    drop(idle);
    drop(process);
}

/// Idle sessions cost little: a thousand logged-in clients idling in INBOX.
#[tokio::test]
async fn a_thousand_idle_sessions_take_little_memory() {
    let (_db, process, imap, grpc) = server("max_connections = 2000").await;
    let before = process.resident_kib();
    let mut clients = Vec::new();
    for i in 0..1000 {
        let mut c = Client::connect(imap).await;
        c.login().await;
        let reply = c.cmd(&format!("s{i} SELECT INBOX")).await;
        assert!(reply.last().unwrap().contains(" OK "), "{reply:?}");
        c.idle(&format!("i{i}")).await;
        clients.push(c);
    }
    let grown = process.resident_kib().saturating_sub(before);
    println!("1000 idle sessions: {grown} KiB");
    // About 14 KiB a session (debug build; no read buffer is held while a client is quiet,
    // and the driver boxes action futures, which held inline made it 22); the bound catches
    // a session that starts holding more (a read buffer, an inline action, its messages).
    assert!(grown < 20 * 1000, "grew {grown} KiB for 1000 idle sessions");
    // Every one still answers.
    for (i, c) in clients.iter_mut().enumerate().step_by(97) {
        c.send(b"DONE\r\n").await;
        let reply = c.until(&format!("i{i}")).await;
        assert!(reply.last().unwrap().contains("OK"), "{reply:?}");
    }
    assert!(grpc_health(grpc).await.unwrap());
    drop(clients);
    drop(process);
}

/// One account may hold only so many sessions: a login past `max_sessions_per_account` is
/// refused with NO [LIMIT] (and that session may try again later); another account is not
/// affected, and a session that ends gives its place back.
#[tokio::test]
async fn an_account_holds_at_most_its_sessions() {
    let (db, process, imap, grpc) = server("max_sessions_per_account = 3").await;
    db.add_account("bob@example.org", "pw").await.unwrap();
    let mut alice = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(imap).await;
        c.login().await;
        alice.push(c);
    }
    let mut extra = Client::connect(imap).await;
    let reply = extra.cmd("l1 LOGIN alice@example.org pw").await;
    assert_eq!(
        reply.last().unwrap(),
        "l1 NO [LIMIT] Too many sessions for this account",
        "{reply:?}"
    );
    let mut bob = Client::connect(imap).await;
    let reply = bob.cmd("b1 LOGIN bob@example.org pw").await;
    assert!(reply.last().unwrap().starts_with("b1 OK"), "{reply:?}");
    // One of alice's sessions logs out: the refused one may now log in.
    let reply = alice[0].cmd("o LOGOUT").await;
    assert!(reply.last().unwrap().starts_with("o OK"), "{reply:?}");
    drop(alice.remove(0));
    let mut logged_in = false;
    for _ in 0..50 {
        let reply = extra.cmd("l2 LOGIN alice@example.org pw").await;
        if reply.last().unwrap().starts_with("l2 OK") {
            logged_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged_in, "the place given back at logout");
    assert!(grpc_health(grpc).await.unwrap());
    drop(process);
}

/// A logged-in client cannot grow its account without bound: COPY doubling a mailbox stops at
/// the quota, CREATE at `max_mailboxes` (missing parents counted), keywords at
/// `max_keywords` and `max_keyword_length`; each refusal is a `NO` with its code and the
/// session goes on.
#[tokio::test]
async fn copies_folders_and_keywords_stop_at_the_quota_and_limits() {
    let (db, process, imap, grpc) =
        server("max_mailboxes = 10\nmax_keywords = 5\nmax_keyword_length = 20").await;
    db.set_quota("alice@example.org", Some(10_000))
        .await
        .unwrap();
    let mut c = Client::connect(imap).await;
    c.login().await;
    c.append("a1", &message_of(1000, |_| "0123456789abcdef\r\n".into()))
        .await;
    c.select_inbox().await;
    let mut refused = None;
    for round in 0..10 {
        let reply = c.cmd(&format!("c{round} COPY 1:* INBOX")).await;
        let last = reply.last().unwrap();
        if !last.contains(" OK ") {
            refused = Some((round, last.clone()));
            break;
        }
        // The copies join the view, so that the next COPY doubles the mailbox.
        let reply = c.cmd(&format!("n{round} NOOP")).await;
        assert!(reply.last().unwrap().contains(" OK "), "{reply:?}");
    }
    // 1, 2, 4 and 8 messages of ~1,000 octets fit in 10,000; 16 do not.
    let (round, last) = refused.expect("a COPY refused");
    assert_eq!(round, 3, "{last}");
    assert!(last.starts_with("c3 NO [OVERQUOTA]"), "{last}");
    let reply = c.cmd("n9 NOOP").await;
    assert!(reply.last().unwrap().starts_with("n9 OK"), "{reply:?}");
    let status = c.cmd("t1 STATUS INBOX (MESSAGES)").await;
    assert_eq!(status[0], "* STATUS INBOX (MESSAGES 8)", "{status:?}");

    // Five folders are made at login; five more fit. A path of eleven levels would need
    // eleven.
    let deep = (0..11)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    let reply = c.cmd(&format!("m0 CREATE {deep}")).await;
    assert!(
        reply.last().unwrap().starts_with("m0 NO [LIMIT]"),
        "{reply:?}"
    );
    let mut made = 0;
    for i in 0..20 {
        let reply = c.cmd(&format!("m{} CREATE Folder{i}", i + 1)).await;
        let last = reply.last().unwrap();
        if last.contains(" OK ") {
            made += 1;
        } else {
            assert!(last.contains("NO [LIMIT]"), "{last}");
        }
    }
    assert_eq!(made, 5);
    let listed = c.cmd("l2 LIST \"\" *").await;
    assert_eq!(
        listed.iter().filter(|l| l.starts_with("* LIST")).count(),
        10
    );

    let reply = c.cmd("s1 STORE 1 +FLAGS (k1 k2 k3 k4 k5 k6)").await;
    assert!(
        reply.last().unwrap().starts_with("s1 NO [LIMIT]"),
        "{reply:?}"
    );
    let reply = c.cmd("s2 STORE 1:* +FLAGS.SILENT (k1 k2 k3 k4 k5)").await;
    assert!(reply.last().unwrap().starts_with("s2 OK"), "{reply:?}");
    let reply = c.cmd("s3 STORE 1 +FLAGS (k6)").await;
    assert!(
        reply.last().unwrap().starts_with("s3 NO [LIMIT]"),
        "{reply:?}"
    );
    let long = "k".repeat(21);
    let reply = c.cmd(&format!("s4 STORE 1 FLAGS ({long})")).await;
    assert!(
        reply.last().unwrap().starts_with("s4 NO [LIMIT]"),
        "{reply:?}"
    );
    let reply = c.cmd("f1 FETCH 1 FLAGS").await;
    assert!(
        reply[0].contains("k1 k2 k3 k4 k5") && !reply[0].contains("k6"),
        "{reply:?}"
    );
    assert!(grpc_health(grpc).await.unwrap());
    drop(process);
}

/// The commands read beside the parser (ESEARCH, SEARCHRES, LIST-EXTENDED) in their hostile
/// forms over TCP: too many `$`, options that do not exist, patterns by the thousand, and
/// a command past the 64 KiB those are read within. Each gets BAD; the session goes on.
#[tokio::test]
async fn extension_commands_in_hostile_forms_get_bad_and_the_session_goes_on() {
    let (_db, process, imap, grpc) = server("").await;
    let mut c = Client::connect(imap).await;
    c.login().await;
    c.select_inbox().await;
    for (bad, why) in [
        ("x1 SEARCH RETURN (SAVE) $ $ $ $", "Too many $"),
        (
            "x2 SEARCH RETURN (NOSUCH) ALL",
            "Unsupported SEARCH RETURN option",
        ),
        ("x3 SEARCH RETURN (COUNT ALL", ""),
        (
            "x4 LIST (NOSUCH) \"\" *",
            "Unsupported LIST selection option",
        ),
        ("x5 LIST (RECURSIVEMATCH) \"\" *", "RECURSIVEMATCH"),
        ("x6 LIST \"\" * RETURN (STATUS (NOSUCH))", ""),
        ("x7 SEARCH RETURN (MIN) {999999999}", ""),
    ] {
        let reply = c.cmd(bad).await;
        let last = reply.last().unwrap();
        let tag = bad.split(' ').next().unwrap();
        assert!(last.starts_with(&format!("{tag} BAD")), "{bad}: {reply:?}");
        assert!(last.contains(why), "{bad}: {reply:?}");
    }
    // Thousands of patterns within the limit: one listing, each mailbox once.
    let patterns = vec!["\"%\""; 5_000].join(" ");
    let reply = c.cmd(&format!("p1 LIST \"\" ({patterns})")).await;
    assert!(reply.last().unwrap().starts_with("p1 OK"), "{reply:?}");
    assert_eq!(reply.iter().filter(|l| l.starts_with("* LIST")).count(), 5);
    // Past 64 KiB.
    let patterns = vec!["\"Folder/%\""; 8_000].join(" ");
    let reply = c
        .cmd(&format!("p2 LIST \"\" ({patterns}) RETURN (CHILDREN)"))
        .await;
    assert!(reply.last().unwrap().starts_with("p2 BAD"), "{reply:?}");
    let reply = c.cmd("n1 NOOP").await;
    assert_eq!(reply.last().unwrap(), "n1 OK NOOP completed");
    assert!(grpc_health(grpc).await.unwrap());
    drop(process);
}
