//! The values the store reads and writes.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;

/// Defines a text-backed enum: `as_str`, `FromStr`, `TryFrom<String>` (for `#[sqlx(try_from)]`)
/// and `Display`, all from one table of variant ↔ stored text.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant),+];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(InvalidValue::new(stringify!($name), other)),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> { s.parse() }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

pub use pochta_mail::AddressRules;
use pochta_mail::{Body, Disposition, InvalidValue, Mailbox, Notify, Orcpt, Ret};

text_enum! {
    /// What Pochta does with mail for a domain.
    DomainRole {
        /// Mail is delivered into maildrops of accounts here.
        Local = "local",
        /// Backup MX: mail is accepted and held until the domain asks for it with ETRN.
        Hold = "hold",
        /// We are its MX or gateway: mail for it is accepted from anyone and forwarded.
        Relay = "relay",
    }
}

text_enum! {
    /// The signature algorithm of a key (RFC 8463 adds Ed25519 to RFC 6376's RSA).
    DkimAlgorithm {
        Ed25519 = "ed25519",
        Rsa = "rsa",
    }
}

text_enum! {
    /// Where a key is in its life.
    DkimKeyState {
        /// Published (or about to be), not yet signing: `rotate_dkim_key` activates it.
        Pending = "pending",
        /// Signs the domain's mail; one per domain and algorithm.
        Active = "active",
        /// No longer signs; its record stays published until mail signed with it is read.
        Retired = "retired",
    }
}

text_enum! {
    /// Where a recipient is in its delivery.
    RecipientState {
        /// Waiting for its next attempt.
        Queued = "queued",
        /// Kept until ETRN or an admin release.
        Held = "held",
        /// In a local maildrop, or accepted by a DSN-capable remote MTA.
        Delivered = "delivered",
        /// Handed to a remote MTA that does not offer DSN (RFC 3461 5.2.2).
        Relayed = "relayed",
        /// Permanently failed.
        Failed = "failed",
        /// Gave up after the queue lifetime.
        Expired = "expired",
        /// An alias, replaced by a recipient row for each of its final addresses.
        Expanded = "expanded",
    }
}

impl RecipientState {
    /// Final states never change again.
    pub fn is_final(self) -> bool {
        !matches!(self, RecipientState::Queued | RecipientState::Held)
    }
}

/// The public id of an accepted transaction, as in `250 2.0.0 Ok: queued as <id>` and the
/// `Received:` header. Made by the accepting ingress before it writes the message (the id is in
/// the content), without asking the database: ten base-32 characters of milliseconds since the
/// Unix epoch (so ids sort by time) and ten random ones (50 bits, so replicas never collide in
/// practice; the store's UNIQUE constraint catches it if they ever do).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct QueueId(String);

const BASE32: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl QueueId {
    pub fn generate() -> Self {
        let millis = Utc::now().timestamp_millis().max(0) as u64;
        let random: u64 = rand::rng().random();
        let mut id = String::with_capacity(20);
        for i in (0..10).rev() {
            id.push(BASE32[((millis >> (i * 5)) & 31) as usize] as char);
        }
        for i in 0..10 {
            id.push(BASE32[((random >> (i * 5)) & 31) as usize] as char);
        }
        QueueId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for QueueId {
    type Err = InvalidValue;
    /// Accepts what the schema accepts: 8 to 32 of `0-9A-Z`.
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let ok = (8..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
        if ok {
            Ok(QueueId(s.to_owned()))
        } else {
            Err(InvalidValue::new("QueueId", s))
        }
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A domain Pochta knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Domain {
    pub name: String,
    #[sqlx(try_from = "String")]
    pub role: DomainRole,
    /// Where postmaster@ and abuse@ go (local domains; RFC 5321 4.5.1, RFC 2142).
    pub postmaster: Option<String>,
    /// Where addresses that match nothing else go; None: refused.
    pub catch_all: Option<String>,
    /// A domain alias: every address here is the same local part at that domain.
    pub alias_of: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One target of an alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AliasTarget {
    pub local_part: String,
    pub domain: String,
    pub target: String,
}

impl AliasTarget {
    pub fn alias(&self) -> String {
        format!("{}@{}", self.local_part, self.domain)
    }
}

/// What one address of a domain of ours stands for, one level deep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The account that gets mail for it.
    Account {
        id: i64,
        /// The account's own address (the recipient may be `user+tag` or in a domain alias).
        address: Mailbox,
        disabled: bool,
        /// It has a quota (whether mail is accepted for it depends on its usage).
        has_quota: bool,
        /// Its maildrop holds its quota or more (RFC 3463 X.2.2).
        full: bool,
        via: Via,
    },
    /// Addresses it stands for, each to be resolved in turn.
    Forward { targets: Vec<Mailbox>, via: Via },
    /// Nothing here has this address.
    Unknown,
}

/// Which rule resolved an address, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// An account or alias with this very name.
    Exact,
    /// postmaster@ or abuse@: the domain's postmaster address.
    Postmaster,
    /// `user+tag`: the account or alias `user` (RFC 5233).
    Subaddress,
    /// The domain's catch-all address.
    CatchAll,
    /// An SRS address this system made for forwarded mail: the original sender.
    Srs,
}

/// An address with its domain's role (None: not a domain of ours) and, in a local domain,
/// what it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub role: Option<DomainRole>,
    /// `Resolved::Unknown` for addresses outside local domains.
    pub resolved: Resolved,
}

/// Where one recipient's mail finally goes, after every alias is followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    /// Each address once (case-insensitively), in the order found, with how it is delivered.
    pub targets: Vec<(Mailbox, Disposition)>,
    /// Every address met on the way, the start included (lowercase), to find loops.
    pub visited: Vec<String>,
    /// Some path led back to an address already met (that path is dropped).
    pub looped: bool,
}

/// A mail account, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Account {
    pub id: i64,
    pub local_part: String,
    pub domain: String,
    pub disabled: bool,
    pub quota_bytes: Option<i64>,
    pub created_at: DateTime<Utc>,
    /// Entries in its maildrop now.
    pub messages: i64,
    /// Their POP3 size in octets.
    pub bytes: i64,
}

