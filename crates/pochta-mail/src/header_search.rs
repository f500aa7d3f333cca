//! Header fields as IMAP SEARCH matches them (RFC 9051 6.4.4: a case-insensitive substring of
//! the field's value). One definition for both places that match: the store keeps the fields
//! SEARCH names most (SUBJECT, FROM, TO, CC, BCC and the Date: day) in this form when a message
//! is stored, so a search reads them instead of the content; the IMAP session matches the
//! same text made from the octets for messages stored without it and for other fields.

use chrono::NaiveDate;

use crate::headers::{field_values, header_fields};

/// A field's searchable text: each occurrence's value unfolded and lower-cased; a value with
/// encoded words (RFC 2047) or non-ASCII octets also decoded and lower-cased after it. Parts
/// are joined by a line feed (which no unfolded value holds). None: the message has no such
/// field.
pub fn field_text(message: &[u8], name: &[u8]) -> Option<String> {
    let mut text: Option<String> = None;
    for value in field_values(message, name) {
        let value: Vec<u8> = value
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        let text = match &mut text {
            Some(text) => {
                text.push('\n');
                text
            }
            None => text.insert(String::new()),
        };
        text.push_str(&fold(&value));
        if let Some(decoded) = decoded(&value) {
            text.push('\n');
            text.push_str(&fold(decoded.as_bytes()));
        }
    }
    text
}

/// What a search string (or a field's text) is compared as: its octets as UTF-8 (others
/// replaced), lower-cased, NUL, CR and LF as spaces (PostgreSQL's text cannot hold a NUL, and
/// the line feeds joining a field's parts stay the only ones, so no string matches across
/// two parts).
pub fn fold(octets: &[u8]) -> String {
    const SPACED: [char; 3] = ['\0', '\r', '\n'];
    let text = String::from_utf8_lossy(octets).to_lowercase();
    if text.contains(SPACED) {
        text.replace(SPACED, " ")
    } else {
        text
    }
}

/// Does the field's text (`field_text`) contain the folded search string? An empty string is
/// in every field present.
pub fn field_contains(message: &[u8], name: &[u8], needle: &[u8]) -> bool {
    field_text(message, name).is_some_and(|text| text.contains(&fold(needle)))
}

/// Does the message's text contain the folded search string, read as text rather than as
/// octets (RFC 9051 6.4.4 matches BODY and TEXT against the message's text)? Each text part
/// (plain, HTML) transfer-decoded and converted from its charset to UTF-8; with `header`
/// (TEXT), also every header field's value with its encoded words decoded. The octets as
/// they are, ASCII case-insensitive, are the caller's first and cheaper test.
pub fn decoded_text_contains(message: &[u8], needle: &[u8], header: bool) -> bool {
    // An ASCII string is in the octets wherever it is in the text, unless the text is
    // transfer-encoded (or, for TEXT, in encoded words): only then is the message parsed.
    let encoded = |words: &[&[u8]]| {
        words
            .iter()
            .any(|word| memchr::memmem::find(message, word).is_some())
    };
    if needle.is_ascii()
        && !encoded(&[
            b"base64",
            b"Base64",
            b"BASE64",
            b"quoted-printable",
            b"Quoted-Printable",
            b"QUOTED-PRINTABLE",
        ])
        && !(header && encoded(&[b"=?"]))
    {
        return false;
    }
    let needle = fold(needle);
    if header {
        let in_header = header_fields(message).any(|range| {
            let field = &message[range];
            memchr::memchr(b':', field)
                .and_then(|colon| decoded(&field[colon + 1..]))
                .is_some_and(|text| fold(text.as_bytes()).contains(&needle))
        });
        if in_header {
            return true;
        }
    }
    let Some(parsed) = mail_parser::MessageParser::new().parse(message) else {
        return false;
    };
    parsed.parts.iter().any(|part| match &part.body {
        mail_parser::PartType::Text(text) | mail_parser::PartType::Html(text) => {
            fold(text.as_bytes()).contains(&needle)
        }
        _ => false,
    })
}

