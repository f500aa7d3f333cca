//! The server session driven as the connection driver drives it, without sockets. One file
//! past 800 lines on purpose: every test drives a session through the conversation helpers
//! below, which a split would have to repeat or move away from the tests that read them.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pochta_mail::BareLineEndings;
use pochta_mail::Disposition;
use pochta_session::Session as _;
use pochta_smtp::{
    Action, AuthResult, ConnectionPolicy, EtrnResult, Message, Output, RecipientVerdict,
    SenderVerdict, Session, SessionConfig, StoreResult,
};
use pochta_testkit::Script;

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.example.org".into(),
        max_message_size: 1000,
        max_recipients: 3,
        submission_max_recipients: 3,
        max_received_headers: 2,
        bare_line_endings: BareLineEndings::Reject,
        max_errors: 10,
        max_commands: 1000,
        postmaster_domain: Some("example.org".into()),
        enforce_sender_ownership: true,
        submission_null_sender: false,
    }
}

const MX: ConnectionPolicy = ConnectionPolicy {
    starttls_available: true,
    implicit_tls: false,
    auth_enabled: true,
    auth_required: false,
    plaintext_auth: false,
};

type Client = Script<Session>;

fn client(policy: ConnectionPolicy) -> Client {
    client_with(config(), policy)
}

/// A new session, its greeting taken.
fn client_with(config: SessionConfig, policy: ConnectionPolicy) -> Client {
    let mut c = Script::new(Session::new(Arc::new(config), policy));
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "220 mx.example.org ESMTP Pochta\r\n");
    c
}

/// The recipient `output` asks to verify, if it is that.
fn verifying(output: &Option<Output>) -> Option<String> {
    match output {
        Some(Output::Action(Action::VerifyRecipient { recipient, .. })) => {
            Some(recipient.address())
        }
        _ => None,
    }
}

/// Steps of an SMTP conversation the tests repeat.
trait Conversation {
    /// Accepts every recipient the session asks about until it needs input.
    fn accept_all(&mut self, output: Option<Output>) -> Option<Output>;
    fn ehlo(&mut self);
    /// MAIL FROM and the recipients, each accepted.
    fn transaction(&mut self, rcpts: &[&str]);
}

impl Conversation for Client {
    fn accept_all(&mut self, mut output: Option<Output>) -> Option<Output> {
        while verifying(&output).is_some() {
            self.session
                .recipient_verdict(RecipientVerdict::Accept(Disposition::Local));
            output = self.drain();
        }
        output
    }

    fn ehlo(&mut self) {
        assert!(
            self.cmd("EHLO client.example")
                .starts_with("250-mx.example.org greets client.example\r\n")
        );
    }

    fn transaction(&mut self, rcpts: &[&str]) {
        assert_eq!(
            self.cmd("MAIL FROM:<sender@example.net>"),
            "250 2.1.0 Ok\r\n"
        );
        for r in rcpts {
            let output = self.send(&format!("RCPT TO:<{r}>\r\n"));
            assert_eq!(verifying(&output).as_deref(), Some(*r), "{output:?}");
            self.session
                .recipient_verdict(RecipientVerdict::Accept(Disposition::Local));
            assert!(self.drain().is_none());
            assert_eq!(self.take(), "250 2.1.5 Ok\r\n");
        }
    }
}

fn store(output: Option<Output>) -> Box<Message> {
    match output {
        Some(Output::Action(Action::StoreMessage(m))) => m,
        other => panic!("expected a message to store, got {other:?}"),
    }
}

#[test]
fn ehlo_advertises_extensions() {
    let mut c = client(MX);
    let reply = c.cmd("EHLO client.example");
    for keyword in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "ETRN",
        "SMTPUTF8",
        "STARTTLS",
    ] {
        assert!(
            reply.contains(&format!("250-{keyword}\r\n")),
            "{keyword} missing: {reply}"
        );
    }
    assert!(!reply.contains("AUTH"), "no AUTH over plaintext: {reply}");
    assert!(reply.ends_with("250 HELP\r\n"));

    let mut c = client(ConnectionPolicy {
        plaintext_auth: true,
        starttls_available: false,
        ..MX
    });
    let reply = c.cmd("EHLO client.example");
    assert!(
        reply.contains("250-AUTH PLAIN LOGIN\r\n") && !reply.contains("STARTTLS"),
        "{reply}"
    );

    assert_eq!(c.cmd("HELO client.example"), "250 mx.example.org\r\n");
}

