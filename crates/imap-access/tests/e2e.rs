//! The whole path with the real binaries and independent clients: mail sent with smtplib is
//! accepted by smtp-ingress, delivered by delivery-queue, and read with Python's imaplib (and
//! imapclient) from imap-access over implicit TLS and STARTTLS; flags, APPEND, MOVE, EXPUNGE,
//! IDLE across two replicas, and POP3 deleting under an IMAP session. Needs
//! `cargo test --workspace` (the other services' binaries).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use pochta_store::DomainRole;
use pochta_testkit::{ServiceProcess, TestCerts, TestDb, free_addr, python, workspace_binary};

const BINARY: &str = env!("CARGO_BIN_EXE_imap-access");

fn sha256_hex(octets: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, octets);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
/// Runs a client program from Debian's packages; fails with its output if it fails.
async fn run_client(command: &mut tokio::process::Command, package: &str) {
    let out = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("{package} must be installed: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{package} failed:\n{text}");
}

/// A maildir file's octets without the header lines a client added (by their prefixes).
fn without_lines(text: &str, prefixes: &[&str]) -> Vec<u8> {
    let kept: Vec<&str> = text
        .split_inclusive('\n')
        .filter(|l| !prefixes.iter().any(|p| l.starts_with(p)))
        .collect();
    kept.concat().into_bytes()
}

const ALICE: &str = "alice@example.org";
const PW: &str = "imap pass";

struct Stack {
    db: TestDb,
    certs: TestCerts,
    account: i64,
    mx: SocketAddr,
    /// Two imap-access replicas: (imap, imaps) each.
    imap: Vec<(SocketAddr, SocketAddr)>,
    pop3: SocketAddr,
    _services: Vec<ServiceProcess>,
}

async fn start_imap(db: &TestDb, certs: &TestCerts) -> (ServiceProcess, SocketAddr, SocketAddr) {
    let (grpc, imap, imaps) = (free_addr(), free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 4\n\n{}\n[imap]\ngrpc_listen = \"{grpc}\"\n\
         imap_listen = [\"{imap}\"]\nimaps_listen = [\"{imaps}\"]\nplaintext_auth = \"never\"\n\
         auth_failure_delay_ms = 50\n",
        db.url(),
        certs.tls_section()
    );
    let p = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();
    (p, imap, imaps)
}

async fn stack() -> Stack {
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
    let (pop3_grpc, pop3) = (free_addr(), free_addr());
    let pop3_config = format!(
        "[store]\nurl = \"{}\"\n\n[pop3]\ngrpc_listen = \"{pop3_grpc}\"\npop3_listen = [\"{pop3}\"]\n\
         pop3s_listen = []\nplaintext_auth = \"loopback\"\n",
        db.url()
    );
    let pop = ServiceProcess::start_healthy(
        &workspace_binary("pop3-access").unwrap(),
        &pop3_config,
        pop3_grpc,
    )
    .await
    .unwrap();
    let (first, imap1, imaps1) = start_imap(&db, &certs).await;
    let (second, imap2, imaps2) = start_imap(&db, &certs).await;
    Stack {
        db,
        certs,
        account,
        mx,
        imap: vec![(imap1, imaps1), (imap2, imaps2)],
        pop3,
        _services: vec![queue, ingress, pop, first, second],
    }
}

