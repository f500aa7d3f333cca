//! The fuzz targets' invariants as property tests in the normal test suite: random bytes, and
//! inputs built from the protocols' own words (multi-byte UTF-8 included) so that short runs
//! still reach deep states.

use pochta_fuzz::{
    auth_results, content_rows, data_receiver, dsn_report, imap_session, mta_sts, pop3_session,
    proxy_header, search_fields, smtp_client, smtp_server, xtext,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Words of SMTP sessions, with the characters that once broke a parser.
fn smtp_word() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "EHLO x\r\n",
        "HELO x\r\n",
        "MAIL FROM:<a@b.example>",
        "MAIL FROMé:<a@b>",
        "RCPT TO:<c@example.org>",
        " NOTIFY=SUCCESS,DELAY",
        " ORCPT=rfc822;x+40y",
        " ENVID=+00",
        " SIZE=99",
        " BODY=8BITMIME",
        " SMTPUTF8",
        "DATA\r\n",
        "BDAT 3 LAST\r\n",
        "AUTH PLAIN AGEAYg==\r\n",
        "AUTH LOGIN\r\n",
        "STARTTLS\r\n",
        "ETRN @example.org\r\n",
        "RSET\r\n",
        "NOOP\r\n",
        "QUIT\r\n",
        "\r\n",
        "\n",
        "\r",
        ".\r\n",
        ".",
        "é",
        "ёжик",
        "\u{0}",
        ">",
        "<",
        "@",
        "\"",
    ])
}

/// Replies of SMTP servers, good and bad.
fn reply_word() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "220 hello\r\n",
        "250-x\r\n",
        "250-PIPELINING\r\n",
        "250-DSN\r\n",
        "250-SIZE 10\r\n",
        "250-STARTTLS\r\n",
        "250 OK\r\n",
        "250 2.1.5 ok\r\n",
        "354 go\r\n",
        "421 4.4.2 bye\r\n",
        "451 4.3.0 later\r\n",
        "550 5.1.1 no\r\n",
        "999 what\r\n",
        "2",
        "\r\n",
        "\n",
        "é",
        "\u{0}",
    ])
}