#[test]
fn a_whole_transaction() {
    let mut c = client(MX);
    c.ehlo();
    assert_eq!(
        c.cmd("MAIL FROM:<sender@example.net> SIZE=100 RET=HDRS ENVID=e1"),
        "250 2.1.0 Ok\r\n"
    );
    let action = c.send("RCPT TO:<a@example.org> NOTIFY=SUCCESS ORCPT=rfc822;a@example.org\r\n");
    assert!(verifying(&action).as_deref() == Some("a@example.org"));
    c.session
        .recipient_verdict(RecipientVerdict::Accept(Disposition::Hold));
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "250 2.1.5 Ok\r\n");
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    let m = store(c.send("Subject: hi\r\n\r\n..dot\r\n.\r\n"));
    assert_eq!(m.body, b"Subject: hi\r\n\r\n.dot\r\n");
    assert_eq!(m.helo, "client.example");
    assert!(m.esmtp && !m.tls && m.authenticated.is_none());
    assert_eq!(
        m.mail.sender.as_ref().unwrap().address(),
        "sender@example.net"
    );
    assert_eq!(m.mail.envid.as_deref(), Some("e1"));
    assert_eq!(m.recipients.len(), 1);
    assert_eq!(m.recipients[0].disposition, Disposition::Hold);
    assert_eq!(
        m.recipients[0].rcpt.orcpt.as_ref().map(|o| o.as_str()),
        Some("rfc822;a@example.org")
    );
    assert!(c.take().is_empty(), "no reply before the message is stored");
    c.session.store_result(StoreResult::Stored {
        queue_id: "Q1".into(),
    });
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "250 2.0.0 Ok: queued as Q1\r\n");
    // The transaction is over: a new one can start.
    c.transaction(&["b@example.org"]);
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let mut c = client(MX);
    let action = c.send("EHLO c\r\nMAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n");
    let action = c.accept_all(action);
    assert!(action.is_none());
    let replies = c.take();
    let codes: Vec<&str> = replies.lines().map(|l| &l[..4]).collect();
    assert_eq!(
        codes.iter().filter(|c| c.starts_with("250-")).count(),
        10,
        "{replies}"
    );
    assert!(replies.ends_with("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"), "{replies}");
    let m = store(c.send("body\r\n.\r\nQUIT\r\n"));
    assert_eq!(m.recipients.len(), 2);
    c.session.store_result(StoreResult::Stored {
        queue_id: "Q".into(),
    });
    assert!(matches!(c.drain(), Some(Output::Close)));
    assert_eq!(c.take(), "250 2.0.0 Ok: queued as Q\r\n221 2.0.0 Bye\r\n");
}

#[test]
fn sequencing_errors() {
    let mut c = client(MX);
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.net>"),
        "503 5.5.1 Send EHLO/HELO first\r\n"
    );
    c.ehlo();
    assert_eq!(
        c.cmd("RCPT TO:<a@example.org>"),
        "503 5.5.1 Need MAIL before RCPT\r\n"
    );
    assert_eq!(c.cmd("DATA"), "503 5.5.1 Need MAIL command\r\n");
    assert_eq!(c.cmd("MAIL FROM:<s@example.net>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.net>"),
        "503 5.5.1 Nested MAIL command\r\n"
    );
    assert_eq!(c.cmd("DATA"), "554 5.5.1 No valid recipients\r\n");
    assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        c.cmd("RCPT TO:<a@example.org>"),
        "503 5.5.1 Need MAIL before RCPT\r\n"
    );
    // A new EHLO also clears the transaction.
    c.transaction(&["a@example.org"]);
    c.ehlo();
    assert_eq!(c.cmd("DATA"), "503 5.5.1 Need MAIL command\r\n");
}

#[test]
fn simple_commands() {
    let mut c = client(MX);
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        c.cmd("VRFY postmaster"),
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
    );
    assert_eq!(c.cmd("EXPN list"), "502 5.5.1 EXPN not available\r\n");
    assert!(c.cmd("HELP").starts_with("214 2.0.0 "));
    assert_eq!(
        c.cmd("BURL imap://x LAST"),
        "502 5.5.1 BURL not implemented\r\n"
    );
    assert_eq!(
        c.cmd("XYZZY"),
        "500 5.5.2 Syntax error: command unrecognized\r\n"
    );
    assert!(matches!(c.send("QUIT\r\nNOOP\r\n"), Some(Output::Close)));
    assert_eq!(c.take(), "221 2.0.0 Bye\r\n");
    assert!(c.session.is_closed());
}