impl Account {
    pub fn address(&self) -> String {
        format!("{}@{}", self.local_part, self.domain)
    }
}

/// Where mail for one address goes: its domain's role (None: not ours), and for an address
/// with an account, that account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecipientLookup {
    pub role: Option<DomainRole>,
    pub account: Option<LocalAccount>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAccount {
    pub id: i64,
    pub disabled: bool,
    /// It has a quota: it is delivered to on its own, its usage checked under its lock.
    pub has_quota: bool,
}

/// What a login needs to know about an account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccountCredentials {
    pub id: i64,
    pub local_part: String,
    pub domain: String,
    pub password_hash: String,
    pub disabled: bool,
}

/// One recipient of a transaction being enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecipient {
    pub address: Mailbox,
    pub orcpt: Option<Orcpt>,
    /// None when RCPT had no NOTIFY.
    pub notify: Option<Notify>,
    /// Local and remote recipients are queued, due now, for their kind of delivery loop
    /// (`Claim`); a hold domain's are held.
    pub disposition: Disposition,
}

/// Which recipients a delivery loop claims: local ones (maildrops here) or remote ones (SMTP
/// to other servers). Kept apart so a slow remote server never holds up local delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Local,
    Remote,
}

/// A whole accepted transaction: the envelope and its recipients. The content goes beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnvelope {
    pub queue_id: QueueId,
    /// None for the null reverse-path `<>`.
    pub reverse_path: Option<Mailbox>,
    /// ENVID, decoded from xtext.
    pub envid: Option<String>,
    pub ret: Option<Ret>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub client_address: Option<std::net::IpAddr>,
    pub client_helo: Option<String>,
    pub auth_user: Option<String>,
    pub received_by: Option<String>,
    pub traceparent: Option<String>,
    /// How long the queue may try before the recipients expire.
    pub lifetime: std::time::Duration,
    pub recipients: Vec<NewRecipient>,
    /// Why the message is quarantined (a DMARC quarantine policy); None for ordinary mail.
    pub quarantine: Option<String>,
    /// REQUIRETLS (RFC 8689): every hop must be verified TLS.
    pub requiretls: bool,
}

impl NewEnvelope {
    /// Will any of it be delivered into a mailbox here? Only such messages keep header
    /// fields for IMAP SEARCH (migration 0014); relayed mail never meets a search.
    pub fn reaches_a_mailbox(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| r.disposition == pochta_mail::Disposition::Local)
    }
}

/// Ids of an enqueued transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub envelope_id: i64,
    pub message_id: i64,
}

