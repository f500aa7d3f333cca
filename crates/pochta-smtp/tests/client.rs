//! The SMTP client state machine fed server replies by hand, one step at a time.

use pochta_mail::{Body, Mailbox, Notify, Ret, TlsPolicy};
use pochta_smtp::client::{
    ClientOutput, ClientSession, Outgoing, OutgoingRecipient, RecipientOutcome,
};

fn outgoing(recipients: &[&str], tls: TlsPolicy) -> Outgoing {
    Outgoing {
        helo_name: "mx.example.org".into(),
        reverse_path: Some(Mailbox::parse("bob@example.org").unwrap()),
        envid: Some("E 1".into()),
        ret: Some(Ret::Hdrs),
        body: Some(Body::EightBitMime),
        smtputf8: false,
        size: 1000,
        recipients: recipients
            .iter()
            .map(|a| OutgoingRecipient {
                address: Mailbox::parse(a).unwrap(),
                notify: Some(Notify {
                    success: true,
                    failure: true,
                    delay: false,
                }),
                orcpt: Some(format!("rfc822;{a}").parse().unwrap()),
            })
            .collect(),
        tls,
        requiretls: false,
    }
}

/// Feeds `reply` and returns what the client sends next (all Send outputs joined) and any
/// other output.
fn step(c: &mut ClientSession, reply: &str) -> (String, Option<ClientOutput>) {
    c.feed(reply.as_bytes());
    let mut sent = String::new();
    while let Some(o) = c.poll() {
        match o {
            ClientOutput::Send(b) => sent.push_str(&String::from_utf8(b).unwrap()),
            other => return (sent, Some(other)),
        }
    }
    (sent, None)
}

const EHLO_FULL: &str = "250-remote.example\r\n250-PIPELINING\r\n250-SIZE 5000\r\n250-8BITMIME\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n";

#[test]
fn pipelined_transaction_with_dsn_parameters() {
    let mut c = ClientSession::new(outgoing(
        &["a@remote.example", "b@remote.example", "c@remote.example"],
        TlsPolicy::Opportunistic,
    ));
    assert_eq!(
        step(&mut c, "220 remote.example ESMTP\r\n").0,
        "EHLO mx.example.org\r\n"
    );
    let (sent, _) = step(&mut c, EHLO_FULL);
    assert_eq!(
        sent,
        "MAIL FROM:<bob@example.org> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=E+201\r\n\
         RCPT TO:<a@remote.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@remote.example\r\n\
         RCPT TO:<b@remote.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@remote.example\r\n\
         RCPT TO:<c@remote.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@remote.example\r\nDATA\r\n",
        "one write"
    );
    let (sent, out) = step(
        &mut c,
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n451 4.2.1 Try later\r\n354 Go\r\n",
    );
    assert_eq!(sent, "");
    assert!(matches!(out, Some(ClientOutput::SendMessage)));
    c.message_sent();
    let (sent, out) = step(&mut c, "250 2.0.0 Ok: queued as X\r\n");
    assert_eq!(sent, "");
    let Some(ClientOutput::Done(outcomes)) = out else {
        panic!("{out:?}")
    };
    assert!(
        matches!(&outcomes[0], RecipientOutcome::Accepted { dsn: true, reply } if reply.code == 250 && reply.status.as_deref() == Some("2.0.0"))
    );
    assert!(
        matches!(&outcomes[1], RecipientOutcome::Rejected(r) if r.to_diagnostic() == "550 5.1.1 No such user")
    );
    assert!(matches!(&outcomes[2], RecipientOutcome::Deferred(r) if r.code == 451));
}

#[test]
fn without_extensions_one_command_at_a_time_and_no_dsn_parameters() {
    let mut c = ClientSession::new(outgoing(
        &["a@remote.example", "b@remote.example"],
        TlsPolicy::Opportunistic,
    ));
    step(&mut c, "220 old.example\r\n");
    assert_eq!(
        step(&mut c, "502 EHLO? never heard of it\r\n").0,
        "HELO mx.example.org\r\n"
    );
    assert_eq!(
        step(&mut c, "250 old.example\r\n").0,
        "MAIL FROM:<bob@example.org>\r\n"
    );
    assert_eq!(
        step(&mut c, "250 ok\r\n").0,
        "RCPT TO:<a@remote.example>\r\n"
    );
    assert_eq!(
        step(&mut c, "250 ok\r\n").0,
        "RCPT TO:<b@remote.example>\r\n"
    );
    assert_eq!(step(&mut c, "250 ok\r\n").0, "DATA\r\n");
    assert!(matches!(
        step(&mut c, "354 go\r\n").1,
        Some(ClientOutput::SendMessage)
    ));
    c.message_sent();
    let Some(ClientOutput::Done(outcomes)) = step(&mut c, "250 ok\r\n").1 else {
        panic!()
    };
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, RecipientOutcome::Accepted { dsn: false, .. })),
        "relayed: no DSN offered"
    );
}

