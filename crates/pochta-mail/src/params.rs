//! The ESMTP and DSN envelope parameters: BODY (RFC 6152, RFC 3030), RET, ENVID, NOTIFY and
//! ORCPT (RFC 3461), and the xtext encoding they travel in (RFC 3461 4). Each parses from, and
//! prints as, its wire form, which is also the form the store keeps.

use std::fmt;
use std::str::FromStr;

use crate::InvalidValue;

/// Defines an enum of keywords: `as_str` (the wire and stored form), case-insensitive
/// `FromStr`, and `Display`.
macro_rules! keyword_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                $name::ALL
                    .iter()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .copied()
                    .ok_or_else(|| InvalidValue::new(stringify!($name), s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

keyword_enum! {
    /// RET on MAIL (RFC 3461 4.3): what a failure report returns of the message.
    Ret {
        Full = "FULL",
        Hdrs = "HDRS",
    }
}

keyword_enum! {
    /// BODY on MAIL (RFC 6152; BINARYMIME is RFC 3030's).
    Body {
        SevenBit = "7BIT",
        EightBitMime = "8BITMIME",
        BinaryMime = "BINARYMIME",
    }
}

/// NOTIFY on RCPT (RFC 3461 4.1): which reports the sender wants. All false is `NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// What a recipient without NOTIFY gets (RFC 3461 4.1: "FAILURE" or "FAILURE,DELAY" at the
    /// MTA's choice; Pochta sends failure reports only).
    pub const DEFAULT: Notify = Notify {
        success: false,
        failure: true,
        delay: false,
    };
}

impl fmt::Display for Notify {
    /// `NEVER` or a comma list such as `SUCCESS,FAILURE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Notify::NEVER {
            return f.write_str("NEVER");
        }
        let parts = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let mut first = true;
        for (_, word) in parts.iter().filter(|(set, _)| *set) {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(word)?;
            first = false;
        }
        Ok(())
    }
}

impl FromStr for Notify {
    type Err = InvalidValue;

    /// `NEVER`, or a list of SUCCESS, FAILURE and DELAY, each at most once; case-insensitive.
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let bad = || InvalidValue::new("Notify", s);
        if s.eq_ignore_ascii_case("NEVER") {
            return Ok(Notify::NEVER);
        }
        let mut notify = Notify::NEVER;
        for part in s.split(',') {
            let flag = match part.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut notify.success,
                "FAILURE" => &mut notify.failure,
                "DELAY" => &mut notify.delay,
                _ => return Err(bad()),
            };
            if *flag {
                return Err(bad());
            }
            *flag = true;
        }
        Ok(notify)
    }
}

/// ORCPT on RCPT (RFC 3461 4.2): the original recipient as `addr-type;xtext`, kept in that
/// wire form (it is passed on as given).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Orcpt(String);

impl Orcpt {
    /// The longest ORCPT value accepted.
    pub const MAX_LEN: usize = 500;

    /// The wire form, as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address type, e.g. `rfc822`.
    pub fn addr_type(&self) -> &str {
        self.0.split_once(';').map_or("", |(t, _)| t)
    }

    /// `type;address` with the address decoded, as a report's Original-Recipient field has it
    /// (RFC 3464 2.3.1).
    pub fn decoded(&self) -> String {
        let (kind, xtext) = self.0.split_once(';').unwrap_or(("", &self.0));
        let address = xtext_decode(xtext).unwrap_or_else(|| xtext.to_owned());
        format!("{kind};{address}")
    }
}

impl FromStr for Orcpt {
    type Err = InvalidValue;

    /// `addr-type;xtext`: an atom of letters, digits and hyphens, `;`, and non-empty xtext.
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let bad = || InvalidValue::new("Orcpt", s);
        let (addr_type, xtext) = s.split_once(';').ok_or_else(bad)?;
        let type_ok = !addr_type.is_empty()
            && addr_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !type_ok || s.len() > Orcpt::MAX_LEN || xtext_decode(xtext).is_none_or(|d| d.is_empty())
        {
            return Err(bad());
        }
        Ok(Orcpt(s.to_owned()))
    }
}

impl fmt::Display for Orcpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes xtext (RFC 3461 4): printable ASCII except `+` and `=`, with `+XX` hex escapes
/// (upper-case hex digits). None if it is not xtext, or does not decode to UTF-8 text free of
/// control characters (an ENVID or ORCPT is text: `+00` must not smuggle a NUL or a line
/// break into the store, a log or a report).
pub fn xtext_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let digit = |b: u8| match b {
                    b'0'..=b'9' => Some(b - b'0'),
                    b'A'..=b'F' => Some(b - b'A' + 10),
                    _ => None,
                };
                out.push(digit(hex[0])? << 4 | digit(hex[1])?);
                i += 3;
            }
            b'!'..=b'~' if bytes[i] != b'=' => {
                out.push(bytes[i]);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out)
        .ok()
        .filter(|text| !text.chars().any(char::is_control))
}

/// Encodes text as xtext (RFC 3461 4).
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_parse_case_insensitively_and_print_canonically() {
        assert_eq!("hdrs".parse::<Ret>().unwrap(), Ret::Hdrs);
        assert_eq!("8bitMIME".parse::<Body>().unwrap(), Body::EightBitMime);
        assert_eq!(Body::SevenBit.to_string(), "7BIT");
        assert!("ALL".parse::<Ret>().is_err());
    }

    #[test]
    fn notify_grammar() {
        let n: Notify = "success,DELAY".parse().unwrap();
        assert_eq!(
            n,
            Notify {
                success: true,
                failure: false,
                delay: true
            }
        );
        assert_eq!(n.to_string(), "SUCCESS,DELAY");
        assert_eq!("never".parse::<Notify>().unwrap(), Notify::NEVER);
        assert_eq!(Notify::NEVER.to_string(), "NEVER");
        for bad in ["", "NEVER,SUCCESS", "SUCCESS,SUCCESS", "ALWAYS", "SUCCESS,"] {
            assert!(bad.parse::<Notify>().is_err(), "{bad}");
        }
    }

    #[test]
    fn orcpt_grammar() {
        let o: Orcpt = "rfc822;bob+2Bx@example.org".parse().unwrap();
        assert_eq!(o.as_str(), "rfc822;bob+2Bx@example.org");
        assert_eq!(o.addr_type(), "rfc822");
        assert_eq!(o.decoded(), "rfc822;bob+x@example.org");
        for bad in ["rfc822", ";x", "rfc822;", "r f;x", "rfc822;a=b"] {
            assert!(bad.parse::<Orcpt>().is_err(), "{bad}");
        }
        assert!(
            format!("rfc822;{}", "a".repeat(500))
                .parse::<Orcpt>()
                .is_err()
        );
    }

    #[test]
    fn xtext_round_trip() {
        for s in ["plain", "a+b=c", "space here", "\u{e9}t\u{e9}"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a+2b"), None, "hex digits are upper case");
        assert_eq!(xtext_decode("a b"), None);
        assert_eq!(
            xtext_decode("+é"),
            None,
            "a multi-byte character is no hex digit"
        );
    }
}
