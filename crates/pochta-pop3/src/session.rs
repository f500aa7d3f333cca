//! The POP3 server session (RFC 1939 3-6).
//!
//! AUTHORIZATION → (USER/PASS or AUTH PLAIN, then the maildrop is locked and its listing taken)
//! → TRANSACTION → QUIT → UPDATE: only then are the messages marked with DELE removed. The
//! session works on the listing taken at login; deletions are only marks until QUIT.

use std::collections::VecDeque;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// RFC 2449 4: a command line is at most 255 octets, CRLF included.
pub const MAX_COMMAND_LINE: usize = 255;
/// SASL responses can be longer (RFC 5034 4).
pub const MAX_SASL_LINE: usize = 4096;
/// Input is not processed further while this many octets of responses wait to be taken.
pub const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// What the listener knows about one connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// STLS may be offered (a certificate is configured).
    pub stls_available: bool,
    /// TLS from the first byte (port 995).
    pub implicit_tls: bool,
    /// Passwords may be sent without TLS (e.g. on loopback).
    pub plaintext_auth: bool,
    /// Error replies before the session is closed.
    pub max_errors: usize,
    /// Commands before the session is closed (a loop of NOOP or LIST gets no more of the
    /// server's time).
    pub max_commands: usize,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// One message of the maildrop listing taken at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub uid: String,
    /// Octets RETR sends before dot-stuffing.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginResult {
    /// Credentials good, maildrop locked, this is its listing.
    Ok(Vec<Entry>),
    BadCredentials,
    /// Another session holds the maildrop (RFC 2449 [IN-USE]).
    InUse,
    /// Too many failures from this client.
    RateLimited,
    TemporaryFailure,
}

/// What the session wants done next; see `pochta_session`.
pub type Output = pochta_session::Output<Action>;

/// What the session asks of the world; each is answered through the method it names.
#[derive(Debug)]
pub enum Action {
    /// Check the credentials, lock the maildrop and list it; answer with `login_result`.
    Login(Credentials),
    /// Send `+OK` and the message (`DotStuffer`), or report it missing; then `retrieved`.
    Retrieve {
        entry_id: i64,
        size: u64,
        top_lines: Option<u64>,
    },
    /// QUIT in TRANSACTION: delete these entries and unlock; answer with `committed`.
    Commit { delete: Vec<i64> },
}

#[derive(Debug)]
enum State {
    Authorization {
        user: Option<String>,
    },
    AuthPlain,
    Transaction {
        entries: Vec<Entry>,
        deleted: Vec<bool>,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Pending {
    Tls,
    Login,
    Retrieve,
    Commit,
}

#[derive(Debug)]
pub struct Session {
    policy: Policy,
    state: State,
    tls: bool,
    input: Vec<u8>,
    out: VecDeque<Output>,
    pending: Option<Pending>,
    errors: usize,
    commands: usize,
    discarding_line: bool,
    closed: bool,
}

fn ok(text: &str) -> Vec<u8> {
    format!("+OK {text}\r\n").into_bytes()
}

fn err(text: &str) -> Vec<u8> {
    format!("-ERR {text}\r\n").into_bytes()
}

/// The status line before a RETR or TOP response.
pub fn retrieve_ok(size: u64) -> Vec<u8> {
    ok(&format!("{size} octets"))
}

impl Session {
    pub fn new(policy: Policy) -> Self {
        let mut session = Session {
            policy,
            state: State::Authorization { user: None },
            tls: policy.implicit_tls,
            input: Vec::new(),
            out: VecDeque::new(),
            pending: None,
            errors: 0,
            commands: 0,
            discarding_line: false,
            closed: false,
        };
        session.write(ok("Pochta POP3 server ready"));
        session
    }

    pub fn is_closed(&self) -> bool {
        self.closed && self.out.is_empty()
    }

    /// Logged in: the I/O layer holds (and renews) the maildrop lock, and must release it if
    /// the session ends any way other than a successful commit.
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Transaction { .. })
    }

    pub fn tls_active(&self) -> bool {
        self.tls
    }

    fn write(&mut self, bytes: Vec<u8>) {
        if let Some(Output::Send(buf)) = self.out.back_mut() {
            buf.extend_from_slice(&bytes);
        } else {
            self.out.push_back(Output::Send(bytes));
        }
    }

    fn reply_err(&mut self, text: &str) {
        self.errors += 1;
        self.write(err(text));
        if self.errors > self.policy.max_errors {
            self.close_with(err("Too many errors; closing connection"));
        }
    }

