//! SEARCH (RFC 9051 6.4.4): search keys evaluated over the view and, for keys about header
//! fields or text, the message's octets. Strings match as case-insensitive substrings of the
//! octets as stored; a header field with encoded words (RFC 2047) or a non-ASCII string is
//! also compared decoded and case-folded. Bodies are not transfer-decoded.

use chrono::{NaiveDate, Utc};
use imap_next::imap_types::core::Vec1;
use imap_next::imap_types::search::SearchKey;

use crate::fetch::Need;
use crate::view::{Message, View};

/// Nesting deeper than this (NOT, OR, parentheses) is refused rather than evaluated.
pub const MAX_DEPTH: usize = 32;

/// More keys than this in one SEARCH are refused: each becomes a condition (and for the
/// store, a bound value) of one query.
pub const MAX_KEYS: usize = 1000;

/// How many keys the search has, nested ones included (its nesting already checked by
/// `needs_content`).
pub(crate) fn key_count(key: &SearchKey<'_>) -> usize {
    1 + match key {
        SearchKey::And(keys) => keys.as_ref().iter().map(key_count).sum(),
        SearchKey::Not(k) => key_count(k),
        SearchKey::Or(a, b) => key_count(a) + key_count(b),
        _ => 0,
    }
}

/// What evaluating the key needs of the message octets (header fields need only the header
/// block). None: nested too deep.
pub(crate) fn needs_content(key: &SearchKey<'_>, depth: usize) -> Option<Need> {
    if depth > MAX_DEPTH {
        return None;
    }
    Some(match key {
        SearchKey::And(keys) => {
            let mut need = Need::Nothing;
            for k in keys.as_ref() {
                need = need.max(needs_content(k, depth + 1)?);
            }
            need
        }
        SearchKey::Not(k) => needs_content(k, depth + 1)?,
        SearchKey::Or(a, b) => needs_content(a, depth + 1)?.max(needs_content(b, depth + 1)?),
        SearchKey::Bcc(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Subject(_)
        | SearchKey::To(_) => Need::Header,
        SearchKey::Body(_) | SearchKey::Text(_) => Need::Whole,
        _ => Need::Nothing,
    })
}

/// Does the key use MODSEQ anywhere (its nesting already checked by `needs_content`)?
pub(crate) fn names_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().any(names_modseq),
        SearchKey::Not(k) => names_modseq(k),
        SearchKey::Or(a, b) => names_modseq(a) || names_modseq(b),
        SearchKey::ModSequence { .. } => true,
        _ => false,
    }
}

/// A key that needs no octets, with its message sets written as the UIDs they name in the
/// view (sequence numbers and `*` mean nothing outside it), for the store to evaluate.
pub(crate) fn with_uid_sets(key: &SearchKey<'static>, view: &View) -> SearchKey<'static> {
    let named = |set, uid| view.resolve(set, uid).map(|places| view.uids_at(&places));
    match key {
        SearchKey::And(keys) => {
            let keys: Vec<SearchKey<'static>> = keys
                .as_ref()
                .iter()
                .map(|k| with_uid_sets(k, view))
                .collect();
            Vec1::try_from(keys).map_or(SearchKey::All, SearchKey::And)
        }
        SearchKey::Not(k) => SearchKey::Not(Box::new(with_uid_sets(k, view))),
        SearchKey::Or(a, b) => SearchKey::Or(
            Box::new(with_uid_sets(a, view)),
            Box::new(with_uid_sets(b, view)),
        ),
        SearchKey::SequenceSet(set) => uids_key(named(set, false).unwrap_or_default()),
        SearchKey::Uid(set) => uids_key(named(set, true).unwrap_or_default()),
        other => other.clone(),
    }
}

/// A key naming exactly these UIDs (none: a key nothing matches).
fn uids_key(uids: Vec<u32>) -> SearchKey<'static> {
    match crate::session::uid_set(&uids) {
        Some(set) => SearchKey::Uid(set),
        None => SearchKey::Not(Box::new(SearchKey::All)),
    }
}

