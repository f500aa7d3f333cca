//! Mailbox addresses (RFC 5321 4.1.2, with UTF-8 as RFC 6531 3.3 allows).

use std::fmt;
use std::str::FromStr;

use crate::InvalidValue;
use crate::domain::is_domain_name;

/// A mailbox `local@domain`: the local part as given (its case is kept; Pochta compares it
/// case-insensitively), the domain lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Mailbox {
    pub local_part: String,
    pub domain: String,
}

impl Mailbox {
    /// Parses RFC 5321 4.1.2 `Mailbox`: a Dot-string or Quoted-string local part of at most 64
    /// octets, `@`, and a host name (no trailing dot) or an address literal. Non-ASCII is
    /// allowed in both halves (RFC 6531); a caller that has not negotiated SMTPUTF8 refuses it
    /// first (`str::is_ascii`).
    pub fn parse(s: &str) -> Result<Mailbox, InvalidValue> {
        let bad = || InvalidValue::new("Mailbox", s);
        let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
        if local.is_empty() || local.len() > 64 || domain.is_empty() || domain.len() > 255 {
            return Err(bad());
        }
        let local_ok = if local.starts_with('"') {
            is_quoted_string(local)
        } else {
            local
                .split('.')
                .all(|atom| !atom.is_empty() && atom.chars().all(|c| is_atext(c) || !c.is_ascii()))
        };
        let domain = domain.to_lowercase();
        let domain_ok = if domain.starts_with('[') {
            is_address_literal(&domain)
        } else if domain.is_ascii() {
            !domain.ends_with('.') && is_domain_name(&domain)
        } else {
            domain
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'))
        };
        if !(local_ok && domain_ok) {
            return Err(bad());
        }
        Ok(Mailbox {
            local_part: local.to_owned(),
            domain,
        })
    }

    /// An address the store holds, split at its last `@` without checking its syntax again (it
    /// was checked when it was written; a row must never become unreadable because a later
    /// version checks more strictly). None if it has no `@` with text on both sides.
    pub fn from_stored(s: &str) -> Option<Mailbox> {
        let (local, domain) = s.rsplit_once('@')?;
        (!local.is_empty() && !domain.is_empty()).then(|| Mailbox {
            local_part: local.to_owned(),
            domain: domain.to_lowercase(),
        })
    }

    /// `local@domain`.
    pub fn address(&self) -> String {
        self.to_string()
    }

    /// True when either half is not ASCII (it needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.local_part.is_ascii() || !self.domain.is_ascii()
    }

    /// The same mailbox as `other`, comparing local parts case-insensitively as accounts are
    /// compared (RFC 5321 2.4 leaves that to the receiving host).
    pub fn is_same(&self, other: &Mailbox) -> bool {
        self.domain == other.domain
            && self.local_part.to_lowercase() == other.local_part.to_lowercase()
    }
}

impl FromStr for Mailbox {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        Mailbox::parse(s)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

fn is_quoted_string(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return false;
    };
    let mut escaped = false;
    for c in inner.chars() {
        if escaped {
            if !(' '..='~').contains(&c) {
                return false;
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' || (c.is_ascii() && !(' '..='~').contains(&c)) {
            return false;
        }
    }
    !escaped
}

fn is_address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner.strip_prefix("ipv6:") {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    inner.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_syntax() {
        for good in [
            "a.b-c+d@x.example",
            "u@[192.0.2.1]",
            "u@[ipv6:2001:db8::1]",
            "\"john doe\"@example.org",
            "пользователь@пример.рф",
        ] {
            assert!(Mailbox::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "a..b@x.example",
            ".a@x.example",
            "a@",
            "@x.example",
            "a@x..example",
            "a b@x.example",
            "a@[300.1.1.1]",
            "\"unterminated@x.example",
            "a@x.example.",
            "no-at-sign",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad}");
        }
        assert!(Mailbox::parse(&format!("{}@x.example", "a".repeat(65))).is_err());
    }

    #[test]
    fn domain_is_lowercased_and_local_part_kept() {
        let m = Mailbox::parse("Bob@Example.ORG").unwrap();
        assert_eq!(
            (m.local_part.as_str(), m.domain.as_str()),
            ("Bob", "example.org")
        );
        assert_eq!(m.to_string(), "Bob@example.org");
        assert!(m.is_same(&Mailbox::parse("bob@example.org").unwrap()));
        assert!(!m.is_same(&Mailbox::parse("bob@example.net").unwrap()));
    }

    #[test]
    fn stored_addresses_read_back_without_a_second_check() {
        let m = Mailbox::from_stored("odd local@Example.org").unwrap();
        assert_eq!(
            (m.local_part.as_str(), m.domain.as_str()),
            ("odd local", "example.org")
        );
        assert_eq!(Mailbox::from_stored("a@b@c").unwrap().local_part, "a@b");
        assert!(Mailbox::from_stored("nobody").is_none());
        assert!(Mailbox::from_stored("@x").is_none());
    }
}
