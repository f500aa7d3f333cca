//! The IMAP session with no socket and no store: every command in the states it may and may
//! not be used in, the requests it makes of the world, and what it sends for their answers.

use chrono::{DateTime, Utc};
use pochta_imap::imap_types::search::SearchKey;
use pochta_imap::{
    Action, Answer, Changes, Contents, Counts, Failure, FlagChange, Found, LoginResult,
    MailboxSummary, Message, Policy, Request, Session, Streamed,
};
use pochta_session::Output;
use pochta_testkit::Script;

type Client = Script<Session>;

fn policy(plaintext: bool) -> Policy {
    Policy {
        starttls_available: true,
        implicit_tls: false,
        plaintext_auth: plaintext,
        max_errors: 10,
        max_literal: 1000,
        read_batch_bytes: 250,
    }
}

fn client(policy: Policy) -> Client {
    let mut c = Script::new(Session::new(policy));
    assert!(c.drain().is_none());
    assert!(c.take().starts_with("* OK"), "greeting");
    c
}

fn action(output: Option<Output<Action>>) -> Action {
    match output {
        Some(Output::Action(a)) => a,
        other => panic!("expected an action, got {other:?}"),
    }
}

fn request(output: Option<Output<Action>>) -> Request {
    match action(output) {
        Action::Run(r) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

/// Search matches the store decided: (UID, mod-sequence).
fn decided(found: &[(u32, u64)]) -> Found {
    Found {
        matched: found.iter().map(|&(uid, _)| uid).collect(),
        undecided: vec![],
        highest_modseq: found.iter().map(|&(_, m)| m).max().unwrap_or(0),
    }
}

/// Answers and drains; what was sent.
fn answer(c: &mut Client, a: Answer) -> String {
    c.session.answer(a);
    assert!(c.drain().is_none());
    c.take()
}

fn logged_in() -> Client {
    logged_in_with(policy(true))
}

fn logged_in_with(policy: Policy) -> Client {
    let mut c = client(policy);
    let login = action(c.send("a1 LOGIN alice@example.org secret\r\n"));
    assert_eq!(
        login,
        Action::Login {
            username: "alice@example.org".into(),
            password: "secret".into()
        }
    );
    c.session.login_result(LoginResult::Ok);
    assert!(c.drain().is_none());
    let out = c.take();
    assert!(out.starts_with("a1 OK [CAPABILITY IMAP4REV1"), "{out}");
    c
}

fn mailbox(id: i64, name: &str) -> MailboxSummary {
    MailboxSummary {
        id,
        name: name.into(),
        special_use: None,
        subscribed: true,
        uid_validity: 77,
        uid_next: 10,
        highest_modseq: 5,
        counts: Counts {
            messages: 3,
            unseen: 2,
            size: 300,
            ..Counts::default()
        },
    }
}

fn message(uid: u32, flags: &[&str], size: u32) -> Message {
    Message {
        entry_id: uid as i64 * 100,
        uid,
        flags: flags.iter().map(|f| f.to_string()).collect(),
        modseq: 3,
        size,
        internal_date: "2026-01-02T03:04:05Z".parse::<DateTime<Utc>>().unwrap(),
    }
}

/// INBOX as the world knows it: UIDs 2, 4 (\Flagged) and 7 (\Seen).
fn inbox() -> Vec<Message> {
    vec![
        message(2, &[], 100),
        message(4, &["\\Flagged"], 200),
        message(7, &["\\Seen"], 300),
    ]
}

/// Answers the session's request for what it keeps no copy of: asked for exactly `uids`.
fn metadata(c: &mut Client, output: Option<Output<Action>>, uids: &[u32]) {
    assert_eq!(
        request(output),
        Request::Messages {
            mailbox_id: 1,
            uids: uids.to_vec()
        }
    );
    let known = inbox()
        .into_iter()
        .filter(|m| uids.contains(&m.uid))
        .collect();
    c.session.answer(Answer::Messages(Ok(known)));
}

/// Logged in with INBOX selected: UIDs 2, 4 and 7 (7 is \Seen).
fn selected(read_only: bool) -> Client {
    selected_with(read_only, policy(true))
}

fn selected_with(read_only: bool, policy: Policy) -> Client {
    let mut c = logged_in_with(policy);
    let verb = if read_only { "EXAMINE" } else { "SELECT" };
    let r = request(c.send(&format!("s1 {verb} inbox\r\n")));
    assert_eq!(
        r,
        Request::Select {
            name: "INBOX".into()
        }
    );
    // The session keeps the UIDs only.
    let out = answer(
        &mut c,
        Answer::Selected(Ok((mailbox(1, "INBOX"), vec![2, 4, 7]))),
    );
    assert!(out.contains("* 3 EXISTS\r\n"), "{out}");
    assert!(
        out.contains("[UIDVALIDITY 77]") && out.contains("[UIDNEXT 10]"),
        "{out}"
    );
    let code = if read_only { "READ-ONLY" } else { "READ-WRITE" };
    assert!(out.contains(&format!("s1 OK [{code}]")), "{out}");
    c
}

const MAIL: &[u8] = b"Subject: Hello\r\nFrom: a@example.net\r\n\r\nBody text\r\n";

#[test]
fn capabilities_follow_the_state_and_tls() {
    let mut c = client(policy(false));
    let out = c.cmd("c1 CAPABILITY");
    assert!(
        out.contains("STARTTLS") && out.contains("LOGINDISABLED"),
        "{out}"
    );
    assert!(!out.contains("AUTH=PLAIN"), "{out}");
    assert!(out.ends_with("c1 OK CAPABILITY completed\r\n"), "{out}");
    let mut c = client(policy(true));
    let out = c.cmd("c1 CAPABILITY");
    assert!(
        out.contains("AUTH=PLAIN") && out.contains("SASL-IR"),
        "{out}"
    );
    assert!(!out.contains("IDLE"), "{out}");
    let mut c = logged_in();
    let out = c.cmd("c2 CAPABILITY");
    for cap in [
        "IDLE",
        "MOVE",
        "UIDPLUS",
        "CONDSTORE",
        "SPECIAL-USE",
        "NAMESPACE",
    ] {
        assert!(out.contains(cap), "{cap}: {out}");
    }
}

#[test]
fn plaintext_login_needs_tls_and_starttls_drops_what_was_pipelined() {
    let mut c = client(policy(false));
    let out = c.cmd("a1 LOGIN alice secret");
    assert!(out.starts_with("a1 NO [PRIVACYREQUIRED]"), "{out}");
    // Everything after STARTTLS in the same packet is thrown away, not run after TLS.
    let output = c.send("t1 STARTTLS\r\nt2 LOGIN alice secret\r\n");
    assert!(matches!(output, Some(Output::StartTls)), "{output:?}");
    assert_eq!(c.take(), "t1 OK Begin TLS negotiation now\r\n");
    pochta_session::Session::tls_established(&mut c.session);
    assert!(c.drain().is_none(), "the pipelined LOGIN is gone");
    assert_eq!(c.take(), "", "no second greeting");
    let out = c.cmd("c1 CAPABILITY");
    assert!(
        !out.contains("STARTTLS") && out.contains("AUTH=PLAIN"),
        "{out}"
    );
    let out = c.cmd("t3 STARTTLS");
    assert!(out.starts_with("t3 BAD"), "{out}");
}

#[test]
fn login_failures_are_told_apart() {
    for (result, code) in [
        (LoginResult::BadCredentials, "[AUTHENTICATIONFAILED]"),
        (LoginResult::RateLimited, "[LIMIT] Too many failed logins"),
        (LoginResult::TooManySessions, "[LIMIT] Too many sessions"),
        (LoginResult::TemporaryFailure, "[UNAVAILABLE]"),
    ] {
        let mut c = client(policy(true));
        action(c.send("a1 LOGIN alice secret\r\n"));
        c.session.login_result(result);
        assert!(c.drain().is_none());
        let out = c.take();
        assert!(out.starts_with(&format!("a1 NO {code}")), "{out}");
        // Still not logged in.
        assert!(c.cmd("a2 LIST \"\" *").starts_with("a2 BAD"));
    }
}

#[test]
fn authenticate_plain_with_and_without_an_initial_response() {
    use base64::Engine;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let mut c = client(policy(true));
    let login = action(c.send(&format!(
        "a1 AUTHENTICATE PLAIN {}\r\n",
        b64(b"\0alice@example.org\0pw")
    )));
    assert!(matches!(login, Action::Login { ref username, .. } if username == "alice@example.org"));
    c.session.login_result(LoginResult::Ok);
    c.drain();
    assert!(c.take().starts_with("a1 OK"));

    let mut c = client(policy(true));
    assert!(c.send("a1 AUTHENTICATE PLAIN\r\n").is_none());
    assert_eq!(c.take(), "+ \r\n");
    let login = action(c.send(&format!("{}\r\n", b64(b"bob\0bob\0pw"))));
    assert!(matches!(login, Action::Login { ref password, .. } if password == "pw"));
    c.session.login_result(LoginResult::BadCredentials);
    c.drain();
    assert!(c.take().starts_with("a1 NO [AUTHENTICATIONFAILED]"));

    // Cancelled, or another identity than the one authenticated: refused.
    assert!(c.send("a2 AUTHENTICATE PLAIN\r\n").is_none());
    c.take();
    assert!(c.send("*\r\n").is_none());
    assert!(c.take().starts_with("a2 BAD"));
    let out = c.cmd(&format!("a3 AUTHENTICATE PLAIN {}", b64(b"carol\0bob\0pw")));
    assert!(out.starts_with("a3 BAD"), "{out}");
    let out = c.cmd("a4 AUTHENTICATE CRAM-MD5");
    assert!(out.starts_with("a4 NO"), "{out}");
}

#[test]
fn commands_are_refused_in_the_wrong_state() {
    let mut c = client(policy(true));
    for cmd in [
        "SELECT INBOX",
        "LIST \"\" *",
        "CREATE x",
        "FETCH 1 FLAGS",
        "NAMESPACE",
    ] {
        let out = c.cmd(&format!("x {cmd}"));
        assert!(out.starts_with("x BAD"), "{cmd}: {out}");
    }
    let mut c = logged_in();
    for cmd in [
        "FETCH 1 FLAGS",
        "STORE 1 +FLAGS (\\Seen)",
        "EXPUNGE",
        "CLOSE",
        "SEARCH ALL",
    ] {
        let out = c.cmd(&format!("y {cmd}"));
        assert!(out.starts_with("y BAD"), "{cmd}: {out}");
    }
    let out = c.cmd("z LOGIN a b");
    assert!(out.starts_with("z BAD"), "{out}");
}

#[test]
fn list_matches_patterns_and_shows_special_use() {
    let mut c = logged_in();
    let out = c.cmd("l1 LIST \"\" \"\"");
    assert!(out.contains("* LIST (\\Noselect) \"/\" \"\""), "{out}");
    assert_eq!(
        request(c.send("l2 LIST \"\" \"%\"\r\n")),
        Request::Mailboxes
    );
    let mut sent = mailbox(3, "Sent");
    sent.special_use = Some("\\Sent".into());
    let mut work = mailbox(4, "Work");
    work.subscribed = false;
    let list = vec![mailbox(1, "INBOX"), sent, work, mailbox(5, "Work/2026")];
    let out = answer(&mut c, Answer::Mailboxes(Ok(list.clone())));
    assert!(
        out.contains("* LIST (\\HasNoChildren \\Sent \\Subscribed) \"/\" Sent"),
        "{out}"
    );
    assert!(out.contains("* LIST (\\HasChildren) \"/\" Work"), "{out}");
    assert!(out.contains("INBOX") && !out.contains("2026"), "{out}");
    assert!(out.ends_with("l2 OK LIST completed\r\n"));
    request(c.send("l3 LSUB \"\" \"*\"\r\n"));
    let out = answer(&mut c, Answer::Mailboxes(Ok(list)));
    assert!(
        out.contains("* LSUB") && out.contains("Work/2026") && !out.contains(" Work\r\n"),
        "{out}"
    );
}

#[test]
fn mailbox_management_asks_the_world_and_protects_inbox() {
    let mut c = logged_in();
    assert!(c.cmd("m1 CREATE INBOX").starts_with("m1 NO"));
    assert!(c.cmd("m2 DELETE inbox").starts_with("m2 NO"));
    assert_eq!(
        c.cmd("m3 RENAME Work inbox"),
        "m3 NO [ALREADYEXISTS] Mailbox already exists\r\n"
    );
    // Renaming INBOX is asked of the world, which moves its messages (RFC 9051 6.3.6).
    assert_eq!(
        request(c.send("m3 RENAME inbox Old\r\n")),
        Request::Rename {
            from: "INBOX".into(),
            to: "Old".into()
        }
    );
    assert_eq!(
        answer(&mut c, Answer::Done(Ok(()))),
        "m3 OK RENAME completed\r\n"
    );
    assert!(c.cmd("m4 CREATE \"a//b\"").starts_with("m4 BAD"));
    assert_eq!(
        request(c.send("m5 CREATE Work/2026\r\n")),
        Request::Create {
            name: "Work/2026".into()
        }
    );
    assert_eq!(
        answer(&mut c, Answer::Done(Err(Failure::AlreadyExists))),
        "m5 NO [ALREADYEXISTS] Mailbox already exists\r\n"
    );
    assert_eq!(
        request(c.send("m6 RENAME Work Jobs\r\n")),
        Request::Rename {
            from: "Work".into(),
            to: "Jobs".into()
        }
    );
    assert_eq!(
        answer(&mut c, Answer::Done(Ok(()))),
        "m6 OK RENAME completed\r\n"
    );
    assert_eq!(
        request(c.send("m7 UNSUBSCRIBE Jobs\r\n")),
        Request::Subscribe {
            name: "Jobs".into(),
            on: false
        }
    );
    // RFC 9051 7.1: NONEXISTENT, except where the client may create it and try again.
    assert!(
        answer(&mut c, Answer::Done(Err(Failure::NoSuchMailbox)))
            .starts_with("m7 NO [NONEXISTENT]")
    );
    request(c.send("m7a APPEND Nowhere {1+}\r\nx\r\n"));
    assert!(
        answer(&mut c, Answer::Placed(Err(Failure::NoSuchMailbox)))
            .starts_with("m7a NO [TRYCREATE]")
    );
    assert_eq!(
        request(c.send(
            "m8 STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY SIZE DELETED-STORAGE)\r\n"
        )),
        Request::Status {
            name: "INBOX".into(),
            deleted: true
        }
    );
    let counts = Counts {
        messages: 3,
        unseen: 2,
        deleted: 1,
        size: 600,
        deleted_size: 200,
    };
    let out = answer(&mut c, Answer::Status(Ok((mailbox(1, "INBOX"), counts))));
    assert!(
        out.starts_with(
            "* STATUS INBOX (MESSAGES 3 UNSEEN 2 UIDNEXT 10 UIDVALIDITY 77 SIZE 600 DELETED-STORAGE 200)"
        ),
        "{out}"
    );
    // The usual poll names no deleted count: the world need not read them.
    assert_eq!(
        request(c.send("m9 STATUS Trash (MESSAGES UNSEEN UIDNEXT)\r\n")),
        Request::Status {
            name: "Trash".into(),
            deleted: false
        }
    );
    let out = answer(&mut c, Answer::Status(Ok((mailbox(4, "Trash"), counts))));
    assert!(
        out.starts_with("* STATUS Trash (MESSAGES 3 UNSEEN 2 UIDNEXT 10)"),
        "{out}"
    );
}

#[test]
fn append_takes_a_literal_and_answers_appenduid() {
    let mut c = logged_in();
    // A synchronising literal gets its continuation first.
    assert!(c.send("p1 APPEND Sent (\\Seen) {12}\r\n").is_none());
    assert!(c.take().starts_with("+ "));
    let r = request(c.send("Subject: x\r\n\r\n"));
    assert_eq!(
        r,
        Request::Append {
            name: "Sent".into(),
            content: b"Subject: x\r\n".to_vec(),
            flags: vec!["\\Seen".into()],
            date: None,
        }
    );
    let out = answer(&mut c, Answer::Placed(Ok((9, vec![(0, 4)]))));
    assert_eq!(out, "p1 OK [APPENDUID 9 4] APPEND completed\r\n");
    // LITERAL+: no continuation. Too large for max_literal: refused, nothing stored.
    let r = request(c.send("p2 APPEND Drafts {5+}\r\nhello\r\n"));
    assert!(matches!(r, Request::Append { ref content, .. } if content == b"hello"));
    answer(&mut c, Answer::Placed(Err(Failure::NoSuchMailbox)));
    let out = c.send("p3 APPEND Drafts {5000}\r\n");
    assert!(out.is_none());
    assert!(
        c.take().starts_with("p3 BAD"),
        "an oversized literal is refused before it is sent"
    );
}

/// After a large APPEND the parser is replaced by a fresh one, which gives back the buffer
/// the literal grew; it is replaced only where it holds no input, so commands pipelined
/// behind the APPEND, however the octets arrive, are all answered, in order.
#[test]
fn a_large_append_renews_the_parser_and_loses_nothing_pipelined_behind_it() {
    let content: Vec<u8> = (0..100_000).map(|i| b"abcdefgh\r\n"[i % 10]).collect();
    let mut wire = format!("p1 APPEND INBOX {{{}+}}\r\n", content.len()).into_bytes();
    wire.extend_from_slice(&content);
    wire.extend_from_slice(b"\r\nn1 NOOP\r\np2 APPEND INBOX {3+}\r\nabc\r\nn2 NOOP\r\n");
    for read in [1, 7, 1000, 16 * 1024, wire.len()] {
        let mut c = logged_in_with(Policy {
            max_literal: 200_000,
            ..policy(true)
        });
        c.take();
        let before = c.session.parsers_renewed();
        let mut appended = Vec::new();
        for chunk in wire.chunks(read) {
            let mut output = c.send_bytes(chunk);
            while let Some(out) = output {
                match request(Some(out)) {
                    Request::Append { content, .. } => appended.push(content),
                    other => panic!("unexpected {other:?}"),
                }
                c.session.answer(Answer::Placed(Ok((9, vec![(0, 4)]))));
                output = c.drain();
            }
        }
        assert_eq!(
            appended,
            vec![content.clone(), b"abc".to_vec()],
            "reads of {read}"
        );
        let out = c.take();
        let tagged: Vec<String> = out
            .lines()
            .filter(|l| !l.starts_with('*'))
            .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            tagged,
            ["p1 OK", "n1 OK", "p2 OK", "n2 OK"],
            "reads of {read}: {out}"
        );
        assert_eq!(c.session.parsers_renewed(), before + 1, "reads of {read}");
    }
}

/// A large command refused grows the parser's buffer as much as one taken: it is renewed
/// too, and what imap-next answered itself (a literal too long) still goes out.
#[test]
fn a_large_refused_command_renews_the_parser_and_its_answer_goes_out() {
    let mut c = logged_in_with(Policy {
        max_literal: 200_000,
        ..policy(true)
    });
    c.take();
    let before = c.session.parsers_renewed();
    // APPEND whose mailbox name is the literal, and no message: malformed.
    let mut wire = b"m1 APPEND {100000+}\r\n".to_vec();
    wire.extend(std::iter::repeat_n(b'x', 100_000));
    wire.extend_from_slice(b"\r\nn1 NOOP\r\n");
    assert!(c.send_bytes(&wire).is_none());
    let out = c.take();
    assert!(out.starts_with("m1 BAD"), "{out}");
    assert!(out.ends_with("n1 OK NOOP completed\r\n"), "{out}");
    assert_eq!(c.session.parsers_renewed(), before + 1);
    // A line over 64 KiB announcing a literal past the limit: imap-next's BAD, then NOOP's OK.
    let flags = "\\Seen ".repeat(12_000);
    let line = format!(
        "l1 APPEND INBOX ({}) {{300000}}\r\nn2 NOOP\r\n",
        flags.trim_end()
    );
    assert!(c.send(&line).is_none());
    let out = c.take();
    assert!(out.starts_with("l1 BAD"), "{out}");
    assert!(out.ends_with("n2 OK NOOP completed\r\n"), "{out}");
    assert_eq!(c.session.parsers_renewed(), before + 2);
}

#[test]
fn fetch_of_metadata_asks_only_for_the_messages_named() {
    let mut c = selected(false);
    let output = c.send("f1 FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE)\r\n");
    metadata(&mut c, output, &[2, 4, 7]);
    assert!(c.drain().is_none());
    let out = c.take();
    assert!(
        out.contains("* 2 FETCH (FLAGS (\\Flagged) UID 4 RFC822.SIZE 200 INTERNALDATE \"02-Jan-2026 03:04:05 +0000\")"),
        "{out}"
    );
    assert!(out.ends_with("f1 OK FETCH completed\r\n"));
    // UID FETCH names what exists in the range and always includes UID.
    let output = c.send("f2 UID FETCH 3:4294967295 FLAGS\r\n");
    metadata(&mut c, output, &[4, 7]);
    assert!(c.drain().is_none());
    let out = c.take();
    assert!(out.contains("* 2 FETCH (UID 4 FLAGS (\\Flagged))"), "{out}");
    assert!(out.contains("* 3 FETCH (UID 7 FLAGS (\\Seen))"), "{out}");
    assert!(!out.contains("* 1 FETCH"), "{out}");
    // A UID range with nothing in it needs nothing from the world.
    assert_eq!(c.cmd("f3 UID FETCH 5:6 FLAGS"), "f3 OK FETCH completed\r\n");
    assert!(
        c.cmd("f4 FETCH 4 FLAGS").starts_with("f4 BAD"),
        "no message 4"
    );
}

/// The world may answer a headers-only batch in part (header blocks longer than guessed):
/// the session sends what came and asks again from the first message left out.
#[test]
fn a_headers_only_batch_answered_in_part_is_asked_for_again_from_where_it_ended() {
    let mut c = selected_with(
        false,
        Policy {
            read_batch_bytes: 4096,
            ..policy(true)
        },
    );
    for command in [
        "f1 FETCH 1:* BODY.PEEK[HEADER]\r\n",
        "q1 SEARCH HEADER X-Mailer hello\r\n",
    ] {
        let output = c.send(command);
        metadata(&mut c, output, &[2, 4, 7]);
        let all = Request::Contents {
            entry_ids: vec![200, 400, 700],
            headers_only: true,
            next: vec![],
        };
        assert_eq!(request(c.drain()), all);
        // One answered (and found), then none: the session still moves on, by one.
        let first = Contents {
            octets: [(200, MAIL.to_vec())].into_iter().collect(),
            answered: Some(1),
        };
        c.session.answer(Answer::Contents(Ok(first)));
        let rest = Request::Contents {
            entry_ids: vec![400, 700],
            headers_only: true,
            next: vec![],
        };
        assert_eq!(request(c.drain()), rest);
        let none = Contents {
            octets: [(400, MAIL.to_vec()), (700, MAIL.to_vec())]
                .into_iter()
                .collect(),
            answered: Some(0),
        };
        c.session.answer(Answer::Contents(Ok(none)));
        let last = Request::Contents {
            entry_ids: vec![700],
            headers_only: true,
            next: vec![],
        };
        assert_eq!(request(c.drain()), last);
        let out = answer(
            &mut c,
            Answer::Contents(Ok(Contents::from_iter([(700, MAIL.to_vec())]))),
        );
        if command.starts_with("f1") {
            // Each message once, in order, whatever the octets beyond the answered part.
            assert_eq!(out.matches(" FETCH (BODY[HEADER] {39}").count(), 3, "{out}");
            let at = |n: &str| out.find(&format!("* {n} FETCH")).unwrap();
            assert!(at("1") < at("2") && at("2") < at("3"), "{out}");
            assert!(out.ends_with("f1 OK FETCH completed\r\n"), "{out}");
        } else {
            assert_eq!(out, "* SEARCH\r\nq1 OK SEARCH completed\r\n");
        }
    }
}

#[test]
fn fetch_of_bodies_reads_in_batches_and_sets_seen_unless_peeking() {
    let mut c = selected(false);
    // PEEK: no flag change; the 250-octet batches hold one message, then another each.
    let output = c.send("f1 FETCH 1:3 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n");
    metadata(&mut c, output, &[2, 4, 7]);
    let r = request(c.drain());
    assert_eq!(
        r,
        Request::Contents {
            entry_ids: vec![200],
            headers_only: true,
            // The batch after this one, which the world may read meanwhile.
            next: vec![400]
        }
    );
    let contents =
        |ids: &[i64]| -> Contents { ids.iter().map(|&id| (id, MAIL.to_vec())).collect() };
    c.session.answer(Answer::Contents(Ok(contents(&[200]))));
    let r = request(c.drain());
    assert_eq!(
        r,
        Request::Contents {
            entry_ids: vec![400],
            headers_only: true,
            next: vec![700]
        }
    );
    // Each batch's responses go out before the next batch is read: a FETCH of a whole
    // mailbox is never held in memory whole.
    let field = "BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: Hello\r\n\r\n";
    assert_eq!(c.take(), format!("* 1 FETCH ({field})\r\n"));
    c.session.answer(Answer::Contents(Ok(contents(&[400]))));
    let r = request(c.drain());
    assert_eq!(
        r,
        Request::Contents {
            entry_ids: vec![700],
            headers_only: true,
            next: vec![]
        }
    );
    assert_eq!(c.take(), format!("* 2 FETCH ({field})\r\n"));
    // Message 3 was expunged elsewhere meanwhile: it is left out, not made up.
    let out = answer(&mut c, Answer::Contents(Ok(Contents::default())));
    assert_eq!(out, "f1 OK FETCH completed\r\n");

    // BODY[] (not PEEK) first sets \Seen on the unseen ones, then sends FLAGS with them.
    let output = c.send("f2 FETCH 1 BODY[]\r\n");
    metadata(&mut c, output, &[2]);
    let r = request(c.drain());
    assert_eq!(
        r,
        Request::StoreFlags {
            mailbox_id: 1,
            uids: vec![2],
            change: FlagChange::Add,
            flags: vec!["\\Seen".into()],
            unchanged_since: None
        }
    );
    c.session.answer(Answer::Flags(Ok((
        vec![message(2, &["\\Seen"], 100)],
        vec![],
    ))));
    let r = request(c.drain());
    assert_eq!(
        r,
        Request::Contents {
            entry_ids: vec![200],
            headers_only: false,
            next: vec![]
        }
    );
    let out = answer(&mut c, Answer::Contents(Ok(contents(&[200]))));
    let literal = format!("BODY[] {{{}}}\r\n", MAIL.len());
    assert!(
        out.starts_with("* 1 FETCH (") && out.contains(&literal),
        "{out}"
    );
    assert!(out.contains("FLAGS (\\Seen)"), "{out}");
    assert!(out.ends_with("f2 OK FETCH completed\r\n"), "{out}");
}

#[test]
fn fetch_sections_and_partials() {
    let mut c = selected(true);
    let output =
        c.send("f1 FETCH 3 (BODY.PEEK[TEXT]<5.4> BODY.PEEK[HEADER] ENVELOPE BODYSTRUCTURE)\r\n");
    metadata(&mut c, output, &[7]);
    let r = request(c.drain());
    assert_eq!(
        r,
        Request::Contents {
            entry_ids: vec![700],
            headers_only: false,
            next: vec![]
        }
    );
    let out = answer(
        &mut c,
        Answer::Contents(Ok([(700, MAIL.to_vec())].into_iter().collect())),
    );
    assert!(out.contains("BODY[TEXT]<5> {4}\r\ntext"), "{out}");
    assert!(
        out.contains("BODY[HEADER] {39}\r\nSubject: Hello\r\nFrom: a@example.net\r\n\r\n"),
        "{out}"
    );
    assert!(
        out.contains("ENVELOPE (NIL \"Hello\" ((NIL NIL \"a\" \"example.net\"))"),
        "{out}"
    );
    assert!(
        out.contains("BODYSTRUCTURE (\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 11 1 NIL))"),
        "{out}"
    );
}

/// A message larger than a read batch, fetched as it is stored, is streamed: the world gets
/// the response around the literal and sends the octets as it reads them, so no message is
/// ever held whole. Anything else of it (a section, the envelope) is read as before.
#[test]
fn a_message_larger_than_a_batch_is_streamed() {
    let mut c = selected(false);
    // UIDs 4 (200 octets) and 7 (300, over the 250-octet batch).
    let output = c.send("f1 UID FETCH 4:7 (FLAGS BODY.PEEK[] RFC822.SIZE)\r\n");
    metadata(&mut c, output, &[4, 7]);
    // UID 4 is read as before, with nothing read ahead: UID 7, next, is streamed.
    assert_eq!(
        request(c.drain()),
        Request::Contents {
            entry_ids: vec![400],
            headers_only: false,
            next: vec![]
        }
    );
    c.session.answer(Answer::Contents(Ok([(400, MAIL.to_vec())]
        .into_iter()
        .collect())));
    let streamed = match action(c.drain()) {
        Action::Stream(s) => s,
        other => panic!("expected a stream, got {other:?}"),
    };
    // UID 4's response left before the stream began.
    let mail = String::from_utf8(MAIL.to_vec()).unwrap();
    assert_eq!(
        c.take(),
        format!(
            "* 2 FETCH (UID 4 FLAGS (\\Flagged) BODY[] {{{}}}\r\n{mail} RFC822.SIZE 200)\r\n",
            MAIL.len()
        )
    );
    assert_eq!(
        streamed,
        Streamed {
            entry_id: 700,
            head: b"* 3 FETCH (UID 7 FLAGS (\\Seen) BODY[] {300}\r\n".to_vec(),
            from: 0,
            len: 300,
            tail: b" RFC822.SIZE 300)\r\n".to_vec(),
        }
    );
    assert_eq!(
        answer(&mut c, Answer::Streamed(Ok(true))),
        "f1 OK FETCH completed\r\n"
    );

    // A partial: only its range, clipped to the message.
    let output = c.send("f2 FETCH 3 BODY.PEEK[]<290.50>\r\n");
    metadata(&mut c, output, &[7]);
    let Action::Stream(s) = action(c.drain()) else {
        panic!("not streamed")
    };
    assert_eq!(
        (s.head.as_slice(), s.from, s.len),
        (b"* 3 FETCH (BODY[]<290> {10}\r\n".as_slice(), 290, 10)
    );
    assert_eq!(s.tail, b")\r\n");
    // The store failed before the response began: the FETCH fails, the session goes on.
    let out = answer(&mut c, Answer::Streamed(Err(Failure::Temporary)));
    assert!(out.starts_with("f2 NO [UNAVAILABLE]"), "{out}");

    // RFC822 of an unseen one sets \Seen first and tells it with the streamed response.
    let output = c.send("f3 FETCH 3 RFC822\r\n");
    assert!(matches!(request(output), Request::Messages { .. }));
    c.session
        .answer(Answer::Messages(Ok(vec![message(7, &[], 300)])));
    assert!(matches!(request(c.drain()), Request::StoreFlags { .. }));
    c.session.answer(Answer::Flags(Ok((
        vec![message(7, &["\\Seen"], 300)],
        vec![],
    ))));
    let Action::Stream(s) = action(c.drain()) else {
        panic!("not streamed")
    };
    assert_eq!(s.head, b"* 3 FETCH (RFC822 {300}\r\n");
    assert_eq!(s.tail, b" FLAGS (\\Seen))\r\n");
    // Gone meanwhile: nothing was sent of it.
    assert_eq!(
        answer(&mut c, Answer::Streamed(Ok(false))),
        "f3 OK FETCH completed\r\n"
    );

    // The envelope needs the message parsed: read whole, as before.
    let output = c.send("f4 FETCH 3 (BODY.PEEK[] ENVELOPE)\r\n");
    metadata(&mut c, output, &[7]);
    assert!(matches!(request(c.drain()), Request::Contents { .. }));
}

/// What a stream's literal carries of each piece the store reads: its range, NULs as spaces,
/// and spaces for what a message that ended early did not fill.
#[test]
fn a_stream_carries_its_range_of_each_piece() {
    let s = Streamed {
        entry_id: 1,
        head: vec![],
        from: 3,
        len: 5,
        tail: vec![],
    };
    assert_eq!(s.carry(0, &mut b"abc".to_owned()), b"");
    assert_eq!(s.carry(3, &mut b"d\0f".to_owned()), b"d f");
    assert_eq!(s.carry(6, &mut b"ghij".to_owned()), b"gh");
    let mut short = s.carry(0, &mut b"abcde".to_owned()).to_vec();
    assert_eq!(short, b"de");
    s.pad(2, &mut short);
    assert_eq!(short, b"de   ");
}

#[test]
fn binary_decodes_parts_and_refuses_an_unknown_encoding() {
    let mut c = selected(true);
    let encoded = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAGFi\r\n--B\r\n\
Content-Transfer-Encoding: x-unknown\r\n\r\nzz\r\n--B--\r\n";
    let output = c.send("b1 FETCH 3 (BINARY.PEEK[1] BINARY.SIZE[1] BINARY.PEEK[1]<1.1>)\r\n");
    metadata(&mut c, output, &[7]);
    request(c.drain());
    let out = answer(
        &mut c,
        Answer::Contents(Ok([(700, encoded.to_vec())].into_iter().collect())),
    );
    // "\0ab": a NUL, so a literal8.
    assert!(out.contains("BINARY[1] ~{3}\r\n\0ab"), "{out:?}");
    assert!(out.contains("BINARY.SIZE[1] 3"), "{out}");
    assert!(out.contains("BINARY[1] {1}\r\na"), "{out}");
    assert!(out.ends_with("b1 OK FETCH completed\r\n"), "{out}");
    let output = c.send("b2 FETCH 3 BINARY.PEEK[2]\r\n");
    metadata(&mut c, output, &[7]);
    request(c.drain());
    let out = answer(
        &mut c,
        Answer::Contents(Ok([(700, encoded.to_vec())].into_iter().collect())),
    );
    assert!(out.starts_with("b2 NO [UNKNOWN-CTE]"), "{out}");
    // BINARY (not PEEK) sets \Seen, as BODY[] does, where the mailbox is writable.
    let mut c = selected(false);
    let output = c.send("b3 FETCH 1 BINARY[]\r\n");
    metadata(&mut c, output, &[2]);
    assert!(matches!(
        request(c.drain()),
        Request::StoreFlags { ref flags, .. } if flags == &["\\Seen".to_string()]
    ));
}

#[test]
fn store_changes_flags_and_reports_unchangedsince_conflicts() {
    let mut c = selected(false);
    let r = request(c.send("s1 STORE 1:2 +FLAGS (\\Deleted)\r\n"));
    assert_eq!(
        r,
        Request::StoreFlags {
            mailbox_id: 1,
            uids: vec![2, 4],
            change: FlagChange::Add,
            flags: vec!["\\Deleted".into()],
            unchanged_since: None
        }
    );
    let changed = vec![
        message(2, &["\\Deleted"], 100),
        message(4, &["\\Deleted", "\\Flagged"], 200),
    ];
    c.session.answer(Answer::Flags(Ok((changed, vec![]))));
    // Then the flags of every message named, as they are now.
    let output = c.drain();
    assert_eq!(
        request(output),
        Request::Messages {
            mailbox_id: 1,
            uids: vec![2, 4]
        }
    );
    let now = vec![
        message(2, &["\\Deleted"], 100),
        message(4, &["\\Deleted", "\\Flagged"], 200),
    ];
    let out = answer(&mut c, Answer::Messages(Ok(now)));
    assert!(out.contains("* 1 FETCH (FLAGS (\\Deleted))"), "{out}");
    assert!(
        out.contains("* 2 FETCH (FLAGS (\\Deleted \\Flagged))"),
        "{out}"
    );
    let r = request(c.send("s2 UID STORE 7 (UNCHANGEDSINCE 2) FLAGS.SILENT (\\Answered)\r\n"));
    assert!(
        matches!(
            r,
            Request::StoreFlags {
                unchanged_since: Some(2),
                ..
            }
        ),
        "{r:?}"
    );
    let out = answer(&mut c, Answer::Flags(Ok((vec![], vec![7]))));
    assert_eq!(out, "s2 OK [MODIFIED 7] STORE completed\r\n");
    // A read-only mailbox takes no changes.
    let mut c = selected(true);
    assert!(c.cmd("s3 STORE 1 +FLAGS (\\Seen)").starts_with("s3 NO"));
    assert!(c.cmd("s4 EXPUNGE").starts_with("s4 NO"));
}

/// Answers; what the session does next.
fn answer_and_drain(c: &mut Client, a: Answer) -> Option<Output<Action>> {
    c.session.answer(a);
    c.drain()
}

/// The NOOP after a STORE: `Request::Changes` since which mod-sequence.
fn changes_asked_after_noop(c: &mut Client) -> u64 {
    match request(c.send("n NOOP\r\n")) {
        Request::Changes { since_modseq, .. } => {
            // Answered as nothing changed.
            let unchanged = Changes {
                mailbox: Some(mailbox(1, "INBOX")),
                changed: vec![],
                present: vec![2, 4, 7],
            };
            answer(c, Answer::Changes(Ok(unchanged)));
            since_modseq
        }
        other => panic!("{other:?}"),
    }
}

fn with_modseq(mut m: Message, modseq: u64) -> Message {
    m.modseq = modseq;
    m
}

#[test]
fn a_session_is_not_told_its_own_store_again() {
    // The view knows mod-sequence 5. The STORE took 6, the next: NOOP looks from 6 on, so
    // the change is not reported back to the session that made and reported it. It took 8
    // (someone else's change came between): NOOP looks from 5 on and tells both.
    for (took, since) in [(6, 6), (8, 5)] {
        let mut c = selected(false);
        request(c.send("s1 STORE 1 +FLAGS (\\Flagged)\r\n"));
        let changed = vec![with_modseq(message(2, &["\\Flagged"], 100), took)];
        request(answer_and_drain(
            &mut c,
            Answer::Flags(Ok((changed.clone(), vec![]))),
        ));
        let out = answer(&mut c, Answer::Messages(Ok(changed)));
        assert!(out.contains("* 1 FETCH (FLAGS (\\Flagged))"), "{out}");
        assert_eq!(changes_asked_after_noop(&mut c), since);
    }

    // With CONDSTORE, a .SILENT STORE tells the client no mod-sequence: the change is told
    // at the next NOOP, as one made elsewhere.
    let mut c = selected(false);
    assert!(c.cmd("e1 ENABLE CONDSTORE").contains("e1 OK"));
    request(c.send("s1 STORE 1 +FLAGS.SILENT (\\Flagged)\r\n"));
    let changed = vec![with_modseq(message(2, &["\\Flagged"], 100), 6)];
    let out = answer(&mut c, Answer::Flags(Ok((changed, vec![]))));
    assert_eq!(out, "s1 OK STORE completed\r\n");
    assert_eq!(changes_asked_after_noop(&mut c), 5);
}

#[test]
fn a_fetch_that_sets_seen_is_not_told_again() {
    // The \Seen a FETCH set went out with the message: NOOP looks from its mod-sequence on.
    // The message was expunged before it was read: its new flags were never told, so NOOP
    // looks from where the view was.
    let read_200 = Contents::from_iter([(200, MAIL.to_vec())]);
    for (read, since) in [(read_200, 6), (Contents::default(), 5)] {
        let mut c = selected(false);
        let output = c.send("f1 FETCH 1 BODY[]\r\n");
        metadata(&mut c, output, &[2]);
        assert!(matches!(request(c.drain()), Request::StoreFlags { .. }));
        let seen = vec![with_modseq(message(2, &["\\Seen"], 100), 6)];
        assert!(matches!(
            request(answer_and_drain(&mut c, Answer::Flags(Ok((seen, vec![]))))),
            Request::Contents { .. }
        ));
        let out = answer(&mut c, Answer::Contents(Ok(read)));
        assert!(out.ends_with("f1 OK FETCH completed\r\n"), "{out}");
        assert_eq!(changes_asked_after_noop(&mut c), since);
    }
}

#[test]
fn a_silent_conditional_store_still_tells_the_new_modseqs() {
    // RFC 7162 3.1.3: a FETCH with MODSEQ for each message stored, even with .SILENT; none
    // for the one that failed the UNCHANGEDSINCE test.
    let mut c = selected(false);
    request(c.send("s1 UID STORE 2,4 (UNCHANGEDSINCE 5) +FLAGS.SILENT (\\Seen)\r\n"));
    let changed = vec![with_modseq(message(2, &["\\Seen"], 100), 6)];
    let out = answer(&mut c, Answer::Flags(Ok((changed, vec![4]))));
    assert_eq!(
        out,
        "* 1 FETCH (UID 2 MODSEQ (6))\r\ns1 OK [MODIFIED 4] STORE completed\r\n"
    );
    // And the client knows 6 now: NOOP does not tell it again.
    assert_eq!(changes_asked_after_noop(&mut c), 6);
}

#[test]
fn expunge_copy_and_move_renumber_the_view() {
    let mut c = selected(false);
    assert_eq!(
        request(c.send("e1 EXPUNGE\r\n")),
        Request::Expunge {
            mailbox_id: 1,
            uids: None
        }
    );
    // UIDs 2 and 7 went: numbers sent highest first, so each is right when it arrives.
    let out = answer(&mut c, Answer::Expunged(Ok(vec![2, 7])));
    assert_eq!(
        out,
        "* 3 EXPUNGE\r\n* 1 EXPUNGE\r\ne1 OK EXPUNGE completed\r\n"
    );
    let output = c.send("e2 FETCH 1 UID\r\n");
    metadata(&mut c, output, &[4]);
    assert!(c.drain().is_none());
    let out = c.take();
    assert!(out.contains("* 1 FETCH (UID 4)"), "{out}");

    let r = request(c.send("c1 UID COPY 4 Trash\r\n"));
    assert_eq!(
        r,
        Request::Copy {
            mailbox_id: 1,
            uids: vec![4],
            to: "Trash".into(),
            remove: false
        }
    );
    let out = answer(&mut c, Answer::Placed(Ok((55, vec![(4, 12)]))));
    assert_eq!(out, "c1 OK [COPYUID 55 4 12] COPY completed\r\n");
    request(c.send("c2 MOVE 1 Trash\r\n"));
    let out = answer(&mut c, Answer::Placed(Ok((55, vec![(4, 13)]))));
    assert_eq!(
        out,
        "* OK [COPYUID 55 4 13] moved\r\n* 1 EXPUNGE\r\nc2 OK MOVE completed\r\n"
    );
    // The view is empty now: there is no message 1.
    assert!(c.cmd("c3 COPY 1:* Trash").starts_with("c3 BAD"));
}

#[test]
fn quota_and_limits_the_world_refuses_get_their_response_codes() {
    let mut c = selected(false);
    // RFC 9051 7.1: OVERQUOTA for an APPEND or COPY the account's quota cannot take.
    request(c.send("q1 APPEND INBOX {1+}\r\nx\r\n"));
    assert_eq!(
        answer(&mut c, Answer::Placed(Err(Failure::OverQuota))),
        "q1 NO [OVERQUOTA] The account's quota would be exceeded\r\n"
    );
    request(c.send("q2 COPY 1:* Trash\r\n"));
    assert!(
        answer(&mut c, Answer::Placed(Err(Failure::OverQuota))).starts_with("q2 NO [OVERQUOTA]")
    );
    // RFC 5530: LIMIT, with the world's reason, for a server limit.
    request(c.send("q3 CREATE Folder1001\r\n"));
    let why = "An account may have at most 1000 mailboxes";
    assert_eq!(
        answer(&mut c, Answer::Done(Err(Failure::Limit(why.into())))),
        format!("q3 NO [LIMIT] {why}\r\n")
    );
    request(c.send("q4 STORE 1 +FLAGS (k1 k2)\r\n"));
    assert!(
        answer(
            &mut c,
            Answer::Flags(Err(Failure::Limit("Too many".into())))
        )
        .starts_with("q4 NO [LIMIT] Too many")
    );
    // The session goes on.
    assert!(
        c.cmd("q5 CAPABILITY")
            .ends_with("q5 OK CAPABILITY completed\r\n")
    );
}

#[test]
fn search_by_flags_from_metadata_and_by_text_through_the_content() {
    let mut c = selected(false);
    // Keys about flags, sizes, dates and message sets go to the store whole, message numbers
    // written as the UIDs they are in the view; what it finds is told by number or UID.
    let and = |keys: Vec<SearchKey<'static>>| SearchKey::And(keys.try_into().unwrap());
    let search = |c: &mut Client, cmd: &str, key: SearchKey<'static>, found: Vec<(u32, u64)>| {
        let r = request(c.send(&format!("{cmd}\r\n")));
        assert_eq!(r, Request::Search { mailbox_id: 1, key }, "{cmd}");
        answer(c, Answer::Found(Ok(decided(&found))))
    };
    let out = search(
        &mut c,
        "q1 SEARCH UNSEEN",
        and(vec![SearchKey::Unseen]),
        vec![(2, 3), (4, 3)],
    );
    assert!(out.starts_with("* SEARCH 1 2\r\n"), "{out}");
    // A match the view does not know yet (UID 12 arrived since) is not told.
    let out = search(
        &mut c,
        "q2 UID SEARCH OR FLAGGED SEEN",
        and(vec![SearchKey::Or(
            Box::new(SearchKey::Flagged),
            Box::new(SearchKey::Seen),
        )]),
        vec![(4, 3), (7, 3), (12, 9)],
    );
    assert!(out.starts_with("* SEARCH 4 7\r\n"), "{out}");
    let r = request(c.send("q3 SEARCH NOT 2:3 LARGER 50\r\n"));
    let Request::Search { key, .. } = r else {
        panic!("{r:?}")
    };
    // Messages 2 and 3 are UIDs 4 and 7.
    let expected = and(vec![
        SearchKey::Not(Box::new(SearchKey::Uid("4,7".try_into().unwrap()))),
        SearchKey::Larger(50),
    ]);
    assert_eq!(key, expected);
    let out = answer(&mut c, Answer::Found(Ok(decided(&[(2, 3)]))));
    assert!(out.starts_with("* SEARCH 1\r\n"), "{out}");
    // A message number beyond the mailbox names nothing.
    let r = request(c.send("q7 SEARCH 9\r\n"));
    assert!(
        matches!(&r, Request::Search { key, .. }
            if *key == and(vec![SearchKey::Not(Box::new(SearchKey::All))])),
        "{r:?}"
    );
    answer(&mut c, Answer::Found(Ok(Found::default())));
    let out = c.cmd("q4 SEARCH CHARSET KOI8-R ALL");
    assert!(out.starts_with("q4 NO [BADCHARSET"), "{out}");
    // Header fields the store keeps go to it as well: what it decides is told as it says
    // (UID 2), what it cannot (messages stored without the fields) is read.
    let subject = SearchKey::Subject("hello".try_into().unwrap());
    let r = request(c.send("q5 SEARCH SUBJECT hello\r\n"));
    assert_eq!(
        r,
        Request::Search {
            mailbox_id: 1,
            key: and(vec![subject])
        }
    );
    let found = Found {
        undecided: vec![4, 7],
        ..decided(&[(2, 3)])
    };
    c.session.answer(Answer::Found(Ok(found)));
    let output = c.drain();
    metadata(&mut c, output, &[4, 7]);
    // Header keys read header blocks only, in batches.
    assert_eq!(
        request(c.drain()),
        Request::Contents {
            entry_ids: vec![400],
            headers_only: true,
            next: vec![700]
        }
    );
    c.session.answer(Answer::Contents(Ok(Contents::from_iter([(
        400,
        b"Subject: no\r\n\r\n".to_vec(),
    )]))));
    request(c.drain());
    let out = answer(
        &mut c,
        Answer::Contents(Ok(Contents::from_iter([(700, MAIL.to_vec())]))),
    );
    assert!(out.starts_with("* SEARCH 1 3\r\n"), "{out}");
    // A key only the octets answer (HEADER) reads every message's header block.
    let output = c.send("q10 SEARCH OR SUBJECT hello HEADER X-Mailer hello\r\n");
    metadata(&mut c, output, &[2, 4, 7]);
    let mut read = Vec::new();
    let out = loop {
        let Request::Contents { entry_ids, .. } = request(c.drain()) else {
            panic!("expected a content read")
        };
        read.extend(entry_ids.iter().copied());
        let contents = entry_ids
            .iter()
            .map(|&id| match id {
                400 => (id, b"X-Mailer: hello\r\n\r\n".to_vec()),
                _ => (id, MAIL.to_vec()),
            })
            .collect();
        c.session.answer(Answer::Contents(Ok(contents)));
        if read.len() == 3 {
            assert!(c.drain().is_none());
            break c.take();
        }
    };
    assert_eq!(read, [200, 400, 700]);
    assert!(out.starts_with("* SEARCH 1 2 3\r\n"), "{out}");
    // Nesting beyond the limit is refused, not recursed into.
    let deep = format!("q6 SEARCH {}ALL{}", "NOT (".repeat(40), ")".repeat(40));
    let out = c.cmd(&deep);
    assert!(out.starts_with("q6 BAD") || out.contains("q6 BAD"), "{out}");
    // So are thousands of keys side by side (each would be a condition of one query).
    let wide = format!("q9 SEARCH {}", "KEYWORD a ".repeat(5000));
    let out = c.cmd(wide.trim_end());
    assert!(
        out.starts_with("q9 BAD [") || out.starts_with("q9 BAD "),
        "{out}"
    );
    // A MODSEQ key enables CONDSTORE: the result carries the highest mod-sequence found,
    // over the messages the view knows (UIDs up to 7; any that arrived since are not told).
    let out = search(
        &mut c,
        "q8 SEARCH NOT MODSEQ 4",
        and(vec![
            and(vec![SearchKey::Not(Box::new(SearchKey::ModSequence {
                entry: None,
                modseq: 4,
            }))]),
            SearchKey::Uid("1:7".try_into().unwrap()),
        ]),
        vec![(2, 3), (4, 2)],
    );
    assert!(out.starts_with("* SEARCH 1 2 (MODSEQ 3)\r\n"), "{out}");
    // The store gives the highest mod-sequence of what it decided; messages read for their
    // octets bring their own; the result carries the higher.
    let r = request(c.send("q11 SEARCH SUBJECT hello\r\n"));
    assert!(matches!(r, Request::Search { .. }), "{r:?}");
    let found = Found {
        undecided: vec![7],
        ..decided(&[(2, 9)])
    };
    c.session.answer(Answer::Found(Ok(found)));
    let output = c.drain();
    metadata(&mut c, output, &[7]);
    request(c.drain());
    let out = answer(
        &mut c,
        Answer::Contents(Ok(Contents::from_iter([(700, MAIL.to_vec())]))),
    );
    assert!(out.starts_with("* SEARCH 1 3 (MODSEQ 9)\r\n"), "{out}");
}

