//! The ESMTP server session as a state machine: bytes in (`feed`), outputs out (`poll`).
//!
//! Outputs are replies to send, or actions the I/O layer performs and reports back (recipient
//! verification, authentication, the TLS handshake, storing a message, ETRN). While an action is
//! outstanding the session consumes no input, so pipelined commands (RFC 2920) are answered in
//! order. The session never blocks and does no I/O, so every rule is unit-tested without sockets.

use std::collections::VecDeque;
use std::sync::Arc;

use pochta_mail::Mailbox;

use crate::command::{self, Command, MailFrom, ParseContext, RcptTo};
use crate::data::{DataLimits, DataProblem, DataReceiver, ReceivedData};
use crate::reply::Reply;

mod auth;
mod exchange;

pub use exchange::*;

/// RFC 5321 4.5.3.1.4: command line, including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 4: an AUTH exchange line may be up to 12288 octets.
pub const MAX_AUTH_LINE: usize = 12288;
/// Input is not processed further while this many octets of replies wait to be taken: a
/// client that pipelines without reading makes the session wait, not grow.
pub const MAX_PENDING_OUTPUT: usize = 64 * 1024;

#[derive(Debug)]
enum Phase {
    Command,
    Data(Box<DataReceiver>),
    /// The octets of a BDAT chunk (RFC 3030): `remaining` more to read, then the reply.
    /// With `refusal`, the chunk is read and thrown away and that is the reply.
    Chunk {
        remaining: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword {
        username: String,
    },
}

#[derive(Debug)]
enum Pending {
    Sender(MailFrom),
    Recipient(RcptTo),
    Auth,
    Store,
    Etrn(String),
    Tls,
}

#[derive(Debug, Clone)]
struct Greeting {
    name: String,
    esmtp: bool,
}

#[derive(Debug)]
struct Transaction {
    mail: MailFrom,
    recipients: Vec<AcceptedRecipient>,
    /// The text of the BDAT chunks so far, once the first has come.
    chunks: Option<Box<DataReceiver>>,
}

/// One SMTP session.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    policy: ConnectionPolicy,
    input: Vec<u8>,
    out: VecDeque<Output>,
    phase: Phase,
    pending: Option<Pending>,
    tls: bool,
    greeting: Option<Greeting>,
    user: Option<String>,
    transaction: Option<Transaction>,
    errors: usize,
    commands: usize,
    discarding_line: bool,
    closed: bool,
}

impl Session {
    /// A new session; its first output is the 220 greeting.
    pub fn new(config: Arc<SessionConfig>, policy: ConnectionPolicy) -> Self {
        let greeting = Reply::plain(220, format!("{} ESMTP Pochta", config.hostname));
        let mut session = Session {
            config,
            policy,
            input: Vec::new(),
            out: VecDeque::new(),
            phase: Phase::Command,
            pending: None,
            tls: policy.implicit_tls,
            greeting: None,
            user: None,
            transaction: None,
            errors: 0,
            commands: 0,
            discarding_line: false,
            closed: false,
        };
        session.send(greeting);
        session
    }

    pub fn is_closed(&self) -> bool {
        self.closed && self.out.is_empty()
    }

