//! Pochta's SMTP client state machine against its SMTP server state machine, in memory (the
//! way quinn-proto's tests pair two endpoints): what one side sends is what the other is fed,
//! and the test plays both I/O layers. Every extension the two share must survive the trip:
//! PIPELINING, SIZE, the DSN parameters, 8BITMIME, SMTPUTF8 and STARTTLS.

use std::sync::Arc;

use pochta_mail::Disposition;
use pochta_mail::{BareLineEndings, Body, Mailbox, Notify, Ret, TlsPolicy, xtext_encode};
use pochta_session::Session as _;
use pochta_smtp::client::{
    ClientOutput, ClientSession, Outgoing, OutgoingRecipient, RecipientOutcome, dot_stuffed,
};
use pochta_smtp::{
    Action, ConnectionPolicy, Message, Output, RecipientVerdict, Session, SessionConfig,
    StoreResult,
};

const MESSAGE: &[u8] = b"Subject: paired\r\n\r\n.a line that starts with a dot\r\n..two\r\nend\r\n";

fn server(max_message_size: usize) -> Session {
    let config = SessionConfig {
        hostname: "mx.example.org".into(),
        max_message_size,
        max_recipients: 100,
        submission_max_recipients: 100,
        max_received_headers: 50,
        bare_line_endings: BareLineEndings::Reject,
        max_errors: 10,
        max_commands: 1000,
        postmaster_domain: None,
        enforce_sender_ownership: true,
        submission_null_sender: false,
    };
    let policy = ConnectionPolicy {
        starttls_available: true,
        ..ConnectionPolicy::default()
    };
    Session::new(Arc::new(config), policy)
}

fn outgoing(recipients: &[&str]) -> Outgoing {
    Outgoing {
        helo_name: "client.example.net".into(),
        reverse_path: Some(Mailbox::parse("sender@example.net").unwrap()),
        envid: Some("envelope id + = ü".into()),
        ret: Some(Ret::Hdrs),
        body: Some(Body::EightBitMime),
        smtputf8: false,
        size: MESSAGE.len(),
        recipients: recipients
            .iter()
            .map(|a| OutgoingRecipient {
                address: Mailbox::parse(a).unwrap(),
                notify: Some(Notify {
                    success: true,
                    failure: true,
                    delay: false,
                }),
                orcpt: Some(format!("rfc822;{}", xtext_encode(a)).parse().unwrap()),
            })
            .collect(),
        tls: TlsPolicy::Opportunistic,
        requiretls: false,
    }
}

/// What a paired run produced.
struct Run {
    outcomes: Vec<RecipientOutcome>,
    /// What the server was asked to store.
    stored: Vec<Message>,
    /// Each chunk of bytes the client wrote, in order.
    client_writes: Vec<String>,
    /// Both sides finished the TLS handshake.
    tls: bool,
}

/// Runs `client` against `server` until the client has its outcomes. The server accepts every
/// recipient and stores every message.
fn pair(client: &mut ClientSession, server: &mut Session, message: &[u8]) -> Run {
    pair_hiding(client, server, message, None)
}

/// `pair`, with the server's EHLO line for `hidden` (an extension) taken out on the way to
/// the client: a server without it, as far as the client can tell.
fn pair_hiding(
    client: &mut ClientSession,
    server: &mut Session,
    message: &[u8],
    hidden: Option<&str>,
) -> Run {
    let mut run = Run {
        outcomes: Vec::new(),
        stored: Vec::new(),
        client_writes: Vec::new(),
        tls: false,
    };
    let mut server_tls = false;
    for _ in 0..100 {
        let mut to_client = Vec::new();
        while let Some(output) = server.poll() {
            match output {
                Output::Send(bytes) => to_client.extend(bytes),
                // The server's handshake completes before the client's next bytes arrive.
                Output::StartTls => {
                    server.tls_established();
                    server_tls = true;
                }
                Output::Close => {}
                Output::Action(Action::VerifyRecipient { .. }) => {
                    server.recipient_verdict(RecipientVerdict::Accept(Disposition::Local))
                }
                Output::Action(Action::StoreMessage(m)) => {
                    run.stored.push(*m);
                    server.store_result(StoreResult::Stored {
                        queue_id: "PAIRED".into(),
                    });
                }
                Output::Action(other) => panic!("unexpected {other:?}"),
            }
        }
        if let Some(keyword) = hidden {
            let line = format!("250-{keyword}\r\n");
            let text = String::from_utf8(to_client).unwrap();
            to_client = text.replace(&line, "").into_bytes();
        }
        client.feed(&to_client);
        let mut to_server = Vec::new();
        while let Some(output) = client.poll() {
            match output {
                ClientOutput::Send(bytes) => {
                    run.client_writes
                        .push(String::from_utf8_lossy(&bytes).into_owned());
                    to_server.extend(bytes);
                }
                ClientOutput::StartTls => {
                    client.tls_established();
                    run.tls = server_tls;
                }
                ClientOutput::SendMessage => {
                    to_server.extend(dot_stuffed(message));
                    client.message_sent();
                }
                ClientOutput::SendMessageChunked => {
                    let command = format!("BDAT {} LAST\r\n", message.len());
                    run.client_writes.push(command.clone());
                    to_server.extend(command.into_bytes());
                    to_server.extend(message);
                    client.message_sent();
                }
                ClientOutput::Done(outcomes) => {
                    run.outcomes = outcomes;
                    return run;
                }
            }
        }
        server.feed(&to_server);
    }
    panic!("the pair did not finish");
}