#[test]
fn noop_and_idle_tell_changes_made_elsewhere() {
    let mut c = selected(false);
    let r = request(c.send("n1 NOOP\r\n"));
    assert_eq!(
        r,
        Request::Changes {
            mailbox_id: 1,
            since_modseq: 5,
            known_uid_max: 7
        }
    );
    let changes = Changes {
        mailbox: Some(mailbox(1, "INBOX")),
        changed: vec![message(4, &[], 200), message(9, &[], 50)],
        present: vec![4, 7],
    };
    let out = answer(&mut c, Answer::Changes(Ok(changes)));
    assert_eq!(
        out,
        "* 1 EXPUNGE\r\n* 1 FETCH (FLAGS () UID 4)\r\n* 3 EXISTS\r\nn1 OK NOOP completed\r\n"
    );
    // Outside IDLE the world is not asked to push: an EXPUNGE may not come unasked then.
    assert_eq!(c.session.watching(), None);
    // IDLE: changes found by the world while idling go out at once; DONE ends it.
    assert!(c.send("i1 IDLE\r\n").is_none());
    assert_eq!(c.take(), "+ idling\r\n");
    assert_eq!(c.session.watching(), Some((1, 5, 9)));
    c.session.apply_changes(Changes {
        mailbox: Some(mailbox(1, "INBOX")),
        changed: vec![message(11, &[], 50)],
        present: vec![4, 7, 9],
    });
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "* 4 EXISTS\r\n");
    assert_eq!(c.cmd("DONE"), "i1 OK IDLE terminated\r\n");
    let out = c.cmd("u1 UNSELECT");
    assert_eq!(out, "u1 OK UNSELECT completed\r\n");
    assert_eq!(c.session.watching(), None);
}