#[test]
fn recipient_verdicts_and_limits() {
    let mut c = client(MX);
    c.ehlo();
    c.cmd("MAIL FROM:<s@example.net>");
    for (verdict, reply) in [
        (
            RecipientVerdict::NoSuchUser,
            "550 5.1.1 Recipient address rejected: no such user\r\n",
        ),
        (
            RecipientVerdict::Disabled,
            "550 5.2.1 Recipient mailbox is disabled\r\n",
        ),
        (
            RecipientVerdict::RelayDenied,
            "554 5.7.1 Relay access denied\r\n",
        ),
        (
            RecipientVerdict::MailboxFull,
            "452 4.2.2 Recipient mailbox is full; try again later\r\n",
        ),
        (
            RecipientVerdict::TemporaryFailure,
            "451 4.3.0 Temporary failure verifying the recipient; try again later\r\n",
        ),
    ] {
        assert!(matches!(
            c.send("RCPT TO:<x@elsewhere.example>\r\n"),
            Some(Output::Action(Action::VerifyRecipient { .. }))
        ));
        c.session.recipient_verdict(verdict);
        assert!(c.drain().is_none());
        assert_eq!(c.take(), reply);
    }
    assert_eq!(c.cmd("DATA"), "554 5.5.1 No valid recipients\r\n");
    // At most max_recipients (3); a repeated recipient counts once.
    let action = c.send("RCPT TO:<a@example.org>\r\nRCPT TO:<A@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nRCPT TO:<d@example.org>\r\n");
    assert!(c.accept_all(action).is_none());
    assert!(
        c.take()
            .ends_with("250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n")
    );
    c.cmd("DATA");
    let m = store(c.send(".\r\n"));
    let rcpts: Vec<_> = m
        .recipients
        .iter()
        .map(|r| r.rcpt.recipient.address())
        .collect();
    assert_eq!(rcpts, ["a@example.org", "b@example.org", "c@example.org"]);
}

#[test]
fn size_limits() {
    let mut c = client(MX);
    c.ehlo();
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.net> SIZE=1001"),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    c.transaction(&["a@example.org"]);
    c.cmd("DATA");
    let line = "x".repeat(998);
    let big = format!("{line}\r\n{line}\r\n.\r\n");
    assert!(c.send(&big).is_none());
    assert_eq!(
        c.take(),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    // The session is still usable.
    c.transaction(&["a@example.org"]);
    c.cmd("DATA");
    assert!(store(c.send("small\r\n.\r\n")).body == b"small\r\n");
}

#[test]
fn over_long_lines() {
    let mut c = client(MX);
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    assert_eq!(c.cmd(long.trim_end()), "500 5.5.2 Line too long\r\n");
    // An endless line is cut off once, then the next command works.
    assert!(c.send(&"y".repeat(2000)).is_none());
    assert_eq!(c.take(), "500 5.5.2 Line too long\r\n");
    assert!(c.send(&"y".repeat(2000)).is_none());
    assert_eq!(c.take(), "");
    assert_eq!(c.cmd("\r\nNOOP").trim_end(), "250 2.0.0 Ok");
    c.ehlo();
    c.transaction(&["a@example.org"]);
    c.cmd("DATA");
    assert!(c.send(&format!("{}\r\n.\r\n", "z".repeat(999))).is_none());
    assert_eq!(
        c.take(),
        "500 5.5.2 Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)\r\n"
    );
}

/// Each smuggling attempt is one message, rejected whole; the smuggled commands are never run.
#[test]
fn smuggling_attempts_are_rejected_whole() {
    for attempt in [
        "a\n.\nMAIL FROM:<x@evil.example>\r\n",
        "a\r\n.\nRSET\r\n",
        "a\n.\r\nRSET\r\n",
        "a\r.\rRSET\r\n",
    ] {
        let mut c = client(MX);
        c.ehlo();
        c.transaction(&["a@example.org"]);
        c.cmd("DATA");
        let action = c.send(&format!("{attempt}more\r\n.\r\nNOOP\r\n"));
        assert!(action.is_none(), "{attempt:?}: {action:?}");
        assert_eq!(
            c.take(),
            "550 5.6.0 Message has a bare LF or CR; lines must end with CRLF (RFC 5321 2.3.8)\r\n250 2.0.0 Ok\r\n",
            "{attempt:?}"
        );
    }
}

#[test]
fn bare_line_endings_can_be_normalized() {
    let mut c = client_with(
        SessionConfig {
            bare_line_endings: BareLineEndings::Normalize,
            ..config()
        },
        MX,
    );
    c.ehlo();
    c.transaction(&["a@example.org"]);
    c.cmd("DATA");
    let m = store(c.send("a\nb\r\n.\r\n"));
    assert_eq!(m.body, b"a\r\nb\r\n");
}

#[test]
fn mail_loops_are_refused() {
    let mut c = client(MX);
    c.ehlo();
    c.transaction(&["a@example.org"]);
    c.cmd("DATA");
    assert!(
        c.send("Received: 1\r\nReceived: 2\r\nReceived: 3\r\n\r\nx\r\n.\r\n")
            .is_none()
    );
    assert_eq!(
        c.take(),
        "554 5.4.6 Too many Received headers: mail loop?\r\n"
    );
}

#[test]
fn starttls_discards_pipelined_plaintext_and_restarts() {
    let mut c = client(MX);
    c.ehlo();
    // The injected MAIL must not be executed after the handshake.
    assert!(matches!(
        c.send("STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n"),
        Some(Output::StartTls)
    ));
    assert_eq!(c.take(), "220 2.0.0 Ready to start TLS\r\n");
    assert!(c.drain().is_none());
    c.session.tls_established();
    assert!(c.session.tls_active());
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "", "nothing was run from the plaintext buffer");
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.net>"),
        "503 5.5.1 Send EHLO/HELO first\r\n"
    );
    let ehlo = c.cmd("EHLO client.example");
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    assert_eq!(c.cmd("STARTTLS"), "503 5.5.1 Already running TLS\r\n");

    let mut plain = client(ConnectionPolicy {
        starttls_available: false,
        ..MX
    });
    assert_eq!(
        plain.cmd("STARTTLS"),
        "502 5.5.1 STARTTLS not available\r\n"
    );
}

