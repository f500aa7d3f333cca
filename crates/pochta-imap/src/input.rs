//! Client input handed to imap-next's parser a piece at a time: a line, or a literal's octets.
//!
//! imap-codec's fragmentizer keeps the capacity of the largest command it has taken (an
//! APPEND's literal of many megabytes), and imap-next cannot say whether it holds input past
//! the command it has just given out. Fed one piece at a time, and the next piece only once
//! it has taken the last, the parser holds nothing past a command that a line piece ended:
//! a line piece has one LF, its last octet, and commands end only at an LF. The session may
//! then replace the parser with a fresh one and so give the buffer back.
//!
//! Literal octets go in as large pieces for speed. Where the literal is tracked wrongly (an
//! announcement this scan reads otherwise than the parser), only a chance to give back is
//! missed: a command ended inside a literal piece never counts as ended by a line.

/// The longest line end this scan reads for a literal announcement (`{4294967295+}` and CR).
const TAIL: usize = 24;

pub(crate) struct Input {
    bytes: Vec<u8>,
    /// Where the unfed octets start.
    at: usize,
    /// Octets of an announced literal still to be fed.
    literal_left: u64,
    /// The current line's last octets, for its announcement once its LF comes.
    tail: Vec<u8>,
    /// The last piece fed was a whole line (or a line's end): its one LF was its last octet.
    line_ended: bool,
    /// Literals larger than this and synchronising are refused by the parser, so not sent.
    max_literal: u32,
}

impl Input {
    pub(crate) fn new(max_literal: u32) -> Self {
        Input {
            bytes: Vec::new(),
            at: 0,
            literal_left: 0,
            tail: Vec::new(),
            line_ended: false,
            max_literal,
        }
    }

    /// Octets read from the client.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 {
            self.bytes.drain(..self.at);
            self.at = 0;
        }
        if self.bytes.is_empty() && self.bytes.capacity() > 64 * 1024 {
            self.bytes = Vec::new();
        }
        self.bytes.extend_from_slice(bytes);
    }

    /// Octets read and not yet fed.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// Everything unfed is dropped (STARTTLS: nothing sent in the clear is read after it).
    pub(crate) fn clear(&mut self) {
        *self = Input::new(self.max_literal);
    }

    /// Did the last piece end a line?
    pub(crate) fn line_ended(&self) -> bool {
        self.line_ended
    }

    /// The next piece to feed the parser: the rest of an announced literal, or up to and
    /// including the next LF.
    pub(crate) fn next_piece(&mut self) -> Option<&[u8]> {
        let rest = &self.bytes[self.at..];
        if rest.is_empty() {
            return None;
        }
        let start = self.at;
        if self.literal_left > 0 {
            let n = rest
                .len()
                .min(usize::try_from(self.literal_left).unwrap_or(usize::MAX));
            self.literal_left -= n as u64;
            self.line_ended = false;
            self.at += n;
            return Some(&self.bytes[start..self.at]);
        }
        let (n, ended) = match rest.iter().position(|&b| b == b'\n') {
            Some(lf) => (lf + 1, true),
            None => (rest.len(), false),
        };
        let line = &rest[..if ended { n - 1 } else { n }];
        let keep = line.len().min(TAIL);
        self.tail.extend_from_slice(&line[line.len() - keep..]);
        if self.tail.len() > TAIL {
            self.tail.drain(..self.tail.len() - TAIL);
        }
        if ended {
            self.literal_left = match announcement(&self.tail) {
                Some((length, true)) if length > self.max_literal => 0,
                Some((length, _)) => u64::from(length),
                None => 0,
            };
            self.tail.clear();
        }
        self.line_ended = ended;
        self.at += n;
        Some(&self.bytes[start..self.at])
    }
}

/// A literal announced at the end of a line (its LF taken off): `{n}` (synchronising, true)
/// or `{n+}`, as imap-codec's fragmentizer reads it.
fn announcement(line: &[u8]) -> Option<(u32, bool)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let (digits, sync) = match inner.strip_suffix(b"+") {
        Some(digits) => (digits, false),
        None => (inner, true),
    };
    let count = digits
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if count == 0 || digits[..digits.len() - count].last() != Some(&b'{') {
        return None;
    }
    let mut length: u32 = 0;
    for &d in &digits[digits.len() - count..] {
        length = length.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
    }
    Some((length, sync))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(input: &mut Input) -> Vec<(Vec<u8>, bool)> {
        std::iter::from_fn(|| {
            let piece = input.next_piece()?.to_vec();
            Some((piece, input.line_ended()))
        })
        .collect()
    }

    #[test]
    fn lines_and_literals_are_pieces_of_their_own() {
        let mut input = Input::new(1000);
        input.push(b"a NOOP\r\nb APPEND X {5}\r\nh\r\nl\nc{2+}\r\nxy\r\n");
        let got = pieces(&mut input);
        let want: Vec<(&[u8], bool)> = vec![
            (b"a NOOP\r\n", true),
            (b"b APPEND X {5}\r\n", true),
            (b"h\r\nl\n", false),
            (b"c{2+}\r\n", true),
            (b"xy", false),
            (b"\r\n", true),
        ];
        assert_eq!(
            got,
            want.iter()
                .map(|(p, e)| (p.to_vec(), *e))
                .collect::<Vec<_>>()
        );
        assert_eq!(input.len(), 0);
    }

    #[test]
    fn a_line_split_across_reads_still_announces_its_literal() {
        let mut input = Input::new(1000);
        input.push(b"a APPEND INBOX {1");
        assert_eq!(
            pieces(&mut input),
            vec![(b"a APPEND INBOX {1".to_vec(), false)]
        );
        input.push(b"2}\r");
        assert_eq!(pieces(&mut input), vec![(b"2}\r".to_vec(), false)]);
        input.push(b"\n0123456789\r\n\r\n");
        let got = pieces(&mut input);
        assert_eq!(got[0], (b"\n".to_vec(), true));
        assert_eq!(got[1], (b"0123456789\r\n".to_vec(), false));
        assert_eq!(got[2], (b"\r\n".to_vec(), true));
    }

    #[test]
    fn a_refused_synchronising_literal_is_not_waited_for() {
        let mut input = Input::new(10);
        // The parser refuses {11} (the client then sends no literal); {11+} comes anyway.
        input.push(b"a APPEND X {11}\r\nb NOOP\r\nc APPEND X {11+}\r\nb NOOP\r\n");
        let got = pieces(&mut input);
        assert_eq!(got[1], (b"b NOOP\r\n".to_vec(), true));
        assert_eq!(got[3], (b"b NOOP\r\n".to_vec(), false), "literal octets");
    }

    #[test]
    fn announcements_read_as_the_fragmentizer_reads_them() {
        assert_eq!(announcement(b"x {12}\r"), Some((12, true)));
        assert_eq!(announcement(b"x {12+}"), Some((12, false)));
        assert_eq!(announcement(b"x ~{7}\r"), Some((7, true)));
        assert_eq!(announcement(b"x {4294967296}"), None, "past u32");
        assert_eq!(announcement(b"x {}"), None);
        assert_eq!(announcement(b"x {+}"), None);
        assert_eq!(announcement(b"x 12}"), None);
        assert_eq!(announcement(b"}"), None);
    }
}
