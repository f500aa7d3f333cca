//! The Sender Rewriting Scheme: forwarded mail leaves with a reverse-path in the forwarding
//! domain, so SPF at the next hop checks the forwarder, and a bounce to that address comes
//! back here and is sent on to the original sender. Only addresses this key made are taken
//! back, and only for `max_age_days`: nobody can use them to relay.
//!
//! The form is the usual SRS0 one, `SRS0=HHHHHH=TT=domain=local@forwarder`: TT is the day
//! (since the Unix epoch, modulo 1024) in two base32 characters, HHHHHH six base32 characters
//! of an HMAC-SHA256 over the rest under a secret key. Both compare case-insensitively, since
//! the path back may change case.

use crate::Mailbox;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const PREFIX: &str = "SRS0=";
/// RFC 5321 4.5.3.1.1.
const MAX_LOCAL_PART: usize = 64;

/// Why an address that looks like SRS is not taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrsError {
    #[error("not an SRS address")]
    NotSrs,
    #[error("the SRS address was not made here (its hash does not match)")]
    Forged,
    #[error("the SRS address has expired")]
    Expired,
}

/// A secret that makes and checks SRS addresses.
#[derive(Clone)]
pub struct SrsKey(ring::hmac::Key);

impl std::fmt::Debug for SrsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrsKey(..)")
    }
}

impl SrsKey {
    pub fn new(secret: &[u8]) -> Self {
        SrsKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    fn hash(&self, timestamp: &str, domain: &str, local: &str) -> String {
        let text = format!("{timestamp}={domain}={local}").to_ascii_lowercase();
        let tag = ring::hmac::sign(&self.0, text.as_bytes());
        tag.as_ref()[..6]
            .iter()
            .map(|b| BASE32[usize::from(b & 31)] as char)
            .collect()
    }

    /// `sender` rewritten into `forwarder`'s domain on `day` (days since the Unix epoch), or
    /// None when the result would not be a valid address (its local part too long).
    pub fn forward(&self, sender: &Mailbox, forwarder: &str, day: u64) -> Option<Mailbox> {
        let timestamp = timestamp(day);
        let hash = self.hash(&timestamp, &sender.domain, &sender.local_part);
        let local_part = format!(
            "{PREFIX}{hash}={timestamp}={}={}",
            sender.domain, sender.local_part
        );
        (local_part.len() <= MAX_LOCAL_PART && !sender.local_part.starts_with('"')).then(|| {
            Mailbox {
                local_part,
                domain: forwarder.to_owned(),
            }
        })
    }

    /// The original sender an SRS address made by this key stands for, if it was made within
    /// `max_age_days` of `today`.
    pub fn reverse(
        &self,
        address: &Mailbox,
        today: u64,
        max_age_days: u64,
    ) -> Result<Mailbox, SrsError> {
        let local = &address.local_part;
        let rest = match local.get(..PREFIX.len()) {
            Some(prefix) if prefix.eq_ignore_ascii_case(PREFIX) => &local[PREFIX.len()..],
            _ => return Err(SrsError::NotSrs),
        };
        let mut parts = rest.splitn(4, '=');
        let (Some(hash), Some(stamp), Some(domain), Some(original)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SrsError::NotSrs);
        };
        if domain.is_empty() || original.is_empty() {
            return Err(SrsError::NotSrs);
        }
        let expected = self.hash(stamp, domain, original);
        if !constant_time_eq_ignore_case(hash, &expected) {
            return Err(SrsError::Forged);
        }
        let Some(made) = day_of(stamp) else {
            return Err(SrsError::Forged);
        };
        let age = (today % 1024 + 1024 - made) % 1024;
        if age > max_age_days {
            return Err(SrsError::Expired);
        }
        Mailbox::parse(&format!("{original}@{domain}")).map_err(|_| SrsError::NotSrs)
    }
}

/// The day SRS timestamps count in: days since the Unix epoch of `unix_secs`.
pub fn day(unix_secs: i64) -> u64 {
    unix_secs.max(0) as u64 / 86_400
}

/// Whether a local part has the SRS0 form (it may still be forged).
pub fn is_srs(local_part: &str) -> bool {
    local_part
        .get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

fn timestamp(day: u64) -> String {
    let t = day % 1024;
    [
        BASE32[(t >> 5) as usize] as char,
        BASE32[(t & 31) as usize] as char,
    ]
    .into_iter()
    .collect()
}

fn day_of(stamp: &str) -> Option<u64> {
    let value = |c: u8| {
        BASE32
            .iter()
            .position(|&b| b == c.to_ascii_uppercase())
            .map(|v| v as u64)
    };
    match stamp.as_bytes() {
        [a, b] => Some((value(*a)? << 5) | value(*b)?),
        _ => None,
    }
}

fn constant_time_eq_ignore_case(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x.to_ascii_uppercase() ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    const DAY: u64 = 20_427;

    #[test]
    fn a_forwarded_sender_comes_back_within_its_age() {
        let key = SrsKey::new(b"secret");
        let srs = key
            .forward(&addr("Bob@Sender.example"), "example.org", DAY)
            .unwrap();
        assert!(srs.local_part.starts_with("SRS0="), "{srs}");
        assert!(srs.local_part.ends_with("=sender.example=Bob"), "{srs}");
        assert_eq!(srs.domain, "example.org");
        assert!(is_srs(&srs.local_part));
        for today in [DAY, DAY + 21] {
            assert_eq!(
                key.reverse(&srs, today, 21).unwrap(),
                addr("Bob@sender.example")
            );
        }
        // The path back may fold case.
        let folded = Mailbox {
            local_part: srs.local_part.to_ascii_lowercase(),
            domain: srs.domain.clone(),
        };
        assert_eq!(
            key.reverse(&folded, DAY, 21)
                .unwrap()
                .to_string()
                .to_lowercase(),
            "bob@sender.example"
        );
        assert_eq!(key.reverse(&srs, DAY + 22, 21), Err(SrsError::Expired));
        // Across the 1024-day wrap.
        let late = key
            .forward(&addr("a@b.example"), "x.example", 1023)
            .unwrap();
        assert!(key.reverse(&late, 1024 + 3, 21).is_ok());
    }

    #[test]
    fn forged_and_foreign_addresses_are_refused() {
        let key = SrsKey::new(b"secret");
        let srs = key
            .forward(&addr("bob@sender.example"), "example.org", DAY)
            .unwrap();
        let other = SrsKey::new(b"another secret");
        assert_eq!(other.reverse(&srs, DAY, 21), Err(SrsError::Forged));
        // The original address changed: the hash no longer matches.
        let altered = Mailbox {
            local_part: srs.local_part.replace("=bob", "=eve"),
            domain: srs.domain.clone(),
        };
        assert_eq!(key.reverse(&altered, DAY, 21), Err(SrsError::Forged));
        for local in [
            "bob",
            "SRS0=",
            "SRS0=abc",
            "SRS0=AAAAAA=AA=domain",
            "SRS0=AAAAAA=A!=d=l",
        ] {
            let a = Mailbox {
                local_part: local.into(),
                domain: "example.org".into(),
            };
            assert!(key.reverse(&a, DAY, 21).is_err(), "{local}");
        }
        // Too long to be an address: not rewritten.
        let long = addr(&format!("{}@sender.example", "x".repeat(50)));
        assert_eq!(key.forward(&long, "example.org", DAY), None);
    }
}
