//! Text from outside (a client's user name, a remote server's reply, a name from DNS) shown to
//! an operator, in a log line or in `pochtactl` output: it must not forge lines, drive the
//! terminal or hide what it says.

use std::fmt::{self, Write as _};

/// Shown with control characters (C0, DEL, C1) and the invisible format characters that
/// reorder or hide text (bidirectional overrides, zero-width) escaped as `\u{..}`, and cut at
/// `MAX_CHARS` characters with `…`.
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl Untrusted<'_> {
    pub const MAX_CHARS: usize = 300;
}

fn is_hidden_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.chars().enumerate() {
            if i == Self::MAX_CHARS {
                return f.write_char('…');
            }
            if c.is_control() || is_hidden_format(c) {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_hidden_characters_are_escaped() {
        let shown =
            Untrusted("bob\r\n2026-01-01 INFO forged\x1b[2J\u{202e}txt.exe\u{9b}ok é").to_string();
        assert_eq!(
            shown,
            "bob\\u{d}\\u{a}2026-01-01 INFO forged\\u{1b}[2J\\u{202e}txt.exe\\u{9b}ok é"
        );
        assert!(!shown.chars().any(|c| c.is_control()));
    }

    #[test]
    fn long_text_is_cut() {
        let shown = Untrusted(&"x".repeat(1000)).to_string();
        assert_eq!(shown.chars().count(), Untrusted::MAX_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(Untrusted(&"y".repeat(300)).to_string(), "y".repeat(300));
    }
}
