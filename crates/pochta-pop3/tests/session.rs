//! The POP3 session driven as the connection driver drives it, without sockets.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pochta_pop3::{Action, Entry, LoginResult, Output, Policy, Session};
use pochta_session::Session as _;
use pochta_testkit::Script;

const TLS: Policy = Policy {
    stls_available: true,
    implicit_tls: true,
    plaintext_auth: false,
    max_errors: 10,
    max_commands: 1000,
};
const PLAIN: Policy = Policy {
    stls_available: true,
    implicit_tls: false,
    plaintext_auth: false,
    max_errors: 10,
    max_commands: 1000,
};

type Client = Script<Session>;

/// A new session on `policy`, its greeting taken.
fn client(policy: Policy) -> Client {
    let mut c = Script::new(Session::new(policy));
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "+OK Pochta POP3 server ready\r\n");
    c
}

/// Logs in with USER/PASS to a maildrop of three messages.
fn logged_in() -> Client {
    let mut c = client(TLS);
    assert_eq!(c.cmd("USER alice@example.org"), "+OK Send PASS\r\n");
    let Some(Output::Action(Action::Login(creds))) = c.send("PASS secret words\r\n") else {
        panic!()
    };
    assert_eq!(
        (creds.username.as_str(), creds.password.as_str()),
        ("alice@example.org", "secret words")
    );
    c.session.login_result(LoginResult::Ok(entries()));
    assert!(c.drain().is_none());
    assert_eq!(
        c.take(),
        "+OK Maildrop locked and ready, 3 messages (600 octets)\r\n"
    );
    c
}

fn entries() -> Vec<Entry> {
    (1..=3)
        .map(|i| Entry {
            id: i * 10,
            uid: format!("uid{i}"),
            size: 100 * i as u64,
        })
        .collect()
}

#[test]
fn capa_depends_on_state_and_tls() {
    let mut c = client(PLAIN);
    let capa = c.cmd("CAPA");
    assert!(
        capa.starts_with("+OK Capability list follows\r\n") && capa.ends_with("\r\n.\r\n"),
        "{capa}"
    );
    for cap in [
        "TOP",
        "UIDL",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "EXPIRE NEVER",
        "IMPLEMENTATION Pochta",
        "STLS",
    ] {
        assert!(capa.contains(&format!("\r\n{cap}\r\n")), "{cap}: {capa}");
    }
    assert!(
        !capa.contains("USER") && !capa.contains("SASL"),
        "no passwords in the clear: {capa}"
    );
    let mut c = client(TLS);
    let capa = c.cmd("CAPA");
    assert!(
        capa.contains("\r\nUSER\r\n")
            && capa.contains("\r\nSASL PLAIN\r\n")
            && !capa.contains("STLS"),
        "{capa}"
    );
}

#[test]
fn plaintext_logins_need_tls() {
    let mut c = client(PLAIN);
    assert_eq!(
        c.cmd("USER alice"),
        "-ERR [AUTH] Plaintext login is disabled; use STLS first\r\n"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN"),
        "-ERR [AUTH] Plaintext login is disabled; use STLS first\r\n"
    );
    assert_eq!(c.cmd("PASS x"), "-ERR USER first\r\n");
    let mut loopback = client(Policy {
        plaintext_auth: true,
        ..PLAIN
    });
    assert_eq!(loopback.cmd("USER alice"), "+OK Send PASS\r\n");
}

#[test]
fn stls_discards_pipelined_plaintext() {
    let mut c = client(PLAIN);
    assert!(matches!(
        c.send("STLS\r\nUSER injected\r\n"),
        Some(Output::StartTls)
    ));
    assert_eq!(c.take(), "+OK Begin TLS negotiation\r\n");
    c.session.tls_established();
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "", "the injected USER was dropped");
    assert_eq!(c.cmd("PASS x"), "-ERR USER first\r\n");
    assert_eq!(c.cmd("STLS"), "-ERR Already running TLS\r\n");
    let mut no_tls = client(Policy {
        stls_available: false,
        ..PLAIN
    });
    assert_eq!(no_tls.cmd("STLS"), "-ERR STLS not available\r\n");
}

#[test]
fn login_failures() {
    let mut c = client(TLS);
    c.cmd("USER alice");
    assert!(matches!(
        c.send("PASS bad\r\n"),
        Some(Output::Action(Action::Login(_)))
    ));
    c.session.login_result(LoginResult::BadCredentials);
    c.drain();
    assert_eq!(c.take(), "-ERR [AUTH] Authentication failed\r\n");
    assert_eq!(
        c.cmd("PASS again"),
        "-ERR USER first\r\n",
        "USER must be given again"
    );
    c.cmd("USER alice");
    c.send("PASS good\r\n");
    c.session.login_result(LoginResult::InUse);
    c.drain();
    assert_eq!(
        c.take(),
        "-ERR [IN-USE] Maildrop is locked by another session\r\n"
    );
    c.cmd("USER alice");
    c.send("PASS good\r\n");
    c.session.login_result(LoginResult::TemporaryFailure);
    c.drain();
    assert_eq!(
        c.take(),
        "-ERR [SYS/TEMP] Temporary failure; try again later\r\n"
    );
    c.cmd("USER alice");
    c.send("PASS bad\r\n");
    c.session.login_result(LoginResult::RateLimited);
    assert!(matches!(c.drain(), Some(Output::Close)));
    assert_eq!(
        c.take(),
        "-ERR [AUTH] Too many failed logins; try again later\r\n"
    );
}