    /// True while message text is being received (a longer timeout applies).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Chunk { .. })
    }

    /// True between transactions: nothing would be lost by closing now.
    pub fn is_idle(&self) -> bool {
        self.transaction.is_none() && self.pending.is_none() && matches!(self.phase, Phase::Command)
    }

    pub fn tls_active(&self) -> bool {
        self.tls
    }

    pub fn authenticated_user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn close_with(&mut self, reply: Reply) {
        if !self.closed {
            self.closed = true;
            self.input.clear();
            self.write(&reply);
            self.out.push_back(Output::Close);
        }
    }

    /// Octets of input and message text the session holds in memory.
    pub fn buffered_bytes(&self) -> usize {
        let data = match &self.phase {
            Phase::Data(receiver) => receiver.buffered(),
            _ => 0,
        };
        let chunks = self
            .transaction
            .as_ref()
            .and_then(|t| t.chunks.as_ref())
            .map_or(0, |c| c.buffered());
        let data = data + chunks;
        self.input.len() + data
    }

    /// Queues a reply, counting errors of either class: too many and the session ends.
    fn send(&mut self, reply: Reply) {
        if reply.code >= 400 {
            self.errors += 1;
        }
        self.write(&reply);
        if self.errors > self.config.max_errors {
            self.close_with(Reply::new(
                421,
                "4.7.0",
                "Too many errors; closing connection",
            ));
        }
    }

    fn write(&mut self, reply: &Reply) {
        // Replies that follow each other go out in one write.
        if let Some(Output::Send(bytes)) = self.out.back_mut() {
            bytes.extend_from_slice(&reply.to_bytes());
        } else {
            self.out.push_back(Output::Send(reply.to_bytes()));
        }
    }

    /// Replies wait to be taken beyond `MAX_PENDING_OUTPUT`.
    fn output_full(&self) -> bool {
        self.out.len() >= 64
            || matches!(self.out.back(), Some(Output::Send(bytes)) if bytes.len() >= MAX_PENDING_OUTPUT)
    }

    fn process(&mut self) {
        while self.pending.is_none() && !self.closed && !self.output_full() {
            if let Phase::Chunk {
                remaining, refusal, ..
            } = &mut self.phase
            {
                let take = self
                    .input
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= take as u64;
                let done = *remaining == 0;
                // Straight from the input into the message (a refused chunk is dropped).
                if refusal.is_none()
                    && let Some(chunks) = self.transaction.as_mut().and_then(|t| t.chunks.as_mut())
                {
                    chunks.push_chunk(&self.input[..take]);
                }
                self.input.drain(..take);
                if !done {
                    return;
                }
                self.chunk_end();
                continue;
            }
            if let Phase::Data(receiver) = &mut self.phase {
                let (used, done) = receiver.push(&self.input);
                self.input.drain(..used);
                match done {
                    Some(data) => {
                        self.phase = Phase::Command;
                        self.finish_data(data);
                        continue;
                    }
                    None => return,
                }
            }
            let limit = match self.phase {
                Phase::Command => MAX_COMMAND_LINE,
                _ => MAX_AUTH_LINE,
            };
            let Some(nl) = self.input.iter().position(|&b| b == b'\n') else {
                if self.input.len() >= limit {
                    self.input.clear();
                    if !self.discarding_line {
                        self.discarding_line = true;
                        self.line_too_long();
                    }
                }
                return;
            };
            let mut line: Vec<u8> = self.input.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if std::mem::take(&mut self.discarding_line) {
                continue;
            }
            if line.len() + 2 > limit {
                self.line_too_long();
                continue;
            }
            match std::mem::replace(&mut self.phase, Phase::Command) {
                Phase::Command => self.command_line(&line),
                Phase::AuthPlain => self.auth_plain_response(&line),
                Phase::AuthLoginUser => self.auth_login_user(&line),
                Phase::AuthLoginPassword { username } => self.auth_login_password(&line, username),
                Phase::Data(_) | Phase::Chunk { .. } => unreachable!("handled above"),
            }
        }
    }

    fn line_too_long(&mut self) {
        if !matches!(self.phase, Phase::Command) {
            self.phase = Phase::Command;
        }
        self.send(Reply::new(500, "5.5.2", "Line too long"));
    }

    fn parse_context(&self) -> ParseContext<'_> {
        ParseContext {
            esmtp: self.greeting.as_ref().is_some_and(|g| g.esmtp),
            postmaster_domain: self.config.postmaster_domain.as_deref(),
        }
    }

    fn command_line(&mut self, line: &[u8]) {
        self.commands += 1;
        if self.commands > self.config.max_commands {
            return self.close_with(Reply::new(
                421,
                "4.7.0",
                "Too many commands; closing connection",
            ));
        }
        // Another protocol talking to us (e.g. HTTP through a proxy): stop at once.
        let verb = line.split(|&b| b == b' ').next().unwrap_or_default();
        if [&b"GET"[..], b"POST", b"HEAD", b"PUT", b"CONNECT"]
            .iter()
            .any(|v| verb.eq_ignore_ascii_case(v))
        {
            self.close_with(Reply::new(421, "4.7.0", "This is an SMTP server"));
            return;
        }
        match command::parse(line, self.parse_context()) {
            Ok(command) => self.command(command),
            Err(reply) => self.send(reply),
        }
    }

    fn command(&mut self, command: Command) {
        let sequence = |text: &str| Reply::new(503, "5.5.1", text.to_owned());
        match command {
            Command::Ehlo(name) => {
                self.transaction = None;
                self.greeting = Some(Greeting { name: name.clone(), esmtp: true });
                let reply = self.ehlo_reply(&name);
                self.send(reply);
            }
            Command::Helo(name) => {
                self.transaction = None;
                self.greeting = Some(Greeting { name, esmtp: false });
                self.send(Reply::plain(250, self.config.hostname.clone()));
            }
            Command::Mail(mail) => self.mail(mail),
            Command::Rcpt(rcpt) => self.rcpt(rcpt),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Data => match &self.transaction {
                None => self.send(sequence("Need MAIL command")),
                Some(t) if t.recipients.is_empty() => self.send(Reply::new(554, "5.5.1", "No valid recipients")),
                Some(t) if t.chunks.is_some() => self.send(sequence("DATA may not follow BDAT")),
                Some(_) => {
                    self.phase = Phase::Data(Box::new(DataReceiver::new(self.data_limits())));
                    self.send(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
                }
            },
            Command::Rset => {
                self.transaction = None;
                self.send(Reply::new(250, "2.0.0", "Ok"));
            }
            Command::Noop => self.send(Reply::new(250, "2.0.0", "Ok")),
            Command::Quit => self.close_with(Reply::new(221, "2.0.0", "Bye")),
            Command::Vrfy => self.send(Reply::new(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")),
            Command::Expn => self.send(Reply::new(502, "5.5.1", "EXPN not available")),
            Command::Help => self.send(Reply::new(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH ETRN (RFC 5321)")),
            Command::StartTls => {
                if self.tls {
                    self.send(sequence("Already running TLS"));
                } else if !self.policy.starttls_available {
                    self.send(Reply::new(502, "5.5.1", "STARTTLS not available"));
                } else {
                    self.send(Reply::new(220, "2.0.0", "Ready to start TLS"));
                    // Anything pipelined after STARTTLS was sent in plaintext and must not be
                    // read as if it came over TLS (CVE-2011-0411 and kin).
                    self.input.clear();
                    self.pending = Some(Pending::Tls);
                    self.out.push_back(Output::StartTls);
                }
            }
            Command::Auth { mechanism, initial_response } => self.auth(&mechanism, initial_response),
            Command::Etrn { domain, subdomains } => {
                if self.greeting.is_none() {
                    self.send(sequence("Send EHLO/HELO first"));
                } else if self.transaction.is_some() {
                    self.send(sequence("ETRN not permitted during a mail transaction"));
                } else {
                    self.pending = Some(Pending::Etrn(domain.clone()));
                    self.out.push_back(Output::Action(Action::Etrn { domain, subdomains }));
                }
            }
            Command::NotImplemented(verb) => self.send(Reply::new(502, "5.5.1", format!("{verb} not implemented"))),
        }
    }

    fn ehlo_reply(&self, name: &str) -> Reply {
        let mut lines = vec![
            format!("{} greets {name}", self.config.hostname),
            "PIPELINING".into(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "DSN".into(),
            "ETRN".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
        ];
        if self.policy.starttls_available && !self.tls {
            lines.push("STARTTLS".into());
        }
        // RFC 8689 4.1: only where the session itself is protected by TLS.
        if self.tls {
            lines.push("REQUIRETLS".into());
        }
        if self.auth_usable() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        Reply::multiline(250, lines)
    }

    fn auth_usable(&self) -> bool {
        self.policy.auth_enabled && (self.tls || self.policy.plaintext_auth)
    }

    fn mail(&mut self, mail: MailFrom) {
        if self.greeting.is_none() {
            return self.send(Reply::new(503, "5.5.1", "Send EHLO/HELO first"));
        }
        if self.transaction.is_some() {
            return self.send(Reply::new(503, "5.5.1", "Nested MAIL command"));
        }
        if self.policy.auth_required && self.user.is_none() {
            if !self.tls && !self.policy.plaintext_auth {
                return self.send(Reply::new(
                    530,
                    "5.7.0",
                    "Must issue a STARTTLS command first",
                ));
            }
            return self.send(Reply::new(530, "5.7.0", "Authentication required"));
        }
        if mail.requiretls && !self.tls {
            return self.send(Reply::new(
                530,
                "5.7.10",
                "REQUIRETLS needs a TLS session (RFC 8689)",
            ));
        }
        if mail
            .size
            .is_some_and(|s| s > self.config.max_message_size as u64)
        {
            return self.send(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
        }
        if let (Some(user), Some(sender)) = (&self.user, &mail.sender)
            && self.config.enforce_sender_ownership
            && !owns(user, sender)
        {
            return self.send(Reply::new(
                553,
                "5.7.1",
                format!("Sender address rejected: not owned by user {user}"),
            ));
        }
        if self.user.is_some() && mail.sender.is_none() && !self.config.submission_null_sender {
            return self.send(Reply::new(
                553,
                "5.7.1",
                "Sender address rejected: the null sender is not allowed for submission",
            ));
        }
        if let Some(user) = &self.user {
            let user = user.clone();
            self.pending = Some(Pending::Sender(mail));
            self.out
                .push_back(Output::Action(Action::VerifySender { user }));
            return;
        }
        self.start_transaction(mail);
    }

    fn start_transaction(&mut self, mail: MailFrom) {
        self.transaction = Some(Transaction {
            mail,
            recipients: Vec::new(),
            chunks: None,
        });
        self.send(Reply::new(250, "2.1.0", "Ok"));
    }

    /// The I/O layer's decision on the authenticated user's sending rate.
    pub fn sender_verdict(&mut self, verdict: SenderVerdict) {
        let Some(Pending::Sender(mail)) = self.pending.take() else {
            debug_assert!(false, "no sender is being verified");
            return;
        };
        match verdict {
            SenderVerdict::Accept => self.start_transaction(mail),
            SenderVerdict::RateLimited(why) => self.send(Reply::new(
                450,
                "4.7.1",
                format!("Sending rate limit exceeded: {why}; try again later"),
            )),
            SenderVerdict::TemporaryFailure => self.send(Reply::new(
                451,
                "4.3.0",
                "Temporary failure checking the sending rate; try again later",
            )),
        }
    }

    fn rcpt(&mut self, rcpt: RcptTo) {
        let Some(transaction) = &self.transaction else {
            return self.send(Reply::new(503, "5.5.1", "Need MAIL before RCPT"));
        };
        let max_recipients = if self.user.is_some() {
            self.config
                .submission_max_recipients
                .min(self.config.max_recipients)
        } else {
            self.config.max_recipients
        };
        if transaction.recipients.len() >= max_recipients {
            return self.send(Reply::new(452, "4.5.3", "Too many recipients"));
        }
        if rcpt.recipient.is_utf8() && !transaction.mail.smtputf8 {
            return self.send(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address requires SMTPUTF8",
            ));
        }
        let recipient = rcpt.recipient.clone();
        self.pending = Some(Pending::Recipient(rcpt));
        self.out.push_back(Output::Action(Action::VerifyRecipient {
            recipient,
            authenticated: self.user.is_some(),
        }));
    }

    /// The I/O layer's decision on the outstanding recipient.
    pub fn recipient_verdict(&mut self, verdict: RecipientVerdict) {
        let Some(Pending::Recipient(rcpt)) = self.pending.take() else {
            debug_assert!(false, "no recipient is being verified");
            return;
        };
        let reply = match verdict {
            RecipientVerdict::Accept(disposition) => {
                if let Some(t) = &mut self.transaction {
                    // A repeated recipient is accepted once (one delivery, one DSN).
                    if !t
                        .recipients
                        .iter()
                        .any(|r| r.rcpt.recipient.is_same(&rcpt.recipient))
                    {
                        t.recipients.push(AcceptedRecipient { rcpt, disposition });
                    }
                }
                Reply::new(250, "2.1.5", "Ok")
            }
            RecipientVerdict::NoSuchUser => {
                Reply::new(550, "5.1.1", "Recipient address rejected: no such user")
            }
            RecipientVerdict::Disabled => Reply::new(550, "5.2.1", "Recipient mailbox is disabled"),
            RecipientVerdict::RelayDenied => Reply::new(554, "5.7.1", "Relay access denied"),
            RecipientVerdict::DomainBacklogFull => Reply::new(
                452,
                "4.3.1",
                "Too much mail is waiting for this domain; try again later",
            ),
            // RFC 3463 X.2.2; temporary, as the owner may make room (RFC 5321 4.5.3.1.10).
            RecipientVerdict::MailboxFull => {
                Reply::new(452, "4.2.2", "Recipient mailbox is full; try again later")
            }
            RecipientVerdict::TemporaryFailure => Reply::new(
                451,
                "4.3.0",
                "Temporary failure verifying the recipient; try again later",
            ),
        };
        self.send(reply);
    }

    /// BDAT (RFC 3030 2): the chunk's octets are read whatever the answer, which comes after
    /// them; a refused chunk is thrown away.
    fn bdat(&mut self, size: u64, last: bool) {
        let refusal = match &self.transaction {
            None => Some(Reply::new(503, "5.5.1", "Need MAIL command")),
            Some(t) if t.recipients.is_empty() => {
                Some(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => None,
        };
        if refusal.is_none() {
            let limits = self.data_limits();
            let transaction = self.transaction.as_mut().expect("checked above");
            transaction
                .chunks
                .get_or_insert_with(|| Box::new(DataReceiver::chunked(limits)));
        }
        self.phase = Phase::Chunk {
            remaining: size,
            last,
            refusal,
        };
    }

    fn data_limits(&self) -> DataLimits {
        DataLimits {
            max_size: self.config.max_message_size,
            max_line: 1000,
            bare_line_endings: self.config.bare_line_endings,
        }
    }

    /// The whole chunk is in: its reply, or with LAST the message.
    fn chunk_end(&mut self) {
        let Phase::Chunk { last, refusal, .. } = std::mem::replace(&mut self.phase, Phase::Command)
        else {
            unreachable!("only after a chunk")
        };
        if let Some(reply) = refusal {
            return self.send(reply);
        }
        let chunks = self
            .transaction
            .as_mut()
            .and_then(|t| t.chunks.as_mut())
            .expect("a chunk of a transaction");
        // Too big already: the transaction ends here, not after more chunks.
        if chunks.problem() == Some(DataProblem::TooBig) || last {
            let data = chunks.finish_chunks();
            return self.finish_data(data);
        }
        self.send(Reply::new(250, "2.0.0", "Chunk received"));
    }

    fn finish_data(&mut self, data: ReceivedData) {
        let transaction = self
            .transaction
            .take()
            .expect("DATA only with a transaction");
        let reply =
            match data.problem {
                Some(DataProblem::TooBig) => Some(Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                )),
                Some(DataProblem::LineTooLong) => Some(Reply::new(
                    500,
                    "5.5.2",
                    "Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)",
                )),
                Some(DataProblem::BareLineEnding) => Some(Reply::new(
                    550,
                    "5.6.0",
                    "Message has a bare LF or CR; lines must end with CRLF (RFC 5321 2.3.8)",
                )),
                None if data.received_headers > self.config.max_received_headers => Some(
                    Reply::new(554, "5.4.6", "Too many Received headers: mail loop?"),
                ),
                None => None,
            };
        if let Some(reply) = reply {
            return self.send(reply);
        }
        let greeting = self.greeting.clone().expect("DATA only after EHLO/HELO");
        self.pending = Some(Pending::Store);
        self.out
            .push_back(Output::Action(Action::StoreMessage(Box::new(Message {
                helo: greeting.name,
                esmtp: greeting.esmtp,
                tls: self.tls,
                authenticated: self.user.clone(),
                mail: transaction.mail,
                recipients: transaction.recipients,
                body: data.body,
            }))));
    }

    /// The I/O layer committed the message (or could not).
    pub fn store_result(&mut self, result: StoreResult) {
        if !matches!(self.pending.take(), Some(Pending::Store)) {
            debug_assert!(false, "no message is being stored");
            return;
        }
        self.send(match result {
            StoreResult::Stored { queue_id } => {
                Reply::new(250, "2.0.0", format!("Ok: queued as {queue_id}"))
            }
            StoreResult::TemporaryFailure => Reply::new(
                451,
                "4.3.0",
                "Temporary failure storing the message; try again later",
            ),
            StoreResult::PolicyRejected { reason } => Reply::new(550, "5.7.1", reason),
        });
    }

    /// The queue's answer to ETRN (RFC 1985 5).
    pub fn etrn_result(&mut self, result: EtrnResult) {
        let Some(Pending::Etrn(domain)) = self.pending.take() else {
            debug_assert!(false, "no ETRN is pending");
            return;
        };
        self.send(match result {
            EtrnResult::Started { messages } => Reply::new(
                253,
                "2.0.0",
                format!("OK, {messages} pending messages for node {domain} started"),
            ),
            EtrnResult::NothingQueued => Reply::new(
                251,
                "2.0.0",
                format!("OK, no messages waiting for node {domain}"),
            ),
            EtrnResult::NotAllowed => Reply::new(
                459,
                "4.7.1",
                format!("Node {domain} not allowed: not a domain held here"),
            ),
            EtrnResult::Unavailable => Reply::new(
                458,
                "4.3.0",
                format!("Unable to queue messages for node {domain}"),
            ),
            EtrnResult::RateLimited => Reply::new(
                458,
                "4.7.0",
                format!(
                    "Unable to queue messages for node {domain}: too many ETRN requests, try later"
                ),
            ),
        });
    }
}

/// Whether `user` (an account address) may send as `sender`: the same mailbox, local part
/// compared case-insensitively (as accounts are).
fn owns(user: &str, sender: &Mailbox) -> bool {
    Mailbox::parse(user).is_ok_and(|account| account.is_same(sender))
}

impl pochta_session::Session for Session {
    type Action = Action;

    /// Bytes read from the client.
    fn feed(&mut self, bytes: &[u8]) {
        if !self.closed {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The next output, or None when the session needs more input or an action's result.
    fn poll(&mut self) -> Option<Output> {
        if self.out.is_empty() && self.pending.is_none() && !self.closed {
            self.process();
        }
        self.out.pop_front()
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 4.2).
    fn tls_established(&mut self) {
        if matches!(self.pending, Some(Pending::Tls)) {
            self.pending = None;
        }
        self.tls = true;
        self.greeting = None;
        self.user = None;
        self.transaction = None;
        self.input.clear();
    }

    /// The client was silent too long (RFC 5321 4.5.3.2).
    fn timed_out(&mut self) {
        self.close_with(Reply::new(
            421,
            "4.4.2",
            format!("{} Timeout; closing connection", self.config.hostname),
        ));
    }

    /// The server is shutting down: say so and close (call when idle or out of time).
    fn shutting_down(&mut self) {
        self.close_with(Reply::new(
            421,
            "4.3.2",
            format!("{} Service shutting down", self.config.hostname),
        ));
    }

    fn interruptible(&self) -> bool {
        self.is_idle()
    }

    fn in_data(&self) -> bool {
        Session::in_data(self)
    }

    fn buffered_bytes(&self) -> usize {
        Session::buffered_bytes(self)
    }
}