#[test]
fn qresync_select_tells_what_vanished_and_changed_and_expunges_become_vanished() {
    let mut c = logged_in();
    // SELECT (QRESYNC ...) before ENABLE QRESYNC is a BAD (RFC 7162 3.2.5).
    let out = c.cmd("s0 SELECT INBOX (QRESYNC (77 3))");
    assert!(out.starts_with("s0 BAD"), "{out}");
    let out = c.cmd("e1 ENABLE QRESYNC");
    assert_eq!(out, "* ENABLED QRESYNC\r\ne1 OK ENABLE completed\r\n");
    // The client knew UIDs 1:9 at mod-sequence 3; the mailbox now holds 2, 4 and 7.
    let r = request(c.send("s1 SELECT INBOX (QRESYNC (77 3 1:9))\r\n"));
    assert_eq!(
        r,
        Request::Select {
            name: "INBOX".into()
        }
    );
    c.session
        .answer(Answer::Selected(Ok((mailbox(1, "INBOX"), vec![2, 4, 7]))));
    // Then the flag changes since mod-sequence 3; nothing completes before they are in.
    assert_eq!(
        request(c.drain()),
        Request::Changes {
            mailbox_id: 1,
            since_modseq: 3,
            known_uid_max: 0
        }
    );
    let mut flagged = message(4, &["\\Flagged"], 200);
    flagged.modseq = 6;
    let mut arrived = message(12, &[], 10);
    arrived.modseq = 7;
    let out = answer(
        &mut c,
        Answer::Changes(Ok(changes_of(vec![flagged, arrived]))),
    );
    let vanished = out
        .find("* VANISHED (EARLIER) 1,3,5:6,8:9\r\n")
        .expect(&out);
    let fetched = out
        .find("* 2 FETCH (FLAGS (\\Flagged) UID 4 MODSEQ (6))\r\n")
        .expect(&out);
    let done = out.find("s1 OK [READ-WRITE] SELECT completed").expect(&out);
    assert!(out.contains("[HIGHESTMODSEQ 5]"), "{out}");
    assert!(vanished < fetched && fetched < done, "{out}");
    // A message that arrived after SELECT's look is not in the view yet.
    assert!(!out.contains("UID 12"), "{out}");

    // Expunges are VANISHED now, not EXPUNGE (RFC 7162 3.2.10).
    request(c.send("x1 EXPUNGE\r\n"));
    let out = answer(&mut c, Answer::Expunged(Ok(vec![2, 7])));
    assert_eq!(out, "* VANISHED 2,7\r\nx1 OK EXPUNGE completed\r\n");

    // UID FETCH ... (CHANGEDSINCE n VANISHED): what is gone from the set first.
    // `*` is the highest UID here (4); UID 4 has not changed since mod-sequence 5.
    let output = c.send("f1 UID FETCH 1:* FLAGS (CHANGEDSINCE 5 VANISHED)\r\n");
    metadata(&mut c, output, &[4]);
    assert!(c.drain().is_none());
    assert_eq!(
        c.take(),
        "* VANISHED (EARLIER) 1:3\r\nf1 OK FETCH completed\r\n"
    );
    let output = c.send("f4 UID FETCH 2:9 FLAGS (CHANGEDSINCE 1 VANISHED)\r\n");
    metadata(&mut c, output, &[4]);
    assert!(c.drain().is_none());
    let out = c.take();
    assert!(
        out.starts_with(
            "* VANISHED (EARLIER) 2:3,5:9\r\n* 1 FETCH (UID 4 FLAGS (\\Flagged) MODSEQ (3))"
        ),
        "{out}"
    );
    // VANISHED only with UID FETCH and CHANGEDSINCE.
    assert!(c.cmd("f2 FETCH 1 FLAGS (VANISHED)").starts_with("f2 BAD"));
    assert!(
        c.cmd("f3 UID FETCH 1 FLAGS (VANISHED)")
            .starts_with("f3 BAD")
    );

    // A UIDVALIDITY that does not match: a plain SELECT, nothing resynchronised.
    let r = request(c.send("s2 SELECT INBOX (QRESYNC (78 3))\r\n"));
    assert!(matches!(r, Request::Select { .. }));
    let out = answer(&mut c, Answer::Selected(Ok((mailbox(1, "INBOX"), vec![4]))));
    assert!(!out.contains("VANISHED"), "{out}");
    assert!(out.contains("s2 OK [READ-WRITE]"), "{out}");
}

