//! What a server session and its I/O layer exchange: the settings and connection policy it is
//! given, the actions it asks for, and the answers it takes back.

use pochta_mail::{BareLineEndings, Disposition, Mailbox};

use crate::command::{MailFrom, RcptTo};

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Recipients per message for an authenticated user (at most `max_recipients`).
    pub submission_max_recipients: usize,
    pub max_received_headers: usize,
    pub bare_line_endings: BareLineEndings,
    /// After this many error replies (4xx or 5xx) the session is closed with 421.
    pub max_errors: usize,
    /// After this many commands the session is closed with 421: a client repeating NOOP,
    /// RSET or ETRN forever gets no more of the server's time.
    pub max_commands: usize,
    pub postmaster_domain: Option<String>,
    /// An authenticated user may use only its own address as the sender (RFC 6409 6.1).
    pub enforce_sender_ownership: bool,
    /// An authenticated user may use the null reverse-path `<>`: no bounce would come back
    /// for such mail, so it is refused unless allowed.
    pub submission_null_sender: bool,
}

/// What the listener knows about one connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionPolicy {
    /// STARTTLS may be offered (a certificate is configured).
    pub starttls_available: bool,
    /// The connection is TLS from the first byte (port 465).
    pub implicit_tls: bool,
    /// AUTH is offered on this listener.
    pub auth_enabled: bool,
    /// MAIL needs a successful AUTH first (submission, RFC 6409).
    pub auth_required: bool,
    /// AUTH may be used without TLS (e.g. on loopback). Otherwise it needs TLS.
    pub plaintext_auth: bool,
}

/// Credentials from AUTH PLAIN or LOGIN.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub authzid: Option<String>,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A recipient the session accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRecipient {
    pub rcpt: RcptTo,
    /// Where its mail goes.
    pub disposition: Disposition,
}

/// A complete transaction to commit before answering 250.
#[derive(Debug, Clone)]
pub struct Message {
    pub helo: String,
    pub esmtp: bool,
    pub tls: bool,
    pub authenticated: Option<String>,
    pub mail: MailFrom,
    pub recipients: Vec<AcceptedRecipient>,
    /// The text as received: dot-unstuffed, CRLF line ends.
    pub body: Vec<u8>,
}

/// What the session wants done next; see `pochta_session`.
pub type Output = pochta_session::Output<Action>;

/// What the session asks of the world; each is answered through the method it names.
#[derive(Debug)]
pub enum Action {
    /// Decide on a recipient; answer with `recipient_verdict`.
    VerifyRecipient {
        recipient: Mailbox,
        authenticated: bool,
    },
    /// Check credentials; answer with `auth_result`.
    Authenticate(Credentials),
    /// Commit the message; answer with `store_result`.
    StoreMessage(Box<Message>),
    /// Ask the queue to start delivery for a domain; answer with `etrn_result`.
    Etrn { domain: String, subdomains: bool },
    /// May this authenticated user send another message now (its sending rate)? Answer with
    /// `sender_verdict`.
    VerifySender { user: String },
}

/// What the I/O layer decided about an authenticated user's next message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderVerdict {
    Accept,
    /// Over a sending limit; the text says which.
    RateLimited(String),
    TemporaryFailure,
}

/// What the I/O layer decided about a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientVerdict {
    Accept(Disposition),
    NoSuchUser,
    Disabled,
    RelayDenied,
    /// Too much mail already waits for this (hold or relay) domain.
    DomainBacklogFull,
    /// The recipient's maildrop holds its quota.
    MailboxFull,
    TemporaryFailure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    Success {
        user: String,
    },
    Failure,
    /// Too many failures from this client.
    RateLimited,
    TemporaryFailure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreResult {
    Stored {
        queue_id: String,
    },
    TemporaryFailure,
    /// Refused by the sender domain's published policy (DMARC p=reject, RFC 7489 6.7):
    /// 550 5.7.1 with this reason.
    PolicyRejected {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtrnResult {
    Started {
        messages: u64,
    },
    NothingQueued,
    NotAllowed,
    Unavailable,
    /// Too many ETRN requests from this client: the queue was not asked.
    RateLimited,
}
