//! Receiving the message text after DATA (RFC 5321 4.1.1.4, 4.5.2), or in BDAT chunks
//! (RFC 3030).
//!
//! After DATA only CRLF.CRLF ends the data, and leading dots are unstuffed; BDAT chunks are
//! taken as they are and the last chunk ends the message. Either way a bare LF or bare CR is
//! never a line end: by default it marks the message for rejection (the SMTP smuggling
//! defence), or, by configuration, it is normalised to CRLF in the stored text.

use pochta_mail::BareLineEndings;

/// Limits and policy for one message.
#[derive(Debug, Clone, Copy)]
pub struct DataLimits {
    pub max_size: usize,
    /// Including CRLF (RFC 5321 4.5.3.1.6: 1000).
    pub max_line: usize,
    pub bare_line_endings: BareLineEndings,
}

/// Why a complete message cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    TooBig,
    LineTooLong,
    BareLineEnding,
}

/// The message text as it arrives, across any number of `push` calls.
#[derive(Debug)]
pub struct DataReceiver {
    limits: DataLimits,
    body: Vec<u8>,
    /// The current line so far (raw, before unstuffing), when it spans pushes.
    line: Vec<u8>,
    /// The start of the current line was already flushed (an over-long line): what is in
    /// `line` is its tail, never the start of a line, so it can be neither `.` nor stuffed.
    line_flushed: bool,
    /// The previous line ended in CRLF (true at the start: the DATA command's own CRLF). Only
    /// then can `.` CRLF end the data: the terminator is CRLF.CRLF, never LF.CRLF.
    after_crlf: bool,
    in_headers: bool,
    received_headers: usize,
    size: usize,
    problem: Option<DataProblem>,
    /// BDAT: no dot-stuffing and no terminator.
    chunked: bool,
}

/// The outcome of a finished DATA.
#[derive(Debug)]
pub struct ReceivedData {
    pub body: Vec<u8>,
    pub received_headers: usize,
    pub problem: Option<DataProblem>,
}

impl DataReceiver {
    pub fn new(limits: DataLimits) -> Self {
        DataReceiver {
            limits,
            body: Vec::new(),
            line: Vec::new(),
            line_flushed: false,
            after_crlf: true,
            in_headers: true,
            received_headers: 0,
            size: 0,
            problem: None,
            chunked: false,
        }
    }

    /// A receiver for BDAT chunks: `push_chunk` each, then `finish_chunks`.
    pub fn chunked(limits: DataLimits) -> Self {
        DataReceiver {
            chunked: true,
            ..DataReceiver::new(limits)
        }
    }

    /// The problem found so far, if any.
    pub fn problem(&self) -> Option<DataProblem> {
        self.problem
    }

    /// Consumes all of `chunk` (BDAT text: no terminator, no dot-stuffing). A line may span
    /// chunks.
    pub fn push_chunk(&mut self, chunk: &[u8]) {
        debug_assert!(self.chunked);
        let (used, done) = self.push(chunk);
        debug_assert!(used == chunk.len() && done.is_none());
    }

    /// The message after its LAST chunk. A last line without CRLF gets one (RFC 5322 text
    /// ends in CRLF; a bare CR there is a bare line ending like any other).
    pub fn finish_chunks(&mut self) -> ReceivedData {
        let tail = std::mem::take(&mut self.line);
        if !tail.is_empty() || self.line_flushed {
            let mut line = tail;
            line.extend_from_slice(b"\r\n");
            self.end_line(&line);
        }
        self.finish()
    }

    /// Octets held in memory so far (the text and the current line).
    pub fn buffered(&self) -> usize {
        self.body.len() + self.line.len()
    }