fn changes_of(changed: Vec<Message>) -> Changes {
    Changes {
        mailbox: Some(mailbox(1, "INBOX")),
        changed,
        present: vec![],
    }
}

#[test]
fn bad_input_gets_bad_and_too_much_of_it_ends_the_session() {
    let mut c = logged_in();
    for i in 0..9 {
        let out = c.cmd(&format!("b{i} FROBNICATE"));
        assert!(out.starts_with(&format!("b{i} BAD")), "{out}");
    }
    let output = c.send("no-space-after-tag\r\n");
    assert!(matches!(output, Some(Output::Close)), "{output:?}");
    let out = c.take();
    assert!(
        out.contains("BAD") && out.contains("* BYE Too many errors"),
        "{out}"
    );
}

#[test]
fn logout_says_bye_then_closes() {
    let mut c = logged_in();
    let output = c.send("z1 LOGOUT\r\nz2 NOOP\r\n");
    assert!(matches!(output, Some(Output::Close)), "{output:?}");
    assert_eq!(c.take(), "* BYE Logging out\r\nz1 OK LOGOUT completed\r\n");
}

#[test]
fn esearch_returns_what_was_asked_and_the_modseq_of_min_or_max() {
    let mut c = selected(false);
    let all_of = |key: SearchKey<'static>| SearchKey::And(vec![key].try_into().unwrap());
    // RFC 4731: MIN, MAX, COUNT and ALL, by number or by UID, correlated by the tag.
    let r = request(c.send("e1 SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN\r\n"));
    assert_eq!(
        r,
        Request::Search {
            mailbox_id: 1,
            key: all_of(SearchKey::Unseen)
        }
    );
    let out = answer(&mut c, Answer::Found(Ok(decided(&[(2, 3), (7, 3)]))));
    assert_eq!(
        out,
        "* ESEARCH (TAG \"e1\") MIN 1 MAX 3 COUNT 2 ALL 1,3\r\ne1 OK SEARCH completed\r\n"
    );
    request(c.send("e2 UID SEARCH RETURN () ALL\r\n"));
    let out = answer(
        &mut c,
        Answer::Found(Ok(decided(&[(2, 3), (4, 3), (7, 3)]))),
    );
    assert!(
        out.starts_with("* ESEARCH (TAG \"e2\") UID ALL 2,4,7\r\n"),
        "{out}"
    );
    // Nothing found: COUNT 0, and no MIN, MAX or ALL.
    request(c.send("e3 UID SEARCH RETURN (MIN COUNT ALL) DELETED\r\n"));
    let out = answer(&mut c, Answer::Found(Ok(Found::default())));
    assert!(
        out.starts_with("* ESEARCH (TAG \"e3\") UID COUNT 0\r\n"),
        "{out}"
    );
    // With CONDSTORE, MODSEQ: the highest of all matches for COUNT and ALL ... COUNT alone
    // is counted by the world, over the UIDs the view has.
    let r = request(c.send("e4 UID SEARCH RETURN (COUNT) MODSEQ 1\r\n"));
    let Request::SearchCount { mailbox_id: 1, key } = r else {
        panic!("{r:?}")
    };
    let key = format!("{key:?}");
    assert!(key.contains("ModSeq") && key.contains("Uid"), "{key}");
    let out = answer(&mut c, Answer::Counted(Ok((2, 9))));
    assert_eq!(
        out,
        "* ESEARCH (TAG \"e4\") UID COUNT 2 MODSEQ 9\r\ne4 OK SEARCH completed\r\n"
    );
    request(c.send("e4b UID SEARCH RETURN (COUNT) MODSEQ 1\r\n"));
    let out = answer(&mut c, Answer::Counted(Ok((0, 0))));
    assert!(
        out.starts_with("* ESEARCH (TAG \"e4b\") UID COUNT 0\r\n"),
        "{out}"
    );
    // COUNT beside another item needs the matches themselves.
    let r = request(c.send("e4c UID SEARCH RETURN (COUNT MAX) MODSEQ 1\r\n"));
    assert!(matches!(r, Request::Search { .. }), "{r:?}");
    let out = answer(&mut c, Answer::Found(Ok(decided(&[(2, 4), (7, 9)]))));
    assert!(
        out.starts_with("* ESEARCH (TAG \"e4c\") UID MAX 7 COUNT 2 MODSEQ 9\r\n"),
        "{out}"
    );
    // ... and for MIN alone, the mod-sequence of that message, which the store is asked.
    request(c.send("e5 UID SEARCH RETURN (MIN) MODSEQ 1\r\n"));
    c.session
        .answer(Answer::Found(Ok(decided(&[(2, 4), (7, 9)]))));
    assert_eq!(
        request(c.drain()),
        Request::Search {
            mailbox_id: 1,
            key: SearchKey::Uid("2".try_into().unwrap())
        }
    );
    let out = answer(&mut c, Answer::Found(Ok(decided(&[(2, 4)]))));
    assert_eq!(
        out,
        "* ESEARCH (TAG \"e5\") UID MIN 2 MODSEQ 4\r\ne5 OK SEARCH completed\r\n"
    );
    // A plain SEARCH still answers SEARCH.
    request(c.send("e6 SEARCH ALL\r\n"));
    let out = answer(&mut c, Answer::Found(Ok(decided(&[(4, 3)]))));
    assert!(out.starts_with("* SEARCH 2 (MODSEQ 3)\r\n"), "{out}");
    // A synchronizing literal in the keys: the continuation, then the search.
    assert!(
        c.send("e6b SEARCH RETURN (COUNT) SUBJECT {2}\r\n")
            .is_none()
    );
    assert!(c.take().starts_with("+ "));
    let Request::Search { key, .. } = request(c.send("hi\r\n")) else {
        panic!("not a search")
    };
    assert!(format!("{key:?}").contains("Subject(String(Literal(Literal { data: b\"hi\""));
    let out = answer(&mut c, Answer::Found(Ok(decided(&[(4, 3)]))));
    assert!(out.starts_with("* ESEARCH (TAG \"e6b\") COUNT 1"), "{out}");
    // Bad options get BAD with the reason.
    assert_eq!(
        c.cmd("e7 SEARCH RETURN (PARTIAL 1:5) ALL"),
        "e7 BAD Unsupported SEARCH RETURN option\r\n"
    );
    assert_eq!(
        c.cmd("e8 SEARCH RETURN (MIN) NOSUCHKEY"),
        "e8 BAD Syntax error in SEARCH keys\r\n"
    );
}