#[test]
fn starttls_when_offered_and_required() {
    let mut c = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Opportunistic));
    step(&mut c, "220 r\r\n");
    assert_eq!(step(&mut c, "250-r\r\n250 STARTTLS\r\n").0, "STARTTLS\r\n");
    assert!(matches!(
        step(&mut c, "220 go ahead\r\n").1,
        Some(ClientOutput::StartTls)
    ));
    c.tls_established();
    assert_eq!(step(&mut c, "").0, "EHLO mx.example.org\r\n");
    assert!(
        step(&mut c, "250-r\r\n250 STARTTLS\r\n")
            .0
            .starts_with("MAIL FROM:"),
        "no second STARTTLS"
    );

    // Required and verify both defer when the server offers no STARTTLS.
    for policy in [TlsPolicy::Required, TlsPolicy::Verify] {
        let mut required = ClientSession::new(outgoing(&["a@remote.example"], policy));
        assert_eq!(required.tls_policy(), policy);
        step(&mut required, "220 r\r\n");
        let (sent, out) = step(&mut required, "250 r\r\n");
        assert_eq!(sent, "");
        assert!(
            matches!(out, Some(ClientOutput::Done(o)) if matches!(&o[0], RecipientOutcome::Deferred(r) if r.status.as_deref() == Some("4.7.10")))
        );
        assert!(!required.reusable(), "no transaction was possible");
        required.quit();
        assert_eq!(step(&mut required, "").0, "QUIT\r\n");
    }
}

#[test]
fn whole_transaction_failures() {
    let mut c = ClientSession::new(outgoing(
        &["a@remote.example", "b@remote.example"],
        TlsPolicy::Never,
    ));
    let (_, out) = step(&mut c, "554 go away\r\n");
    assert!(
        matches!(out, Some(ClientOutput::Done(o)) if o.len() == 2 && o.iter().all(|o| matches!(o, RecipientOutcome::Rejected(r) if r.code == 554)))
    );
    let mut c2 = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    step(&mut c2, "220 r\r\n");
    let (_, out) = step(&mut c2, "250-r\r\n250 SIZE 10\r\n");
    assert!(
        matches!(out, Some(ClientOutput::Done(o)) if matches!(&o[0], RecipientOutcome::Rejected(r) if r.status.as_deref() == Some("5.3.4"))),
        "SIZE honoured"
    );
    let mut c3 = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    step(&mut c3, "220 r\r\n");
    step(&mut c3, "250 r\r\n");
    let (_, out) = step(&mut c3, "451 4.3.0 busy\r\n");
    assert!(
        matches!(out, Some(ClientOutput::Done(o)) if matches!(&o[0], RecipientOutcome::Deferred(_))),
        "MAIL 4xx defers"
    );
    let mut c4 = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    step(&mut c4, "220 r\r\n");
    step(&mut c4, "250 r\r\n");
    step(&mut c4, "250 ok\r\n");
    step(&mut c4, "250 ok\r\n");
    step(&mut c4, "354 go\r\n");
    c4.message_sent();
    let (_, out) = step(&mut c4, "552 5.3.4 too big after all\r\n");
    assert!(
        matches!(out, Some(ClientOutput::Done(o)) if matches!(&o[0], RecipientOutcome::Rejected(_)))
    );
    let mut c5 = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    step(&mut c5, "220 r\r\n");
    c5.connection_lost("connection reset");
    let Some(ClientOutput::Done(o)) = c5.poll() else {
        panic!()
    };
    assert!(matches!(&o[0], RecipientOutcome::Deferred(r) if r.text == "connection reset"));
}

/// Runs one whole pipelined message on `c` (already past its greeting or RSET) and returns
/// its outcomes.
fn one_message(c: &mut ClientSession, after_mail: &str) -> Vec<RecipientOutcome> {
    let (_, out) = step(c, after_mail);
    assert!(matches!(out, Some(ClientOutput::SendMessage)), "{out:?}");
    c.message_sent();
    let Some(ClientOutput::Done(outcomes)) = step(c, "250 2.0.0 Ok\r\n").1 else {
        panic!()
    };
    outcomes
}

