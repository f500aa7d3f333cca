//! Mailbox names (RFC 9051 5.1): the hierarchy delimiter, which names are acceptable, and
//! LIST's wildcards.

use imap_next::imap_types::mailbox::{ListMailbox, Mailbox};

/// The hierarchy delimiter (RFC 9051 5.1.1).
pub const DELIMITER: char = '/';

/// Longest mailbox name accepted, in octets.
pub const MAX_NAME: usize = 512;

/// A mailbox name as stored: `INBOX` in any case is `INBOX`; others as the client wrote them.
/// None: not a name the server accepts (not UTF-8, empty, an empty level, a wildcard, too
/// long, or a control character).
pub fn mailbox_name(mailbox: &Mailbox<'_>) -> Option<String> {
    let raw = match mailbox {
        Mailbox::Inbox => return Some("INBOX".into()),
        Mailbox::Other(other) => other.as_ref(),
    };
    let name = std::str::from_utf8(raw).ok()?;
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
        let name = |s: &str| mailbox_name(&Mailbox::try_from(s).unwrap());
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
}