/// A recipient leased to one worker, with what delivering it needs from its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRecipient {
    pub recipient_id: i64,
    pub envelope_id: i64,
    pub queue_id: String,
    pub message_id: i64,
    pub address: Mailbox,
    pub orcpt: Option<Orcpt>,
    /// None when RCPT had no NOTIFY (`Notify::DEFAULT` applies).
    pub notify: Option<Notify>,
    pub attempts: i32,
    /// None for the null reverse-path `<>` (nothing may be reported to it).
    pub reverse_path: Option<Mailbox>,
    pub envid: Option<String>,
    pub ret: Option<Ret>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    /// REQUIRETLS (RFC 8689): only over verified TLS to a server that offers REQUIRETLS.
    pub requiretls: bool,
    pub arrived_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub lease_expires_at: DateTime<Utc>,
    /// A delay report was already sent for this recipient.
    pub delay_reported: bool,
    /// Deleted by an administrator who asked for a report: fail it, with the report.
    pub cancelled: bool,
    /// The enhanced status of the last attempt (`4.2.2`: the maildrop was full).
    pub last_status: Option<String>,
    /// For a target of an alias: the address the sender gave.
    pub original_address: Option<Mailbox>,
}

impl ClaimedRecipient {
    /// The reports this recipient's sender asked for.
    pub fn notify(&self) -> Notify {
        self.notify.unwrap_or(Notify::DEFAULT)
    }
}

/// How a delivery attempt ended for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Accepted by a DSN-capable remote MTA (local delivery uses `deliver_to_maildrop`).
    Delivered,
    /// Accepted by a remote MTA without DSN.
    Relayed,
    /// Permanent failure.
    Failed,
    /// Gave up: the queue lifetime is over.
    Expired,
    /// Try again after this long.
    Deferred { retry_after: std::time::Duration },
    /// An alias: its final addresses are recipients of their own now.
    Expanded,
}

impl AttemptOutcome {
    pub fn state(self) -> RecipientState {
        match self {
            AttemptOutcome::Delivered => RecipientState::Delivered,
            AttemptOutcome::Relayed => RecipientState::Relayed,
            AttemptOutcome::Failed => RecipientState::Failed,
            AttemptOutcome::Expired => RecipientState::Expired,
            AttemptOutcome::Deferred { .. } => RecipientState::Queued,
            AttemptOutcome::Expanded => RecipientState::Expanded,
        }
    }
}

/// What the other side said, for the attempt history and the DSN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptReport {
    /// e.g. `mx.example.net [192.0.2.7]:25`; None for local delivery.
    pub remote_mta: Option<String>,
    pub reply_code: Option<u16>,
    /// Enhanced status code, e.g. `5.1.1`.
    pub status: Option<String>,
    pub diagnostic: String,
}

/// Recipients waiting in the queue (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Queued and due now (or leased by a worker).
    pub due: i64,
    /// Queued for a later attempt.
    pub deferred: i64,
    /// Held until ETRN or a release.
    pub held: i64,
}

/// An authenticated sender's recent messages (sending limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderUsage {
    pub last_hour: u64,
    pub last_day: u64,
}

/// Mail waiting (queued or held) for one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainBacklog {
    pub messages: u64,
    pub bytes: u64,
}

/// A destination every server of which is unreachable, and how its waiting mail is deferred
/// at once (`Store::defer_destination`): as if each recipient had been attempted now and
/// deferred with this status and diagnostic.
pub struct DestinationDeferral<'a> {
    /// The recipients' domain.
    pub domain: &'a str,
    /// Recipients due within this long are deferred too (the queue passes half its hold of
    /// unreachable servers).
    pub within: std::time::Duration,
    /// Recorded as the attempts' worker.
    pub worker: &'a str,
    pub status: &'a str,
    pub diagnostic: &'a str,
    /// The wait before a recipient's next attempt, from its attempts so far and its envelope
    /// (the queue's backoff, jittered per envelope).
    pub retry_after: &'a mut (dyn FnMut(i32, i64) -> std::time::Duration + Send),
    /// A recipient with NOTIFY=DELAY waiting this long since arrival is owed its delay report:
    /// left for a worker, which sends it.
    pub delay_report_after: std::time::Duration,
}

/// What ETRN (or an admin release) made due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Released {
    pub recipients: u64,
    pub messages: u64,
}

/// How a local delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDelivery {
    /// A new maildrop entry.
    Delivered { entry_id: i64, uid: String },
    /// The recipient was not live any more (already delivered, or finished otherwise): nothing
    /// was written. This is what makes a repeated delivery harmless.
    AlreadyFinal,
    /// The entry (`size` octets) would take the maildrop (`used` octets) past its quota:
    /// nothing was written, the recipient is still live.
    OverQuota { used: i64, quota: i64, size: i64 },
}

/// One local delivery of a batch: a live recipient, the account whose maildrop receives it,
/// and its `Return-Path:`/`Delivered-To:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaildropDelivery {
    pub recipient_id: i64,
    pub account_id: i64,
    pub header_prefix: Vec<u8>,
}