#[test]
fn auth_plain() {
    let mut c = client(TLS);
    assert_eq!(c.cmd("AUTH"), "+OK\r\nPLAIN\r\n.\r\n");
    assert_eq!(
        c.cmd("AUTH CRAM-MD5"),
        "-ERR Unsupported SASL mechanism\r\n"
    );
    let Some(Output::Action(Action::Login(creds))) = c.send(&format!(
        "AUTH PLAIN {}\r\n",
        BASE64.encode("\0bob@example.org\0pw")
    )) else {
        panic!()
    };
    assert_eq!(creds.username, "bob@example.org");
    c.session.login_result(LoginResult::BadCredentials);
    c.drain();
    c.take();
    assert_eq!(c.cmd("AUTH PLAIN"), "+ \r\n");
    assert_eq!(c.cmd("*"), "-ERR Authentication cancelled\r\n");
    assert_eq!(c.cmd("AUTH PLAIN"), "+ \r\n");
    assert_eq!(c.cmd("%%%"), "-ERR Invalid base64\r\n");
    assert_eq!(c.cmd("AUTH PLAIN"), "+ \r\n");
    let Some(Output::Action(Action::Login(_))) = c.send(&format!(
        "{}\r\n",
        BASE64.encode("bob@example.org\0bob@example.org\0pw")
    )) else {
        panic!()
    };
    c.session.login_result(LoginResult::Ok(vec![]));
    c.drain();
    assert_eq!(
        c.take(),
        "+OK Maildrop locked and ready, 0 messages (0 octets)\r\n"
    );
    // Acting as another identity is refused.
    let mut c = client(TLS);
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", BASE64.encode("boss\0bob\0pw"))),
        "-ERR [AUTH] Authentication failed\r\n"
    );
}

#[test]
fn transaction_commands_before_login_are_refused() {
    let mut c = client(TLS);
    for cmd in [
        "STAT", "LIST", "RETR 1", "DELE 1", "RSET", "TOP 1 1", "UIDL",
    ] {
        assert_eq!(
            c.cmd(cmd),
            "-ERR Command not valid before login\r\n",
            "{cmd}"
        );
    }
    assert_eq!(
        c.cmd("APOP a b"),
        "-ERR APOP is not supported; use USER/PASS or AUTH PLAIN over TLS\r\n"
    );
    assert_eq!(c.cmd("XYZZY"), "-ERR Unknown command\r\n");
}

#[test]
fn stat_list_uidl() {
    let mut c = logged_in();
    assert_eq!(c.cmd("STAT"), "+OK 3 600\r\n");
    assert_eq!(
        c.cmd("LIST"),
        "+OK 3 messages (600 octets)\r\n1 100\r\n2 200\r\n3 300\r\n.\r\n"
    );
    assert_eq!(c.cmd("LIST 2"), "+OK 2 200\r\n");
    assert_eq!(c.cmd("UIDL"), "+OK\r\n1 uid1\r\n2 uid2\r\n3 uid3\r\n.\r\n");
    assert_eq!(c.cmd("UIDL 3"), "+OK 3 uid3\r\n");
    assert_eq!(c.cmd("NOOP"), "+OK \r\n");
    for (cmd, reply) in [
        ("LIST 0", "-ERR No such message 0\r\n"),
        ("LIST 4", "-ERR No such message 4\r\n"),
        ("LIST -1", "-ERR Invalid message number \"-1\"\r\n"),
        ("LIST +1", "-ERR Invalid message number \"+1\"\r\n"),
        (
            "LIST 99999999999999999999999",
            "-ERR Invalid message number \"99999999999999999999999\"\r\n",
        ),
        ("UIDL x", "-ERR Invalid message number \"x\"\r\n"),
        ("LIST 1 2", "-ERR Wrong number of arguments\r\n"),
        ("STAT 1", "-ERR Wrong number of arguments\r\n"),
        ("USER bob", "-ERR Command not valid after login\r\n"),
        ("STLS", "-ERR Command not valid after login\r\n"),
    ] {
        assert_eq!(c.cmd(cmd), reply, "{cmd}");
    }
}