fn plain(user: &str, pass: &str) -> String {
    BASE64.encode(format!("\0{user}\0{pass}"))
}

/// A TLS session on the submission port.
fn submission() -> Client {
    let mut c = client(ConnectionPolicy {
        implicit_tls: true,
        auth_required: true,
        ..MX
    });
    c.ehlo();
    c
}

#[test]
fn auth_plain_with_initial_response() {
    let mut c = submission();
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org>"),
        "530 5.7.0 Authentication required\r\n"
    );
    let Some(Output::Action(Action::Authenticate(creds))) =
        c.send(&format!("AUTH PLAIN {}\r\n", plain("a@example.org", "pw")))
    else {
        panic!()
    };
    assert_eq!(
        (
            creds.username.as_str(),
            creds.password.as_str(),
            creds.authzid.as_deref()
        ),
        ("a@example.org", "pw", None)
    );
    assert!(
        !format!("{creds:?}").contains("pw"),
        "passwords never reach logs"
    );
    c.session.auth_result(AuthResult::Success {
        user: "a@example.org".into(),
    });
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "235 2.7.0 Authentication successful\r\n");
    assert_eq!(c.session.authenticated_user(), Some("a@example.org"));
    assert_eq!(c.cmd("AUTH PLAIN"), "503 5.5.1 Already authenticated\r\n");
    // Only its own address as the sender.
    assert_eq!(
        c.cmd("MAIL FROM:<other@example.org>"),
        "553 5.7.1 Sender address rejected: not owned by user a@example.org\r\n"
    );
    assert!(matches!(
        c.send("MAIL FROM:<A@Example.org>\r\n"),
        Some(Output::Action(Action::VerifySender { .. }))
    ));
    c.session.sender_verdict(SenderVerdict::Accept);
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("AUTH PLAIN"), "503 5.5.1 Already authenticated\r\n");
}

/// Logs `user` in on a submission session made with `config`.
fn logged_in(config: SessionConfig, user: &str) -> Client {
    let mut c = client_with(
        config,
        ConnectionPolicy {
            implicit_tls: true,
            auth_required: true,
            ..MX
        },
    );
    c.ehlo();
    let Some(Output::Action(Action::Authenticate(_))) =
        c.send(&format!("AUTH PLAIN {}\r\n", plain(user, "pw")))
    else {
        panic!()
    };
    c.session
        .auth_result(AuthResult::Success { user: user.into() });
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "235 2.7.0 Authentication successful\r\n");
    c
}