/// Does `m`, the message at `place`, match? `content` is its octets (or its header block)
/// when `needs_content` said so.
pub(crate) fn matches(
    key: &SearchKey<'_>,
    view: &View,
    place: usize,
    m: &Message,
    content: Option<&[u8]>,
) -> bool {
    let content = content.unwrap_or_default();
    let date = |d: &NaiveDate| *d;
    let internal = m.internal_date.with_timezone(&Utc).date_naive();
    match key {
        SearchKey::And(keys) => keys
            .as_ref()
            .iter()
            .all(|k| matches(k, view, place, m, Some(content))),
        SearchKey::Not(k) => !matches(k, view, place, m, Some(content)),
        SearchKey::Or(a, b) => {
            matches(a, view, place, m, Some(content)) || matches(b, view, place, m, Some(content))
        }
        SearchKey::SequenceSet(set) => view
            .resolve(set, false)
            .is_ok_and(|places| places.binary_search(&place).is_ok()),
        SearchKey::Uid(set) => view
            .resolve(set, true)
            .is_ok_and(|places| places.binary_search(&place).is_ok()),
        SearchKey::All => true,
        SearchKey::Answered => m.has("\\Answered"),
        SearchKey::Deleted => m.has("\\Deleted"),
        SearchKey::Draft => m.has("\\Draft"),
        SearchKey::Flagged => m.has("\\Flagged"),
        SearchKey::Seen => m.has("\\Seen"),
        SearchKey::Unanswered => !m.has("\\Answered"),
        SearchKey::Undeleted => !m.has("\\Deleted"),
        SearchKey::Undraft => !m.has("\\Draft"),
        SearchKey::Unflagged => !m.has("\\Flagged"),
        SearchKey::Unseen => !m.has("\\Seen"),
        SearchKey::Keyword(k) => m.has(k.as_ref()),
        // RFC 7162 3.1.5: changed at or after this mod-sequence.
        SearchKey::ModSequence { modseq, .. } => m.modseq >= *modseq,
        SearchKey::Unkeyword(k) => !m.has(k.as_ref()),
        // No session is ever told of a message as \Recent (RFC 9051 drops it).
        SearchKey::New | SearchKey::Recent => false,
        SearchKey::Old => true,
        SearchKey::Larger(n) => m.size > *n,
        SearchKey::Smaller(n) => m.size < *n,
        SearchKey::Before(d) => internal < date(d.as_ref()),
        SearchKey::On(d) => internal == date(d.as_ref()),
        SearchKey::Since(d) => internal >= date(d.as_ref()),
        SearchKey::SentBefore(d) => sent(content).is_some_and(|s| s < date(d.as_ref())),
        SearchKey::SentOn(d) => sent(content).is_some_and(|s| s == date(d.as_ref())),
        SearchKey::SentSince(d) => sent(content).is_some_and(|s| s >= date(d.as_ref())),
        SearchKey::Bcc(s) => field_contains(content, b"Bcc", s.as_ref()),
        SearchKey::Cc(s) => field_contains(content, b"Cc", s.as_ref()),
        SearchKey::From(s) => field_contains(content, b"From", s.as_ref()),
        SearchKey::To(s) => field_contains(content, b"To", s.as_ref()),
        SearchKey::Subject(s) => field_contains(content, b"Subject", s.as_ref()),
        SearchKey::Header(name, s) => field_contains(content, name.as_ref(), s.as_ref()),
        SearchKey::Body(s) => contains(body(content), s.as_ref()),
        SearchKey::Text(s) => contains(content, s.as_ref()),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

fn body(content: &[u8]) -> &[u8] {
    match memchr::memmem::find(content, b"\r\n\r\n") {
        Some(at) => &content[at + 4..],
        None => &[],
    }
}

/// Case-insensitive (ASCII) substring; the empty string is in everything.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let needle = needle.to_ascii_lowercase();
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(&needle))
}