impl Stack {
    /// Sends messages over SMTP and waits until the queue has delivered them all.
    async fn send(&self, bodies: &[&str]) {
        let before = self.inbox_len().await;
        let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
for body in sys.argv[2:]:
    if body.startswith("GENERATE:"):
        _, lines = body.split(":")
        body = "Subject: long\r\n\r\n" + "0123456789abcdef\r\n" * int(lines)
    s.sendmail("bob@remote.test", ["alice@example.org"], body.encode("utf-8"), mail_options=["BODY=8BITMIME"])
s.quit()
"#;
        let mut args = vec![self.mx.port().to_string()];
        args.extend(bodies.iter().map(|b| b.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python(script, &args).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.inbox_len().await < before + bodies.len() {
            assert!(Instant::now() < deadline, "messages not delivered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn inbox_len(&self) -> usize {
        let entries = self.db.store().maildrop_entries(self.account).await;
        entries.unwrap().len()
    }

    /// What FETCH BODY[] must send for each INBOX message.
    async fn stored(&self) -> Vec<Vec<u8>> {
        let store = self.db.store();
        let ids: Vec<i64> = store
            .maildrop_entries(self.account)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        let whole = store.maildrop_entries_whole(self.account, &ids).await;
        whole.unwrap().into_iter().map(|(_, text)| text).collect()
    }

    /// The INBOX messages as a maildir keeps them (LF line ends).
    async fn stored_with_lf(&self) -> Vec<String> {
        self.stored()
            .await
            .into_iter()
            .map(|text| String::from_utf8(text).unwrap().replace("\r\n", "\n"))
            .collect()
    }

    /// Size and SHA-256 of what FETCH BODY[] must send for each INBOX message, in UID order.
    async fn expected(&self) -> Vec<String> {
        self.stored()
            .await
            .iter()
            .map(|text| format!("{} {}", text.len(), sha256_hex(text)))
            .collect()
    }

    /// Runs a Python script with: imaps port, imap port, CA file, user, password, then `more`.
    async fn client(&self, replica: usize, script: &str, more: &[&str]) -> String {
        let (imap, imaps) = self.imap[replica];
        let (imaps, imap) = (imaps.port().to_string(), imap.port().to_string());
        let mut args = vec![
            imaps.as_str(),
            imap.as_str(),
            self.certs.ca_path.to_str().unwrap(),
            ALICE,
            PW,
        ];
        args.extend_from_slice(more);
        python(&format!("{PRELUDE}{script}"), &args).await.unwrap()
    }
}

/// Connects over implicit TLS (`tls()`) or STARTTLS (`starttls()`), logged in.
const PRELUDE: &str = r#"
import imaplib, ssl, sys, time
imaps_port, imap_port, ca, user, pw = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
more = sys.argv[6:]
ctx = ssl.create_default_context(cafile=ca)
def tls():
    m = imaplib.IMAP4_SSL("localhost", imaps_port, ssl_context=ctx)
    m.login(user, pw)
    return m
def starttls():
    m = imaplib.IMAP4("localhost", imap_port)
    m.starttls(ssl_context=ctx)
    m.login(user, pw)
    return m
def check(result):
    typ, data = result
    assert typ == "OK", (typ, data)
    return data
"#;

#[tokio::test]
async fn mail_sent_over_smtp_is_fetched_byte_exact_over_both_tls_ports() {
    let s = stack().await;
    // The third is 360 KB, read from the store in several batches.
    s.send(&[
        "Subject: one\r\n\r\nfirst\r\n",
        "Subject: two\r\n\r\nü second\r\n",
        "GENERATE:20000",
    ])
    .await;
    let script = r#"
import hashlib
for connect in (tls, starttls):
    m = connect()
    check(m.select("INBOX"))
    data = check(m.uid("FETCH", "1:*", "(UID RFC822.SIZE BODY.PEEK[])"))
    for item in data:
        if isinstance(item, tuple):
            body = item[1]
            print(connect.__name__, "body", len(body), hashlib.sha256(body).hexdigest())
    # PEEK left them unseen.
    print(connect.__name__, "unseen", check(m.search(None, "UNSEEN"))[0].decode())
    m.logout()
"#;
    let out = s.client(0, script, &[]).await;
    let expected = s.expected().await;
    for mode in ["tls", "starttls"] {
        let got: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{mode} body ")))
            .map(str::to_owned)
            .collect();
        assert_eq!(got, expected, "{mode}: size and SHA-256 of each message");
        assert!(out.contains(&format!("{mode} unseen 1 2 3")), "{out}");
    }
}

/// SEARCH by header field over mail sent through SMTP: answered from the fields the store
/// keeps, and from the octets for a message stored without them (as before migration 0014);
/// both give the same answers, decoded words and folded lines included.
#[tokio::test]
async fn header_searches_agree_whether_fields_were_kept_or_not() {
    let s = stack().await;
    let report = "From: =?UTF-8?Q?J=C3=B6rg?= <jorg@remote.test>\r\nTo: alice@example.org\r\n\
Subject: Quarterly\r\n report\r\nDate: Mon, 7 Dec 2026 23:30:00 -0800\r\n\r\nbody\r\n";
    let plain = "From: ann@remote.test\r\nSubject: lunch\r\n\r\nQuarterly report inside\r\n";
    // UIDs 1 and 3 alike; 3 then loses its kept fields.
    s.send(&[report, plain, report]).await;
    let raw = sqlx::PgPool::connect(s.db.url()).await.unwrap();
    let forgotten = sqlx::query(
        "UPDATE messages SET search_fields = false, search_subject = NULL, search_from = NULL,
             search_to = NULL, search_sent_on = NULL
         WHERE id = (SELECT message_id FROM maildrop_entries
                     WHERE account_id = $1 ORDER BY id OFFSET 2 LIMIT 1)",
    )
    .bind(s.account)
    .execute(&raw)
    .await
    .unwrap();
    assert_eq!(forgotten.rows_affected(), 1);
    let script = r#"
m = tls()
check(m.select("INBOX"))
# A non-ASCII string goes as a literal.
m.literal = "JÖRG".encode()
print("from", check(m.uid("SEARCH", "CHARSET", "UTF-8", "FROM"))[0].decode())
for name, keys in [
    ("subject", ("SUBJECT", '"QUARTERLY REPORT"')),
    ("not", ("NOT", "SUBJECT", "quarterly")),
    ("or", ("OR", "FROM", "ann@", "SUBJECT", "report")),
    ("senton", ("SENTON", "7-Dec-2026")),
    ("sentbefore", ("SENTBEFORE", "7-Dec-2026")),
    ("to", ("TO", "alice@example")),
    ("body", ("BODY", "quarterly")),
]:
    print(name, check(m.uid("SEARCH", *keys))[0].decode())
m.logout()
"#;
    let out = s.client(0, script, &[]).await;
    for expected in [
        "subject 1 3\n",
        "from 1 3\n",
        "not 2\n",
        "or 1 2 3\n",
        "senton 1 3\n",
        "sentbefore \n",
        "to 1 3\n",
        "body 2\n",
    ] {
        assert!(out.contains(expected), "{expected:?} in {out}");
    }
}

#[tokio::test]
async fn plaintext_login_is_refused_before_tls() {
    let s = stack().await;
    let script = r#"
m = imaplib.IMAP4("localhost", imap_port)
print(" ".join(m.capabilities))
try:
    m.login(user, pw)
    print("logged in")
except imaplib.IMAP4.error as e:
    print("refused", e)
"#;
    let out = s.client(0, script, &[]).await;
    assert!(
        out.contains("STARTTLS") && out.contains("LOGINDISABLED"),
        "{out}"
    );
    assert!(
        out.contains("refused") && out.contains("PRIVACYREQUIRED"),
        "{out}"
    );
}

#[tokio::test]
async fn flags_set_by_one_client_appear_in_another() {
    let s = stack().await;
    s.send(&["Subject: a\r\n\r\na\r\n", "Subject: b\r\n\r\nb\r\n"])
        .await;
    let script = r#"
watcher = tls()
check(watcher.select("INBOX"))
setter = tls()
check(setter.select("INBOX"))
print("stored", check(setter.store("2", "+FLAGS", "(\\Flagged $Work)")))
# Reading BODY[] (not PEEK) sets \Seen.
check(setter.fetch("1", "(BODY[])"))
# The setter's own STORE and \Seen were reported with them: its NOOP tells neither again.
setter.untagged_responses.pop("FETCH", None)
check(setter.noop())
print("own", b" ".join(d for d in setter.untagged_responses.pop("FETCH", []) if d).decode())
deadline = time.time() + 10
seen = b""
while time.time() < deadline and (b"Flagged" not in seen or b"Seen" not in seen):
    typ, data = watcher.noop()
    seen += b" ".join(d for d in watcher.untagged_responses.pop("FETCH", []) if d)
    time.sleep(0.1)
print("watcher", seen.decode())
print("flagged", check(watcher.search(None, "FLAGGED"))[0].decode())
print("seen", check(watcher.search(None, "SEEN"))[0].decode())
print("keyword", check(watcher.search(None, "KEYWORD", "$Work"))[0].decode())
"#;
    let out = s.client(0, script, &[]).await;
    assert!(out.contains("\\Flagged"), "{out}");
    let line = out.lines().find(|l| l.starts_with("watcher")).unwrap();
    assert!(
        line.contains("\\Flagged") && line.contains("\\Seen"),
        "{out}"
    );
    let own = out.lines().find(|l| l.starts_with("own")).unwrap();
    assert_eq!(own.trim(), "own", "{out}");
    assert!(out.contains("flagged 2\n"), "{out}");
    assert!(out.contains("seen 1\n"), "{out}");
    assert!(out.contains("keyword 2\n"), "{out}");
}

/// ESEARCH (RFC 4731), SEARCHRES (RFC 5182) and LIST-EXTENDED with LIST-STATUS (RFC 5258,
/// 5819), commands the pinned parser has no grammar for, answered from the store for
/// Python's imaplib; then a session that enables IMAP4rev2.
#[tokio::test]
async fn esearch_searchres_and_list_status_over_imaplib() {
    let s = stack().await;
    s.send(&[
        "Subject: one\r\n\r\none\r\n",
        "Subject: two\r\n\r\ntwo\r\n",
        "Subject: three\r\n\r\nthree\r\n",
        "Subject: four\r\n\r\nfour\r\n",
    ])
    .await;
    let script = r#"
m = tls()
caps = check(m.capability())[0].decode().split()
print("caps", "ESEARCH" in caps, "SEARCHRES" in caps, "LIST-EXTENDED" in caps, "LIST-STATUS" in caps)
check(m.select("INBOX"))
check(m.store("2", "+FLAGS", "(\\Seen)"))
def esearch(*args):
    typ, dat = m._simple_command(*args)
    assert typ == "OK", (typ, dat)
    return [d.decode() for d in m._untagged_response(typ, dat, "ESEARCH")[1]]
print("unseen", esearch("UID", "SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "UNSEEN"))
print("numbers", esearch("SEARCH", "RETURN", "()", "OR", "SUBJECT", "four", "SUBJECT", "one"))
print("none", esearch("SEARCH", "RETURN", "(MIN COUNT)", "SUBJECT", "nowhere"))
print("count", esearch("UID", "SEARCH", "RETURN", "(COUNT)", "UNSEEN"))
print("max-modseq", esearch("UID", "SEARCH", "RETURN", "(MAX)", "MODSEQ", "1"))
highest = check(m.fetch("4", "(MODSEQ)"))[0].decode()
print("fetch-modseq", highest)
# SEARCHRES (RFC 5182): the result kept as $ and used by the next commands.
typ, dat = m._simple_command("UID", "SEARCH", "RETURN", "(SAVE)", "UNSEEN")
print("save", typ, m.untagged_responses.pop("ESEARCH", None))
check(m.uid("STORE", "$", "+FLAGS", "(\\Flagged)"))
print("flagged", check(m.uid("SEARCH", "FLAGGED"))[0].decode())
print("saved-and-seen", check(m.search(None, "$", "SEEN")))
check(m.store("1", "+FLAGS", "(\\Deleted)"))
check(m.expunge())
print("saved-fetch", sorted(d.decode() for d in check(m.fetch("$", "(UID)"))))
try:
    m._simple_command("SEARCH", "RETURN", "(PARTIAL 1:2)", "ALL")
    print("partial accepted")
except m.error as e:
    print("partial BAD", e)
check(m.create("Work/2026"))
check(m.unsubscribe("Work"))
check(m.subscribe("Work/2026"))
typ, dat = m._simple_command("LIST", '""', '(INBOX "Work/%")', "RETURN", "(STATUS (MESSAGES UNSEEN))")
assert typ == "OK", (typ, dat)
print("lists", sorted(d.decode() for d in m._untagged_response(typ, dat, "LIST")[1]))
print("status", sorted(d.decode() for d in m._untagged_response(typ, dat, "STATUS")[1]))
typ, dat = m._simple_command("LIST", "(SUBSCRIBED RECURSIVEMATCH)", '""', "%")
print("subscribed", sorted(d.decode() for d in m._untagged_response(typ, dat, "LIST")[1]))
typ, dat = m._simple_command("LIST", "(SPECIAL-USE)", '""', "*")
print("special", sorted(d.decode() for d in m._untagged_response(typ, dat, "LIST")[1]))
m.logout()
# An IMAP4rev2 session (RFC 9051): no RECENT, ESEARCH for every SEARCH.
m = tls()
typ, dat = m._simple_command("ENABLE", "IMAP4rev2")
print("rev2-enabled", m._untagged_response(typ, dat, "ENABLED")[1])
m.untagged_responses.clear()
check(m.select("INBOX"))
print("rev2-recent", "RECENT" in m.untagged_responses)
print("rev2-search", esearch("UID", "SEARCH", "UNSEEN"))
m.logout()
"#;
    let out = s.client(0, script, &[]).await;
    assert!(out.contains("caps True True True True"), "{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name}: {out}"))
            .to_owned()
    };
    assert!(
        line("unseen").contains("UID MIN 1 MAX 4 COUNT 3 ALL 1,3:4"),
        "{out}"
    );
    assert!(line("numbers").contains("ALL 1,4'"), "{out}");
    // COUNT alone is counted by the store; the same count.
    assert!(line("count").contains("UID COUNT 3'"), "{out}");
    assert!(
        line("none").contains("COUNT 0'") && !line("none").contains("MIN"),
        "{out}"
    );
    // MAX alone carries that message's mod-sequence (RFC 7162 3.1.5).
    let modseq = line("fetch-modseq");
    let modseq = modseq
        .split("MODSEQ (")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    assert!(
        line("max-modseq").contains(&format!("UID MAX 4 MODSEQ {modseq}'")),
        "{out}"
    );
    // SAVE alone answers no ESEARCH; $ then named UIDs 1, 3 and 4.
    assert_eq!(line("save"), "save OK None", "{out}");
    // (CONDSTORE is on since the MODSEQ search: responses carry mod-sequences.)
    assert!(
        line("flagged").starts_with("flagged 1 3 4 (MODSEQ"),
        "{out}"
    );
    assert_eq!(line("saved-and-seen"), "saved-and-seen [b'']", "{out}");
    // Message 1 expunged: $ names UIDs 3 and 4, now messages 2 and 3.
    let fetched = line("saved-fetch");
    assert!(
        fetched.starts_with("saved-fetch ['2 (")
            && fetched.contains("UID 3)', '3 (")
            && fetched.ends_with("UID 4)']"),
        "{out}"
    );
    assert!(
        line("partial").contains("Unsupported SEARCH RETURN option"),
        "{out}"
    );
    assert_eq!(
        line("lists"),
        "lists ['(\\\\HasNoChildren \\\\Subscribed) \"/\" INBOX', '(\\\\HasNoChildren \\\\Subscribed) \"/\" Work/2026']",
        "{out}"
    );
    assert_eq!(
        line("status"),
        "status ['INBOX (MESSAGES 3 UNSEEN 2)', 'Work/2026 (MESSAGES 0 UNSEEN 0)']",
        "{out}"
    );
    assert!(
        line("subscribed")
            .contains("'(\\\\HasChildren) \"/\" Work (\"CHILDINFO\" (\"SUBSCRIBED\"))'"),
        "{out}"
    );
    assert_eq!(line("rev2-enabled"), "rev2-enabled [b'IMAP4rev2']", "{out}");
    assert_eq!(line("rev2-recent"), "rev2-recent False", "{out}");
    assert!(line("rev2-search").contains("UID ALL 3:4'"), "{out}");
    let special = line("special");
    assert!(
        special.contains("Sent") && special.contains("Trash") && !special.contains("INBOX"),
        "{out}"
    );
}

/// A folder with a non-ASCII name: imapclient (IMAP4rev1) writes it in modified UTF-7, an
/// IMAP4rev2 session in UTF-8; both reach the same folder, stored in UTF-8.
#[tokio::test]
async fn non_ascii_folder_names_in_rev1_and_rev2_sessions() {
    let s = stack().await;
    let script = r#"
from imapclient import IMAPClient
c = IMAPClient("localhost", port=imaps_port, ssl=True, ssl_context=ctx)
c.login(user, pw)
c.create_folder("Входящие/Заметки & планы")
c.append("Входящие/Заметки & планы", b"Subject: note\r\n\r\nnote\r\n")
print("rev1", sorted(name for _, _, name in c.list_folders("", "Вход*")))
print("rev1-status", c.folder_status("Входящие/Заметки & планы", ["MESSAGES"]))
c.logout()
m = tls()
m._simple_command("ENABLE", "IMAP4rev2")
typ, dat = m._simple_command("LIST", '""', '"Вход*"'.encode())
print("rev2", sorted(d.decode() for d in m._untagged_response(typ, dat, "LIST")[1]))
typ, dat = m._simple_command("SELECT", '"Входящие/Заметки & планы"'.encode())
print("rev2-select", typ, m.untagged_responses.get("EXISTS"))
m.logout()
"#;
    let out = s.client(0, script, &[]).await;
    assert!(
        out.contains("rev1 ['Входящие', 'Входящие/Заметки & планы']"),
        "{out}"
    );
    assert!(out.contains("rev1-status {b'MESSAGES': 1}"), "{out}");
    assert!(
        out.contains("\"/\" \"Входящие\"") && out.contains("\"/\" \"Входящие/Заметки & планы\""),
        "{out}"
    );
    assert!(out.contains("rev2-select OK [b'1']"), "{out}");
    let folder =
        s.db.store()
            .mailbox(s.account, "Входящие/Заметки & планы")
            .await
            .unwrap();
    assert!(folder.is_some(), "stored in UTF-8");
}

#[tokio::test]
async fn append_to_sent_move_to_trash_and_expunge_with_imapclient() {
    let s = stack().await;
    s.send(&[
        "Subject: keep\r\n\r\nkeep\r\n",
        "Subject: junk\r\n\r\njunk\r\n",
    ])
    .await;
    // imapclient, an independent client library, over implicit TLS.
    let script = r#"
from imapclient import IMAPClient
c = IMAPClient("localhost", port=imaps_port, ssl=True, ssl_context=ctx)
c.login(user, pw)
folders = {name: flags for flags, _, name in c.list_folders()}
print("folders", sorted(folders))
print("sent-flags", [f.decode() for f in folders["Sent"]])
appended = c.append("Sent", b"Subject: sent\r\n\r\nsent by me\r\n", flags=[b"\\Seen"])
print("appended", appended.decode())
c.select_folder("INBOX")
moved = c.move([2], "Trash")
print("inbox", c.search("ALL"))
c.select_folder("Trash")
print("trash", c.search("ALL"), c.fetch(c.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]))
c.set_flags(c.search("ALL"), [b"\\Deleted"])
print("expunged", c.expunge())
print("trash-after", c.search("ALL"))
c.select_folder("Sent", readonly=True)
msgs = c.fetch(c.search("ALL"), ["FLAGS", "BODY.PEEK[]", "ENVELOPE"])
for uid, data in msgs.items():
    print("sent", uid, data[b"FLAGS"], data[b"BODY[]"], data[b"ENVELOPE"].subject)
c.create_folder("Work/2026")
c.rename_folder("Work", "Jobs")
print("after-rename", sorted(name for _, _, name in c.list_folders()))
c.delete_folder("Jobs/2026")
c.rename_folder("INBOX", "Archive")
c.select_folder("Archive", readonly=True)
print("archive", c.fetch(c.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]))
c.select_folder("INBOX")
print("inbox-after-rename", c.search("ALL"))
c.logout()
"#;
    let out = s.client(0, script, &[]).await;
    assert!(
        out.contains("folders ['Drafts', 'INBOX', 'Junk', 'Sent', 'Trash']"),
        "{out}"
    );
    assert!(out.contains("\\Sent"), "{out}");
    assert!(out.contains("[APPENDUID"), "{out}");
    assert!(out.contains("inbox [1]"), "{out}");
    assert!(
        out.contains("trash [1]") && out.contains("Subject: junk"),
        "{out}"
    );
    assert!(out.contains("trash-after []"), "{out}");
    assert!(
        out.contains("sent 1 (b'\\\\Seen',) b'Subject: sent\\r\\n\\r\\nsent by me\\r\\n' b'sent'"),
        "{out}"
    );
    assert!(out.contains("'Jobs', 'Jobs/2026'"), "{out}");
    // RENAME INBOX moved "keep" (RFC 9051 6.3.6): INBOX stays, empty, for IMAP and POP3.
    let archive = out.lines().find(|l| l.starts_with("archive "));
    assert!(
        archive.is_some_and(|l| l.starts_with("archive {1: ") && l.contains("Subject: keep")),
        "{out}"
    );
    assert!(out.contains("inbox-after-rename []"), "{out}");
    assert_eq!(s.inbox_len().await, 0);
}

/// The account's quota holds for what IMAP adds as for what is delivered: an APPEND or COPY
/// past it gets `NO [OVERQUOTA]` (imaplib), a MOVE adds nothing and goes through, and once
/// IMAP has filled the account SMTP refuses more at RCPT (452 4.2.2, smtplib).
#[tokio::test]
async fn imap_additions_are_held_to_the_quota_and_fill_it_for_smtp() {
    let s = stack().await;
    // A quota from the start: the ingress caches its answers only for accounts without one.
    s.db.set_quota(ALICE, Some(1 << 20)).await.unwrap();
    s.send(&["Subject: one\r\n\r\nfirst\r\n"]).await;
    let used: usize = s.stored().await.iter().map(Vec::len).sum();
    let small = b"Subject: small\r\n\r\n".len() + 1000 + 2;
    s.db.set_quota(ALICE, Some((used + small) as i64))
        .await
        .unwrap();
    let script = r#"
m = tls()
typ, data = m.append("Sent", None, None, b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n")
print("append-big", typ, data[0].decode())
check(m.append("Sent", None, None, b"Subject: small\r\n\r\n" + b"y" * 1000 + b"\r\n"))
check(m.select("INBOX"))
typ, data = m.copy("1", "Trash")
print("copy", typ, data[0].decode())
typ, data = m._simple_command("MOVE", "1", "Trash")
print("move", typ)
m.logout()
"#;
    let out = s.client(0, script, &[]).await;
    assert!(
        out.contains("append-big NO [OVERQUOTA]"),
        "an APPEND past the quota: {out}"
    );
    assert!(out.contains("copy NO [OVERQUOTA]"), "{out}");
    assert!(out.contains("move OK"), "{out}");
    let smtp = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
try:
    s.sendmail("bob@remote.test", ["alice@example.org"], b"Subject: more\r\n\r\nmore\r\n")
    print("accepted")
except smtplib.SMTPRecipientsRefused as e:
    code, text = e.recipients["alice@example.org"]
    print("refused", code, text.decode())
"#;
    let out = python(smtp, &[&s.mx.port().to_string()]).await.unwrap();
    assert!(out.contains("refused 452 4.2.2"), "{out}");
}

/// A client idling on one replica hears of mail the queue delivers, and of a deletion made
/// over POP3, without asking.
#[tokio::test]
async fn idle_hears_deliveries_and_pop3_deletions_across_replicas() {
    let s = stack().await;
    s.send(&["Subject: first\r\n\r\nfirst\r\n"]).await;
    let script = r#"
m = tls()
check(m.select("INBOX"))
tag = m._new_tag().decode()
m.send(f"{tag} IDLE\r\n".encode())
assert m.readline().startswith(b"+"), "idling"
print("idling", flush=True)
heard = []
deadline = time.time() + 20
while time.time() < deadline and len(heard) < 2:
    line = m.readline().decode().strip()
    if line.endswith("EXISTS") or line.endswith("EXPUNGE"):
        heard.append(line)
        print("heard", line, round(time.time(), 3), flush=True)
m.send(b"DONE\r\n")
while not m.readline().decode().startswith(tag):
    pass
m.logout()
"#;
    let imaps = s.imap[1].1.port().to_string();
    let imap = s.imap[1].0.port().to_string();
    let ca = s.certs.ca_path.to_str().unwrap().to_owned();
    let full = format!("{PRELUDE}{script}");
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&full)
        .args([imaps.as_str(), imap.as_str(), ca.as_str(), ALICE, PW])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(line, "idling");
    // Delivered by the queue through replica-independent notification.
    s.send(&["Subject: second\r\n\r\nsecond\r\n"]).await;
    let heard = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("IDLE heard the delivery")
        .unwrap()
        .unwrap();
    assert!(heard.contains("* 2 EXISTS"), "{heard}");
    // POP3 deletes the first message at QUIT: the idling client is told it is gone.
    let pop = r#"
import poplib, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]))
p.user(sys.argv[2]); p.pass_(sys.argv[3])
p.dele(1)
p.quit()
"#;
    python(pop, &[&s.pop3.port().to_string(), ALICE, PW])
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("IDLE heard the POP3 deletion")
        .unwrap()
        .unwrap();
    assert!(heard.contains("* 1 EXPUNGE"), "{heard}");
    let status = child.wait().await.unwrap();
    assert!(status.success());
}