/// An authenticated MAIL waits for the sending-rate verdict; pipelined commands behind it wait
/// too, and a refusal leaves no transaction for them.
#[test]
fn an_authenticated_sender_is_checked_against_its_sending_limits() {
    let mut c = logged_in(config(), "a@example.org");
    let Some(Output::Action(Action::VerifySender { user })) =
        c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
    else {
        panic!("no sender check")
    };
    assert_eq!(user, "a@example.org");
    c.session.sender_verdict(SenderVerdict::RateLimited(
        "300 messages in the last hour".into(),
    ));
    assert!(c.drain().is_none());
    assert_eq!(
        c.take(),
        "450 4.7.1 Sending rate limit exceeded: 300 messages in the last hour; try again later\r\n\
         503 5.5.1 Need MAIL before RCPT\r\n"
    );
    assert!(matches!(
        c.send("MAIL FROM:<a@example.org>\r\n"),
        Some(Output::Action(Action::VerifySender { .. }))
    ));
    c.session.sender_verdict(SenderVerdict::TemporaryFailure);
    assert!(c.drain().is_none());
    assert!(c.take().starts_with("451 4.3.0"));
    // Recipients per message: submission_max_recipients (here 2) for a logged-in user.
    let mut c = logged_in(
        SessionConfig {
            submission_max_recipients: 2,
            ..config()
        },
        "a@example.org",
    );
    c.send("MAIL FROM:<a@example.org>\r\n");
    c.session.sender_verdict(SenderVerdict::Accept);
    c.drain();
    c.take();
    for (i, rcpt) in ["x@e.example", "y@e.example"].iter().enumerate() {
        let output = c.send(&format!("RCPT TO:<{rcpt}>\r\n"));
        assert_eq!(verifying(&output).as_deref(), Some(*rcpt), "{i}");
        c.session
            .recipient_verdict(RecipientVerdict::Accept(Disposition::Remote));
        assert!(c.drain().is_none());
        assert_eq!(c.take(), "250 2.1.5 Ok\r\n");
    }
    assert_eq!(
        c.cmd("RCPT TO:<z@e.example>"),
        "452 4.5.3 Too many recipients\r\n"
    );
}

/// A logged-in user may not send from `<>` (no bounce would come back) unless allowed; an
/// unauthenticated MX peer always may (RFC 5321 4.5.5).
#[test]
fn null_sender_on_submission_only_when_allowed() {
    let mut c = logged_in(config(), "a@example.org");
    assert_eq!(
        c.cmd("MAIL FROM:<>"),
        "553 5.7.1 Sender address rejected: the null sender is not allowed for submission\r\n"
    );
    assert!(matches!(
        c.send("MAIL FROM:<a@example.org>\r\n"),
        Some(Output::Action(Action::VerifySender { .. }))
    ));
    c.session.sender_verdict(SenderVerdict::Accept);
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "250 2.1.0 Ok\r\n");

    let allowed = SessionConfig {
        submission_null_sender: true,
        ..config()
    };
    let mut c = logged_in(allowed, "a@example.org");
    assert!(matches!(
        c.send("MAIL FROM:<>\r\n"),
        Some(Output::Action(Action::VerifySender { .. }))
    ));

    let mut mx = client(MX);
    mx.ehlo();
    assert_eq!(mx.cmd("MAIL FROM:<>"), "250 2.1.0 Ok\r\n");
}

#[test]
fn auth_plain_and_login_challenges() {
    let mut c = submission();
    assert_eq!(c.cmd("AUTH PLAIN"), "334 \r\n");
    assert_eq!(c.cmd("*"), "501 5.0.0 Authentication cancelled\r\n");
    assert_eq!(c.cmd("AUTH PLAIN"), "334 \r\n");
    assert_eq!(
        c.cmd("!!notbase64"),
        "501 5.5.2 Cannot decode the response (base64)\r\n"
    );
    assert_eq!(c.cmd("AUTH PLAIN"), "334 \r\n");
    assert!(matches!(
        c.send(&format!("{}\r\n", plain("a@example.org", "bad"))),
        Some(Output::Action(Action::Authenticate(_)))
    ));
    c.session.auth_result(AuthResult::Failure);
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "535 5.7.8 Authentication credentials invalid\r\n");

    assert_eq!(c.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(
        c.cmd(&BASE64.encode("a@example.org")),
        "334 UGFzc3dvcmQ6\r\n"
    );
    let Some(Output::Action(Action::Authenticate(creds))) =
        c.send(&format!("{}\r\n", BASE64.encode("secret")))
    else {
        panic!()
    };
    assert_eq!(
        (creds.username.as_str(), creds.password.as_str()),
        ("a@example.org", "secret")
    );
    c.session.auth_result(AuthResult::TemporaryFailure);
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "454 4.7.0 Temporary authentication failure\r\n");

    // LOGIN with the user name as initial response.
    let Some(Output::Action(Action::Authenticate(_))) = ({
        assert_eq!(
            c.cmd(&format!("AUTH LOGIN {}", BASE64.encode("a@example.org"))),
            "334 UGFzc3dvcmQ6\r\n"
        );
        c.send(&format!("{}\r\n", BASE64.encode("pw")))
    }) else {
        panic!()
    };
    c.session.auth_result(AuthResult::RateLimited);
    assert!(matches!(c.drain(), Some(Output::Close)));
    assert_eq!(
        c.take(),
        "421 4.7.0 Too many failed authentications; try again later\r\n"
    );
}

