//! The whole path with the real binaries: mail sent with smtplib is accepted by smtp-ingress,
//! delivered by delivery-queue and read with Python's poplib from pop3-access, over plain,
//! STLS and implicit TLS. Needs `cargo test --workspace` (the other services' binaries).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use pochta_store::DomainRole;
use pochta_testkit::{ServiceProcess, TestCerts, TestDb, free_addr, python, workspace_binary};

const BINARY: &str = env!("CARGO_BIN_EXE_pop3-access");
const ALICE: &str = "alice@example.org";
const PW: &str = "pop pass";

struct Stack {
    db: TestDb,
    certs: TestCerts,
    account: i64,
    pop3: SocketAddr,
    pop3s: SocketAddr,
    _services: Vec<ServiceProcess>,
}

async fn start_pop3(
    db: &TestDb,
    certs: &TestCerts,
    extra: &str,
) -> (ServiceProcess, SocketAddr, SocketAddr) {
    let (grpc, pop3, pop3s) = (free_addr(), free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 4\n\n{}\n[pop3]\ngrpc_listen = \"{grpc}\"\n\
         pop3_listen = [\"{pop3}\"]\npop3s_listen = [\"{pop3s}\"]\nplaintext_auth = \"loopback\"\n\
         auth_failure_delay_ms = 50\n{extra}\n",
        db.url(),
        certs.tls_section()
    );
    let p = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();
    (p, pop3, pop3s)
}