/// QRESYNC (RFC 7162): a client that knew the mailbox comes back after another client flagged
/// a message and POP3 deleted one; SELECT (QRESYNC ...) tells it exactly that, and while it
/// stays, an expunge elsewhere reaches it as VANISHED.
#[tokio::test]
async fn qresync_resynchronises_after_changes_elsewhere() {
    let s = stack().await;
    s.send(&[
        "Subject: a\r\n\r\na\r\n",
        "Subject: b\r\n\r\nb\r\n",
        "Subject: c\r\n\r\nc\r\n",
    ])
    .await;
    let script = r#"
# imaplib knows ENABLE only from the capabilities it saw before logging in.
def enable(m):
    check(m._simple_command("ENABLE", "QRESYNC"))
m = tls()
enable(m)
check(m.select("INBOX"))
validity = int(m.untagged_responses["UIDVALIDITY"][-1])
modseq = int(m.untagged_responses["HIGHESTMODSEQ"][-1])
m.logout()
# Elsewhere: another client flags UID 2, POP3 deletes message 1.
other = tls()
check(other.select("INBOX"))
check(other.uid("STORE", "2", "+FLAGS", "(\\Flagged)"))
other.logout()
import poplib
p = poplib.POP3("127.0.0.1", int(more[0]))
p.user(user); p.pass_(pw); p.dele(1); p.quit()
# Back: what changed since `modseq`, and nothing else.
m = tls()
enable(m)
typ, data = m._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} {modseq} 1:3))")
assert typ == "OK", (typ, data)
print("vanished", [v.decode() for v in m.untagged_responses.get("VANISHED", [])])
print("fetch", [f.decode() for f in m.untagged_responses.get("FETCH", []) if f])
print("exists", m.untagged_responses.get("EXISTS"))
m.untagged_responses.clear()
# Another session expunges UID 3: this one hears it as VANISHED, not EXPUNGE.
other = tls()
check(other.select("INBOX"))
check(other.uid("STORE", "3", "+FLAGS", "(\\Deleted)"))
check(other.expunge())
other.logout()
deadline = time.time() + 10
while time.time() < deadline and "VANISHED" not in m.untagged_responses:
    m.noop()
    time.sleep(0.1)