/// The value's text with its encoded words decoded, where that could differ from the octets.
fn decoded(value: &[u8]) -> Option<String> {
    if value.is_ascii() && memchr::memmem::find(value, b"=?").is_none() {
        return None;
    }
    let mut field = b"Subject:".to_vec();
    field.extend_from_slice(value);
    field.extend_from_slice(b"\r\n\r\n");
    let parsed = mail_parser::MessageParser::new().parse_headers(&field)?;
    parsed.subject().map(str::to_owned)
}

/// The day of the first Date: field, as written there (RFC 9051 6.4.4: SENTBEFORE and the
/// like disregard time and timezone). None: no Date: field, or one that does not parse.
pub fn sent_on(message: &[u8]) -> Option<NaiveDate> {
    let value = field_values(message, b"Date").next()?;
    let field = [b"Date:", value, b"\r\n"].concat();
    let parsed = mail_parser::MessageParser::new().parse_headers(&field)?;
    let date = parsed.date()?;
    NaiveDate::from_ymd_opt(
        i32::from(date.year),
        u32::from(date.month),
        u32::from(date.day),
    )
}

/// The fields the store keeps for SEARCH, as `field_text` and `sent_on` make them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFields {
    pub subject: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub cc: Option<String>,
    pub bcc: Option<String>,
    pub sent_on: Option<NaiveDate>,
}

impl SearchFields {
    /// Kept text longer than this (a To: of thousands of addresses) is not kept: such a
    /// message is searched in its octets.
    pub const MAX_TEXT: usize = 16 * 1024;

