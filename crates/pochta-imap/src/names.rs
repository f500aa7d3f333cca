//! Mailbox names (RFC 9051 5.1): the hierarchy delimiter, which names are acceptable, and
//! LIST's wildcards.

use imap_next::imap_types::mailbox::{ListMailbox, Mailbox};

/// The hierarchy delimiter (RFC 9051 5.1.1).
pub const DELIMITER: char = '/';

/// Longest mailbox name accepted, in octets.
pub const MAX_NAME: usize = 512;

/// A mailbox name as stored (UTF-8): `INBOX` in any case is `INBOX`; others as the client
/// wrote them, decoded from modified UTF-7 when `utf7` (an IMAP4rev1 session, RFC 3501
/// 5.1.3; a name with 8-bit octets is taken as UTF-8, as clients that ignore the rule send).
/// None: not a name the server accepts (not UTF-8 or modified UTF-7, empty, an empty level, a
/// wildcard, too long, or a control character).
pub fn mailbox_name(mailbox: &Mailbox<'_>, utf7: bool) -> Option<String> {
    let raw = match mailbox {
        Mailbox::Inbox => return Some("INBOX".into()),
        Mailbox::Other(other) => other.as_ref(),
    };
    let name = std::str::from_utf8(raw).ok()?;
    let decoded;
    let name = if utf7 && name.is_ascii() {
        decoded = from_modified_utf7(name)?;
        decoded.as_str()
    } else {
        name
    };
    let name = name.strip_suffix(DELIMITER).unwrap_or(name);
    let acceptable = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.split(DELIMITER).any(str::is_empty)
        && !name.chars().any(|c| c == '*' || c == '%' || c.is_control());
    if !acceptable {
        return None;
    }
    // "INBOX/x" keeps its first level canonical, so INBOX's children follow it.
    match name.split_once(DELIMITER) {
        Some((first, rest)) if first.eq_ignore_ascii_case("INBOX") => {
            Some(format!("INBOX{DELIMITER}{rest}"))
        }
        _ if name.eq_ignore_ascii_case("INBOX") => Some("INBOX".into()),
        _ => Some(name.to_owned()),
    }
}

/// A LIST pattern or reference as text, decoded from modified UTF-7 when `utf7` and it is
/// (a pattern that is not matches only what it spells).
pub fn list_pattern(pattern: &[u8], utf7: bool) -> String {
    let text = String::from_utf8_lossy(pattern);
    match utf7 && text.is_ascii() {
        true => from_modified_utf7(&text).unwrap_or_else(|| text.into_owned()),
        false => text.into_owned(),
    }
}

/// A name as an IMAP4rev1 client reads it (RFC 3501 5.1.3): printable ASCII as it is, `&` as
/// `&-`, anything else as UTF-16 in modified base64 between `&` and `-`.
pub fn to_modified_utf7(name: &str) -> String {
    fn shifted(out: &mut String, units: &mut Vec<u16>) {
        if units.is_empty() {
            return;
        }
        let octets: Vec<u8> = units.drain(..).flat_map(u16::to_be_bytes).collect();
        out.push('&');
        for group in octets.chunks(3) {
            let n = group
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=group.len() {
                out.push(MODIFIED_BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out.push('-');
    }
    let mut out = String::with_capacity(name.len());
    let mut units = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            shifted(&mut out, &mut units);
            match c {
                '&' => out.push_str("&-"),
                c => out.push(c),
            }
        } else {
            units.extend_from_slice(c.encode_utf16(&mut [0; 2]));
        }
    }
    shifted(&mut out, &mut units);
    out
}

/// A modified UTF-7 name as UTF-8; None if it is not one (octets outside printable ASCII, a
/// shift not ended by `-`, bad base64 or UTF-16, or a second spelling: printable ASCII
/// shifted, or a shift right after another, which RFC 3501 5.1.3 forbids).
pub fn from_modified_utf7(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first != b'&' {
            if !(b' '..=b'~').contains(&first) {
                return None;
            }
            out.push(first as char);
            rest = tail;
            continue;
        }
        let end = tail.iter().position(|&b| b == b'-')?;
        let (encoded, after) = (&tail[..end], &tail[end + 1..]);
        rest = after;
        if encoded.is_empty() {
            out.push('&');
            continue;
        }
        let (mut bits, mut held, mut units) = (0u32, 0u32, Vec::new());
        for &c in encoded {
            let value = MODIFIED_BASE64.iter().position(|&a| a == c)? as u32;
            bits = (bits << 6 | value) & 0x3f_ffff;
            held += 6;
            if held >= 16 {
                held -= 16;
                units.push((bits >> held) as u16);
            }
        }
        // What is left over is padding: fewer than six bits, all zero.
        if held >= 6 || bits & ((1 << held) - 1) != 0 {
            return None;
        }
        let decoded: String = char::decode_utf16(units).collect::<Result<_, _>>().ok()?;
        // One spelling: no printable ASCII shifted, no shift right after another.
        if decoded.chars().any(|c| (' '..='~').contains(&c))
            || (after.first() == Some(&b'&') && after.get(1) != Some(&b'-'))
        {
            return None;
        }
        out.push_str(&decoded);
    }
    Some(out)
}