print("later", [v.decode() for v in m.untagged_responses.get("VANISHED", [])])
print("expunge", m.untagged_responses.get("EXPUNGE"))
"#;
    let pop3 = s.pop3.port().to_string();
    let out = s.client(0, script, &[pop3.as_str()]).await;
    assert!(out.contains("vanished ['(EARLIER) 1']"), "{out}");
    let fetch = out.lines().find(|l| l.starts_with("fetch")).unwrap();
    // Only UID 2 changed (it is message 1 now), with its new flag and mod-sequence.
    assert!(
        fetch.contains("1 (FLAGS (\\\\Flagged) UID 2 MODSEQ") && !fetch.contains("UID 3"),
        "{out}"
    );
    assert!(out.contains("exists [b'2']"), "{out}");
    assert!(out.contains("later ['3']"), "{out}");
    assert!(out.contains("expunge None"), "{out}");
}

/// mbsync (isync), a real client from Debian, syncs INBOX down to a maildir and back: a flag
/// set and a message added on the near side reach the server.
#[tokio::test]
async fn mbsync_syncs_a_mailbox_both_ways() {
    let s = stack().await;
    s.send(&[
        "Subject: one\r\n\r\nfirst\r\n",
        "Subject: two\r\n\r\nsecond\r\n",
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    let config = dir.path().join("mbsyncrc");
    std::fs::write(
        &config,
        format!(
            "IMAPAccount pochta\nHost localhost\nPort {port}\nUser {ALICE}\nPass \"{PW}\"\n\
             SSLType IMAPS\nCertificateFile {ca}\n\n\
             IMAPStore remote\nAccount pochta\n\n\
             MaildirStore local\nPath {path}/\nInbox {path}/INBOX\nSubFolders Verbatim\n\n\
             Channel sync\nFar :remote:\nNear :local:\nPatterns INBOX Sent\nCreate Both\n\
             Expunge Both\nSync All\nSyncState *\n",
            port = s.imap[0].1.port(),
            ca = s.certs.ca_path.display(),
            path = mail.display(),
        ),
    )
    .unwrap();
    let mbsync = || async {
        let mut command = tokio::process::Command::new("mbsync");
        command.arg("-c").arg(&config).arg("-a");
        run_client(&mut command, "mbsync (Debian: isync)").await;
    };
    mbsync().await;

    // Down: both messages, octet for octet (the maildir keeps LF line ends).
    let inbox = mail.join("INBOX");
    let mut files: Vec<std::path::PathBuf> = ["new", "cur"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(inbox.join(sub)).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let store = s.db.store();
    let mut expected: Vec<Vec<u8>> = s
        .stored_with_lf()
        .await
        .into_iter()
        .map(String::into_bytes)
        .collect();
    // mbsync marks what it copied with an X-TUID: header of its own.
    let mut got: Vec<Vec<u8>> = files
        .iter()
        .map(|f| without_lines(&std::fs::read_to_string(f).unwrap(), &["X-TUID: "]))
        .collect();
    expected.sort();
    got.sort();
    assert!(
        got == expected,
        "the maildir holds what the server has:\n{:?}\n{:?}",
        got.iter()
            .map(|g| String::from_utf8_lossy(g))
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|g| String::from_utf8_lossy(g))
            .collect::<Vec<_>>()
    );

    // Up: the first message marked seen here, a new message in Sent.
    let first = files
        .iter()
        .find(|f| std::fs::read_to_string(f).unwrap().contains("Subject: one"))
        .unwrap();
    let name = first.file_name().unwrap().to_str().unwrap().to_owned();
    let base = name.split(":2,").next().unwrap();
    std::fs::rename(first, inbox.join("cur").join(format!("{base}:2,S"))).unwrap();
    let sent = mail.join("Sent");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(sent.join(sub)).unwrap();
    }
    std::fs::write(
        sent.join("new").join("1700000000.1_1.localhost"),
        "Subject: from mbsync\n\nwritten offline\n",
    )
    .unwrap();
    mbsync().await;

    let inbox_box = store.mailbox(s.account, "INBOX").await.unwrap().unwrap();
    let messages = store.mailbox_messages(inbox_box.id).await.unwrap();
    let seen: Vec<i64> = messages
        .iter()
        .filter(|m| m.flags.iter().any(|f| f == "\\Seen"))
        .map(|m| m.uid)
        .collect();
    assert_eq!(seen, [1], "the flag set offline reached the server");
    let sent_box = store.mailbox(s.account, "Sent").await.unwrap().unwrap();
    let in_sent = store.mailbox_messages(sent_box.id).await.unwrap();
    assert_eq!(in_sent.len(), 1);
    let text = store
        .maildrop_entries_whole(s.account, &[in_sent[0].entry_id])
        .await
        .unwrap();
    // mbsync adds its X-TUID: header to what it uploads.
    let appended = String::from_utf8(text[0].1.clone()).unwrap();
    let kept: String = appended
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("X-TUID: "))
        .collect();
    assert_eq!(kept, "Subject: from mbsync\r\n\r\nwritten offline\r\n");
}