#[test]
fn esearch_needs_a_selected_mailbox() {
    let mut c = client(policy(true));
    assert_eq!(
        c.cmd("e1 SEARCH RETURN (MIN) ALL"),
        "e1 BAD Log in first\r\n"
    );
    let mut c = logged_in();
    assert_eq!(
        c.cmd("e2 UID SEARCH RETURN (MIN) ALL"),
        "e2 BAD No mailbox selected\r\n"
    );
    assert!(
        c.cmd("c CAPABILITY")
            .contains(" ESEARCH SEARCHRES LIST-EXTENDED LIST-STATUS ")
    );
}

/// Sends a LIST, answers it with `list`; what was sent.
fn answer_list(c: &mut Client, command: &str, list: Vec<MailboxSummary>) -> String {
    assert_eq!(request(c.send(command)), Request::Mailboxes);
    answer(c, Answer::Mailboxes(Ok(list)))
}

#[test]
fn list_extended_selects_matches_many_patterns_and_tells_status() {
    let mut c = logged_in();
    let mut sent = mailbox(3, "Sent");
    sent.special_use = Some("\\Sent".into());
    sent.subscribed = false;
    let mut work = mailbox(4, "Work");
    work.subscribed = false;
    let mut old = mailbox(6, "Work/2025");
    old.subscribed = false;
    let list = vec![
        mailbox(1, "INBOX"),
        sent,
        work,
        old,
        mailbox(5, "Work/2026"),
    ];
    // Several patterns (RFC 5258 3).
    assert_eq!(
        request(c.send("l1 LIST \"\" (INBOX \"Work/%\")\r\n")),
        Request::Mailboxes
    );
    let out = answer(&mut c, Answer::Mailboxes(Ok(list.clone())));
    assert!(out.contains("\"/\" INBOX\r\n"), "{out}");
    assert!(out.contains("\"/\" Work/2025\r\n") && out.contains("\"/\" Work/2026\r\n"));
    assert!(
        !out.contains(" Sent\r\n") && !out.contains(" Work\r\n"),
        "{out}"
    );
    // SUBSCRIBED: subscribed ones only; RECURSIVEMATCH tells a parent of one by CHILDINFO.
    request(c.send("l2 LIST (SUBSCRIBED RECURSIVEMATCH) \"\" %\r\n"));
    let out = answer(&mut c, Answer::Mailboxes(Ok(list.clone())));
    assert_eq!(
        out,
        "* LIST (\\HasNoChildren \\Subscribed) \"/\" INBOX\r\n\
         * LIST (\\HasChildren) \"/\" Work (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n\
         l2 OK LIST completed\r\n"
    );
    request(c.send("l3 LIST (SUBSCRIBED) \"\" %\r\n"));
    let out = answer(&mut c, Answer::Mailboxes(Ok(list.clone())));
    assert!(out.contains(" INBOX\r\n") && !out.contains("Work"), "{out}");
    // SPECIAL-USE (RFC 6154 3): mailboxes with a special use only.
    request(c.send("l4 LIST (SPECIAL-USE) \"\" *\r\n"));
    let out = answer(&mut c, Answer::Mailboxes(Ok(list.clone())));
    assert_eq!(
        out,
        "* LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\nl4 OK LIST completed\r\n"
    );
    // LIST-STATUS (RFC 5819): each listed mailbox's STATUS after the LIST responses, from
    // the counts the listing carries: nothing more is asked of the world.
    let out = answer_list(
        &mut c,
        "l5 LIST \"\" (INBOX Work/2026) RETURN (STATUS (MESSAGES UNSEEN SIZE))\r\n",
        list.clone(),
    );
    let lists = out.find("* LIST").unwrap();
    let statuses = out
        .find("* STATUS INBOX (MESSAGES 3 UNSEEN 2 SIZE 300)\r\n")
        .unwrap();
    assert!(lists < statuses, "{out}");
    assert!(
        out.contains("* STATUS Work/2026 (MESSAGES 3 UNSEEN 2 SIZE 300)\r\n")
            && out.ends_with("l5 OK LIST completed\r\n"),
        "{out}"
    );
    // DELETED must count the entries: each mailbox's STATUS is asked for, one after
    // another; one deleted in between is left out.
    request(c.send("l5b LIST \"\" (INBOX Work/2026 Sent) RETURN (STATUS (MESSAGES DELETED))\r\n"));
    c.session.answer(Answer::Mailboxes(Ok(list)));
    assert_eq!(
        request(c.drain()),
        Request::Status {
            name: "INBOX".into(),
            deleted: true
        }
    );
    let counts = Counts {
        messages: 3,
        deleted: 1,
        ..Counts::default()
    };
    c.session
        .answer(Answer::Status(Ok((mailbox(1, "INBOX"), counts))));
    assert_eq!(
        request(c.drain()),
        Request::Status {
            name: "Sent".into(),
            deleted: true
        }
    );
    c.session
        .answer(Answer::Status(Err(Failure::NoSuchMailbox)));
    assert_eq!(
        request(c.drain()),
        Request::Status {
            name: "Work/2026".into(),
            deleted: true
        }
    );
    let out = answer(
        &mut c,
        Answer::Status(Ok((mailbox(5, "Work/2026"), Counts::default()))),
    );
    assert!(
        out.contains("* STATUS INBOX (MESSAGES 3 DELETED 1)\r\n")
            && out.contains("* STATUS Work/2026 (MESSAGES 0 DELETED 0)\r\n")
            && !out.contains("STATUS Sent")
            && out.ends_with("l5b OK LIST completed\r\n"),
        "{out}"
    );
    // Bad options get BAD with the reason.
    assert_eq!(
        c.cmd("l6 LIST (RECURSIVEMATCH) \"\" *"),
        "l6 BAD RECURSIVEMATCH needs another selection option\r\n"
    );
    assert_eq!(
        c.cmd("l7 LIST \"\" * RETURN (STATUS (BOGUS))"),
        "l7 BAD Invalid STATUS items\r\n"
    );
}

