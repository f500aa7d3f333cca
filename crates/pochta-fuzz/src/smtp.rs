//! SMTP: the server session, the client session and DATA reception.

use std::sync::Arc;

use pochta_mail::{BareLineEndings, Body, Disposition, Mailbox, Notify, Ret, TlsPolicy};
use pochta_session::{Output, Session as _};
use pochta_smtp::client::{
    ClientOutput, ClientSession, Outgoing, OutgoingRecipient, RecipientOutcome,
};
use pochta_smtp::data::{DataLimits, DataReceiver};
use pochta_smtp::{
    Action, AuthResult, ConnectionPolicy, EtrnResult, RecipientVerdict, SenderVerdict, Session,
    SessionConfig, StoreResult,
};

use crate::input::Input;

/// Every reply line the server sends is a reply line: three digits, the first 2-5, then a
/// space or a hyphen, the text, CRLF (RFC 5321 4.2).
fn check_replies(bytes: &[u8]) {
    assert!(bytes.ends_with(b"\r\n"), "a reply ends in CRLF: {bytes:?}");
    for line in bytes[..bytes.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            line.len() >= 4
                && (b'2'..=b'5').contains(&line[0])
                && line[1].is_ascii_digit()
                && line[2].is_ascii_digit()
                && matches!(line[3], b' ' | b'-'),
            "not a reply line: {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            !line.iter().any(|b| *b == b'\r' || *b == 0),
            "no bare CR or NUL in a reply: {line:?}"
        );
    }
}

/// The server session fed the input in pieces of varying size, its actions answered as the
/// input says. Oracles: every reply is well formed; nothing is output after `Close`.
pub fn smtp_server(data: &[u8]) {
    let mut input = Input::new(data);
    let config = SessionConfig {
        hostname: "mx.example.org".into(),
        max_message_size: 4096,
        max_recipients: 5,
        submission_max_recipients: 3,
        max_received_headers: 3,
        bare_line_endings: if input.bool() {
            BareLineEndings::Reject
        } else {
            BareLineEndings::Normalize
        },
        max_errors: 50,
        max_commands: 500,
        postmaster_domain: input.bool().then(|| "example.org".to_owned()),
        enforce_sender_ownership: input.bool(),
        submission_null_sender: input.bool(),
    };
    let policy = ConnectionPolicy {
        starttls_available: input.bool(),
        implicit_tls: input.bool(),
        auth_enabled: input.bool(),
        auth_required: input.bool(),
        plaintext_auth: input.bool(),
    };
    let mut session = Session::new(Arc::new(config), policy);
    let mut closed = false;
    loop {
        while let Some(output) = session.poll() {
            assert!(!closed, "output after Close: {output:?}");
            match output {
                Output::Send(bytes) => check_replies(&bytes),
                Output::StartTls => session.tls_established(),
                Output::Close => closed = true,
                Output::Action(action) => answer_smtp(&mut session, action, &mut input),
            }
        }
        if input.is_empty() {
            return;
        }
        session.feed(input.piece(64));
    }
}

fn answer_smtp(session: &mut Session, action: Action, input: &mut Input) {
    match action {
        Action::VerifyRecipient { .. } => session.recipient_verdict(match input.choose(9) {
            0 => RecipientVerdict::Accept(Disposition::Local),
            1 => RecipientVerdict::Accept(Disposition::Remote),
            2 => RecipientVerdict::Accept(Disposition::Hold),
            3 => RecipientVerdict::NoSuchUser,
            4 => RecipientVerdict::Disabled,
            5 => RecipientVerdict::RelayDenied,
            6 => RecipientVerdict::DomainBacklogFull,
            7 => RecipientVerdict::MailboxFull,
            _ => RecipientVerdict::TemporaryFailure,
        }),
        Action::Authenticate(credentials) => session.auth_result(match input.choose(4) {
            0 => AuthResult::Success {
                user: credentials.username,
            },
            1 => AuthResult::Failure,
            2 => AuthResult::RateLimited,
            _ => AuthResult::TemporaryFailure,
        }),
        Action::StoreMessage(message) => {
            assert!(
                !message.recipients.is_empty(),
                "a message without recipients"
            );
            session.store_result(if input.bool() {
                StoreResult::Stored {
                    queue_id: "Q1".into(),
                }
            } else {
                StoreResult::TemporaryFailure
            })
        }
        Action::Etrn { .. } => session.etrn_result(match input.choose(4) {
            0 => EtrnResult::Started { messages: 3 },
            1 => EtrnResult::NothingQueued,
            2 => EtrnResult::NotAllowed,
            _ => EtrnResult::Unavailable,
        }),
        Action::VerifySender { .. } => session.sender_verdict(match input.choose(3) {
            0 => SenderVerdict::Accept,
            1 => SenderVerdict::RateLimited("too many".into()),
            _ => SenderVerdict::TemporaryFailure,
        }),
    }
}