/// Ingress, queue and POP3; `messages` sent through SMTP and delivered before this returns.
async fn stack(messages: &[&str], pop3_extra: &str) -> Stack {
    let db = TestDb::new().await.unwrap();
    db.store()
        .add_domain("example.org", DomainRole::Local)
        .await
        .unwrap();
    let account = db.add_account(ALICE, PW).await.unwrap();
    let certs = TestCerts::generate().unwrap();

    let queue_grpc = free_addr();
    let queue = ServiceProcess::start_healthy(
        &workspace_binary("delivery-queue").unwrap(),
        &pochta_testkit::service_config(db.url(), "queue", queue_grpc),
        queue_grpc,
    )
    .await
    .unwrap();
    let (ingress_grpc, mx) = (free_addr(), free_addr());
    let ingress_config = format!(
        "[store]\nurl = \"{}\"\n\n[smtp]\ngrpc_listen = \"{ingress_grpc}\"\nqueue_endpoint = \"http://{queue_grpc}\"\n\
         hostname = \"mx.test\"\nmx_listen = [\"{mx}\"]\nsubmission_listen = []\nsubmissions_listen = []\n",
        db.url()
    );
    let ingress = ServiceProcess::start_healthy(
        &workspace_binary("smtp-ingress").unwrap(),
        &ingress_config,
        ingress_grpc,
    )
    .await
    .unwrap();
    let (pop, pop3, pop3s) = start_pop3(&db, &certs, pop3_extra).await;

    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
for body in sys.argv[2:]:
    if body.startswith("GENERATE:"):
        _, lines = body.split(":")
        body = "Subject: large\r\n\r\n" + ".0123456789abcdef\r\n" * int(lines)
    s.sendmail("bob@remote.test", ["alice@example.org"], body.encode("utf-8"), mail_options=["BODY=8BITMIME"])
s.quit()
"#;
    let mut args = vec![mx.port().to_string()];
    args.extend(messages.iter().map(|m| m.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python(script, &args).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while db.store().maildrop_entries(account).await.unwrap().len() < messages.len() {
        assert!(Instant::now() < deadline, "messages not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Stack {
        db,
        certs,
        account,
        pop3,
        pop3s,
        _services: vec![queue, ingress, pop],
    }
}

impl Stack {
    /// What RETR must send for each message, in maildrop order (prefix + stored content).
    async fn expected(&self) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        for e in self
            .db
            .store()
            .maildrop_entries(self.account)
            .await
            .unwrap()
        {
            let (prefix, content) = self
                .db
                .store()
                .maildrop_entry_content(self.account, e.id)
                .await
                .unwrap()
                .unwrap();
            all.push([prefix, content].concat());
        }
        all
    }

    fn args<'a>(&'a self, port: &'a str) -> Vec<&'a str> {
        vec![port, self.certs.ca_path.to_str().unwrap(), ALICE, PW]
    }
}

/// Prints, per message: the LIST size, then the RETR octets as hex (poplib gives lines
/// without CRLF and already un-stuffed; joining them with CRLF restores the exact octets).
const RETR_ALL: &str = r#"
import poplib, ssl, sys
port, ca, user, pw, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
if mode == "pop3s":
    p = poplib.POP3_SSL("localhost", port, context=ctx, timeout=20)
else:
    p = poplib.POP3("localhost", port, timeout=20)
    if mode == "stls":
        assert "STLS" in p.capa()
        p.stls(context=ctx)
        assert "STLS" not in p.capa()
caps = p.capa()
assert "USER" in caps and "UIDL" in caps and "TOP" in caps and "RESP-CODES" in caps, caps
p.user(user)
p.pass_(pw)
count, size = p.stat()
print("STAT", count, size)
for n in range(1, count + 1):
    listed = int(p.list(n).split()[2])
    resp, lines, octets = p.retr(n)
    data = b"\r\n".join(lines) + b"\r\n"
    print("MSG", listed, data.hex())
print("UIDL", " ".join(u.decode().split()[1] for u in p.uidl()[1]))
p.quit()
"#;

fn parse_retr(out: &str) -> (Vec<(usize, Vec<u8>)>, String) {
    let msgs = out
        .lines()
        .filter_map(|l| l.strip_prefix("MSG "))
        .map(|l| {
            let (size, hex) = l.split_once(' ').unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (size.parse().unwrap(), bytes)
        })
        .collect();
    let uidl = out
        .lines()
        .find_map(|l| l.strip_prefix("UIDL "))
        .unwrap_or("")
        .to_owned();
    (msgs, uidl)
}

#[tokio::test]
async fn retr_is_byte_exact_over_plain_stls_and_implicit_tls() {
    let messages = [
        "Subject: one\r\n\r\nfirst message\r\n",
        "Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n",
        "Subject: =?utf-8?q?8bit?=\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nпривет, мир\r\n",
    ];
    let s = stack(&messages, "").await;
    let expected = s.expected().await;
    let mut uidls = Vec::new();
    for (mode, port) in [("plain", s.pop3), ("stls", s.pop3), ("pop3s", s.pop3s)] {
        let port = port.port().to_string();
        let mut args = s.args(&port);
        args.push(mode);
        let out = python(RETR_ALL, &args).await.unwrap();
        let total: usize = expected.iter().map(Vec::len).sum();
        assert!(out.contains(&format!("STAT 3 {total}")), "{mode}: {out}");
        let (retrieved, uidl) = parse_retr(&out);
        assert_eq!(retrieved.len(), 3, "{mode}");
        for ((listed, bytes), want) in retrieved.iter().zip(&expected) {
            assert_eq!(bytes, want, "{mode}: RETR is byte-exact");
            assert_eq!(*listed, want.len(), "{mode}: LIST size = octets RETR sends");
        }
        uidls.push(uidl);
    }
    assert!(
        uidls.windows(2).all(|w| w[0] == w[1]),
        "UIDL is stable across sessions: {uidls:?}"
    );
    assert_eq!(uidls[0].split(' ').count(), 3);
}

/// DELE+RSET restores, DELE+dropped connection keeps, DELE+QUIT removes.
const DELETIONS: &str = r#"
import poplib, socket, sys, time
port, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def session():
    # Right after a dropped connection the server may not have released the lock yet:
    # [IN-USE] is the right answer then, and a client tries again.
    for attempt in range(50):
        p = poplib.POP3("127.0.0.1", port, timeout=20)
        p.user(user)
        try:
            p.pass_(pw)
            return p
        except poplib.error_proto as e:
            if b"[IN-USE]" not in e.args[0]:
                raise
            p.quit()
            time.sleep(0.05)
    raise RuntimeError("still in use")
p = session()
p.dele(1)
print("AFTER-DELE", p.stat()[0])
p.rset()
print("AFTER-RSET", p.stat()[0])
p.quit()
p = session()
print("NEXT", p.stat()[0])
p.dele(1)
p.dele(2)
p.sock.shutdown(socket.SHUT_RDWR)   # dropped without QUIT
p.sock.close()
p = session()
print("AFTER-DROP", p.stat()[0])
p.dele(2)
print(p.quit().decode())
p = session()
print("AFTER-QUIT", p.stat()[0], " ".join(u.decode() for u in p.uidl()[1]))
p.quit()
"#;

#[tokio::test]
async fn deletions_happen_only_at_quit() {
    let s = stack(
        &[
            "Subject: a\r\n\r\na\r\n",
            "Subject: b\r\n\r\nb\r\n",
            "Subject: c\r\n\r\nc\r\n",
        ],
        "",
    )
    .await;
    let before = s.db.store().maildrop_entries(s.account).await.unwrap();
    let out = python(DELETIONS, &[&s.pop3.port().to_string(), ALICE, PW])
        .await
        .unwrap();
    for expected in [
        "AFTER-DELE 2",
        "AFTER-RSET 3",
        "NEXT 3",
        "AFTER-DROP 3",
        "+OK Pochta POP3 server signing off (1 messages deleted)",
        "AFTER-QUIT 2",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    let after = s.db.store().maildrop_entries(s.account).await.unwrap();
    assert_eq!(after.len(), 2);
    assert_eq!(
        (after[0].id, after[1].id),
        (before[0].id, before[2].id),
        "message 2 went"
    );
    let uids = format!("1 {} 2 {}", after[0].uid, after[1].uid);
    assert!(out.contains(&uids), "UIDs unchanged: {out}");
}

/// Two sessions on two different replicas: the second is refused with [IN-USE] until the
/// first ends.
const IN_USE: &str = r#"
import poplib, sys
port_a, port_b, user, pw = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
a = poplib.POP3("127.0.0.1", port_a, timeout=20)
a.user(user); a.pass_(pw)
b = poplib.POP3("127.0.0.1", port_b, timeout=20)
b.user(user)
try:
    b.pass_(pw)
    print("B-LOGGED-IN")
except poplib.error_proto as e:
    print("B-REFUSED", e.args[0].decode())
a.quit()
b.user(user)
b.pass_(pw)
print("B-AFTER", b.stat()[0])
b.quit()
"#;

#[tokio::test]
async fn a_second_session_on_another_replica_gets_in_use() {
    let s = stack(&["Subject: a\r\n\r\na\r\n"], "").await;
    let (_replica, other_pop3, _) = start_pop3(&s.db, &s.certs, "").await;
    let out = python(
        IN_USE,
        &[
            &s.pop3.port().to_string(),
            &other_pop3.port().to_string(),
            ALICE,
            PW,
        ],
    )
    .await
    .unwrap();
    assert!(
        out.contains("B-REFUSED -ERR [IN-USE] Maildrop is locked by another session"),
        "{out}"
    );
    assert!(out.contains("B-AFTER 1"), "{out}");
}

/// TOP, failed logins, and a large message read in many small pieces.
const TOP_AND_LARGE: &str = r#"
import poplib, sys
port, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
p = poplib.POP3("127.0.0.1", port, timeout=20)
p.user(user)
try:
    p.pass_("wrong")
except poplib.error_proto as e:
    print("BAD", e.args[0].decode())
p.user(user)
p.pass_(pw)
resp, lines, _ = p.top(1, 2)
print("TOP", len(lines), lines[-1].decode(), lines[-2].decode())
resp, lines, octets = p.retr(2)
print("LARGE", len(lines), sum(len(l) + 2 for l in lines))
p.quit()
"#;

#[tokio::test]
async fn top_failed_login_and_a_large_message_streamed() {
    let s = stack(
        &[
            "Subject: top\r\nX-A: 1\r\n\r\nline 1\r\nline 2\r\nline 3\r\n",
            "GENERATE:20000",
        ],
        "retrieve_chunk_bytes = 4000",
    )
    .await;
    let out = python(TOP_AND_LARGE, &[&s.pop3.port().to_string(), ALICE, PW])
        .await
        .unwrap();
    assert!(
        out.contains("BAD -ERR [AUTH] Authentication failed"),
        "{out}"
    );
    assert!(
        out.contains("line 2 line 1"),
        "TOP 1 2 ends with the second body line: {out}"
    );
    let expected = s.expected().await;
    let large_line = out.lines().find_map(|l| l.strip_prefix("LARGE ")).unwrap();
    let octets: usize = large_line.split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(octets, expected[1].len(), "the whole large message arrived");
}

/// Small messages come from the read-ahead (several per query, a budget of 300 octets here),
/// a large one in 4000-octet pieces between them; every RETR stays byte-exact.
#[tokio::test]
async fn read_ahead_and_streaming_mix_byte_exact() {
    let messages = [
        "Subject: a\r\n\r\nsmall one\r\n",
        "Subject: b\r\n\r\n.dot first\r\n..\r\n",
        "GENERATE:400",
        "Subject: c\r\n\r\nsmall three\r\n",
        "Subject: d\r\n\r\nsmall four, a bit longer than the others so it fills more budget\r\n",
        "Subject: e\r\n\r\nsmall five\r\n",
    ];
    let s = stack(
        &messages,
        "retrieve_chunk_bytes = 4000\nread_ahead_bytes = 300",
    )
    .await;
    let expected = s.expected().await;
    assert!(expected[2].len() > 4000, "one message is streamed");
    let port = s.pop3.port().to_string();
    let mut args = s.args(&port);
    args.push("plain");
    let out = python(RETR_ALL, &args).await.unwrap();
    let (retrieved, _) = parse_retr(&out);
    assert_eq!(retrieved.len(), messages.len(), "{out}");
    for (i, ((listed, bytes), want)) in retrieved.iter().zip(&expected).enumerate() {
        assert_eq!(bytes, want, "message {}: RETR is byte-exact", i + 1);
        assert_eq!(*listed, want.len());
    }
}

/// RETR in the order given (message numbers, repeats allowed), each printed as `MSG n hex`.
const RETR_IN_ORDER: &str = r#"
import poplib, sys
port, user, pw, order = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
p = poplib.POP3("127.0.0.1", port, timeout=20)
p.user(user)
p.pass_(pw)
for n in order.split(","):
    resp, lines, octets = p.retr(int(n))
    print("MSG", n, (b"\r\n".join(lines) + b"\r\n").hex())
p.quit()
"#;

/// The read-ahead batch after the current one is read in the background; a client that
/// fetches in order, jumps ahead, goes back or fetches a message twice still gets every
/// message byte-exact (six batches of two messages here).
#[tokio::test]
async fn background_read_ahead_serves_any_order_byte_exact() {
    let messages: Vec<String> = (1..=12)
        .map(|i| format!("Subject: m{i}\r\n\r\nbody of message number {i:02}\r\n"))
        .collect();
    let refs: Vec<&str> = messages.iter().map(String::as_str).collect();
    let s = stack(&refs, "read_ahead_bytes = 600").await;
    let expected = s.expected().await;
    assert!(
        expected
            .iter()
            .all(|m| m.len() * 2 <= 600 && m.len() * 3 > 600),
        "read-ahead batches of two messages: {:?}",
        expected.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let order = "1,2,3,4,5,9,10,6,7,8,8,12,11,1,2";
    let out = python(
        RETR_IN_ORDER,
        &[&s.pop3.port().to_string(), ALICE, PW, order],
    )
    .await
    .unwrap();
    // `MSG n hex` lines, parsed as RETR_ALL's `MSG size hex`.
    let (got, _) = parse_retr(&out);
    assert_eq!(got.len(), order.split(',').count(), "{out}");
    for (n, bytes) in &got {
        assert_eq!(bytes, &expected[n - 1], "message {n}: RETR is byte-exact");
    }
}