#[test]
fn a_saved_search_result_is_used_as_dollar_until_the_next_select() {
    let mut c = selected(false);
    // SAVE alone: no ESEARCH response (RFC 9051 6.4.4).
    request(c.send("r1 UID SEARCH RETURN (SAVE) UNSEEN\r\n"));
    let out = answer(&mut c, Answer::Found(Ok(decided(&[(4, 3), (7, 3)]))));
    assert_eq!(out, "r1 OK SEARCH completed\r\n");
    // `$` as FETCH's set (messages 2 and 3), and as a search key.
    assert_eq!(
        request(c.send("r2 FETCH $ (FLAGS)\r\n")),
        Request::Messages {
            mailbox_id: 1,
            uids: vec![4, 7]
        }
    );
    let named = inbox().into_iter().filter(|m| m.uid != 2).collect();
    let out = answer(&mut c, Answer::Messages(Ok(named)));
    assert!(
        out.contains("* 2 FETCH (FLAGS (\\Flagged))") && !out.contains("* 1 FETCH"),
        "{out}"
    );
    let Request::Search { key, .. } = request(c.send("r3 SEARCH $ SEEN\r\n")) else {
        panic!("not a search")
    };
    assert!(format!("{key:?}").contains("Uid(SequenceSet([Single(Value(4)), Single(Value(7))]"));
    answer(&mut c, Answer::Found(Ok(decided(&[(7, 3)]))));
    // SAVE with MIN alone keeps the lowest only; UID EXPUNGE $ removes it.
    request(c.send("r4 SEARCH RETURN (SAVE MIN) ALL\r\n"));
    let out = answer(&mut c, Answer::Found(Ok(decided(&[(2, 3), (7, 3)]))));
    assert!(out.starts_with("* ESEARCH (TAG \"r4\") MIN 1\r\n"), "{out}");
    assert_eq!(
        request(c.send("r5 UID EXPUNGE $\r\n")),
        Request::Expunge {
            mailbox_id: 1,
            uids: Some(vec![2])
        }
    );
    let out = answer(&mut c, Answer::Expunged(Ok(vec![2])));
    assert!(out.starts_with("* 1 EXPUNGE\r\n"), "{out}");
    // What `$` named is gone: it names nothing now, and a command of it does nothing.
    assert_eq!(
        c.cmd("r6 STORE $ +FLAGS (\\Seen)"),
        "r6 OK STORE completed\r\n"
    );
    // A saving SEARCH that fails empties `$`.
    request(c.send("r7 UID SEARCH RETURN (SAVE) ALL\r\n"));
    answer(&mut c, Answer::Found(Ok(decided(&[(4, 3)]))));
    request(c.send("r8 UID SEARCH RETURN (SAVE) ALL\r\n"));
    assert!(answer(&mut c, Answer::Found(Err(Failure::Temporary))).starts_with("r8 NO"));
    assert_eq!(c.cmd("r9 UID FETCH $ FLAGS"), "r9 OK FETCH completed\r\n");
    // A new SELECT starts with `$` empty.
    request(c.send("r10 UID SEARCH RETURN (SAVE) ALL\r\n"));
    answer(&mut c, Answer::Found(Ok(decided(&[(4, 3)]))));
    request(c.send("r11 SELECT INBOX\r\n"));
    answer(
        &mut c,
        Answer::Selected(Ok((mailbox(1, "INBOX"), vec![2, 4, 7]))),
    );
    assert_eq!(c.cmd("r12 FETCH $ FLAGS"), "r12 OK FETCH completed\r\n");
    let Request::Search { key, .. } = request(c.send("r13 SEARCH $\r\n")) else {
        panic!("not a search")
    };
    // An empty `$` names no message.
    assert_eq!(format!("{key:?}"), "And([Not(All)]+)");
    answer(&mut c, Answer::Found(Ok(Found::default())));
    // Outside a selected mailbox `$` names nothing to act on.
    c.cmd("r14 UNSELECT");
    assert_eq!(
        c.cmd("r15 FETCH $ FLAGS"),
        "r15 BAD No mailbox selected\r\n"
    );
}