#[test]
fn auth_refusals() {
    let mut c = submission();
    assert_eq!(
        c.cmd("AUTH CRAM-MD5"),
        "504 5.5.4 Unrecognized authentication type\r\n"
    );
    // Another identity than the authenticated one is refused without asking anyone.
    assert_eq!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            BASE64.encode("boss@example.org\0a@example.org\0pw")
        )),
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", BASE64.encode("only-two\0parts"))),
        "501 5.5.2 Malformed PLAIN response\r\n"
    );

    // Without TLS and without the plaintext exception: no AUTH, and submission says STARTTLS.
    let mut c = client(ConnectionPolicy {
        auth_required: true,
        ..MX
    });
    c.ehlo();
    assert_eq!(
        c.cmd("AUTH PLAIN"),
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org>"),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );

    let mut c = client(ConnectionPolicy {
        auth_enabled: false,
        ..MX
    });
    c.ehlo();
    assert_eq!(c.cmd("AUTH PLAIN"), "502 5.5.1 AUTH not available\r\n");

    let mut c = client(ConnectionPolicy {
        implicit_tls: true,
        ..MX
    });
    assert_eq!(c.cmd("AUTH PLAIN"), "503 5.5.1 Send EHLO first\r\n");
    c.ehlo();
    c.transaction(&[]);
    assert_eq!(
        c.cmd("AUTH PLAIN"),
        "503 5.5.1 AUTH not permitted during a mail transaction\r\n"
    );
}

#[test]
fn etrn() {
    let mut c = client(MX);
    assert_eq!(
        c.cmd("ETRN backup.example"),
        "503 5.5.1 Send EHLO/HELO first\r\n"
    );
    c.ehlo();
    for (result, reply) in [
        (
            EtrnResult::Started { messages: 3 },
            "253 2.0.0 OK, 3 pending messages for node backup.example started\r\n",
        ),
        (
            EtrnResult::NothingQueued,
            "251 2.0.0 OK, no messages waiting for node backup.example\r\n",
        ),
        (
            EtrnResult::NotAllowed,
            "459 4.7.1 Node backup.example not allowed: not a domain held here\r\n",
        ),
        (
            EtrnResult::Unavailable,
            "458 4.3.0 Unable to queue messages for node backup.example\r\n",
        ),
    ] {
        let action = c.send("ETRN @Backup.Example\r\n");
        assert!(
            matches!(&action, Some(Output::Action(Action::Etrn { domain: d, subdomains: true })) if d == "backup.example"),
            "{action:?}"
        );
        c.session.etrn_result(result);
        assert!(c.drain().is_none());
        assert_eq!(c.take(), reply);
    }
    c.transaction(&[]);
    assert_eq!(
        c.cmd("ETRN backup.example"),
        "503 5.5.1 ETRN not permitted during a mail transaction\r\n"
    );
}

#[test]
fn utf8_recipients_need_smtputf8() {
    let mut c = client(MX);
    c.ehlo();
    c.cmd("MAIL FROM:<s@example.net>");
    assert_eq!(
        c.cmd("RCPT TO:<пользователь@example.org>"),
        "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n"
    );
    c.cmd("RSET");
    c.cmd("MAIL FROM:<s@example.net> SMTPUTF8");
    assert!(matches!(
        c.send("RCPT TO:<пользователь@example.org>\r\n"),
        Some(Output::Action(Action::VerifyRecipient { .. }))
    ));
}

#[test]
fn hostile_clients_are_cut_off() {
    let mut c = client(MX);
    assert!(matches!(
        c.send("GET / HTTP/1.1\r\nHost: x\r\n"),
        Some(Output::Close)
    ));
    assert_eq!(c.take(), "421 4.7.0 This is an SMTP server\r\n");

    let mut c = client(MX);
    let mut action = None;
    for _ in 0..11 {
        action = c.send("BOGUS\r\n");
        if action.is_some() {
            break;
        }
    }
    assert!(matches!(action, Some(Output::Close)));
    assert!(
        c.take()
            .ends_with("421 4.7.0 Too many errors; closing connection\r\n")
    );
    assert!(c.send("NOOP\r\n").is_none(), "nothing after close");
}