fn joined(choices: Vec<u8>, words: Vec<&'static str>) -> Vec<u8> {
    let mut data = choices;
    for w in words {
        data.extend_from_slice(w.as_bytes());
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn smtp_server_on_bytes(data in vec(any::<u8>(), 0..2048)) {
        smtp_server(&data);
    }

    #[test]
    fn smtp_server_on_command_soup(choices in vec(any::<u8>(), 16), words in vec(smtp_word(), 0..80)) {
        smtp_server(&joined(choices, words));
    }

    #[test]
    fn smtp_client_on_bytes(data in vec(any::<u8>(), 0..2048)) {
        smtp_client(&data);
    }

    #[test]
    fn smtp_client_on_reply_soup(choices in vec(any::<u8>(), 24), words in vec(reply_word(), 0..60)) {
        smtp_client(&joined(choices, words));
    }

    #[test]
    fn data_ends_exactly_at_the_first_crlf_dot_crlf(
        cuts in vec(any::<u8>(), 9),
        words in vec(prop::sample::select(vec!["\r\n", ".", "\n", "\r", "ab", "é", ".\r\n", "\r\n.\r\n"]), 0..200),
    ) {
        data_receiver(&joined(cuts, words));
    }

    #[test]
    fn pop3_session_on_bytes(data in vec(any::<u8>(), 0..2048)) {
        pop3_session(&data);
    }

    #[test]
    fn pop3_session_on_command_soup(
        choices in vec(any::<u8>(), 16),
        words in vec(prop::sample::select(vec![
            "USER a\r\n", "PASS b\r\n", "AUTH PLAIN AGEAYg==\r\n", "STLS\r\n", "CAPA\r\n",
            "STAT\r\n", "LIST\r\n", "UIDL 1\r\n", "RETR 2\r\n", "TOP 1 3\r\n", "DELE 1\r\n",
            "RSET\r\n", "NOOP\r\n", "QUIT\r\n", "RETR é\r\n", "é", "\r\n", "\n",
        ]), 0..80),
    ) {
        pop3_session(&joined(choices, words));
    }

    #[test]
    fn imap_session_on_bytes(data in vec(any::<u8>(), 0..2048)) {
        imap_session(&data);
    }

    #[test]
    fn imap_session_on_command_soup(
        choices in vec(any::<u8>(), 16),
        words in vec(prop::sample::select(vec![
            "a LOGIN x y\r\n", "b AUTHENTICATE PLAIN AGEAYg==\r\n", "c STARTTLS\r\n",
            "d SELECT INBOX\r\n", "e EXAMINE x\r\n", "f FETCH 1:* (FLAGS BODY.PEEK[1.MIME]<0.9>)\r\n",
            "g UID STORE 1:* +FLAGS (\\Deleted)\r\n", "h UID SEARCH OR SEEN TEXT é\r\n",
            "i UID MOVE 2 Trash\r\n", "j EXPUNGE\r\n", "k IDLE\r\n", "DONE\r\n",
            "l APPEND x {3}\r\n", "m APPEND x {2+}\r\n", "abc", "n LIST \"\" *\r\n",
            "o NOOP\r\n", "p LOGOUT\r\n", "q ENABLE CONDSTORE\r\n", "(", ")", "é", "\r\n", "\n",
            "r UID SEARCH RETURN (SAVE MIN) UNSEEN\r\n", "s SEARCH RETURN (COUNT ALL) $ ",
            "t FETCH $ (FLAGS)\r\n", "u UID EXPUNGE $\r\n", " $ ", "v ENABLE IMAP4rev2\r\n",
            "w LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (% \"&BBIERQ-*\") RETURN (STATUS (MESSAGES))\r\n",
            "x CREATE &BBIERQQ+BDQETwRJBDgENQ-\r\n", "&-", "&AGE-", "\"Вх\"",
        ]), 0..80),
    ) {
        imap_session(&joined(choices, words));
    }

    #[test]
    fn proxy_header_on_bytes(data in vec(any::<u8>(), 0..128)) {
        proxy_header(&data);
    }

    #[test]
    fn auth_results_on_header_soup(
        words in vec(prop::sample::select(vec![
            "Authentication-Results:", " mx.test;", " MX.TEST", "(c)", "(\\)", "\"mx.test\"",
            " other;", "\r\n", "\n", "\r\n\t", " ", "X: y\r\n", "\r\n\r\n", "é", ":",
        ]), 0..60),
    ) {
        // The authserv-id, length first, then the message.
        auth_results(&joined(b"\x07mx.test".to_vec(), words));
    }

    #[test]
    fn mta_sts_on_policy_soup(
        words in vec(prop::sample::select(vec![
            "version: STSv1\n", "mode: enforce\n", "mode: testing\n", "mode: none\n",
            "mx: mail.example.com\n", "mx: *.example.net\n", "mx: *.\n", "mx: é\n",
            "max_age: 86400\n", "max_age: 99999999999\n", "\r\n", ":", " ", "x",
        ]), 0..30),
    ) {
        // A record, the host mx1.example.net, then the policy file.
        mta_sts(&joined(b"\x0cv=STSv1;id=a\x0fmx1.example.net".to_vec(), words));
    }

    #[test]
    fn search_fields_on_header_soup(
        words in vec(prop::sample::select(vec![
            "Subject:", "From:", "TO:", "cc:", "Bcc:", "Date:", " Mon, 7 Dec 2026 23:30 -0800",
            " =?UTF-8?Q?J=C3=B6rg?=", " =?ISO-8859-1?B?Q2Fm6Q==?=", " =?x?", "Ёлка", "\r\n",
            "\n", "\r\n\t", " ", "\r\n\r\n", "jörg", "\u{212a}", ":", "\0",
        ]), 0..60),
    ) {
        // The search string "jörg" (length first), then the message.
        search_fields(&joined("\x05jörg".as_bytes().to_vec(), words));
    }

    #[test]
    fn content_rows_on_line_soup(
        choice in any::<u8>(),
        runs in vec((prop::sample::select(vec![
            "QUJD\r\n", "QUJDREVGR0hJSktMTU5PUFFS\r\n", "+/09+/09\r\n", "QQ==\r\n",
            "QUJD\n", "QUJD", "QUJD\r", "Subject: x\r\n", "\r\n", "\0ë\r\n",
            "TWFueSBoYW5kcyBtYWtlIGxpZ2h0IHdvcmsuTWFueSBoYW5kcyBtYWtlIGxpZ2h0IHdvcmsuTWFu\r\n",
        ]), 1usize..40), 0..12),
    ) {
        // Runs of one line, each line of base64 in one of several lengths, broken by
        // padding, bare line ends and text.
        let lines = runs.into_iter().flat_map(|(line, n)| std::iter::repeat_n(line, n));
        content_rows(&joined(vec![choice], lines.collect()));
    }

    #[test]
    fn xtext_on_bytes(data in vec(any::<u8>(), 0..64)) {
        xtext(&data);
    }

    #[test]
    fn xtext_on_escapes(words in vec(prop::sample::select(vec!["+00", "+2B", "+C3+A9", "+0A", "a", "=", "+", "é", " "]), 0..20)) {
        xtext(&joined(Vec::new(), words));
    }

    #[test]
    fn dsn_report_on_bytes(data in vec(any::<u8>(), 0..2048)) {
        dsn_report(&data);
    }

    /// Modified UTF-7 (RFC 3501 5.1.3) both ways: any name comes back as it was, and what
    /// decodes encodes back to its one spelling.
    #[test]
    fn modified_utf7_round_trips(name in "\\PC{0,40}", octets in vec(any::<u8>(), 0..40)) {
        let encoded = pochta_imap::to_modified_utf7(&name);
        prop_assert!(encoded.bytes().all(|b| (b' '..=b'~').contains(&b)), "{encoded:?}");
        prop_assert_eq!(pochta_imap::from_modified_utf7(&encoded), Some(name));
        if let Some(decoded) = std::str::from_utf8(&octets).ok().and_then(pochta_imap::from_modified_utf7) {
            prop_assert_eq!(pochta_imap::to_modified_utf7(&decoded), String::from_utf8(octets).unwrap());
        }
    }
}