/// RFC 3501 5.1.3's base64: `,` where RFC 2045's has `/`.
const MODIFIED_BASE64: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// The octets of a LIST pattern or reference.
pub fn list_text(pattern: &ListMailbox<'_>) -> Vec<u8> {
    match pattern {
        ListMailbox::Token(token) => token.as_ref().to_vec(),
        ListMailbox::String(string) => string.as_ref().to_vec(),
    }
}

/// Does `name` match the LIST pattern (RFC 9051 6.3.9): `*` matches anything, `%` anything
/// but the delimiter. A pattern starting with INBOX matches INBOX in any case.
pub fn matches(pattern: &str, name: &str) -> bool {
    let pattern = match pattern.get(..5) {
        Some(head) if head.eq_ignore_ascii_case("INBOX") && name.starts_with("INBOX") => {
            format!("INBOX{}", &pattern[5..])
        }
        _ => pattern.to_owned(),
    };
    matches_from(pattern.as_bytes(), name.as_bytes())
}

fn matches_from(pattern: &[u8], name: &[u8]) -> bool {
    // The set of name positions the pattern so far can end at, one pattern octet at a time:
    // O(pattern x name) whatever the wildcards, never recursive.
    if pattern.len() > MAX_PATTERN {
        return false;
    }
    let mut reach = vec![false; name.len() + 1];
    reach[0] = true;
    for &c in pattern {
        let mut next = vec![false; name.len() + 1];
        match c {
            b'*' => {
                let mut any = false;
                for (i, r) in reach.iter().enumerate() {
                    any |= r;
                    next[i] = any;
                }
            }
            b'%' => {
                for i in 0..=name.len() {
                    next[i] = reach[i] || (i > 0 && next[i - 1] && name[i - 1] != DELIMITER as u8);
                }
            }
            _ => {
                for i in 0..name.len() {
                    next[i + 1] = reach[i] && name[i] == c;
                }
            }
        }
        reach = next;
    }
    reach[name.len()]
}

/// Longest LIST pattern matched, in octets; a longer one matches nothing.
pub const MAX_PATTERN: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_inbox_is_canonical() {
        let name = |s: &str| mailbox_name(&Mailbox::try_from(s).unwrap(), false);
        assert_eq!(name("inbox").as_deref(), Some("INBOX"));
        assert_eq!(name("InBox/Sub").as_deref(), Some("INBOX/Sub"));
        assert_eq!(name("Work/2026/").as_deref(), Some("Work/2026"));
        assert_eq!(name("Ünïcode").as_deref(), Some("Ünïcode"));
        for bad in ["a//b", "/a", "a*", "100%", "a\u{7}"] {
            assert_eq!(name(bad), None, "{bad}");
        }
        assert_eq!(name(&"x".repeat(MAX_NAME + 1)), None);
    }

    #[test]
    fn list_wildcards_follow_the_hierarchy() {
        assert!(matches("*", "Work/2026/Q1"));
        assert!(matches("%", "Work"));
        assert!(!matches("%", "Work/2026"));
        assert!(matches("Work/%", "Work/2026"));
        assert!(!matches("Work/%", "Work/2026/Q1"));
        assert!(matches("W*Q1", "Work/2026/Q1"));
        assert!(matches("inbox", "INBOX"));
        assert!(!matches("Sent", "Sent Items"));
        assert!(matches("%/%/%", "a/b/c"));
        assert!(matches("*/%", "a/b/c"));
        assert!(!matches("%/x", "a/b/x"));
        // Many wildcards against a long name finish quickly.
        let long = "a".repeat(400);
        assert!(!matches(&"*a".repeat(100).replace("a", "%b"), &long));
    }

    #[test]
    fn modified_utf7_both_ways() {
        // RFC 3501 5.1.3's example, and names of every kind of character.
        let pairs = [
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("Входящие", "&BBIERQQ+BDQETwRJBDgENQ-"),
            ("A&B", "A&-B"),
            ("Sent", "Sent"),
            ("Ünïcode & co", "&ANw-n&AO8-code &- co"),
            ("📬 mail", "&2D3c7A- mail"),
            ("", ""),
        ];
        for (utf8, utf7) in pairs {
            assert_eq!(to_modified_utf7(utf8), utf7, "{utf8}");
            assert_eq!(from_modified_utf7(utf7).as_deref(), Some(utf8), "{utf7}");
        }
        // Not modified UTF-7: unended, bad letters, printable ASCII shifted, a lone
        // surrogate, leftover bits, 8-bit octets.
        for bad in [
            "&U,BTF",
            "&U/BTFw-",
            "&AGE-",
            "&2D0-",
            "&U,BTFx-",
            "é",
            "&AOk-&AOk-",
        ] {
            assert_eq!(from_modified_utf7(bad), None, "{bad}");
        }
        // A rev1 session's names are decoded; its 8-bit names taken as UTF-8.
        let name = |s: &str| mailbox_name(&Mailbox::try_from(s).unwrap(), true);
        assert_eq!(
            name("&BBIERQQ+BDQETwRJBDgENQ-/A&-B").as_deref(),
            Some("Входящие/A&B")
        );
        assert_eq!(name("Ünïcode").as_deref(), Some("Ünïcode"));
        assert_eq!(name("&AGE-"), None);
        assert_eq!(name("a/&AC8-b"), None);
        assert_eq!(list_pattern(b"&BBIERQ-*", true), "Вх*");
        assert_eq!(list_pattern(b"&BBIERQ-*", false), "&BBIERQ-*");
    }
}