#[test]
fn further_messages_reuse_the_connection_after_rset() {
    let mut c = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Opportunistic));
    step(&mut c, "220 r\r\n");
    assert!(step(&mut c, EHLO_FULL).0.starts_with("MAIL FROM:"));
    let first = one_message(&mut c, "250 ok\r\n250 ok\r\n354 go\r\n");
    assert!(matches!(&first[0], RecipientOutcome::Accepted { .. }));
    assert!(c.reusable());

    let mut second = outgoing(
        &["b@remote.example", "c@remote.example"],
        TlsPolicy::Opportunistic,
    );
    second.reverse_path = None;
    c.next_message(second);
    assert_eq!(step(&mut c, "").0, "RSET\r\n", "the probe goes alone");
    let (sent, _) = step(&mut c, "250 2.0.0 Ok\r\n");
    assert!(
        sent.starts_with("MAIL FROM:<> SIZE=1000") && sent.matches("RCPT TO:").count() == 2,
        "the extensions of the first EHLO still apply: {sent}"
    );
    let outcomes = one_message(&mut c, "250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n");
    assert!(matches!(&outcomes[0], RecipientOutcome::Accepted { .. }));
    assert!(matches!(&outcomes[1], RecipientOutcome::Rejected(_)));
    assert!(!c.stale());
    assert!(c.reusable());

    // A message the server refuses as a whole still leaves a usable connection.
    c.next_message(outgoing(&["d@remote.example"], TlsPolicy::Opportunistic));
    step(&mut c, "");
    step(&mut c, "250 ok\r\n");
    let (_, out) = step(
        &mut c,
        "250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n",
    );
    assert!(
        matches!(out, Some(ClientOutput::Done(o)) if matches!(&o[0], RecipientOutcome::Rejected(_)))
    );
    assert!(c.reusable());
}

#[test]
fn a_stale_connection_is_reported_and_broken_ones_are_not_reused() {
    let mut c = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    step(&mut c, "220 r\r\n");
    step(&mut c, EHLO_FULL);
    one_message(&mut c, "250 ok\r\n250 ok\r\n354 go\r\n");
    c.next_message(outgoing(&["b@remote.example"], TlsPolicy::Never));
    step(&mut c, "");
    let (sent, out) = step(&mut c, "421 4.4.2 idle too long\r\n");
    assert_eq!(sent, "", "nothing of the message was sent");
    assert!(
        matches!(out, Some(ClientOutput::Done(o)) if matches!(&o[0], RecipientOutcome::Deferred(_)))
    );
    assert!(c.stale() && !c.reusable());

    let mut lost = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    step(&mut lost, "220 r\r\n");
    step(&mut lost, EHLO_FULL);
    one_message(&mut lost, "250 ok\r\n250 ok\r\n354 go\r\n");
    lost.next_message(outgoing(&["b@remote.example"], TlsPolicy::Never));
    step(&mut lost, "");
    lost.connection_lost("closed");
    assert!(matches!(lost.poll(), Some(ClientOutput::Done(_))));
    assert!(lost.stale(), "lost before the RSET reply");

    // MAIL refused with pipelined replies still to come: the state is unknown.
    let mut pending = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    step(&mut pending, "220 r\r\n");
    step(&mut pending, EHLO_FULL);
    let (_, out) = step(&mut pending, "451 4.3.0 busy\r\n");
    assert!(matches!(out, Some(ClientOutput::Done(_))));
    assert!(!pending.reusable() && !pending.stale());

    // A 421 ends the connection whatever it answers.
    let mut closing = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    step(&mut closing, "220 r\r\n");
    step(&mut closing, "250 r\r\n");
    step(&mut closing, "421 4.3.2 shutting down\r\n");
    assert!(!closing.reusable());
}