    /// The fields of `message` (its header section). None: too long to keep.
    pub fn of(message: &[u8]) -> Option<Self> {
        let text = |name: &[u8]| field_text(message, name);
        let fields = SearchFields {
            subject: text(b"Subject"),
            from: text(b"From"),
            to: text(b"To"),
            cc: text(b"Cc"),
            bcc: text(b"Bcc"),
            sent_on: sent_on(message),
        };
        let length: usize = [
            &fields.subject,
            &fields.from,
            &fields.to,
            &fields.cc,
            &fields.bcc,
        ]
        .iter()
        .map(|t| t.as_ref().map_or(0, String::len))
        .sum();
        (length <= Self::MAX_TEXT).then_some(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parts_are_searched_decoded_and_in_utf8() {
        // "Привет, мир" in base64 (UTF-8), quoted-printable (KOI8-R), and 8-bit UTF-8; an
        // attachment's octets are not text.
        let mail = "Subject: =?UTF-8?Q?=D0=9E=D1=82=D1=87=D1=91=D1=82?=\r\n\
            MIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=b\r\n\r\n\
            --b\r\nContent-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: base64\r\n\r\n0J/RgNC40LLQtdGCLCDQvNC40YA=\r\n\
            --b\r\nContent-Type: text/html; charset=koi8-r\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>=F0=CF=CB=C1</p>\r\n\
            --b\r\nContent-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: 8bit\r\n\r\nЗдравствуйте\r\n\
            --b\r\nContent-Type: application/octet-stream\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nc2VjcmV0\r\n--b--\r\n";
        let mail = mail.as_bytes();
        assert!(decoded_text_contains(mail, "ПРИВЕТ, мир".as_bytes(), false));
        assert!(decoded_text_contains(mail, "пока".as_bytes(), false));
        assert!(decoded_text_contains(
            mail,
            "здравствуйте".as_bytes(),
            false
        ));
        assert!(!decoded_text_contains(mail, b"secret", false));
        // The subject is text for TEXT, not for BODY.
        assert!(decoded_text_contains(mail, "отчёт".as_bytes(), true));
        assert!(!decoded_text_contains(mail, "отчёт".as_bytes(), false));
        assert!(!decoded_text_contains(mail, "nowhere".as_bytes(), true));
    }

    #[test]
    fn fields_match_by_name_and_substring_across_folds() {
        let mail =
            b"From: Ann <ann@example.net>\r\nSubject: Quarterly\r\n report\r\n\r\nBody text\r\n";
        assert!(field_contains(mail, b"subject", b"REPORT"));
        assert!(field_contains(mail, b"Subject", b"quarterly report"));
        assert!(field_contains(mail, b"From", b"ann@"));
        assert!(!field_contains(mail, b"To", b""));
        assert!(field_contains(mail, b"From", b""));
        assert!(!field_contains(mail, b"Subject", b"Body"));
        // The body is not the header section, even where a line looks like a field.
        assert!(!field_contains(b"\r\nSubject: no\r\n\r\n", b"Subject", b""));
    }

    #[test]
    fn encoded_words_and_non_ascii_match_decoded_and_case_folded() {
        let mail = "Subject: =?UTF-8?B?0J/RgNC40LLQtdGCINC80LjRgA==?=\r\n\
From: =?ISO-8859-1?Q?Caf=E9?= <cafe@example.net>\r\nTo: Ёлка <elka@example.net>\r\n\r\n";
        let mail = mail.as_bytes();
        assert!(field_contains(mail, b"Subject", "привет".as_bytes()));
        assert!(field_contains(mail, b"Subject", "ПРИВЕТ МИР".as_bytes()));
        assert!(field_contains(mail, b"From", "CAFÉ".as_bytes()));
        // The address itself still matches as stored, and so do the encoded octets.
        assert!(field_contains(mail, b"From", b"cafe@example"));
        assert!(field_contains(mail, b"From", b"=?iso-8859-1?q?"));
        // Raw UTF-8 (RFC 6532) folds case too.
        assert!(field_contains(mail, b"To", "ёлка".as_bytes()));
        assert!(!field_contains(mail, b"Subject", "пока".as_bytes()));
    }

    #[test]
    fn nul_is_a_space_in_fields_and_search_strings() {
        let mail = b"Subject: a\0b =?UTF-8?Q?c=00d?=\r\n\r\n";
        let text = field_text(mail, b"Subject").unwrap();
        assert!(!text.contains('\0'), "{text:?}");
        assert!(field_contains(mail, b"Subject", b"a b"));
        assert!(field_contains(mail, b"Subject", b"a\0b"));
        assert!(field_contains(mail, b"Subject", b"c d"));
        assert_eq!(fold(b"X\0Y\r\nZ"), "x y  z");
        // An encoded line end is no line end: the parts stay apart.
        let mail = b"To: =?UTF-8?Q?a=0D=0Ab?=\r\nTo: c\r\n\r\n";
        let text = field_text(mail, b"To").unwrap();
        assert_eq!(text.matches('\n').count(), 2, "{text:?}");
        assert!(field_contains(mail, b"To", b"a  b"));
    }

    #[test]
    fn every_occurrence_of_a_field_is_searched() {
        let mail = b"To: one@example.net\r\nSubject: x\r\nTO: Two@Example.net\r\n\r\n";
        assert_eq!(
            field_text(mail, b"To").as_deref(),
            Some(" one@example.net\n two@example.net")
        );
        assert!(field_contains(mail, b"to", b"TWO@"));
    }

    #[test]
    fn the_sent_day_is_the_date_fields_own() {
        let mail = b"Subject: s\r\nDate: Mon, 7 Dec 2026 23:30:00 -0800\r\n\r\nDate: nope\r\n";
        assert_eq!(sent_on(mail), NaiveDate::from_ymd_opt(2026, 12, 7));
        assert_eq!(sent_on(b"Date: not a date\r\n\r\n"), None);
        assert_eq!(sent_on(b"Subject: s\r\n\r\n"), None);
    }

    #[test]
    fn search_fields_are_kept_unless_too_long() {
        let fields = SearchFields::of(b"Subject: Hi\r\nCc: a@b\r\n\r\nbody").expect("kept");
        assert_eq!(fields.subject.as_deref(), Some(" hi"));
        assert_eq!(fields.cc.as_deref(), Some(" a@b"));
        assert_eq!(
            (fields.from, fields.to, fields.bcc, fields.sent_on),
            (None, None, None, None)
        );
        let mut long = b"To: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', SearchFields::MAX_TEXT));
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(SearchFields::of(&long), None);
    }
}
