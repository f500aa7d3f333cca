//! Writing a message as a POP3 multi-line response (RFC 1939 3): lines that start with `.` get
//! another `.`, and the response ends with `.` CRLF. Works on pieces of any size, so a large
//! message is streamed. For TOP, stops after the header, the blank line and `n` body lines.

#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    in_headers: bool,
    /// For TOP: body lines still to send.
    body_lines_left: Option<u64>,
    done: bool,
    /// The last two octets of the message text sent, to know whether it ended in CRLF even
    /// when the CR and LF came in different pieces.
    tail: [u8; 2],
    empty: bool,
}

impl DotStuffer {
    /// For RETR.
    pub fn whole() -> Self {
        Self::new(None)
    }

    /// For TOP: the headers, the blank line, then at most `lines` lines of the body.
    pub fn top(lines: u64) -> Self {
        Self::new(Some(lines))
    }

    fn new(body_lines_left: Option<u64>) -> Self {
        DotStuffer {
            at_line_start: true,
            in_headers: true,
            body_lines_left,
            done: false,
            tail: [0; 2],
            empty: true,
        }
    }

    /// True when TOP has sent all it should: the rest of the message need not be read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Appends the stuffed form of the next piece of the message to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() && !self.done {
            if !self.in_headers && self.body_lines_left.is_none() {
                self.push_body(input, out);
                return;
            }
            if self.at_line_start {
                if !self.in_headers && self.body_lines_left == Some(0) {
                    self.done = true;
                    return;
                }
                if input[0] == b'.' {
                    out.push(b'.');
                }
            }
            let (line, rest, complete) = match memchr::memchr(b'\n', input) {
                Some(nl) => (&input[..=nl], &input[nl + 1..], true),
                None => (input, &[][..], false),
            };
            out.extend_from_slice(line);
            self.empty = false;
            self.tail = match line {
                [.., a, b] => [*a, *b],
                [b] => [self.tail[1], *b],
                [] => self.tail,
            };
            if complete {
                let blank = self.at_line_start && (line == b"\r\n" || line == b"\n");
                if self.in_headers {
                    if blank {
                        self.in_headers = false;
                    }
                } else if let Some(left) = &mut self.body_lines_left {
                    *left -= 1;
                }
            }
            self.at_line_start = complete;
            input = rest;
        }
    }

    /// The body of a RETR: only a `.` at the start of a line needs anything, so the text is
    /// copied in spans between such dots (found with a vectorised search), not line by line.
    fn push_body(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64);
        if self.at_line_start && input[0] == b'.' {
            out.push(b'.');
        }
        let mut start = 0;
        for nl in memchr::memmem::find_iter(input, b"\n.") {
            out.extend_from_slice(&input[start..=nl]);
            out.push(b'.');
            start = nl + 1;
        }
        out.extend_from_slice(&input[start..]);
        self.empty = false;
        self.tail = match input {
            [.., a, b] => [*a, *b],
            [b] => [self.tail[1], *b],
            [] => self.tail,
        };
        self.at_line_start = input.last() == Some(&b'\n');
    }

    /// Ends the response: a CRLF if the text did not end with one, then `.` CRLF.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.empty && self.tail != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(mut s: DotStuffer, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn stuffs_leading_dots_across_pieces() {
        let whole: &[u8] = b"A: b\r\n\r\n.one\r\n..two\r\nx.y\r\n.\r\n";
        let expected = b"A: b\r\n\r\n..one\r\n...two\r\nx.y\r\n..\r\n.\r\n".to_vec();
        assert_eq!(stuff(DotStuffer::whole(), &[whole]), expected);
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(stuff(DotStuffer::whole(), &bytes), expected);
    }

    /// The stuffed form computed the plain way: whole message, line by line.
    fn reference(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in message.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        if !message.is_empty() && !message.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn any_split_of_any_message_stuffs_like_the_reference() {
        // A small deterministic generator: dots, CR, LF and letters in every arrangement.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let len = (next() % 40) as usize;
            let mut message: Vec<u8> = b"H: v\r\n\r\n".to_vec();
            message.extend((0..len).map(|_| b".\r\nab"[(next() % 5) as usize]));
            let expected = reference(&message);
            let mut pieces = Vec::new();
            let mut rest = &message[..];
            while !rest.is_empty() {
                let n = 1 + (next() as usize % rest.len().min(7));
                pieces.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(
                stuff(DotStuffer::whole(), &pieces),
                expected,
                "{:?} in {pieces:?}",
                String::from_utf8_lossy(&message)
            );
        }
    }

    #[test]
    fn terminates_an_unterminated_last_line() {
        assert_eq!(
            stuff(DotStuffer::whole(), &[b"A: b\r\n\r\nno newline"]),
            b"A: b\r\n\r\nno newline\r\n.\r\n"
        );
        assert_eq!(stuff(DotStuffer::whole(), &[b""]), b".\r\n");
    }

    #[test]
    fn top_sends_headers_blank_line_and_n_body_lines() {
        let msg: &[u8] = b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n";
        assert_eq!(
            stuff(DotStuffer::top(0), &[msg]),
            b"A: 1\r\nB: 2\r\n\r\n.\r\n"
        );
        assert_eq!(
            stuff(DotStuffer::top(2), &[msg]),
            b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n"
        );
        assert_eq!(
            stuff(DotStuffer::top(10), &[msg]),
            b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n"
        );
        let mut top = DotStuffer::top(1);
        let mut out = Vec::new();
        top.push(msg, &mut out);
        top.push(b"more\r\n", &mut out);
        assert!(top.is_done());
        // A message without a body: TOP sends it all.
        assert_eq!(stuff(DotStuffer::top(3), &[b"A: 1\r\n"]), b"A: 1\r\n.\r\n");
    }
}