/// getmail6 (Debian's `getmail6`), a retriever for "fetch and delete" users: over IMAPS it
/// copies INBOX into a maildir, octet for octet but for the lines it adds itself, then deletes
/// what it fetched; a second run finds nothing new.
#[tokio::test]
async fn getmail_fetches_and_deletes_over_imaps() {
    let s = stack().await;
    s.send(&[
        "Subject: one\r\n\r\nfirst\r\n",
        "Subject: two\r\n\r\nsecond\r\n",
        "GENERATE:4000",
    ])
    .await;
    // getmail writes the Return-Path: line anew (from the envelope sender).
    let mut expected: Vec<Vec<u8>> = s
        .stored_with_lf()
        .await
        .iter()
        .map(|text| without_lines(text, &["Return-Path: "]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("Maildir");
    // getmail will not deliver as root (as CI runs): it writes as `nobody` then.
    use std::os::unix::fs::PermissionsExt;
    let open = std::fs::Permissions::from_mode(0o777);
    std::fs::set_permissions(dir.path(), open.clone()).unwrap();
    for sub in ["", "cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
        std::fs::set_permissions(maildir.join(sub), open.clone()).unwrap();
    }
    std::fs::write(
        dir.path().join("getmailrc"),
        format!(
            "[retriever]\ntype = SimpleIMAPSSLRetriever\nserver = localhost\nport = {port}\n\
             username = {ALICE}\npassword = {PW}\nca_certs = {ca}\nmailboxes = (\"INBOX\",)\n\n\
             [destination]\ntype = Maildir\npath = {path}/\nuser = nobody\n\n\
             [options]\nread_all = false\ndelete = true\ndelivered_to = false\nreceived = false\n\
             verbose = 0\n",
            port = s.imap[0].1.port(),
            ca = s.certs.ca_path.display(),
            path = maildir.display(),
        ),
    )
    .unwrap();
    let getmail = || async {
        let mut command = tokio::process::Command::new("getmail");
        command
            .arg("--getmaildir")
            .arg(dir.path())
            .arg("--rcfile")
            .arg("getmailrc");
        run_client(&mut command, "getmail (Debian: getmail6)").await;
    };
    getmail().await;
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // getmail adds its Return-Path: and an X-getmail-retrieved-from-mailbox: line.
    let mut got: Vec<Vec<u8>> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            without_lines(
                &text,
                &["Return-Path: ", "X-getmail-retrieved-from-mailbox: "],
            )
        })
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(got.len(), 3, "{files:?}");
    for (got, expected) in got.iter().zip(&expected) {
        let at = got
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        assert!(
            got == expected,
            "the maildir holds what the server had; they differ at {at}:\n{:?}\n{:?}",
            String::from_utf8_lossy(&got[at.saturating_sub(40)..(at + 40).min(got.len())]),
            String::from_utf8_lossy(
                &expected[at.saturating_sub(40)..(at + 40).min(expected.len())]
            ),
        );
    }
    // Deleted on the server, and a second run fetches nothing.
    assert_eq!(s.inbox_len().await, 0);
    getmail().await;
    assert_eq!(std::fs::read_dir(maildir.join("new")).unwrap().count(), 3);
}