/// What a hostile or broken server gets: its connection is given up, every recipient
/// deferred, and nothing it said reaches the store uncleaned.
#[test]
fn malformed_replies_are_protocol_errors_that_defer() {
    let deferred_with = |out: Option<ClientOutput>| match out {
        Some(ClientOutput::Done(outcomes)) => match &outcomes[0] {
            RecipientOutcome::Deferred(r) => r.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    for (greeting, why) in [
        ("999 what\r\n", "malformed"),
        ("2x0 hello\r\n", "malformed"),
        ("220hello\r\n", "malformed"),
        ("220-a\r\n250 b\r\n", "different codes"),
    ] {
        let mut c = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
        let r = deferred_with(step(&mut c, greeting).1);
        assert_eq!(r.status.as_deref(), Some("4.5.0"), "{greeting:?}");
        assert!(r.text.contains(why), "{greeting:?}: {}", r.text);
        assert!(!c.reusable());
    }
    // A line that never ends is cut at the limit, not buffered without end.
    let mut c = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    c.feed(b"220-");
    for _ in 0..100 {
        c.feed(&[b'x'; 100]);
    }
    let r = deferred_with(c.poll());
    assert!(r.text.contains("longer than 2048"), "{}", r.text);
    // Too many lines.
    let mut c = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    let many = "220-x\r\n".repeat(101);
    assert!(
        deferred_with(step(&mut c, &many).1)
            .text
            .contains("more than 100 lines")
    );
}

#[test]
fn reply_texts_are_cleaned_and_bounded() {
    let mut c = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    step(&mut c, "220 r\r\n");
    step(&mut c, "250 r\r\n");
    let text = format!("550 5.1.1 no\0such\x1buser {}\r\n", "y".repeat(1500));
    let (_, out) = step(&mut c, &text);
    let Some(ClientOutput::Done(outcomes)) = out else {
        panic!("{out:?}")
    };
    let RecipientOutcome::Rejected(reply) = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert!(reply.text.starts_with("no such user yyy"), "{}", reply.text);
    assert!(!reply.text.chars().any(char::is_control));
    assert_eq!(reply.text.chars().count(), 1000);
    // An enhanced status code with over-long parts is no status code.
    let mut c = ClientSession::new(outgoing(&["a@remote.example"], TlsPolicy::Never));
    let (_, out) = step(&mut c, "554 5.1234.1 go away\r\n");
    let Some(ClientOutput::Done(outcomes)) = out else {
        panic!()
    };
    assert!(matches!(&outcomes[0], RecipientOutcome::Rejected(r) if r.status.is_none()));
}

/// A REQUIRETLS message (RFC 8689 4.2.1) goes only over TLS to a server that offers
/// REQUIRETLS, with the parameter passed on; otherwise every recipient fails with 5.7.10.
#[test]
fn requiretls_needs_tls_and_a_server_that_offers_it() {
    let requiring = || {
        ClientSession::new(Outgoing {
            requiretls: true,
            ..outgoing(&["a@remote.example", "b@remote.example"], TlsPolicy::Verify)
        })
    };
    let failed = |out: Option<ClientOutput>, why: &str| {
        let Some(ClientOutput::Done(outcomes)) = out else {
            panic!("expected the outcomes, got {out:?}");
        };
        assert_eq!(outcomes.len(), 2);
        for o in outcomes {
            let RecipientOutcome::Rejected(reply) = o else {
                panic!("expected a failure, got {o:?}");
            };
            assert_eq!((reply.code, reply.status.as_deref()), (550, Some("5.7.10")));
            assert!(reply.text.contains(why), "{reply:?}");
        }
    };
    // No STARTTLS: nothing is sent.
    let mut c = requiring();
    step(&mut c, "220 r\r\n");
    let (sent, out) = step(&mut c, "250 r\r\n");
    assert_eq!(sent, "");
    failed(out, "does not offer STARTTLS");

    // TLS, but no REQUIRETLS: no MAIL is sent.
    let mut c = requiring();
    step(&mut c, "220 r\r\n");
    step(&mut c, "250-r\r\n250 STARTTLS\r\n");
    step(&mut c, "220 go\r\n");
    c.tls_established();
    step(&mut c, "");
    let (sent, out) = step(&mut c, EHLO_FULL);
    assert_eq!(sent, "");
    failed(out, "does not offer REQUIRETLS");

    // Both: MAIL carries REQUIRETLS.
    let mut c = requiring();
    step(&mut c, "220 r\r\n");
    step(&mut c, "250-r\r\n250 STARTTLS\r\n");
    step(&mut c, "220 go\r\n");
    c.tls_established();
    step(&mut c, "");
    let (sent, _) = step(
        &mut c,
        &EHLO_FULL.replace("250 ENHANCED", "250-REQUIRETLS\r\n250 ENHANCED"),
    );
    assert!(
        sent.starts_with("MAIL FROM:<bob@example.org> SIZE=1000 BODY=8BITMIME REQUIRETLS RET=HDRS"),
        "{sent}"
    );
}