    /// Consumes input; returns how many bytes were used and, once CRLF.CRLF was seen, the
    /// message. Bytes after the end belong to the next command (pipelining).
    pub fn push(&mut self, input: &[u8]) -> (usize, Option<ReceivedData>) {
        let mut used = 0;
        while used < input.len() {
            let plain = self.plain_lines(&input[used..]);
            if plain > 0 {
                self.append(&input[used..used + plain]);
                self.after_crlf = true;
                used += plain;
                continue;
            }
            let rest = &input[used..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                self.line.extend_from_slice(rest);
                used = input.len();
                // A line that never ends must not grow without bound: keep its tail (which
                // may be the CR of a coming CRLF) and account for the rest.
                if self.line.len() > self.limits.max_line {
                    self.note(DataProblem::LineTooLong);
                    let keep = self.line.split_off(self.line.len() - 1);
                    let head = std::mem::replace(&mut self.line, keep);
                    self.append(&head);
                    self.line_flushed = true;
                }
                break;
            };
            used += nl + 1;
            if self.line.is_empty() && !self.line_flushed {
                // The common case: a whole line within this input, taken where it lies.
                if self.end_line(&rest[..=nl]) {
                    return (used, Some(self.finish()));
                }
            } else {
                // The end of a line begun in an earlier push.
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&rest[..=nl]);
                if self.end_line(&line) {
                    return (used, Some(self.finish()));
                }
                line.clear();
                self.line = line;
            }
        }
        (used, None)
    }

    /// How many octets at the start of `input` are plain body lines, taken as they are:
    /// whole lines ending in CRLF with no other CR or LF, none starting with a dot (the
    /// terminator and stuffed lines), none too long. Only past the header section, between
    /// lines, and while no problem was found: anything else goes line by line.
    fn plain_lines(&self, input: &[u8]) -> usize {
        if self.in_headers || !self.line.is_empty() || self.line_flushed || self.problem.is_some() {
            return 0;
        }
        let (mut plain, mut cr) = (0, None);
        for at in memchr::memchr2_iter(b'\r', b'\n', input) {
            if input[at] == b'\r' {
                if cr.is_some() {
                    break;
                }
                cr = Some(at);
                continue;
            }
            // An LF: the line is plain if its only CR is just before it.
            let line = plain..at + 1;
            if cr.map(|cr| cr + 1) != Some(at)
                || line.len() > self.limits.max_line
                || input[plain] == b'.'
            {
                break;
            }
            (plain, cr) = (at + 1, None);
        }
        plain
    }

    /// One raw line ending in LF (the LF included). True if it ends the data.
    fn end_line(&mut self, line: &[u8]) -> bool {
        if !self.chunked && line == b".\r\n" && self.after_crlf && !self.line_flushed {
            return true;
        }
        self.after_crlf = line.ends_with(b"\r\n");
        if std::mem::take(&mut self.line_flushed) {
            self.append(line);
        } else {
            self.complete_line(line);
        }
        false
    }

    fn note(&mut self, problem: DataProblem) {
        // The first problem is the one reported.
        self.problem.get_or_insert(problem);
    }

    fn append(&mut self, bytes: &[u8]) {
        self.size += bytes.len();
        if self.size > self.limits.max_size {
            self.note(DataProblem::TooBig);
            self.body = Vec::new();
        } else if self.problem.is_none() {
            self.body.extend_from_slice(bytes);
        }
    }

    /// One raw line ending in LF (the LF included), from its start.
    fn complete_line(&mut self, raw: &[u8]) {
        let mut line = raw;
        // Dot-unstuffing (RFC 5321 4.5.2); BDAT text is not stuffed (RFC 3030 2).
        if !self.chunked && line.first() == Some(&b'.') {
            line = &line[1..];
        }
        if raw.len() > self.limits.max_line {
            self.note(DataProblem::LineTooLong);
        }
        let content = &line[..line.len() - 1];
        let ends_crlf = content.last() == Some(&b'\r');
        let content = if ends_crlf {
            &content[..content.len() - 1]
        } else {
            content
        };
        let bare_cr = memchr::memchr(b'\r', content).is_some();
        if self.in_headers {
            if content.is_empty() {
                self.in_headers = false;
            } else if content.len() >= 9 && content[..9].eq_ignore_ascii_case(b"received:") {
                self.received_headers += 1;
            }
        }
        if ends_crlf && !bare_cr {
            self.append(line);
            return;
        }
        match self.limits.bare_line_endings {
            BareLineEndings::Reject => {
                self.note(DataProblem::BareLineEnding);
                self.append(line);
            }
            BareLineEndings::Normalize => {
                let mut fixed = Vec::with_capacity(content.len() + 4);
                for &b in content {
                    if b == b'\r' {
                        fixed.extend_from_slice(b"\r\n");
                    } else {
                        fixed.push(b);
                    }
                }
                fixed.extend_from_slice(b"\r\n");
                self.append(&fixed);
            }
        }
    }

    fn finish(&mut self) -> ReceivedData {
        ReceivedData {
            body: std::mem::take(&mut self.body),
            received_headers: self.received_headers,
            problem: self.problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DataLimits = DataLimits {
        max_size: 10_000,
        max_line: 1000,
        bare_line_endings: BareLineEndings::Reject,
    };

    fn receive(input: &[u8], limits: DataLimits) -> (usize, Option<ReceivedData>) {
        DataReceiver::new(limits).push(input)
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_leaves_the_rest() {
        let (used, data) = receive(b"Subject: x\r\n\r\nHello\r\n.\r\nQUIT\r\n", LIMITS);
        let data = data.unwrap();
        assert_eq!(data.body, b"Subject: x\r\n\r\nHello\r\n");
        assert_eq!(data.problem, None);
        assert_eq!(used, 24);
    }

    #[test]
    fn empty_message() {
        let data = receive(b".\r\n", LIMITS).1.unwrap();
        assert!(data.body.is_empty());
    }

    #[test]
    fn unstuffs_leading_dots() {
        let data = receive(b"..hidden\r\n.\r\n...two\r\n.\r\n", LIMITS)
            .1
            .unwrap();
        assert_eq!(data.body, b".hidden\r\n");
        let data = receive(b"a\r\n...two\r\n.\r\n", LIMITS).1.unwrap();
        assert_eq!(data.body, b"a\r\n..two\r\n");
    }

    #[test]
    fn byte_by_byte_is_the_same() {
        let input = b"A: b\r\n\r\n..x\r\nline\r\n.\r\n";
        let mut r = DataReceiver::new(LIMITS);
        let mut done = None;
        for (i, b) in input.iter().enumerate() {
            let (used, d) = r.push(std::slice::from_ref(b));
            assert_eq!(used, 1);
            if d.is_some() {
                assert_eq!(i, input.len() - 1);
                done = d;
            }
        }
        assert_eq!(done.unwrap().body, b"A: b\r\n\r\n.x\r\nline\r\n");
    }

    /// Smuggling: none of these end the data; each one is a bare line ending.
    #[test]
    fn smuggling_sequences_never_end_data() {
        for attempt in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r\n.\nMAIL\r\n",
            b"a\n.\r\nMAIL\r\n",
            b"a\r.\r\nMAIL\r\n",
            b"a\r\n.\r MAIL\r\n",
        ] {
            let (used, data) = receive(attempt, LIMITS);
            assert!(data.is_none(), "{attempt:?} ended DATA");
            assert_eq!(used, attempt.len());
            let mut r = DataReceiver::new(LIMITS);
            r.push(attempt);
            let data = r.push(b".\r\n").1.unwrap();
            assert_eq!(
                data.problem,
                Some(DataProblem::BareLineEnding),
                "{attempt:?}"
            );
        }
    }

    #[test]
    fn normalizes_bare_line_endings_when_configured() {
        let limits = DataLimits {
            bare_line_endings: BareLineEndings::Normalize,
            ..LIMITS
        };
        let mut r = DataReceiver::new(limits);
        // LF . CRLF is not the end even when normalising: only CRLF . CRLF is.
        assert!(r.push(b"a\nb\rc\r\n.\n.\r\n").1.is_none());
        let data = r.push(b"x\r\n.\r\n").1.unwrap();
        assert_eq!(data.problem, None);
        assert_eq!(data.body, b"a\r\nb\r\nc\r\n\r\n\r\nx\r\n");
    }

    #[test]
    fn too_big_is_reported_at_the_end_and_not_kept() {
        let limits = DataLimits {
            max_size: 10,
            ..LIMITS
        };
        let data = receive(b"0123456789\r\nmore\r\n.\r\n", limits).1.unwrap();
        assert_eq!(data.problem, Some(DataProblem::TooBig));
        assert!(data.body.is_empty());
        let data = receive(b"01234567\r\n.\r\n", limits).1.unwrap();
        assert_eq!(data.problem, None, "exactly 10 octets fit");
    }

    #[test]
    fn long_lines() {
        let ok = [vec![b'a'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(receive(&ok, LIMITS).1.unwrap().problem, None);
        let long = [vec![b'a'; 999], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(
            receive(&long, LIMITS).1.unwrap().problem,
            Some(DataProblem::LineTooLong)
        );
        // An endless line arriving in pieces is bounded in memory and still reported.
        let mut r = DataReceiver::new(LIMITS);
        for _ in 0..5 {
            r.push(&[b'x'; 700]);
            assert!(r.line.len() <= LIMITS.max_line + 700);
        }
        let data = r.push(b"\r\n.\r\n").1.unwrap();
        assert_eq!(data.problem, Some(DataProblem::LineTooLong));
    }

    /// The tail of an over-long line is not a line start: `.` CRLF there does not end DATA.
    #[test]
    fn dot_after_an_overlong_line_is_not_the_end() {
        let mut r = DataReceiver::new(LIMITS);
        r.push(&[b'x'; 1001]);
        assert!(r.push(b".").1.is_none());
        assert!(r.push(b"\r\n").1.is_none(), "ended inside a line");
        let data = r.push(b".\r\n").1.unwrap();
        assert_eq!(data.problem, Some(DataProblem::LineTooLong));
    }

    #[test]
    fn counts_received_headers_only_in_the_header_section() {
        let data = receive(
            b"Received: a\r\nRECEIVED: b\r\nX: y\r\n\r\nReceived: body\r\n.\r\n",
            LIMITS,
        )
        .1
        .unwrap();
        assert_eq!(data.received_headers, 2);
    }

    /// Whatever the input and however it is split, pushing it whole, in random pieces or
    /// byte by byte gives the same outcome (whole lines take the fast path, lines across
    /// pushes the other).
    #[test]
    fn any_split_of_any_input_receives_the_same() {
        // A small deterministic generator: dots, CR, LF, letters and header names.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces: [&[u8]; 8] = [
            b".",
            b"\r",
            b"\n",
            b"\r\n",
            b"ab",
            b"Received: x",
            b"\r\n.\r\n",
            b"x",
        ];
        let limits = |bare| DataLimits {
            max_size: 60,
            max_line: 12,
            bare_line_endings: bare,
        };
        // What the session acts on: a message with a problem is refused whatever else it has.
        let outcome = |r: Option<ReceivedData>, used: usize| {
            r.map(|d| match d.problem {
                Some(problem) => (used, Err(problem)),
                None => (used, Ok((d.body, d.received_headers))),
            })
        };
        for round in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..next() % 24 {
                input.extend_from_slice(pieces[(next() % 8) as usize]);
            }
            input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            let bare = if round % 2 == 0 {
                BareLineEndings::Reject
            } else {
                BareLineEndings::Normalize
            };
            let (used, data) = DataReceiver::new(limits(bare)).push(&input);
            let whole = outcome(data, used);
            assert!(whole.is_some(), "CRLF.CRLF ends {input:?}");

            for (how, max_piece) in [("in random pieces", 9), ("byte by byte", 1)] {
                let mut r = DataReceiver::new(limits(bare));
                let (mut offset, mut got) = (0, None);
                while offset < input.len() && got.is_none() {
                    let n = 1 + (next() as usize % (input.len() - offset).min(max_piece));
                    let (used, data) = r.push(&input[offset..offset + n]);
                    offset += used;
                    got = outcome(data, offset);
                }
                let input = String::from_utf8_lossy(&input);
                assert_eq!(got, whole, "{input:?} {how}");
            }
        }
    }
}
