//! Parsers of text and headers: the PROXY v2 header, xtext, SRS addresses, and the DSN
//! builder.

use chrono::{TimeZone, Utc};
use mail_parser::{MessageParser, MimeHeaders};
use pochta_mail::{Mailbox, SrsKey, xtext_decode, xtext_encode};
use pochta_session::proxy::{self, FIXED_LEN, Header};
use pochta_smtp::dsn::{self, Action, RecipientReport, Report, Return};

use crate::input::Input;

/// The PROXY v2 parser on any header. Oracle: a proxied source is only ever taken from a
/// header with the signature, version 2 and the PROXY command.
pub fn proxy_header(data: &[u8]) {
    let mut fixed = [0u8; FIXED_LEN];
    let n = data.len().min(FIXED_LEN);
    fixed[..n].copy_from_slice(&data[..n]);
    let rest = &data[n..];
    if let Ok(len) = proxy::remaining_len(&fixed) {
        assert_eq!(len, usize::from(u16::from_be_bytes([fixed[14], fixed[15]])));
    }
    if let Ok(Header::Proxied { .. }) = proxy::parse(&fixed, rest) {
        assert_eq!(fixed[..12], proxy::SIGNATURE);
        assert_eq!(fixed[12], 0x21);
    }
}

/// xtext both ways. Oracles: what decodes is text without control characters, and encodes
/// back to something that decodes to it again; any text without control characters survives
/// encoding and decoding.
pub fn xtext(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(decoded) = xtext_decode(&text) {
        assert!(!decoded.chars().any(char::is_control), "{decoded:?}");
        assert_eq!(
            xtext_decode(&xtext_encode(&decoded)).as_deref(),
            Some(&*decoded)
        );
    }
    let encoded = xtext_encode(&text);
    assert!(encoded.bytes().all(|b| (b'!'..=b'~').contains(&b)));
    let back = xtext_decode(&encoded);
    if text.chars().any(char::is_control) {
        assert_eq!(back, None);
    } else {
        assert_eq!(back.as_deref(), Some(&*text));
    }
}

/// SRS addresses from a recipient (network text), and senders forwarded. Oracles: what is
/// taken back is a sender that forwards and comes back as itself; any sender forwarded the
/// same day comes back as itself (case aside); nothing panics.
pub fn srs(data: &[u8]) {
    let mut input = Input::new(data);
    let key = SrsKey::new(input.text().as_bytes());
    let day = u64::from(input.byte()) * 256 + u64::from(input.byte());
    let Ok(address) = Mailbox::parse(&input.text()) else {
        return;
    };
    let same = |a: &Mailbox, b: &Mailbox| a.to_string().eq_ignore_ascii_case(&b.to_string());
    if let Ok(original) = key.reverse(&address, day, 21)
        && let Some(again) = key.forward(&original, &address.domain, day)
    {
        assert!(same(&key.reverse(&again, day, 21).unwrap(), &original));
    }
    if let Some(rewritten) = key.forward(&address, "forwarder.example", day) {
        assert!(pochta_mail::srs::is_srs(&rewritten.local_part));
        let back = key
            .reverse(&rewritten, day, 21)
            .expect("made by this key today");
        assert!(same(&back, &address), "{back} is not {address}");
    }
}

/// The DSN builder on any values and any returned message. Oracles: the report parses
/// (mail-parser) as a `multipart/report` whose status part has exactly one
/// `Final-Recipient` and one `Action` per recipient and only field lines, whatever the values
/// held (no injected fields or lines).
pub fn dsn_report(data: &[u8]) {
    let mut input = Input::new(data);
    let (reporting_mta, to, id) = (input.text(), input.text(), input.text());
    let envid = input.bool().then(|| input.text());
    let recipients: Vec<RecipientReport> = (0..input.choose(4) + 1)
        .map(|_| RecipientReport {
            orcpt: input.text().parse().ok(),
            final_recipient: input.text(),
            action: [
                Action::Failed,
                Action::Delayed,
                Action::Delivered,
                Action::Relayed,
            ][input.choose(4)],
            status: input.text(),
            remote_mta: input.bool().then(|| input.text()),
            diagnostic: input.bool().then(|| input.text()),
            last_attempt: Some(Utc.timestamp_opt(1_700_000_000, 0).unwrap()),
            will_retry_until: None,
        })
        .collect();
    let ret = if input.bool() {
        Return::Full
    } else {
        Return::Headers
    };
    let original = input.rest();
    let when = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let report = dsn::build(&Report {
        reporting_mta: &reporting_mta,
        to: &to,
        envid: envid.as_deref(),
        arrival: when,
        date: when,
        id: &id,
        recipients: &recipients,
        original,
        ret,
    });
    let message = MessageParser::default()
        .parse(&report)
        .expect("a report always parses");
    let root = message.content_type().expect("a content type");
    assert_eq!(
        (root.ctype(), root.subtype()),
        ("multipart", Some("report")),
        "{}",
        String::from_utf8_lossy(&report)
    );
    let status_part = message
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.ctype() == "message" && c.subtype() == Some("delivery-status"))
        })
        .expect("a delivery-status part");
    let status = String::from_utf8_lossy(status_part.contents());
    let lines: Vec<&str> = status.split("\r\n").collect();
    let count = |field: &str| lines.iter().filter(|l| l.starts_with(field)).count();
    assert_eq!(count("Final-Recipient: "), recipients.len(), "{status}");
    assert_eq!(count("Action: "), recipients.len(), "{status}");
    for line in &lines {
        let is_field = line.split_once(": ").is_some_and(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        assert!(
            line.is_empty() || is_field,
            "not a field: {line:?}\n{status}"
        );
    }
}