#[test]
fn an_imap4rev2_session_is_answered_esearch_and_no_recent() {
    let mut c = client(policy(true));
    let caps = c.cmd("c1 CAPABILITY");
    assert!(
        caps.starts_with("* CAPABILITY IMAP4REV1 IMAP4rev2 "),
        "{caps}"
    );
    let mut c = logged_in();
    // Before ENABLE, an IMAP4rev1 session: SEARCH responses and RECENT.
    request(c.send("s0 SELECT INBOX\r\n"));
    let out = answer(
        &mut c,
        Answer::Selected(Ok((mailbox(1, "INBOX"), vec![2, 4, 7]))),
    );
    assert!(out.contains("* 0 RECENT\r\n"), "{out}");
    request(c.send("q0 SEARCH ALL\r\n"));
    let out = answer(&mut c, Answer::Found(Ok(decided(&[(2, 3)]))));
    assert!(out.starts_with("* SEARCH 1\r\n"), "{out}");
    assert_eq!(
        c.cmd("e1 ENABLE IMAP4rev2"),
        "* ENABLED IMAP4rev2\r\ne1 OK ENABLE completed\r\n"
    );
    request(c.send("s1 SELECT INBOX\r\n"));
    let out = answer(
        &mut c,
        Answer::Selected(Ok((mailbox(1, "INBOX"), vec![2, 4, 7]))),
    );
    assert!(
        out.contains("* 3 EXISTS\r\n") && !out.contains("RECENT"),
        "{out}"
    );
    request(c.send("q1 UID SEARCH SEEN\r\n"));
    let out = answer(&mut c, Answer::Found(Ok(decided(&[(4, 3), (7, 3)]))));
    assert_eq!(
        out,
        "* ESEARCH (TAG \"q1\") UID ALL 4,7\r\nq1 OK SEARCH completed\r\n"
    );
    request(c.send("q2 SEARCH RETURN (COUNT) DELETED\r\n"));
    let out = answer(&mut c, Answer::Counted(Ok((0, 0))));
    assert!(
        out.starts_with("* ESEARCH (TAG \"q2\") COUNT 0\r\n"),
        "{out}"
    );
}