/// Both ways the text can go: BDAT (the server offers CHUNKING) and DATA with dot-stuffing
/// (the client is shown a server without it).
#[test]
fn every_shared_extension_round_trips() {
    for hidden in [None, Some("CHUNKING")] {
        round_trip(hidden);
    }
}

fn round_trip(hidden: Option<&str>) {
    let recipients = ["a@example.org", "b@example.org", "c@example.org"];
    let run = pair_hiding(
        &mut ClientSession::new(outgoing(&recipients)),
        &mut server(10_000),
        MESSAGE,
        hidden,
    );
    assert!(run.tls, "STARTTLS was offered and used");
    assert_eq!(run.outcomes.len(), 3);
    for outcome in &run.outcomes {
        assert!(
            matches!(outcome, RecipientOutcome::Accepted { dsn: true, reply } if reply.code == 250),
            "DSN offered, so the server reports onward: {outcome:?}"
        );
    }
    let [message] = run.stored.as_slice() else {
        panic!("one message stored, not {}", run.stored.len())
    };
    assert_eq!(
        message.body, MESSAGE,
        "as it is in BDAT, or dot-stuffed and unstuffed: byte for byte ({hidden:?} hidden)"
    );
    assert!(message.tls && message.esmtp);
    let mail = &message.mail;
    assert_eq!(
        mail.sender.as_ref().unwrap().address(),
        "sender@example.net"
    );
    assert_eq!(mail.size, Some(MESSAGE.len() as u64), "SIZE declared");
    assert_eq!(mail.body, Some(Body::EightBitMime), "8BITMIME");
    assert_eq!(mail.ret, Some(Ret::Hdrs), "RET");
    assert_eq!(
        mail.envid.as_deref(),
        Some("envelope id + = ü"),
        "ENVID through xtext"
    );
    assert!(!mail.smtputf8);
    for (accepted, address) in message.recipients.iter().zip(recipients) {
        assert_eq!(accepted.rcpt.recipient.address(), address);
        assert_eq!(accepted.rcpt.notify.unwrap().to_string(), "SUCCESS,FAILURE");
        assert_eq!(
            accepted.rcpt.orcpt.as_ref().unwrap().as_str(),
            format!("rfc822;{address}")
        );
    }
    // PIPELINING: after the handshake and EHLO, MAIL, every RCPT and DATA in one write; with
    // CHUNKING, BDAT only once a recipient was accepted.
    let transaction = run
        .client_writes
        .iter()
        .position(|w| w.starts_with("MAIL FROM:"))
        .unwrap();
    let writes = &run.client_writes[transaction..];
    assert_eq!(writes[0].matches("RCPT TO:").count(), 3, "{writes:?}");
    if hidden.is_some() {
        assert!(writes[0].ends_with("DATA\r\n"), "{writes:?}");
    } else {
        assert!(!writes[0].contains("\r\nDATA\r\n"), "no DATA: {writes:?}");
        assert_eq!(writes[1], format!("BDAT {} LAST\r\n", MESSAGE.len()));
    }
}

#[test]
fn smtputf8_addresses_round_trip() {
    let mut out = outgoing(&["получатель@пример.рф"]);
    out.reverse_path = Some(Mailbox::parse("отправитель@example.net").unwrap());
    out.smtputf8 = true;
    let run = pair(&mut ClientSession::new(out), &mut server(10_000), MESSAGE);
    assert!(matches!(
        run.outcomes.as_slice(),
        [RecipientOutcome::Accepted { .. }]
    ));
    let message = &run.stored[0];
    assert!(message.mail.smtputf8);
    let rcpt = &message.recipients[0].rcpt;
    assert_eq!(rcpt.recipient.address(), "получатель@пример.рф");
    assert_eq!(
        rcpt.orcpt.as_ref().unwrap().decoded(),
        "rfc822;получатель@пример.рф"
    );
}

#[test]
fn the_servers_size_limit_is_honoured_before_sending() {
    let run = pair(
        &mut ClientSession::new(outgoing(&["a@example.org"])),
        &mut server(MESSAGE.len() - 1),
        MESSAGE,
    );
    assert!(run.stored.is_empty());
    assert!(
        matches!(&run.outcomes[0], RecipientOutcome::Rejected(r) if r.status.as_deref() == Some("5.3.4")),
        "{:?}",
        run.outcomes
    );
    assert!(
        !run.client_writes.iter().any(|w| w.starts_with("MAIL")),
        "no transaction was started"
    );
}

#[test]
fn a_second_message_reuses_the_paired_connection() {
    let mut client = ClientSession::new(outgoing(&["a@example.org"]));
    let mut server = server(10_000);
    let first = pair(&mut client, &mut server, MESSAGE);
    assert!(matches!(
        first.outcomes[0],
        RecipientOutcome::Accepted { .. }
    ));
    assert!(client.reusable());
    let mut next = outgoing(&["b@example.org"]);
    next.reverse_path = None;
    client.next_message(next);
    let second = pair(&mut client, &mut server, b"Subject: again\r\n\r\nx\r\n");
    assert!(matches!(
        second.outcomes[0],
        RecipientOutcome::Accepted { .. }
    ));
    assert!(!client.stale());
    assert_eq!(
        second.client_writes[0], "RSET\r\n",
        "the probe goes first, alone"
    );
    let message = &second.stored[0];
    assert_eq!(message.mail.sender, None, "the null reverse-path");
    assert_eq!(
        message.recipients[0].rcpt.recipient.address(),
        "b@example.org"
    );
}