#[test]
fn dele_rset_and_deleted_messages() {
    let mut c = logged_in();
    assert_eq!(c.cmd("DELE 2"), "+OK Message 2 deleted\r\n");
    assert_eq!(c.cmd("DELE 2"), "-ERR Message 2 is deleted\r\n");
    assert_eq!(c.cmd("STAT"), "+OK 2 400\r\n");
    assert_eq!(
        c.cmd("LIST"),
        "+OK 2 messages (400 octets)\r\n1 100\r\n3 300\r\n.\r\n"
    );
    assert_eq!(c.cmd("UIDL"), "+OK\r\n1 uid1\r\n3 uid3\r\n.\r\n");
    assert_eq!(c.cmd("RETR 2"), "-ERR Message 2 is deleted\r\n");
    assert_eq!(c.cmd("TOP 2 0"), "-ERR Message 2 is deleted\r\n");
    assert_eq!(
        c.cmd("RSET"),
        "+OK Maildrop has 3 messages (600 octets)\r\n"
    );
    assert_eq!(c.cmd("STAT"), "+OK 3 600\r\n");
    c.cmd("DELE 1");
    c.cmd("DELE 3");
    let Some(Output::Action(Action::Commit { delete: ids })) = c.send("QUIT\r\n") else {
        panic!()
    };
    assert_eq!(ids, [10, 30]);
    c.session.committed(Ok(2));
    assert!(matches!(c.drain(), Some(Output::Close)));
    assert_eq!(
        c.take(),
        "+OK Pochta POP3 server signing off (2 messages deleted)\r\n"
    );
}

#[test]
fn failed_commit_says_so() {
    let mut c = logged_in();
    c.cmd("DELE 1");
    assert!(matches!(
        c.send("QUIT\r\n"),
        Some(Output::Action(Action::Commit { delete: _ }))
    ));
    c.session.committed(Err(()));
    assert!(matches!(c.drain(), Some(Output::Close)));
    assert_eq!(
        c.take(),
        "-ERR [SYS/TEMP] Some deleted messages were not removed\r\n"
    );
}

#[test]
fn quit_before_login_deletes_nothing() {
    let mut c = client(TLS);
    assert!(matches!(c.send("QUIT\r\n"), Some(Output::Close)));
    assert_eq!(c.take(), "+OK Pochta POP3 server signing off\r\n");
}

#[test]
fn retr_and_top_are_actions() {
    let mut c = logged_in();
    assert!(matches!(
        c.send("RETR 3\r\n"),
        Some(Output::Action(Action::Retrieve {
            entry_id: 30,
            size: 300,
            top_lines: None
        }))
    ));
    c.session.retrieved(true);
    assert!(matches!(
        c.send("TOP 1 5\r\n"),
        Some(Output::Action(Action::Retrieve {
            entry_id: 10,
            size: 100,
            top_lines: Some(5)
        }))
    ));
    c.session.retrieved(false);
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "-ERR Message is no longer available\r\n");
    assert_eq!(c.cmd("TOP 1"), "-ERR Wrong number of arguments\r\n");
    assert_eq!(c.cmd("TOP 1 -1"), "-ERR Invalid line count\r\n");
    assert_eq!(c.cmd("RETR"), "-ERR Wrong number of arguments\r\n");
}

#[test]
fn pipelined_commands_answer_in_order() {
    let mut c = logged_in();
    let action = c.send("STAT\r\nRETR 1\r\nDELE 1\r\nSTAT\r\n");
    assert!(matches!(
        action,
        Some(Output::Action(Action::Retrieve {
            entry_id: 10,
            size: 100,
            top_lines: None
        }))
    ));
    assert_eq!(
        c.take(),
        "+OK 3 600\r\n",
        "nothing after RETR before it is sent"
    );
    c.session.retrieved(true);
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "+OK Message 1 deleted\r\n+OK 2 500\r\n");
}

#[test]
fn limits_timeouts_and_garbage() {
    let mut c = client(TLS);
    assert_eq!(
        c.cmd(&format!("USER {}", "a".repeat(300))),
        "-ERR Line too long\r\n"
    );
    c.send(&"b".repeat(1000));
    assert_eq!(c.take(), "-ERR Line too long\r\n");
    assert_eq!(c.cmd("\r\nNOOP"), "-ERR Command not valid before login\r\n");
    assert_eq!(c.cmd("US\u{1}ER"), "-ERR Invalid characters in command\r\n");
    c.session.feed(b"\xff\xfe\r\n");
    c.drain();
    assert_eq!(c.take(), "-ERR Invalid characters in command\r\n");
    let mut t = logged_in();
    t.cmd("DELE 1");
    t.session.timed_out();
    assert!(
        matches!(t.drain(), Some(Output::Close)),
        "no commit on timeout"
    );
    assert_eq!(
        t.take(),
        "-ERR Timeout; closing connection, nothing deleted\r\n"
    );

    let mut e = client(TLS);
    let mut closed = false;
    for _ in 0..12 {
        if let Some(Output::Close) = e.send("BOGUS\r\n") {
            closed = true;
            break;
        }
    }
    assert!(
        closed
            && e.take()
                .ends_with("-ERR Too many errors; closing connection\r\n")
    );
}