/// Taking forged Authentication-Results out of any message for any authserv-id. Oracles:
/// what is left is the message less whole header fields, each of which claimed the id; no
/// field left in the header section claims it; whatever follows the header section is
/// untouched; a message without such fields is not copied.
pub fn auth_results(data: &[u8]) {
    use pochta_mail::headers::{authserv_id, header_fields, remove_authentication_results};
    let mut input = Input::new(data);
    let id = input.text();
    let message = input.rest();
    let claims =
        |field: &[u8]| authserv_id(field).is_some_and(|f| f.eq_ignore_ascii_case(id.as_bytes()));
    let fields: Vec<_> = header_fields(message).collect();
    let header_end = fields.last().map_or(0, |f| f.end);
    let Some(kept) = remove_authentication_results(message, &id) else {
        assert!(!fields.iter().any(|f| claims(&message[f.clone()])));
        return;
    };
    let mut expected = Vec::new();
    for f in &fields {
        if !claims(&message[f.clone()]) {
            expected.extend_from_slice(&message[f.clone()]);
        }
    }
    expected.extend_from_slice(&message[header_end..]);
    assert_eq!(kept, expected);
    assert!(kept.len() < message.len());
    assert!(
        !header_fields(&kept).any(|f| claims(&kept[f])),
        "a claim survived"
    );
}

/// An MTA-STS record and policy file as a remote domain may serve them (RFC 8461), and a
/// host name checked against the policy. Oracles: an id is 1 to 32 letters and digits; a
/// policy that parses has a max_age within the limit, valid MX patterns, and MX patterns
/// unless its mode is none; a listed name is always allowed.
pub fn mta_sts(data: &[u8]) {
    use pochta_mail::mta_sts::{MAX_AGE_LIMIT, StsMode, parse_policy, record_id};
    let mut input = Input::new(data);
    let record = input.text();
    let host = input.text();
    let policy = String::from_utf8_lossy(input.rest()).into_owned();
    if let Some(id) = record_id(&record) {
        assert!((1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    let Ok(policy) = parse_policy(&policy) else {
        return;
    };
    assert!(policy.max_age <= MAX_AGE_LIMIT);
    assert!(policy.mode == StsMode::None || !policy.mx.is_empty());
    for pattern in &policy.mx {
        let name = pattern.strip_prefix("*.").unwrap_or(pattern);
        assert!(pochta_mail::is_domain_name(name), "{pattern}");
        if !pattern.starts_with("*.") {
            assert!(policy.allows_mx(pattern));
        }
    }
    let _ = policy.allows_mx(&host);
}

/// Any octets as message content, stored in chunk rows as the store stores them and read
/// back (`pochta_store::check_round_trip`): the first octet picks zstd's level and whether
/// base64 lines are kept as their octets. Oracles: every row fits its page and decodes to
/// its bounded size, and the content comes back unchanged.
pub fn content_rows(data: &[u8]) {
    let Some((&choice, content)) = data.split_first() else {
        return;
    };
    pochta_store::check_round_trip(
        content,
        pochta_store::ContentCompression {
            min_size: 0,
            level: 1 + i32::from(choice % 3),
            base64_lines: choice & 4 == 0,
        },
    );
}

/// A message's header fields as IMAP SEARCH matches them, and the ones the store keeps
/// (`pochta_mail::header_search`), from any octets. Oracles: kept fields are what matching
/// the octets finds, within the size bound, with no line ends but the joins; a field name
/// matches in any case; a search string matches in any ASCII case; the empty string is in
/// every field present; a search string never spans two of a field's parts.
pub fn search_fields(data: &[u8]) {
    use pochta_mail::header_search::{SearchFields, field_contains, field_text, fold};
    let mut input = Input::new(data);
    let needle = input.text();
    let message = input.rest();
    if let Some(fields) = SearchFields::of(message) {
        let kept = [
            (&b"Subject"[..], &fields.subject),
            (b"From", &fields.from),
            (b"To", &fields.to),
            (b"Cc", &fields.cc),
            (b"Bcc", &fields.bcc),
        ];
        let mut length = 0;
        for (name, text) in kept {
            assert_eq!(&field_text(message, name), text);
            if let Some(text) = text {
                assert!(!text.contains('\r') && !text.contains('\0'));
                length += text.len();
            }
        }
        assert!(length <= SearchFields::MAX_TEXT);
    }
    for name in [&b"subject"[..], b"X-Any", needle.as_bytes()] {
        let text = field_text(message, name);
        assert_eq!(text, field_text(message, &name.to_ascii_uppercase()));
        assert_eq!(field_contains(message, name, b""), text.is_some());
        let found = field_contains(message, name, needle.as_bytes());
        assert_eq!(
            found,
            text.as_ref()
                .is_some_and(|t| t.contains(&fold(needle.as_bytes())))
        );
        let upper = needle.to_ascii_uppercase();
        assert_eq!(found, field_contains(message, name, upper.as_bytes()));
        if found && let Some(text) = &text {
            let needle = fold(needle.as_bytes());
            assert!(text.split('\n').any(|part| part.contains(&needle)));
        }
    }
}