#[test]
fn rev1_sessions_name_mailboxes_in_modified_utf7_rev2_sessions_in_utf8() {
    let mut c = logged_in();
    // IMAP4rev1 (RFC 3501 5.1.3): names come and go in modified UTF-7; stored in UTF-8.
    assert_eq!(
        request(c.send("m1 CREATE &BBIERQQ+BDQETwRJBDgENQ-/A&-B\r\n")),
        Request::Create {
            name: "Входящие/A&B".into()
        }
    );
    answer(&mut c, Answer::Done(Ok(())));
    let list = vec![
        mailbox(1, "INBOX"),
        mailbox(2, "Входящие"),
        mailbox(3, "Входящие/A&B"),
    ];
    request(c.send("l1 LIST \"\" &BBIERQ-*\r\n"));
    let out = answer(&mut c, Answer::Mailboxes(Ok(list.clone())));
    assert_eq!(
        out,
        "* LIST (\\HasChildren \\Subscribed) \"/\" &BBIERQQ+BDQETwRJBDgENQ-\r\n\
         * LIST (\\HasNoChildren \\Subscribed) \"/\" &BBIERQQ+BDQETwRJBDgENQ-/A&-B\r\n\
         l1 OK LIST completed\r\n"
    );
    assert_eq!(
        request(c.send("s1 STATUS &BBIERQQ+BDQETwRJBDgENQ- (MESSAGES)\r\n")),
        Request::Status {
            name: "Входящие".into(),
            deleted: false
        }
    );
    let out = answer(
        &mut c,
        Answer::Status(Ok((mailbox(2, "Входящие"), Counts::default()))),
    );
    assert!(
        out.starts_with("* STATUS &BBIERQQ+BDQETwRJBDgENQ- (MESSAGES 0)\r\n"),
        "{out}"
    );
    // Not modified UTF-7 (printable ASCII shifted): refused.
    assert!(c.cmd("m2 CREATE &AGE-").starts_with("m2 BAD"));
    // IMAP4rev2: UTF-8 both ways.
    c.cmd("e1 ENABLE IMAP4rev2");
    assert_eq!(
        request(c.send("m3 CREATE \"Отправленные\"\r\n")),
        Request::Create {
            name: "Отправленные".into()
        }
    );
    answer(&mut c, Answer::Done(Ok(())));
    request(c.send("l2 LIST \"\" \"Вх*\"\r\n"));
    let out = answer(&mut c, Answer::Mailboxes(Ok(list)));
    assert!(out.contains("\"/\" \"Входящие\"\r\n"), "{out}");
    assert!(out.contains("\"Входящие/A&B\"\r\n"), "{out}");
}

#[test]
fn body_search_reads_the_text_transfer_decoded() {
    let mut c = selected(false);
    // "Привет" in a base64 part: found by BODY, whatever the case of the search string.
    let encoded = b"Content-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: base64\r\n\r\n0J/RgNC40LLQtdGC\r\n";
    let needle = "пРИВЕТ";
    let command = format!(
        "b1 SEARCH CHARSET UTF-8 BODY {{{}+}}\r\n{needle}\r\n",
        needle.len()
    );
    let output = c.send(&command);
    metadata(&mut c, output, &[2, 4, 7]);
    let mut read = 0;
    let out = loop {
        let Request::Contents { entry_ids, .. } = request(c.drain()) else {
            panic!("expected a content read")
        };
        let contents = entry_ids
            .iter()
            .map(|&id| match id {
                400 => (id, encoded.to_vec()),
                _ => (id, MAIL.to_vec()),
            })
            .collect();
        read += entry_ids.len();
        c.session.answer(Answer::Contents(Ok(contents)));
        if read == 3 {
            assert!(c.drain().is_none());
            break c.take();
        }
    };
    assert!(out.starts_with("* SEARCH 2\r\n"), "{out}");
}