/// One message in a maildrop, as a POP3 session lists it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MaildropEntry {
    pub id: i64,
    pub uid: String,
    pub pop3_size: i64,
}

/// A piece of what RETR sends for a maildrop entry (`Store::maildrop_entry_part`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryPart {
    pub octets: Vec<u8>,
    /// The seq to read the next piece from; None: this piece ends the text.
    pub next: Option<i32>,
}

/// What garbage collection removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Collected {
    /// Messages whose content was freed (the row stays while an envelope references it).
    pub contents: u64,
    pub envelopes: u64,
    pub messages: u64,
}

/// Where incremental garbage collection is (`Store::collect_garbage_step`), kept by the
/// caller between passes; a new one looks at every message in its first two passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcSweep {
    /// Messages from this id on are looked at whole: new since the pass before the last.
    pub(crate) recent_from: i64,
    /// The newest message when the last pass began.
    pub(crate) newest_seen: i64,
    /// Where the next pass's window of older messages begins.
    pub(crate) window_from: i64,
}

/// How many rows the store holds, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    pub messages: i64,
    /// Rows of message content (`message_chunks`).
    pub message_chunks: i64,
    pub envelopes: i64,
    pub maildrop_entries: i64,
    /// Recipients per state; states with none are absent.
    pub recipients: Vec<(RecipientState, i64)>,
}

impl StoreCounts {
    pub fn recipients_in(&self, state: RecipientState) -> i64 {
        self.recipients
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }

    pub fn recipients_total(&self) -> i64 {
        self.recipients.iter().map(|(_, n)| n).sum()
    }
}

/// An envelope with its recipients and their attempt histories (`pochtactl queue show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct EnvelopeDetail {
    #[sqlx(skip)]
    pub recipients: Vec<RecipientDetail>,
    pub id: i64,
    pub queue_id: String,
    pub message_id: i64,
    pub size: i64,
    pub reverse_path: String,
    pub envid: Option<String>,
    pub ret: Option<String>,
    pub body: Option<String>,
    pub smtputf8: bool,
    pub client_address: Option<String>,
    pub client_helo: Option<String>,
    pub auth_user: Option<String>,
    pub received_by: Option<String>,
    pub traceparent: Option<String>,
    pub arrived_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Why its message is quarantined (a DMARC quarantine policy), if it is.
    pub quarantine: Option<String>,
    /// REQUIRETLS (RFC 8689) was asked for.
    pub requiretls: bool,
}

/// One recipient as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RecipientDetail {
    #[sqlx(skip)]
    pub history: Vec<AttemptRecord>,
    pub id: i64,
    pub envelope_id: i64,
    pub address: String,
    pub orcpt: Option<String>,
    pub notify: Option<String>,
    #[sqlx(try_from = "String")]
    pub state: RecipientState,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_reply_code: Option<i32>,
    pub last_status: Option<String>,
    pub last_diagnostic: Option<String>,
    pub last_remote_mta: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One past delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AttemptRecord {
    pub recipient_id: i64,
    pub attempted_at: DateTime<Utc>,
    pub worker: String,
    pub remote_mta: Option<String>,
    pub reply_code: Option<i32>,
    pub status: Option<String>,
    pub diagnostic: String,
    #[sqlx(try_from = "String")]
    pub result: RecipientState,
}

/// Which queue entries an admin operation applies to. Unset fields match everything; the set
/// ones must all match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueFilter {
    pub queue_id: Option<String>,
    /// Recipient states; empty means the live ones (queued and held).
    pub states: Vec<RecipientState>,
    pub recipient_domain: Option<String>,
    /// The reverse-path, case-insensitively; `<>` (or empty) is the null sender.
    pub sender: Option<String>,
    /// Only envelopes that arrived at least this long ago.
    pub older_than: Option<std::time::Duration>,
}

/// What an admin operation does to the matching recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAction {
    /// Deferred recipients become due now.
    RetryNow,
    /// Queued recipients are held until released.
    Hold,
    /// Held recipients are queued again, due now.
    Release,
    /// Live recipients are removed (no report).
    Delete,
    /// Live recipients are failed at once, with the failure report their NOTIFY asks for
    /// (sent by the next delivery pass).
    DeleteWithReport,
}

/// One envelope in a queue listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct EnvelopeSummary {
    #[sqlx(skip)]
    pub recipients: Vec<RecipientDetail>,
    pub id: i64,
    pub queue_id: String,
    pub reverse_path: String,
    pub size: i64,
    pub arrived_at: DateTime<Utc>,
}