fn outgoing(input: &mut Input) -> Outgoing {
    let recipients = (0..input.choose(4) + 1)
        .map(|i| OutgoingRecipient {
            address: Mailbox::parse(&format!("r{i}@remote.example")).expect("valid"),
            notify: input.bool().then_some(Notify::DEFAULT),
            orcpt: input.bool().then(|| {
                format!("rfc822;r{i}@remote.example")
                    .parse()
                    .expect("valid")
            }),
        })
        .collect();
    Outgoing {
        helo_name: "mx.example.org".into(),
        reverse_path: input
            .bool()
            .then(|| Mailbox::parse("s@example.org").expect("valid")),
        envid: input.bool().then(|| "env".to_owned()),
        ret: input.bool().then_some(Ret::Hdrs),
        body: input.bool().then_some(Body::EightBitMime),
        smtputf8: input.bool(),
        size: usize::from(input.byte()) * 100,
        recipients,
        tls: [
            TlsPolicy::Opportunistic,
            TlsPolicy::Required,
            TlsPolicy::Verify,
            TlsPolicy::Never,
        ][input.choose(4)],
        requiretls: input.bool(),
    }
}

/// The client session fed a remote server's replies. Oracles: each message ends in exactly
/// one `Done` with one outcome per recipient, no text it keeps has a control character, a
/// further message is started only on a reusable connection, and a REQUIRETLS message is
/// never accepted over a connection without TLS.
pub fn smtp_client(data: &[u8]) {
    let mut input = Input::new(data);
    let mut out = outgoing(&mut input);
    let mut client = ClientSession::new(out.clone());
    let mut tls = false;
    loop {
        let mut done = None;
        while let Some(output) = client.poll() {
            assert!(done.is_none(), "output after Done: {output:?}");
            match output {
                ClientOutput::Send(bytes) => assert!(bytes.ends_with(b"\r\n")),
                ClientOutput::StartTls => {
                    if input.bool() {
                        tls = true;
                        client.tls_established()
                    } else {
                        client.connection_lost("handshake failed")
                    }
                }
                ClientOutput::SendMessage | ClientOutput::SendMessageChunked => {
                    client.message_sent()
                }
                ClientOutput::Done(outcomes) => done = Some(outcomes),
            }
        }
        if let Some(outcomes) = done {
            assert_eq!(outcomes.len(), out.recipients.len());
            for outcome in &outcomes {
                let reply = match outcome {
                    RecipientOutcome::Accepted { reply, .. }
                    | RecipientOutcome::Rejected(reply)
                    | RecipientOutcome::Deferred(reply) => reply,
                };
                assert!(!reply.text.chars().any(char::is_control), "{reply:?}");
                assert!((200..600).contains(&reply.code), "{reply:?}");
                let accepted = matches!(outcome, RecipientOutcome::Accepted { .. });
                assert!(
                    !(accepted && out.requiretls && !tls),
                    "REQUIRETLS without TLS"
                );
            }
            if !(client.reusable() && input.bool()) {
                return;
            }
            out = outgoing(&mut input);
            client.next_message(out.clone());
            continue;
        }
        if input.is_empty() {
            client.connection_lost("the input ended");
            continue;
        }
        client.feed(input.piece(256));
    }
}

/// Where the first CRLF.CRLF ends the data, counting DATA's own CRLF as the one before the
/// first line: the number of input octets it takes up to and including the final LF.
fn expected_end(input: &[u8]) -> Option<usize> {
    let mut text = b"\r\n".to_vec();
    text.extend_from_slice(input);
    text.windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|at| at + 3)
}

/// The text before the terminator, dot-unstuffed (RFC 5321 4.5.2).
fn unstuffed(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// DATA reception fed in pieces. Oracles: the data ends exactly at the first CRLF.CRLF (the
/// smuggling defence), wherever the pieces are cut; without a problem, the message is the text
/// before it, dot-unstuffed.
pub fn data_receiver(data: &[u8]) {
    let mut input = Input::new(data);
    let limits = DataLimits {
        max_size: 1 << 16,
        max_line: 1000,
        bare_line_endings: BareLineEndings::Reject,
    };
    let cuts: Vec<usize> = (0..input.choose(8)).map(|_| input.choose(64) + 1).collect();
    let text = input.rest();
    let expected = expected_end(text);
    let mut receiver = DataReceiver::new(limits);
    let (mut at, mut cut) = (0, 0);
    let mut ended = None;
    while at < text.len() {
        let size = cuts.get(cut).copied().unwrap_or(text.len());
        cut += 1;
        let piece = &text[at..(at + size).min(text.len())];
        let (used, done) = receiver.push(piece);
        at += used;
        if let Some(message) = done {
            ended = Some((at, message));
            break;
        }
        assert_eq!(used, piece.len(), "a piece is used whole until the end");
    }
    match (expected, ended) {
        (None, None) => {}
        (Some(end), Some((at, message))) => {
            assert_eq!(at, end, "DATA ends exactly at the first CRLF.CRLF");
            if message.problem.is_none() {
                assert_eq!(message.body, unstuffed(&text[..end - 3]));
            }
        }
        (expected, ended) => panic!(
            "DATA ended at {:?}, expected {expected:?}",
            ended.map(|(at, _)| at)
        ),
    }
}