#[test]
fn timeout_and_shutdown_close_with_421() {
    let mut c = client(MX);
    c.session.timed_out();
    assert!(matches!(c.drain(), Some(Output::Close)));
    assert_eq!(
        c.take(),
        "421 4.4.2 mx.example.org Timeout; closing connection\r\n"
    );
    let mut c = client(MX);
    assert!(c.session.is_idle());
    c.session.shutting_down();
    assert!(matches!(c.drain(), Some(Output::Close)));
    assert_eq!(
        c.take(),
        "421 4.3.2 mx.example.org Service shutting down\r\n"
    );
}

/// Random input never panics and never produces an action out of order.
#[test]
fn garbage_never_panics() {
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces: [&[u8]; 12] = [
        b"EHLO x\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"RCPT TO:<c@d.example>\r\n",
        b"DATA\r\n",
        b".\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"AUTH PLAIN\r\n",
        b"STARTTLS\r\n",
        b"\xff\xfe\x00",
        b"x",
    ];
    for _ in 0..300 {
        let mut c = client(ConnectionPolicy {
            plaintext_auth: true,
            ..MX
        });
        for _ in 0..50 {
            let piece = pieces[(next() % pieces.len() as u64) as usize];
            c.session.feed(piece);
            while let Some(action) = c.drain() {
                match action {
                    Output::Action(Action::VerifyRecipient { .. }) => c
                        .session
                        .recipient_verdict(RecipientVerdict::Accept(Disposition::Local)),
                    Output::Action(Action::Authenticate(_)) => {
                        c.session.auth_result(AuthResult::Failure)
                    }
                    Output::Action(Action::StoreMessage(_)) => {
                        c.session.store_result(StoreResult::Stored {
                            queue_id: "Q".into(),
                        })
                    }
                    Output::Action(Action::Etrn { .. }) => {
                        c.session.etrn_result(EtrnResult::NothingQueued)
                    }
                    Output::Action(Action::VerifySender { .. }) => {
                        c.session.sender_verdict(SenderVerdict::Accept)
                    }
                    Output::StartTls => c.session.tls_established(),
                    Output::Close => break,
                    Output::Send(_) => unreachable!("drain keeps what is sent"),
                }
            }
            c.take();
        }
    }
}

/// Sends `input` as it is (no CRLF added) and returns the replies.
fn raw(c: &mut Client, input: &str) -> String {
    let output = c.send(input);
    assert!(output.is_none(), "{input:?}: unexpected {output:?}");
    c.take()
}

/// RFC 3030: BDAT chunks, of any size and split anywhere, make one message byte for byte (no
/// dot-stuffing, no terminator); BDAT 0 LAST ends it; DATA and BDAT mix in one session.
#[test]
fn bdat_chunks_make_one_message() {
    let mut c = client(MX);
    let ehlo = c.cmd("EHLO client.example");
    assert!(ehlo.contains("250-CHUNKING\r\n"), "{ehlo}");
    c.transaction(&["a@example.org"]);
    assert_eq!(
        raw(&mut c, "BDAT 9\r\nSubject: "),
        "250 2.0.0 Chunk received\r\n"
    );
    // A chunk split across reads, a line across chunks, a leading dot kept as it is.
    assert_eq!(raw(&mut c, "BDAT 12\r\nhi\r\n"), "");
    assert_eq!(raw(&mut c, "\r\n.dot"), "");
    assert_eq!(raw(&mut c, "\r\n"), "250 2.0.0 Chunk received\r\n");
    let m = store(c.send("BDAT 0 LAST\r\n"));
    assert_eq!(m.body, b"Subject: hi\r\n\r\n.dot\r\n");
    c.session.store_result(StoreResult::Stored {
        queue_id: "Q1".into(),
    });
    assert!(c.drain().is_none());
    assert_eq!(c.take(), "250 2.0.0 Ok: queued as Q1\r\n");

    // Pipelined: both chunks (a CRLF split between them) and the next command in one read.
    c.transaction(&["b@example.org"]);
    let m = store(c.send("BDAT 3\r\nab\rBDAT 4 LAST\r\n\nc\r\nNOOP\r\n"));
    assert_eq!(c.take(), "250 2.0.0 Chunk received\r\n");
    assert_eq!(m.body, b"ab\r\nc\r\n");
    c.session.store_result(StoreResult::TemporaryFailure);
    assert!(c.drain().is_none());
    let replies = c.take();
    assert!(
        replies.starts_with("451 4.3.0") && replies.ends_with("250 2.0.0 Ok\r\n"),
        "{replies}"
    );
    c.transaction(&["c@example.org"]);
    c.cmd("DATA");
    assert_eq!(store(c.send("plain\r\n.\r\n")).body, b"plain\r\n");
}