    fn close_with(&mut self, bytes: Vec<u8>) {
        if !self.closed {
            self.closed = true;
            self.input.clear();
            self.write(bytes);
            self.out.push_back(Output::Close);
        }
    }

    fn login_allowed(&self) -> bool {
        self.tls || self.policy.plaintext_auth
    }

    /// Responses wait to be taken beyond `MAX_PENDING_OUTPUT`.
    fn output_full(&self) -> bool {
        matches!(self.out.back(), Some(Output::Send(bytes)) if bytes.len() >= MAX_PENDING_OUTPUT)
    }

    fn process(&mut self) {
        while self.pending.is_none() && !self.closed && !self.output_full() {
            let limit = if matches!(self.state, State::AuthPlain) {
                MAX_SASL_LINE
            } else {
                MAX_COMMAND_LINE
            };
            let Some(nl) = self.input.iter().position(|&b| b == b'\n') else {
                if self.input.len() >= limit {
                    self.input.clear();
                    if !self.discarding_line {
                        self.discarding_line = true;
                        self.reply_err("Line too long");
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
                self.reply_err("Line too long");
                continue;
            }
            self.commands += 1;
            if self.commands > self.policy.max_commands {
                self.close_with(err("Too many commands; closing connection"));
                return;
            }
            if matches!(self.state, State::AuthPlain) {
                self.state = State::Authorization { user: None };
                self.auth_plain_response(&line);
                continue;
            }
            match std::str::from_utf8(&line) {
                Ok(text) if !text.chars().any(|c| c.is_control()) => self.command(text),
                _ => self.reply_err("Invalid characters in command"),
            }
        }
    }

    fn command(&mut self, line: &str) {
        let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();
        match keyword.as_str() {
            "CAPA" => self.capa(),
            "QUIT" => self.quit(),
            "NOOP" if self.in_transaction() => self.write(ok("")),
            _ if self.in_transaction() => self.transaction_command(&keyword, &args),
            "USER" => self.user(rest),
            "PASS" => self.pass(rest),
            "AUTH" => self.auth(&args),
            "STLS" => self.stls(),
            "APOP" => self.reply_err("APOP is not supported; use USER/PASS or AUTH PLAIN over TLS"),
            "STAT" | "LIST" | "RETR" | "DELE" | "NOOP" | "RSET" | "TOP" | "UIDL" => {
                self.reply_err("Command not valid before login")
            }
            _ => self.reply_err("Unknown command"),
        }
    }

    fn capa(&mut self) {
        let mut lines = vec![
            "+OK Capability list follows",
            "TOP",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "EXPIRE NEVER",
            "IMPLEMENTATION Pochta",
        ];
        if !self.in_transaction() {
            if self.login_allowed() {
                lines.extend(["USER", "SASL PLAIN"]);
            }
            if self.policy.stls_available && !self.tls {
                lines.push("STLS");
            }
        }
        lines.push(".");
        self.write(format!("{}\r\n", lines.join("\r\n")).into_bytes());
    }

    fn quit(&mut self) {
        match &self.state {
            State::Transaction { entries, deleted } => {
                let delete = entries
                    .iter()
                    .zip(deleted)
                    .filter(|(_, d)| **d)
                    .map(|(e, _)| e.id)
                    .collect();
                self.pending = Some(Pending::Commit);
                self.out
                    .push_back(Output::Action(Action::Commit { delete }));
            }
            _ => self.close_with(ok("Pochta POP3 server signing off")),
        }
    }

    fn stls(&mut self) {
        if self.tls {
            self.reply_err("Already running TLS");
        } else if !self.policy.stls_available {
            self.reply_err("STLS not available");
        } else {
            self.write(ok("Begin TLS negotiation"));
            // Pipelined plaintext must not be read as if it came over TLS.
            self.input.clear();
            self.state = State::Authorization { user: None };
            self.pending = Some(Pending::Tls);
            self.out.push_back(Output::StartTls);
        }
    }

    fn user(&mut self, name: &str) {
        if !self.login_allowed() {
            return self.reply_err("[AUTH] Plaintext login is disabled; use STLS first");
        }
        let name = name.trim();
        if name.is_empty() {
            return self.reply_err("USER needs a name");
        }
        self.state = State::Authorization {
            user: Some(name.to_owned()),
        };
        self.write(ok("Send PASS"));
    }

    fn pass(&mut self, password: &str) {
        let State::Authorization {
            user: Some(username),
        } = std::mem::replace(&mut self.state, State::Authorization { user: None })
        else {
            return self.reply_err("USER first");
        };
        self.login(Credentials {
            username,
            password: password.to_owned(),
        });
    }

    fn auth(&mut self, args: &[&str]) {
        match args {
            [] => self.write(b"+OK\r\nPLAIN\r\n.\r\n".to_vec()),
            _ if !self.login_allowed() => {
                self.reply_err("[AUTH] Plaintext login is disabled; use STLS first")
            }
            [mechanism, rest @ ..] if mechanism.eq_ignore_ascii_case("PLAIN") => match rest {
                [] => {
                    self.state = State::AuthPlain;
                    self.write(b"+ \r\n".to_vec());
                }
                [initial] => self.auth_plain_response(initial.as_bytes()),
                _ => self.reply_err("Syntax: AUTH PLAIN [initial-response]"),
            },
            _ => self.reply_err("Unsupported SASL mechanism"),
        }
    }

    /// RFC 4616 `authzid NUL authcid NUL passwd`; `*` cancels (RFC 5034 4).
    fn auth_plain_response(&mut self, line: &[u8]) {
        if line == b"*" {
            return self.reply_err("Authentication cancelled");
        }
        let decoded = if line == b"=" {
            Ok(Vec::new())
        } else {
            BASE64.decode(line)
        };
        let Ok(bytes) = decoded else {
            return self.reply_err("Invalid base64");
        };
        let parts: Vec<&[u8]> = bytes.split(|&b| b == 0).collect();
        let [authzid, authcid, passwd] = parts.as_slice() else {
            return self.reply_err("Malformed PLAIN response");
        };
        match (
            std::str::from_utf8(authzid),
            std::str::from_utf8(authcid),
            std::str::from_utf8(passwd),
        ) {
            (Ok(z), Ok(c), Ok(p)) if !c.is_empty() && (z.is_empty() || z == c) => {
                self.login(Credentials {
                    username: c.to_owned(),
                    password: p.to_owned(),
                })
            }
            _ => self.reply_err("[AUTH] Authentication failed"),
        }
    }

    fn login(&mut self, credentials: Credentials) {
        self.pending = Some(Pending::Login);
        self.out
            .push_back(Output::Action(Action::Login(credentials)));
    }

    pub fn login_result(&mut self, result: LoginResult) {
        if self.pending.take() != Some(Pending::Login) {
            debug_assert!(false, "no login is pending");
            return;
        }
        match result {
            LoginResult::Ok(entries) => {
                let (count, size) = (entries.len(), entries.iter().map(|e| e.size).sum::<u64>());
                self.state = State::Transaction {
                    deleted: vec![false; entries.len()],
                    entries,
                };
                self.write(ok(&format!(
                    "Maildrop locked and ready, {count} messages ({size} octets)"
                )));
            }
            LoginResult::BadCredentials => self.reply_err("[AUTH] Authentication failed"),
            LoginResult::InUse => self.reply_err("[IN-USE] Maildrop is locked by another session"),
            LoginResult::RateLimited => {
                self.close_with(err("[AUTH] Too many failed logins; try again later"))
            }
            LoginResult::TemporaryFailure => {
                self.write(err("[SYS/TEMP] Temporary failure; try again later"))
            }
        }
    }

    /// The message numbered `arg` (1-based), if it exists and is not marked deleted.
    fn message(&self, arg: &str) -> Result<(usize, &Entry), String> {
        let State::Transaction { entries, deleted } = &self.state else {
            return Err("Not logged in".into());
        };
        let Some(n) = parse_number(arg) else {
            return Err(format!("Invalid message number {arg:?}"));
        };
        if n == 0 || n > entries.len() as u64 {
            return Err(format!("No such message {n}"));
        }
        let index = (n - 1) as usize;
        if deleted[index] {
            return Err(format!("Message {n} is deleted"));
        }
        Ok((index, &entries[index]))
    }

    fn transaction_command(&mut self, keyword: &str, args: &[&str]) {
        let State::Transaction { entries, deleted } = &self.state else {
            return;
        };
        let live = || {
            entries
                .iter()
                .zip(deleted.iter())
                .enumerate()
                .filter(|(_, (_, d))| !**d)
                .map(|(i, (e, _))| (i + 1, e))
        };
        match (keyword, args) {
            ("STAT", []) => {
                let (count, size) = live().fold((0, 0), |(c, s), (_, e)| (c + 1, s + e.size));
                self.write(ok(&format!("{count} {size}")));
            }
            ("LIST", []) => {
                let (count, size) = live().fold((0, 0), |(c, s), (_, e)| (c + 1, s + e.size));
                let mut text = format!("+OK {count} messages ({size} octets)\r\n");
                for (n, e) in live() {
                    text.push_str(&format!("{n} {}\r\n", e.size));
                }
                text.push_str(".\r\n");
                self.write(text.into_bytes());
            }
            ("UIDL", []) => {
                let mut text = String::from("+OK\r\n");
                for (n, e) in live() {
                    text.push_str(&format!("{n} {}\r\n", e.uid));
                }
                text.push_str(".\r\n");
                self.write(text.into_bytes());
            }
            ("LIST", [arg]) | ("UIDL", [arg]) => match self.message(arg) {
                Ok((i, e)) => {
                    let value = if keyword == "LIST" {
                        e.size.to_string()
                    } else {
                        e.uid.clone()
                    };
                    self.write(ok(&format!("{} {value}", i + 1)));
                }
                Err(e) => self.reply_err(&e),
            },
            ("RETR", [arg]) => match self.message(arg) {
                Ok((_, e)) => {
                    let (entry_id, size) = (e.id, e.size);
                    self.pending = Some(Pending::Retrieve);
                    self.out.push_back(Output::Action(Action::Retrieve {
                        entry_id,
                        size,
                        top_lines: None,
                    }));
                }
                Err(e) => self.reply_err(&e),
            },
            ("TOP", [arg, lines]) => match (self.message(arg), parse_number(lines)) {
                (Ok((_, e)), Some(lines)) => {
                    let (entry_id, size) = (e.id, e.size);
                    self.pending = Some(Pending::Retrieve);
                    self.out.push_back(Output::Action(Action::Retrieve {
                        entry_id,
                        size,
                        top_lines: Some(lines),
                    }));
                }
                (Err(e), _) => self.reply_err(&e),
                _ => self.reply_err("Invalid line count"),
            },
            ("DELE", [arg]) => match self.message(arg) {
                Ok((i, _)) => {
                    if let State::Transaction { deleted, .. } = &mut self.state {
                        deleted[i] = true;
                    }
                    self.write(ok(&format!("Message {} deleted", i + 1)));
                }
                Err(e) => self.reply_err(&e),
            },
            ("RSET", []) => {
                if let State::Transaction { entries, deleted } = &mut self.state {
                    deleted.iter_mut().for_each(|d| *d = false);
                    let size: u64 = entries.iter().map(|e| e.size).sum();
                    let text = format!("Maildrop has {} messages ({size} octets)", entries.len());
                    self.write(ok(&text));
                }
            }
            ("STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "RSET", _) => {
                self.reply_err("Wrong number of arguments")
            }
            ("USER" | "PASS" | "AUTH" | "STLS" | "APOP", _) => {
                self.reply_err("Command not valid after login")
            }
            _ => self.reply_err("Unknown command"),
        }
    }

    /// The I/O layer sent the message (`true`), or found it gone before sending anything.
    pub fn retrieved(&mut self, sent: bool) {
        if self.pending.take() != Some(Pending::Retrieve) {
            debug_assert!(false, "no retrieval is pending");
            return;
        }
        if !sent {
            self.reply_err("Message is no longer available");
        }
    }

    /// The UPDATE state's outcome (RFC 1939 6).
    pub fn committed(&mut self, result: Result<u64, ()>) {
        if self.pending.take() != Some(Pending::Commit) {
            debug_assert!(false, "no commit is pending");
            return;
        }
        match result {
            Ok(n) => self.close_with(ok(&format!(
                "Pochta POP3 server signing off ({n} messages deleted)"
            ))),
            Err(()) => self.close_with(err("[SYS/TEMP] Some deleted messages were not removed")),
        }
    }
}

impl pochta_session::Session for Session {
    type Action = Action;

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

    fn tls_established(&mut self) {
        if self.pending == Some(Pending::Tls) {
            self.pending = None;
        }
        self.tls = true;
        self.input.clear();
    }

    /// RFC 1939 3: an inactivity timeout ends the session without entering UPDATE.
    fn timed_out(&mut self) {
        self.close_with(err("Timeout; closing connection, nothing deleted"));
    }

    fn shutting_down(&mut self) {
        self.close_with(err("[SYS/TEMP] Server shutting down, nothing deleted"));
    }

    /// Deletions happen only at QUIT: ending a session at any other moment loses nothing.
    fn interruptible(&self) -> bool {
        true
    }
}

/// A non-negative decimal number: digits only (no sign, no spaces), at most 19 of them.
fn parse_number(s: &str) -> Option<u64> {
    let digits = !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| s.parse().ok()).flatten()
}
