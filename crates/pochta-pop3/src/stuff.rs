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
            if self.at_line_start {
                if !self.in_headers && self.body_lines_left == Some(0) {
                    self.done = true;
                    return;
                }
                if input[0] == b'.' {
                    out.push(b'.');
                }
            }
            let (line, rest, complete) = match input.iter().position(|&b| b == b'\n') {
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
