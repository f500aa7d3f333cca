//! SEARCH (RFC 9051 6.4.4): search keys evaluated by the store (flags, sizes, dates, UIDs and
//! the header fields it keeps for search) and, for other keys or messages stored without those
//! fields, over the message's octets. Header fields match as `pochta_mail::header_search`
//! says (case-folded substrings of the value as stored and decoded); body and text strings as
//! case-insensitive substrings of the octets or of the text the message holds (its text parts
//! transfer-decoded and in UTF-8, its header fields' encoded words decoded).

use chrono::{NaiveDate, Utc};
use imap_next::imap_types::core::Vec1;
use imap_next::imap_types::search::SearchKey;
use pochta_mail::header_search::{decoded_text_contains, field_contains, sent_on};

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

/// Can the store evaluate the key (its nesting already checked by `needs_content`)? Every key
/// but HEADER, BODY and TEXT: the header fields it names are among those the store keeps.
pub(crate) fn decidable_in_store(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().all(decidable_in_store),
        SearchKey::Not(k) => decidable_in_store(k),
        SearchKey::Or(a, b) => decidable_in_store(a) && decidable_in_store(b),
        SearchKey::Header(..) | SearchKey::Body(_) | SearchKey::Text(_) => false,
        _ => true,
    }
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
        SearchKey::SentBefore(d) => sent_on(content).is_some_and(|s| s < date(d.as_ref())),
        SearchKey::SentOn(d) => sent_on(content).is_some_and(|s| s == date(d.as_ref())),
        SearchKey::SentSince(d) => sent_on(content).is_some_and(|s| s >= date(d.as_ref())),
        SearchKey::Bcc(s) => field_contains(content, b"Bcc", s.as_ref()),
        SearchKey::Cc(s) => field_contains(content, b"Cc", s.as_ref()),
        SearchKey::From(s) => field_contains(content, b"From", s.as_ref()),
        SearchKey::To(s) => field_contains(content, b"To", s.as_ref()),
        SearchKey::Subject(s) => field_contains(content, b"Subject", s.as_ref()),
        SearchKey::Header(name, s) => field_contains(content, name.as_ref(), s.as_ref()),
        SearchKey::Body(s) => {
            contains(body(content), s.as_ref()) || decoded_text_contains(content, s.as_ref(), false)
        }
        SearchKey::Text(s) => {
            contains(content, s.as_ref()) || decoded_text_contains(content, s.as_ref(), true)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_text_match_the_octets_after_the_header_section() {
        let mail = b"Subject: Quarterly\r\n\r\nBody text\r\n";
        assert!(contains(body(mail), b"body TEXT"));
        assert!(!contains(body(mail), b"Quarterly"));
        assert!(contains(mail, b"quarterly"));
        assert!(contains(body(b"Subject: no body"), b""));
    }

    #[test]
    fn only_header_body_and_text_keys_need_the_octets_decided() {
        let and = |keys: Vec<SearchKey<'static>>| SearchKey::And(keys.try_into().unwrap());
        let subject = SearchKey::Subject("x".try_into().unwrap());
        let header = SearchKey::Header("X-Spam".try_into().unwrap(), "yes".try_into().unwrap());
        assert!(decidable_in_store(&and(vec![
            SearchKey::Unseen,
            subject.clone()
        ])));
        assert!(decidable_in_store(&SearchKey::Not(Box::new(
            subject.clone()
        ))));
        assert!(!decidable_in_store(&SearchKey::Or(
            Box::new(subject),
            Box::new(header)
        )));
        assert!(!decidable_in_store(&SearchKey::Text(
            "x".try_into().unwrap()
        )));
    }
}