/// Does a header field of this name contain `needle` (RFC 9051: HEADER with an empty string
/// matches every message that has the field)?
fn field_contains(content: &[u8], name: &[u8], needle: &[u8]) -> bool {
    let header = match memchr::memmem::find(content, b"\r\n\r\n") {
        Some(at) => &content[..at + 2],
        None => content,
    };
    let mut found = false;
    let mut current: Option<bool> = None;
    let mut value = Vec::new();
    let mut finish = |matched: Option<bool>, value: &mut Vec<u8>| {
        if matched == Some(true) && (contains(value, needle) || decoded_contains(value, needle)) {
            found = true;
        }
        value.clear();
    };
    for line in header.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if matches!(line.first(), Some(b' ' | b'\t')) {
            value.extend_from_slice(line);
            continue;
        }
        finish(current, &mut value);
        current = line.iter().position(|&b| b == b':').map(|colon| {
            value.extend_from_slice(&line[colon + 1..]);
            line[..colon].trim_ascii().eq_ignore_ascii_case(name)
        });
    }
    finish(current, &mut value);
    found
}

/// Does the field value, its encoded words (RFC 2047) decoded, contain `needle` case-folded
/// (Unicode)? Tried only where the octets could differ from the text: the value has an
/// encoded word, or the needle is not ASCII.
fn decoded_contains(value: &[u8], needle: &[u8]) -> bool {
    if needle.is_ascii() && memchr::memmem::find(value, b"=?").is_none() {
        return false;
    }
    let mut field = b"Subject:".to_vec();
    field.extend_from_slice(value);
    field.extend_from_slice(b"\r\n\r\n");
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(&field) else {
        return false;
    };
    let needle = String::from_utf8_lossy(needle).to_lowercase();
    parsed
        .subject()
        .is_some_and(|text| text.to_lowercase().contains(&needle))
}

/// The Date: header's day (RFC 9051 6.4.4, SENTBEFORE etc.).
fn sent(content: &[u8]) -> Option<NaiveDate> {
    let parsed = mail_parser::MessageParser::new().parse_headers(content)?;
    let date = parsed.date()?;
    NaiveDate::from_ymd_opt(date.year as i32, date.month as u32, date.day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_match_by_name_and_substring_across_folds() {
        let mail =
            b"From: Ann <ann@example.net>\r\nSubject: Quarterly\r\n report\r\n\r\nBody text\r\n";
        assert!(field_contains(mail, b"subject", b"REPORT"));
        assert!(field_contains(mail, b"From", b"ann@"));
        assert!(!field_contains(mail, b"To", b""));
        assert!(field_contains(mail, b"From", b""));
        assert!(!field_contains(mail, b"Subject", b"Body"));
        assert!(contains(body(mail), b"body TEXT"));
        assert!(!contains(body(mail), b"Quarterly"));
    }

    #[test]
    fn encoded_words_and_non_ascii_match_decoded_and_case_folded() {
        let mail = "Subject: =?UTF-8?B?0J/RgNC40LLQtdGCINC80LjRgA==?=\r\n\
From: =?ISO-8859-1?Q?Caf=E9?= <cafe@example.net>\r\nTo: Ёлка <elka@example.net>\r\n\r\n";
        let mail = mail.as_bytes();
        assert!(field_contains(mail, b"Subject", "привет".as_bytes()));
        assert!(field_contains(mail, b"Subject", "ПРИВЕТ МИР".as_bytes()));
        assert!(field_contains(mail, b"From", "CAFÉ".as_bytes()));
        // The address itself still matches as stored.
        assert!(field_contains(mail, b"From", b"cafe@example"));
        // Raw UTF-8 (RFC 6532) folds case too.
        assert!(field_contains(mail, b"To", "ёлка".as_bytes()));
        assert!(!field_contains(mail, b"Subject", "пока".as_bytes()));
    }
}
