//! The SMTP client side as a state machine: one server, one message at a time with its
//! recipients, and further messages over the same connection.
//!
//! Replies in (`feed`), outputs out (`poll`): commands to send, the STARTTLS handshake, the
//! message text, and finally the outcome of every recipient. EHLO falls back to HELO;
//! STARTTLS is used when offered (opportunistic) or demanded; PIPELINING sends MAIL, the RCPTs
//! and DATA in one write; with CHUNKING (RFC 3030) the text goes as it is in one `BDAT n LAST`
//! once a recipient is accepted, instead of DATA and dot-stuffing; SIZE is declared and
//! honoured; DSN parameters (RFC 3461) are passed on only when the server offers DSN. After a message, the caller either `quit`s or, when the
//! session is `reusable`, sends the `next_message` (after an RSET that also probes whether the
//! idle connection still works: if it does not, the session is `stale` and nothing was sent).

use std::collections::VecDeque;

use pochta_mail::{Body, Mailbox, Notify, Orcpt, Ret, TlsPolicy, xtext_encode};

/// A reply from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    /// The enhanced status code when the reply has one, e.g. `5.1.1`.
    pub status: Option<String>,
    /// All lines joined with spaces, codes stripped.
    pub text: String,
}

impl ServerReply {
    /// `550 5.1.1 text`, as a Diagnostic-Code would show it.
    pub fn to_diagnostic(&self) -> String {
        match &self.status {
            Some(s) => format!("{} {} {}", self.code, s, self.text),
            None => format!("{} {}", self.code, self.text),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutgoingRecipient {
    pub address: Mailbox,
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

/// The envelope to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub helo_name: String,
    /// None for `<>`.
    pub reverse_path: Option<Mailbox>,
    pub envid: Option<String>,
    pub ret: Option<Ret>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub size: usize,
    pub recipients: Vec<OutgoingRecipient>,
    pub tls: TlsPolicy,
    /// REQUIRETLS (RFC 8689): sent only over TLS to a server that offers REQUIRETLS, and
    /// passed on; otherwise every recipient fails (5.7.10). The caller sets `tls` to verify.
    pub requiretls: bool,
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// Accepted with the message; `dsn` when the server offered DSN (so it reports onward:
    /// `delivered`), otherwise `relayed` (RFC 3461 5.2.2).
    Accepted { reply: ServerReply, dsn: bool },
    /// 5xx: final.
    Rejected(ServerReply),
    /// 4xx, or the session ended early: try again later.
    Deferred(ServerReply),
}

#[derive(Debug)]
pub enum ClientOutput {
    Send(Vec<u8>),
    /// Do the TLS handshake, then call `tls_established` (or give up on failure).
    StartTls,
    /// Send the message text, dot-stuffed, and the final `.` CRLF.
    SendMessage,
    /// Send `BDAT <length> LAST` CRLF and the message text as it is (RFC 3030).
    SendMessageChunked,
    /// Every recipient's outcome, in order. Then `quit` (or `next_message` if `reusable`).
    Done(Vec<RecipientOutcome>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Reset,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(usize),
    Data,
    Message,
}

#[derive(Debug, Default)]
struct Extensions {
    pipelining: bool,
    size: Option<u64>,
    starttls: bool,
    dsn: bool,
    eight_bit: bool,
    smtputf8: bool,
    chunking: bool,
    requiretls: bool,
}

impl Extensions {
    /// What the lines of a 250 reply to EHLO offer (the first line is the greeting).
    fn from_ehlo(lines: &[String]) -> Self {
        let mut ext = Extensions::default();
        for line in lines.iter().skip(1) {
            let keyword = line.get(4..).unwrap_or("").to_ascii_uppercase();
            let mut words = keyword.split_whitespace();
            match words.next() {
                Some("PIPELINING") => ext.pipelining = true,
                Some("SIZE") => {
                    ext.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0)
                }
                Some("STARTTLS") => ext.starttls = true,
                Some("DSN") => ext.dsn = true,
                Some("8BITMIME") => ext.eight_bit = true,
                Some("SMTPUTF8") => ext.smtputf8 = true,
                Some("CHUNKING") => ext.chunking = true,
                Some("REQUIRETLS") => ext.requiretls = true,
                _ => {}
            }
        }
        ext
    }
}

#[derive(Debug)]
pub struct ClientSession {
    out: Outgoing,
    input: Vec<u8>,
    lines: Vec<String>,
    expect: VecDeque<Expect>,
    outputs: VecDeque<ClientOutput>,
    ext: Extensions,
    tls: bool,
    outcomes: Vec<Option<RecipientOutcome>>,
    accepted_any: bool,
    finished: bool,
    /// Greeted, hello and TLS done: transactions may begin.
    ready: bool,
    /// The connection's state is unknown (lost, 421, replies still pending): not reusable.
    broken: bool,
    /// The RSET before a further message failed: nothing of it was sent.
    stale: bool,
    /// See `starttls_missing`.
    starttls_missing: bool,
}

/// The longest reply line accepted (RFC 5321 4.5.3.1.5 asks servers for at most 512 octets;
/// some send longer texts, so this is lenient, and still bounded).
pub const MAX_REPLY_LINE: usize = 2048;
/// The most lines one reply may have.
pub const MAX_REPLY_LINES: usize = 100;
/// A reply's text is cut to this many characters (it is stored and reported).
pub const MAX_REPLY_TEXT: usize = 1000;

/// The code of a reply line (RFC 5321 4.2: three digits, the first 2-5, the second 0-5,
/// then a space, a hyphen or the end of the line), or None if the line is not a reply line.
fn reply_code(line: &str) -> Option<u16> {
    let b = line.as_bytes();
    let valid = b.len() >= 3
        && (b'2'..=b'5').contains(&b[0])
        && (b'0'..=b'5').contains(&b[1])
        && b[2].is_ascii_digit()
        && matches!(b.get(3), None | Some(b' ' | b'-'));
    valid.then(|| {
        u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0')
    })
}

/// An enhanced status code (RFC 3463 2): class 2, 4 or 5, then two numbers of 1-3 digits.
fn is_status_code(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A reply's lines (each a valid reply line with the same code) as one `ServerReply`. The
/// text is the remote's words, so it is cleaned before anything stores or reports it: control
/// characters become spaces and it is cut to `MAX_REPLY_TEXT` characters.
fn parse_reply(code: u16, lines: &[String]) -> ServerReply {
    let texts: Vec<&str> = lines.iter().map(|l| l.get(4..).unwrap_or("")).collect();
    let first = texts.first().copied().unwrap_or("");
    let status = first
        .split_whitespace()
        .next()
        .filter(|s| is_status_code(s))
        .map(str::to_owned);
    let mut text = texts.join(" ");
    if let Some(s) = &status {
        text = text
            .strip_prefix(s.as_str())
            .unwrap_or(&text)
            .trim_start()
            .to_owned();
    }
    let text = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REPLY_TEXT)
        .collect();
    ServerReply { code, status, text }
}

impl ClientSession {
    pub fn new(out: Outgoing) -> Self {
        let n = out.recipients.len();
        ClientSession {
            out,
            input: Vec::new(),
            lines: Vec::new(),
            expect: VecDeque::from([Expect::Greeting]),
            outputs: VecDeque::new(),
            ext: Extensions::default(),
            tls: false,
            outcomes: vec![None; n],
            accepted_any: false,
            finished: false,
            ready: false,
            broken: false,
            stale: false,
            starttls_missing: false,
        }
    }

    /// After `Done`: the server is between transactions in a known state, so the connection
    /// can carry another message.
    pub fn reusable(&self) -> bool {
        self.finished
            && self.ready
            && !self.broken
            && self.expect.is_empty()
            && self.input.is_empty()
            && self.lines.is_empty()
    }

    /// After `Done` of a further message: the idle connection no longer worked (the RSET
    /// failed), nothing of this message was sent, and it should go over a new connection.
    pub fn stale(&self) -> bool {
        self.stale
    }

    /// Starts `out` on this connection (only when `reusable`): RSET (RFC 5321 4.1.1.5), then
    /// the transaction.
    pub fn next_message(&mut self, out: Outgoing) {
        debug_assert!(self.reusable());
        self.outcomes = vec![None; out.recipients.len()];
        self.out = out;
        self.accepted_any = false;
        self.finished = false;
        self.send(Expect::Reset, "RSET\r\n");
    }

    /// Ends the session: QUIT is the next output to send.
    pub fn quit(&mut self) {
        self.broken = true;
        self.push_bytes(b"QUIT\r\n");
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    pub fn poll(&mut self) -> Option<ClientOutput> {
        if self.outputs.is_empty() && !self.finished {
            self.process();
        }
        self.outputs.pop_front()
    }

    /// The connection broke or timed out: every recipient without an outcome is deferred.
    pub fn connection_lost(&mut self, why: &str) {
        if self.expect.front() == Some(&Expect::Reset) {
            self.stale = true;
        }
        self.broken = true;
        let reply = ServerReply {
            code: 421,
            status: Some("4.4.2".into()),
            text: why.to_owned(),
        };
        self.finish_all(RecipientOutcome::Deferred(reply));
    }

    pub fn tls_established(&mut self) {
        self.tls = true;
        self.input.clear();
        self.send(Expect::Ehlo, &format!("EHLO {}\r\n", self.out.helo_name));
    }

    /// The STARTTLS policy of the current message.
    pub fn tls_policy(&self) -> TlsPolicy {
        self.out.tls
    }

    /// The server answered the greeting without offering STARTTLS (or refused it), and no
    /// TLS is in use: what TLS reporting counts as `starttls-not-supported` (RFC 8460).
    pub fn starttls_missing(&self) -> bool {
        self.starttls_missing && !self.tls
    }

    /// The message text went out; the final reply is awaited.
    pub fn message_sent(&mut self) {
        self.expect.push_back(Expect::Message);
    }

    /// Sends a command whose reply will be `expect`.
    fn send(&mut self, expect: Expect, line: &str) {
        self.expect.push_back(expect);
        self.push_bytes(line.as_bytes());
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        if let Some(ClientOutput::Send(buf)) = self.outputs.back_mut() {
            buf.extend_from_slice(bytes);
        } else {
            self.outputs.push_back(ClientOutput::Send(bytes.to_vec()));
        }
    }

    fn process(&mut self) {
        while self.outputs.is_empty() && !self.finished {
            let Some(nl) = memchr::memchr(b'\n', &self.input) else {
                if self.input.len() > MAX_REPLY_LINE {
                    self.protocol_error("a reply line longer than 2048 octets");
                }
                return;
            };
            if nl >= MAX_REPLY_LINE {
                return self.protocol_error("a reply line longer than 2048 octets");
            }
            let raw: Vec<u8> = self.input.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            let Some(code) = reply_code(&line) else {
                return self.protocol_error("a malformed reply line");
            };
            if self
                .lines
                .first()
                .and_then(|l| reply_code(l))
                .is_some_and(|first| first != code)
            {
                return self.protocol_error("a multi-line reply with different codes");
            }
            let last = line.as_bytes().get(3) != Some(&b'-');
            self.lines.push(line);
            if self.lines.len() > MAX_REPLY_LINES {
                return self.protocol_error("a reply of more than 100 lines");
            }
            if last {
                let lines = std::mem::take(&mut self.lines);
                let reply = parse_reply(code, &lines);
                match self.expect.pop_front() {
                    Some(expect) => self.reply(expect, reply, &lines),
                    None => self.connection_lost("unexpected reply"),
                }
            }
        }
    }

    /// The server broke the protocol: the connection is given up and every recipient without
    /// an outcome is deferred.
    fn protocol_error(&mut self, what: &str) {
        if self.expect.front() == Some(&Expect::Reset) {
            self.stale = true;
        }
        self.broken = true;
        self.input.clear();
        self.lines.clear();
        let reply = ServerReply {
            code: 421,
            status: Some("4.5.0".into()),
            text: format!("protocol error: the server sent {what}"),
        };
        self.finish_all(RecipientOutcome::Deferred(reply));
    }

    /// Ends the transaction: every recipient still without an outcome gets `outcome`.
    fn finish_all(&mut self, outcome: RecipientOutcome) {
        for o in self.outcomes.iter_mut().filter(|o| o.is_none()) {
            *o = Some(outcome.clone());
        }
        self.finish();
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            let outcomes = self
                .outcomes
                .iter()
                .map(|o| o.clone().expect("every recipient has an outcome"))
                .collect();
            self.outputs.push_back(ClientOutput::Done(outcomes));
        }
    }

    /// A failure of the whole transaction: 5xx rejects, anything else defers.
    fn transaction_failed(&mut self, reply: ServerReply) {
        let outcome = if reply.code >= 500 {
            RecipientOutcome::Rejected(reply)
        } else {
            RecipientOutcome::Deferred(reply)
        };
        self.finish_all(outcome);
    }

    fn reply(&mut self, expect: Expect, reply: ServerReply, lines: &[String]) {
        // 421: the server is closing the connection (RFC 5321 3.8).
        if reply.code == 421 {
            self.broken = true;
        }
        match expect {
            Expect::Greeting if reply.code == 220 => {
                self.send(Expect::Ehlo, &format!("EHLO {}\r\n", self.out.helo_name))
            }
            Expect::Greeting => self.transaction_failed(reply),
            Expect::Reset if reply.code == 250 => self.begin_transaction(),
            Expect::Reset => {
                self.stale = true;
                self.broken = true;
                self.transaction_failed(defer_reply(reply));
            }
            Expect::Ehlo if reply.code == 250 => {
                self.ext = Extensions::from_ehlo(lines);
                self.after_hello();
            }
            Expect::Ehlo if reply.code >= 500 && !self.tls => {
                self.send(Expect::Helo, &format!("HELO {}\r\n", self.out.helo_name))
            }
            Expect::Ehlo => self.transaction_failed(reply),
            Expect::Helo if reply.code == 250 => {
                self.ext = Extensions::default();
                self.after_hello();
            }
            Expect::Helo => self.transaction_failed(reply),
            Expect::StartTls if reply.code == 220 => self.outputs.push_back(ClientOutput::StartTls),
            Expect::StartTls if self.out.tls.requires_tls() => {
                self.starttls_missing = true;
                self.transaction_failed(defer_reply(reply))
            }
            Expect::StartTls => {
                self.starttls_missing = true;
                self.begin_transaction()
            }
            Expect::Mail if reply.code != 250 => {
                if !self.expect.is_empty() {
                    // Pipelined RCPT and DATA replies are still to come.
                    self.expect.clear();
                    self.broken = true;
                }
                self.transaction_failed(reply);
            }
            Expect::Mail => {
                if !self.ext.pipelining {
                    self.send_rcpt(0);
                }
            }
            Expect::Rcpt(i) => self.rcpt_reply(i, reply),
            Expect::Data if reply.code == 354 && self.accepted_any => {
                self.outputs.push_back(ClientOutput::SendMessage)
            }
            Expect::Data if reply.code == 354 => {
                // Pipelined DATA was accepted although no recipient was: send an empty text
                // (whose reply is not awaited).
                self.push_bytes(b".\r\n");
                self.broken = true;
                self.finish_all(no_recipient_accepted());
            }
            Expect::Data if !self.accepted_any => self.finish_all(no_recipient_accepted()),
            Expect::Data => self.transaction_failed(reply),
            Expect::Message if reply.code == 250 => {
                let dsn = self.ext.dsn;
                self.finish_all(RecipientOutcome::Accepted { reply, dsn });
            }
            Expect::Message => self.transaction_failed(reply),
        }
    }

    /// A recipient's own reply; without PIPELINING, the next command.
    fn rcpt_reply(&mut self, i: usize, reply: ServerReply) {
        if reply.code == 250 || reply.code == 251 {
            self.accepted_any = true;
        } else if reply.code >= 500 {
            self.outcomes[i] = Some(RecipientOutcome::Rejected(reply));
        } else {
            self.outcomes[i] = Some(RecipientOutcome::Deferred(reply));
        }
        let last = i + 1 == self.out.recipients.len();
        if !self.ext.pipelining && !last {
            self.send_rcpt(i + 1);
        } else if last && self.ext.chunking {
            // BDAT is not pipelined: its text would be sent even if no recipient took it.
            if self.accepted_any {
                self.outputs.push_back(ClientOutput::SendMessageChunked);
            } else {
                self.finish_all(no_recipient_accepted());
            }
        } else if last && !self.ext.pipelining {
            if self.accepted_any {
                self.send(Expect::Data, "DATA\r\n");
            } else {
                self.finish_all(no_recipient_accepted());
            }
        }
    }

    fn after_hello(&mut self) {
        let policy = self.out.tls;
        if !self.tls && !self.ext.starttls {
            self.starttls_missing = true;
        }
        if !self.tls && self.ext.starttls && policy != TlsPolicy::Never {
            return self.send(Expect::StartTls, "STARTTLS\r\n");
        }
        if !self.tls && self.out.requiretls {
            return self.finish_all(RecipientOutcome::Rejected(requiretls_unmet(
                "the server does not offer STARTTLS",
            )));
        }
        if !self.tls && policy.requires_tls() {
            return self.finish_all(RecipientOutcome::Deferred(ServerReply {
                code: 421,
                status: Some("4.7.10".into()),
                text: "TLS is required for this destination but the server does not offer STARTTLS"
                    .into(),
            }));
        }
        self.begin_transaction();
    }

    fn begin_transaction(&mut self) {
        self.ready = true;
        if let Some(max) = self.ext.size
            && self.out.size as u64 > max
        {
            return self.finish_all(RecipientOutcome::Rejected(ServerReply {
                code: 552,
                status: Some("5.3.4".into()),
                text: format!(
                    "message size {} exceeds the server's limit of {max}",
                    self.out.size
                ),
            }));
        }
        if self.out.requiretls && !self.ext.requiretls {
            return self.finish_all(RecipientOutcome::Rejected(requiretls_unmet(
                "the server does not offer REQUIRETLS",
            )));
        }
        if self.out.smtputf8 && !self.ext.smtputf8 {
            return self.finish_all(RecipientOutcome::Rejected(ServerReply {
                code: 553,
                status: Some("5.6.7".into()),
                text: "the message needs SMTPUTF8, which the server does not offer".into(),
            }));
        }
        let mut mail = match &self.out.reverse_path {
            Some(sender) => format!("MAIL FROM:<{sender}>"),
            None => "MAIL FROM:<>".to_owned(),
        };
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", self.out.size));
        }
        if self.out.body == Some(Body::EightBitMime) && self.ext.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if self.out.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.out.requiretls {
            mail.push_str(" REQUIRETLS");
        }
        if self.ext.dsn {
            if let Some(ret) = self.out.ret {
                mail.push_str(&format!(" RET={ret}"));
            }
            if let Some(envid) = &self.out.envid {
                mail.push_str(&format!(" ENVID={}", xtext_encode(envid)));
            }
        }
        mail.push_str("\r\n");
        self.send(Expect::Mail, &mail);
        if self.ext.pipelining {
            for i in 0..self.out.recipients.len() {
                self.send_rcpt(i);
            }
            if !self.ext.chunking {
                self.send(Expect::Data, "DATA\r\n");
            }
        }
    }

    fn send_rcpt(&mut self, i: usize) {
        let r = &self.out.recipients[i];
        let mut line = format!("RCPT TO:<{}>", r.address);
        if self.ext.dsn {
            if let Some(n) = r.notify {
                line.push_str(&format!(" NOTIFY={n}"));
            }
            if let Some(orcpt) = &r.orcpt {
                line.push_str(&format!(" ORCPT={orcpt}"));
            }
        }
        line.push_str("\r\n");
        self.send(Expect::Rcpt(i), &line);
    }
}

/// The failure of a REQUIRETLS message that cannot go on with its protection (RFC 8689 4.2.1).
fn requiretls_unmet(why: &str) -> ServerReply {
    ServerReply {
        code: 550,
        status: Some("5.7.10".into()),
        text: format!("the message requires TLS on every hop (REQUIRETLS) and {why}"),
    }
}

/// What `SendMessage` sends: the message text dot-stuffed (RFC 5321 4.5.2), a CRLF if it does
/// not end with one, and the final `.` CRLF.
pub fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 5);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The outcome of recipients when the server accepted none of the message's recipients.
fn no_recipient_accepted() -> RecipientOutcome {
    RecipientOutcome::Deferred(ServerReply {
        code: 451,
        status: None,
        text: "no recipient accepted".into(),
    })
}

/// A negative reply turned temporary (for policy deferrals).
fn defer_reply(mut reply: ServerReply) -> ServerReply {
    if reply.code >= 500 {
        reply.code = 451;
    }
    reply
}