/// A refused chunk is read whole and thrown away, never run as commands; DATA may not follow
/// BDAT; a message past the size limit ends at the chunk that crosses it.
#[test]
fn bdat_refusals_consume_the_chunk() {
    let mut c = client(MX);
    c.ehlo();
    assert_eq!(
        raw(&mut c, "BDAT 6\r\nQUIT\r\n"),
        "503 5.5.1 Need MAIL command\r\n"
    );
    assert!(!c.session.is_closed(), "the chunk's QUIT was not a command");
    assert_eq!(c.cmd("MAIL FROM:<s@example.net>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        raw(&mut c, "BDAT 3 LAST\r\nx\r\n"),
        "554 5.5.1 No valid recipients\r\n"
    );
    c.cmd("RSET");
    c.transaction(&["a@example.org"]);
    assert_eq!(
        raw(&mut c, "BDAT 3\r\nab\n"),
        "250 2.0.0 Chunk received\r\n"
    );
    assert_eq!(c.cmd("DATA"), "503 5.5.1 DATA may not follow BDAT\r\n");
    assert_eq!(
        raw(&mut c, "BDAT 3 LAST\r\nc\r\n"),
        "550 5.6.0 Message has a bare LF or CR; lines must end with CRLF (RFC 5321 2.3.8)\r\n"
    );
    for bad in ["BDAT", "BDAT x", "BDAT -1", "BDAT 5 LATER", "BDAT 5 LAST x"] {
        assert_eq!(&c.cmd(bad)[..9], "501 5.5.4", "{bad}");
    }

    // 1000 octets at most: the second chunk crosses it; the next chunk has no transaction.
    let mut c = client(MX);
    c.ehlo();
    c.transaction(&["a@example.org"]);
    let line = format!("{}\r\n", "x".repeat(598));
    assert_eq!(
        raw(&mut c, &format!("BDAT 600\r\n{line}")),
        "250 2.0.0 Chunk received\r\n"
    );
    assert_eq!(
        raw(&mut c, &format!("BDAT 600\r\n{line}")),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(
        raw(&mut c, &format!("BDAT 600 LAST\r\n{line}")),
        "503 5.5.1 Need MAIL command\r\n"
    );
    c.transaction(&["a@example.org"]);
    assert_eq!(store(c.send("BDAT 5 LAST\r\nlast!")).body, b"last!\r\n");
}

/// A message the sender domain's policy refuses (DMARC p=reject) gets 550 5.7.1 with the
/// reason, and the session goes on to its next transaction.
#[test]
fn a_policy_refusal_ends_the_transaction_with_550() {
    let mut c = client(MX);
    c.ehlo();
    c.transaction(&["a@example.org"]);
    c.cmd("DATA");
    store(c.send("From: x@forged.example\r\n\r\nhi\r\n.\r\n"));
    c.session.store_result(StoreResult::PolicyRejected {
        reason: "Rejected by the DMARC policy of forged.example".into(),
    });
    assert!(c.drain().is_none());
    assert_eq!(
        c.take(),
        "550 5.7.1 Rejected by the DMARC policy of forged.example\r\n"
    );
    c.transaction(&["b@example.org"]);
    c.cmd("DATA");
    assert_eq!(store(c.send("next\r\n.\r\n")).body, b"next\r\n");
}

/// REQUIRETLS (RFC 8689 4.1) is offered only over TLS, refused without it, and kept with
/// the message when given.
#[test]
fn requiretls_is_offered_and_taken_only_over_tls() {
    let mut c = client(MX);
    assert!(!c.cmd("EHLO client.example").contains("REQUIRETLS"));
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.net> REQUIRETLS"),
        "530 5.7.10 REQUIRETLS needs a TLS session (RFC 8689)\r\n"
    );
    assert!(matches!(c.send("STARTTLS\r\n"), Some(Output::StartTls)));
    c.take();
    c.session.tls_established();
    assert!(c.drain().is_none());
    assert!(c.cmd("EHLO client.example").contains("250-REQUIRETLS\r\n"));
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.net> REQUIRETLS=yes"),
        "501 5.5.4 Syntax error: REQUIRETLS takes no value\r\n"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.net> REQUIRETLS"),
        "250 2.1.0 Ok\r\n"
    );
    let output = c.send("RCPT TO:<a@example.org>\r\n");
    assert!(c.accept_all(output).is_none());
    c.take();
    c.cmd("DATA");
    let m = store(c.send("hi\r\n.\r\n"));
    assert!(m.mail.requiretls && m.tls);
}
