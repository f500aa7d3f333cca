//! One IMAP connection's server side (RFC 9051 3: not authenticated, authenticated, selected,
//! logout). Bytes go into `imap-next`'s server, which yields whole commands (literals
//! included, with their continuation requests); this decides each command, answering at once
//! or after an `Action` the world performs, and encodes its responses (with `imap-codec`)
//! itself, so that they leave in order and as they are made.

use std::collections::{HashMap, VecDeque};
use std::num::{NonZeroU32, NonZeroU64};

use chrono::{DateTime, Utc};
use imap_codec::ResponseCodec;
use imap_codec::encode::{Encoder, Fragment};
use imap_next::imap_types::IntoStatic;
use imap_next::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_next::imap_types::command::{Command, CommandBody, SelectParameter};
use imap_next::imap_types::core::{Atom, Charset, Tag, Vec1};
use imap_next::imap_types::extensions::enable::CapabilityEnable;
use imap_next::imap_types::extensions::uidplus::UidSet;
use imap_next::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_next::imap_types::flag::{Flag, FlagNameAttribute, FlagPerm, StoreResponse, StoreType};
use imap_next::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_next::imap_types::response::{
    Capability, Code, CommandContinuationRequest, Data, Greeting, Response, Status,
};
use imap_next::imap_types::search::SearchKey;
use imap_next::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_next::imap_types::status::{StatusDataItem, StatusDataItemName};
use imap_next::server::{Error as ServerError, Event, Options, Server};
use imap_next::{Interrupt, Io, State as _};
use pochta_session::Output;

use crate::extended::{self, Extended, ListSelect, SearchReturn};
use crate::fetch;
use crate::input::Input;
use crate::names::{self, DELIMITER};
use crate::search;
use crate::uids::Uids;
use crate::view::{Changes, MailboxSummary, Message, View, fetch_data, nonzero};

/// What a session may do, decided per connection.
#[derive(Debug, Clone)]
pub struct Policy {
    /// STARTTLS is offered (a certificate is configured, the connection is not yet TLS).
    pub starttls_available: bool,
    /// The connection is TLS from its first octet (port 993).
    pub implicit_tls: bool,
    /// LOGIN and AUTHENTICATE PLAIN are allowed without TLS on this connection.
    pub plaintext_auth: bool,
    /// Bad commands tolerated before the connection is closed.
    pub max_errors: usize,
    /// Largest literal accepted (APPEND's message included).
    pub max_literal: u32,
    /// Message octets asked for in one `Request::Contents`.
    pub read_batch_bytes: u64,
}

/// How a mailbox operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    NoSuchMailbox,
    AlreadyExists,
    /// Refused for a reason the client is told (INBOX cannot be deleted, ...).
    Refused(String),
    /// The account's quota would be exceeded (RFC 9051 7.1, OVERQUOTA).
    OverQuota,
    /// A limit of the server's would be passed; the text says which (RFC 5530, LIMIT).
    Limit(String),
    /// The store failed: try again later.
    Temporary,
}

/// Message, unseen and deleted counts and sizes of a mailbox (STATUS); the deleted ones are
/// read only when `Request::Status` asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub messages: u32,
    pub unseen: u32,
    pub deleted: u32,
    /// Every message's RFC822.SIZE, summed (STATUS SIZE, RFC 8438).
    pub size: u64,
    /// What EXPUNGE would free (STATUS DELETED-STORAGE, RFC 9051 6.3.11).
    pub deleted_size: u64,
}

/// How STORE changes flags.
pub use imap_next::imap_types::flag::StoreType as FlagChange;

/// What the session needs from the world.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Mailboxes,
    Select {
        name: String,
    },
    Status {
        name: String,
        /// Count the \Deleted messages too (DELETED, DELETED-STORAGE): the other counts
        /// come cheaper without them.
        deleted: bool,
    },
    Create {
        name: String,
    },
    Delete {
        name: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Subscribe {
        name: String,
        on: bool,
    },
    Append {
        name: String,
        content: Vec<u8>,
        flags: Vec<String>,
        date: Option<DateTime<Utc>>,
    },
    /// What the session keeps no copy of (flags, size, date, mod-sequence) for these UIDs of a
    /// mailbox.
    Messages {
        mailbox_id: i64,
        uids: Vec<u32>,
    },
    /// The octets of these messages (as FETCH BODY[] sends them), or with `headers_only`
    /// their header blocks only (through the empty line; the world may answer only the first
    /// few, `Contents::answered`). `next`: the batch the session will ask for after this one,
    /// which the world may read meanwhile.
    Contents {
        entry_ids: Vec<i64>,
        headers_only: bool,
        next: Vec<i64>,
    },
    StoreFlags {
        mailbox_id: i64,
        uids: Vec<u32>,
        change: FlagChange,
        flags: Vec<String>,
        unchanged_since: Option<u64>,
    },
    Expunge {
        mailbox_id: i64,
        uids: Option<Vec<u32>>,
    },
    Copy {
        mailbox_id: i64,
        uids: Vec<u32>,
        to: String,
        remove: bool,
    },
    Changes {
        mailbox_id: i64,
        since_modseq: u64,
        known_uid_max: u32,
    },
    /// A SEARCH that needs no message octets, for the store to evaluate: its message sets are
    /// UID sets of the view's messages.
    Search {
        mailbox_id: i64,
        key: SearchKey<'static>,
    },
    /// As `Search`, when only the number of matches is asked for (ESEARCH's COUNT alone,
    /// RFC 4731) and the key reads no header: how many match, and their highest mod-sequence.
    /// The key holds the view's UIDs only.
    SearchCount {
        mailbox_id: i64,
        key: SearchKey<'static>,
    },
}

/// The world's answer to a `Request` (the variant matching it).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Mailboxes(Result<Vec<MailboxSummary>, Failure>),
    /// The mailbox and its UIDs, ascending.
    Selected(Result<(MailboxSummary, Vec<u32>), Failure>),
    /// The messages asked for, in UID order (those gone are left out).
    Messages(Result<Vec<Message>, Failure>),
    Status(Result<(MailboxSummary, Counts), Failure>),
    Done(Result<(), Failure>),
    /// UIDVALIDITY of the target and (source UID, new UID) pairs; (0, new) for an append.
    Placed(Result<(u32, Vec<(u32, u32)>), Failure>),
    Contents(Result<Contents, Failure>),
    /// After `Action::Stream`: whether the message was there (and its response sent). A
    /// failure means nothing of the response was sent.
    Streamed(Result<bool, Failure>),
    Flags(Result<(Vec<Message>, Vec<u32>), Failure>),
    Expunged(Result<Vec<u32>, Failure>),
    Changes(Result<Changes, Failure>),
    Found(Result<Found, Failure>),
    /// How many messages matched a `Request::SearchCount`, and their highest mod-sequence
    /// (0: none).
    Counted(Result<(u32, u64), Failure>),
}

/// The answer to a `Request::Contents`: octets by entry id (entries expunged meanwhile are
/// left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    pub octets: HashMap<i64, Vec<u8>>,
    /// How many of the entry ids asked for, from the first, this answers; None: all. Only a
    /// headers-only batch is cut short: by the world, when its header blocks proved longer
    /// than guessed (a header without its empty line in the first stored row is read whole),
    /// so that a batch holds about a read batch's octets whatever the messages are. The
    /// session asks again from the first one left out.
    pub answered: Option<usize>,
}

impl FromIterator<(i64, Vec<u8>)> for Contents {
    fn from_iter<I: IntoIterator<Item = (i64, Vec<u8>)>>(octets: I) -> Self {
        HashMap::from_iter(octets).into()
    }
}

impl From<HashMap<i64, Vec<u8>>> for Contents {
    fn from(octets: HashMap<i64, Vec<u8>>) -> Self {
        Contents {
            octets,
            answered: None,
        }
    }
}

/// What a `Request::Search` found, by UID, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub matched: Vec<u32>,
    /// Messages that may match: the key names a header field the store did not keep for
    /// them, so their octets decide.
    pub undecided: Vec<u32>,
    /// The highest mod-sequence among `matched` (0: none).
    pub highest_modseq: u64,
}

/// The outcome of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginResult {
    Ok,
    BadCredentials,
    RateLimited,
    /// The account has as many sessions open as it may.
    TooManySessions,
    TemporaryFailure,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Check the credentials; answer with `Session::login_result`.
    Login { username: String, password: String },
    /// Answer with `Session::answer`.
    Run(Request),
    /// Send one message's FETCH response, reading its octets from the store in pieces;
    /// answer with `Session::answer` (`Answer::Streamed`).
    Stream(Streamed),
}

/// A FETCH response whose message octets go out as the store reads them, for a message larger
/// than a read batch: `head` (the response through its literal's `{len}`), then `len` octets
/// of the message (as BODY[] sends it) from octet `from`, NULs sent as spaces as in every
/// literal, then `tail`. Once `head` is out the literal must be completed: if the octets
/// cannot be read, the connection is closed rather than the framing broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    pub entry_id: i64,
    pub head: Vec<u8>,
    pub from: u64,
    pub len: u64,
    pub tail: Vec<u8>,
}

impl Streamed {
    /// What the literal carries of `piece`, the message's octets from octet `at` on: that
    /// part of the piece, its NULs made spaces where it lies (sent from there, not copied).
    pub fn carry<'a>(&self, at: u64, piece: &'a mut [u8]) -> &'a [u8] {
        let end = self.from.saturating_add(self.len);
        let piece_end = at.saturating_add(piece.len() as u64);
        let (lo, hi) = (self.from.max(at), end.min(piece_end));
        if lo >= hi {
            return &[];
        }
        let carried = &mut piece[(lo - at) as usize..(hi - at) as usize];
        fetch::nul_to_space(carried);
        carried
    }

    /// Completes a literal of which `sent` octets went out, with spaces, when the message
    /// ended before the size announced.
    pub fn pad(&self, sent: u64, out: &mut Vec<u8>) {
        let missing = self.len.saturating_sub(sent) as usize;
        out.resize(out.len() + missing, b' ');
    }
}

enum State {
    NotAuthenticated,
    Authenticated,
    Selected(View),
    Logout,
}

/// A FETCH or SEARCH reading message octets batch by batch: the messages (place in the view,
/// and what the world said of it), and how far it has read.
struct Reading {
    messages: Vec<(usize, Message)>,
    /// The batch asked for last: `messages[from..next]`.
    from: usize,
    next: usize,
    /// Only the header blocks are needed.
    headers_only: bool,
    /// SEARCH: the messages that matched so far (place, UID, mod-sequence).
    matched: Vec<(usize, u32, u64)>,
}

impl Reading {
    /// The octets of the batch asked for last, which ends where the world's answer ended.
    fn cut(&mut self, contents: Contents) -> HashMap<i64, Vec<u8>> {
        if let Some(answered) = contents.answered {
            // At least one, so that the reading moves on.
            self.next = self.next.min(self.from + answered.max(1));
        }
        contents.octets
    }
}

enum Pending {
    Login {
        tag: Tag<'static>,
        sasl: bool,
    },
    List {
        tag: Tag<'static>,
        list: Listing,
    },
    /// LIST-STATUS (RFC 5819): the STATUS of each listed mailbox, one after another.
    ListStatus {
        tag: Tag<'static>,
        items: Vec<StatusDataItemName>,
        names: VecDeque<String>,
    },
    Select {
        tag: Tag<'static>,
        read_only: bool,
        resync: Option<Resync>,
    },
    /// SELECT (QRESYNC ...): the flag changes since the client's mod-sequence are being read.
    Resync {
        tag: Tag<'static>,
        code: Code<'static>,
    },
    Status {
        tag: Tag<'static>,
        items: Vec<StatusDataItemName>,
    },
    Done {
        tag: Tag<'static>,
        what: &'static str,
    },
    Append {
        tag: Tag<'static>,
    },
    FetchMeta {
        fetch: FetchJob,
    },
    FetchSeen {
        fetch: FetchJob,
    },
    Fetch {
        fetch: FetchJob,
        reading: Reading,
    },
    SearchMeta {
        search: SearchJob,
        /// What the store decided already (place, UID, mod-sequence).
        matched: Vec<(usize, u32, u64)>,
    },
    SearchFound {
        search: SearchJob,
    },
    SearchCounted {
        search: SearchJob,
    },
    /// An ESEARCH response waiting for the mod-sequence of its MIN or MAX (RFC 7162 3.1.5).
    SearchModseq {
        tag: Tag<'static>,
        line: String,
    },
    Search {
        search: SearchJob,
        reading: Reading,
    },
    Store {
        tag: Tag<'static>,
        uid: bool,
        silent: bool,
        /// UNCHANGEDSINCE was given (RFC 7162 3.1.3).
        conditional: bool,
        uids: Vec<u32>,
    },
    StoreReport {
        tag: Tag<'static>,
        uid: bool,
        modified: Vec<u32>,
    },
    Expunge {
        tag: Tag<'static>,
        close: bool,
    },
    Copy {
        tag: Tag<'static>,
        remove: bool,
    },
    Sync {
        tag: Option<Tag<'static>>,
    },
}

/// SELECT's QRESYNC parameter (RFC 7162 3.2.5): what the client last knew of the mailbox.
struct Resync {
    uid_validity: u32,
    modseq: u64,
    /// The UIDs it knows (None: every UID below UIDNEXT).
    known_uids: Option<SequenceSet>,
}

/// What a LIST or LSUB asked for.
struct Listing {
    /// Each pattern with the reference before it.
    patterns: Vec<String>,
    lsub: bool,
    select: ListSelect,
    status: Option<Vec<StatusDataItemName>>,
}

impl Listing {
    fn plain(lsub: bool) -> Self {
        Listing {
            patterns: Vec::new(),
            lsub,
            select: ListSelect::default(),
            status: None,
        }
    }
}

/// A SEARCH under way.
struct SearchJob {
    tag: Tag<'static>,
    /// UID SEARCH: matches are told by UID, not by number.
    uid: bool,
    key: SearchKey<'static>,
    /// What its keys need of the octets.
    need: fetch::Need,
    /// The highest mod-sequence of the matches the store decided.
    store_modseq: u64,
    /// ESEARCH's RETURN (RFC 4731); None: a SEARCH response.
    returns: Option<SearchReturn>,
}

struct FetchJob {
    tag: Tag<'static>,
    uid: bool,
    items: Vec<MessageDataItemName<'static>>,
    /// The messages named (place in the view, what the world said of it).
    messages: Vec<(usize, Message)>,
    /// CHANGEDSINCE (RFC 7162 3.1.4): only messages changed after this.
    changed_since: Option<u64>,
    /// UIDs whose \Seen this FETCH set: their FLAGS are sent too.
    seen_now: Vec<u32>,
    /// The mod-sequence setting \Seen took, and how many of `seen_now` have had their
    /// response: if all, the view takes the change as its own (`View::took_own_change`).
    seen_modseq: Option<u64>,
    seen_told: usize,
    /// BINARY met an encoding it cannot undo: that message was left out.
    unknown_cte: bool,
}

pub struct Session {
    server: Server,
    policy: Policy,
    tls: bool,
    state: State,
    pending: Option<Pending>,
    action: Option<Action>,
    errors: usize,
    condstore: bool,
    /// ENABLE QRESYNC (RFC 7162 3.2.3): expunges are told as VANISHED.
    qresync: bool,
    /// ENABLE IMAP4rev2 (RFC 9051 6.3.1): SEARCH answers ESEARCH, no RECENT response.
    rev2: bool,
    idling: Option<Tag<'static>>,
    /// AUTHENTICATE waiting for the client's response to its continuation.
    sasl_tag: Option<Tag<'static>>,
    /// STARTTLS answered OK; once that OK is out, the handshake.
    starttls: bool,
    starttls_ready: bool,
    closing: bool,
    closed: bool,
    /// Client input not yet fed to the parser.
    input: Input,
    /// Octets fed to the parser since it last took a whole command.
    in_parser: usize,
    /// A large command ended a line piece: the parser is replaced once it asks for more.
    renew_due: bool,
    parsers_renewed: u64,
    /// Responses encoded and not yet handed out. They go out before the next action and
    /// before imap-next is asked for more, so a FETCH leaves batch by batch as its octets
    /// are read, never held whole (imap-next's own queue would drain only once the command
    /// is done). imap-next keeps the greeting, continuation requests and what it answers
    /// itself. One buffer per fragment of a response (its lines, its literals).
    out: VecDeque<Vec<u8>>,
}

fn status_ok(tag: Tag<'static>, code: Option<Code<'static>>, text: &str) -> Status<'static> {
    Status::ok(Some(tag), code, text.to_owned()).unwrap_or_else(|_| plain_ok())
}

/// The mod-sequence a change took: its messages' highest.
fn newest_modseq(changed: &[Message]) -> Option<u64> {
    changed.iter().map(|m| m.modseq).max()
}

fn status_no(tag: Tag<'static>, code: Option<Code<'static>>, text: &str) -> Status<'static> {
    Status::no(Some(tag), code, text.to_owned())
        .unwrap_or_else(|_| Status::no(None, None, "failed").expect("valid text"))
}

fn status_bad(tag: Option<Tag<'static>>, text: &str) -> Status<'static> {
    Status::bad(tag, None, text.to_owned())
        .unwrap_or_else(|_| Status::bad(None, None, "bad").expect("valid text"))
}

fn plain_ok() -> Status<'static> {
    Status::ok(None, None, "ok").expect("valid text")
}

fn atom(s: &str) -> Atom<'static> {
    Atom::try_from(s.to_owned()).unwrap_or_else(|_| Atom::unvalidated("X"))
}

/// A stored name as the client reads it: in modified UTF-7 when `utf7` (RFC 3501 5.1.3).
fn mailbox(name: &str, utf7: bool) -> Mailbox<'static> {
    if name == "INBOX" {
        return Mailbox::Inbox;
    }
    if utf7 {
        return Mailbox::try_from(names::to_modified_utf7(name)).unwrap_or(Mailbox::Inbox);
    }
    // IMAP4rev2's quoted strings carry UTF-8 (RFC 9051 4.3); imap-types would send a
    // non-ASCII name as a literal.
    use imap_next::imap_types::core::{AString, IString};
    use imap_next::imap_types::extensions::utf8::QuotedUtf8;
    match QuotedUtf8::try_from(name.to_owned()) {
        Ok(quoted) if !name.is_ascii() => {
            Mailbox::from(AString::String(IString::QuotedUtf8(quoted)))
        }
        _ => Mailbox::try_from(name.to_owned()).unwrap_or(Mailbox::Inbox),
    }
}

fn flag_strings(flags: &[Flag<'_>]) -> Vec<String> {
    flags.iter().map(|f| f.to_string()).collect()
}

/// A command at least this long (an APPEND's literal) is followed by a fresh parser, which
/// gives back the buffer it grew to.
const RENEW_PARSER_AFTER: usize = 64 * 1024;

/// The flags every mailbox allows (RFC 9051 7.1: PERMANENTFLAGS), `\*`: keywords too.
const SYSTEM_FLAGS: [Flag<'static>; 5] = [
    Flag::Answered,
    Flag::Flagged,
    Flag::Deleted,
    Flag::Seen,
    Flag::Draft,
];

impl Session {
    pub fn new(policy: Policy) -> Self {
        let greeting = Greeting::ok(None, "Pochta IMAP ready").expect("valid greeting");
        let tls = policy.implicit_tls;
        Session {
            server: Server::new(Self::options(&policy), greeting),
            input: Input::new(policy.max_literal),
            in_parser: 0,
            renew_due: false,
            parsers_renewed: 0,
            policy,
            tls,
            state: State::NotAuthenticated,
            pending: None,
            action: None,
            errors: 0,
            condstore: false,
            qresync: false,
            rev2: false,
            idling: None,
            sasl_tag: None,
            starttls: false,
            starttls_ready: false,
            closing: false,
            closed: false,
            out: VecDeque::new(),
        }
    }

    fn options(policy: &Policy) -> Options {
        let mut options = Options::default();
        options.max_literal_size = policy.max_literal;
        options.max_command_size = policy.max_literal.saturating_add(64 * 1024);
        options.crlf_relaxed = true;
        let _ = options.set_literal_accept_text("Ready for literal data".into());
        let _ = options.set_literal_reject_text("Literal too large".into());
        options
    }

    /// A fresh parser in place of the old one, which may hold a buffer the size of the largest
    /// command it took (imap-codec keeps its capacity). Only where it holds no input nor
    /// output: after STARTTLS, or once a line piece has ended a command (`input`) and it asks
    /// for more. No greeting goes out.
    fn renew_parser(&mut self) {
        let greeting = Greeting::ok(None, "unused").expect("valid greeting");
        self.server = Server::new(Self::options(&self.policy), greeting);
        self.in_parser = 0;
        self.parsers_renewed += 1;
        loop {
            match self.server.next() {
                Ok(Event::GreetingSent { .. }) | Err(Interrupt::Io(Io::NeedMoreInput)) => break,
                Ok(_) | Err(Interrupt::Io(Io::Output(_))) => {}
                Err(Interrupt::Error(_)) => break,
            }
        }
    }

    /// The parser took a whole message from its input (a command, or one it refused): if it
    /// was `RENEW_PARSER_AFTER` octets or more and a line piece ended it, and the parser
    /// expects a command next (`renewable`), it is replaced when it next asks for input.
    fn message_taken(&mut self, renewable: bool) {
        let large = std::mem::take(&mut self.in_parser) >= RENEW_PARSER_AFTER;
        self.renew_due |= renewable && large && self.input.line_ended();
    }

    /// How often the parser was replaced to give back a large command's buffer (or at
    /// STARTTLS).
    pub fn parsers_renewed(&self) -> u64 {
        self.parsers_renewed
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn tls_active(&self) -> bool {
        self.tls
    }

    /// The selected mailbox and how far the view knows it, for the world to look for changes
    /// (`Request::Changes`, answered by `apply_changes`): only in IDLE, since an EXPUNGE may
    /// not be sent while no command is in progress (RFC 9051 7.5.1); outside IDLE, NOOP and
    /// CHECK tell what changed. None: not idling in a selected mailbox.
    pub fn watching(&self) -> Option<(i64, u64, u32)> {
        match (&self.state, &self.pending) {
            (State::Selected(view), None) if self.idling.is_some() => Some((
                view.mailbox.id,
                view.mailbox.highest_modseq,
                view.highest_uid(),
            )),
            _ => None,
        }
    }

    /// The selected mailbox's id, whatever the session is doing.
    pub fn selected(&self) -> Option<i64> {
        self.view().map(|v| v.mailbox.id)
    }

    /// Changes found while the session idled (or by NOOP and CHECK): told to the client now.
    pub fn apply_changes(&mut self, changes: Changes) {
        if self.pending.is_some() {
            return;
        }
        let (condstore, qresync) = (self.condstore, self.qresync);
        if let State::Selected(view) = &mut self.state {
            if changes.mailbox.is_none() {
                self.send_status(
                    Status::bye(None, "Selected mailbox was deleted").expect("valid text"),
                );
                self.closing = true;
                return;
            }
            for data in view.apply(changes, condstore, qresync) {
                self.send_data(data);
            }
        }
    }

    fn capabilities(&self) -> Vec<Capability<'static>> {
        // Both: a client that does not ENABLE IMAP4rev2 is served as IMAP4rev1 (RFC 9051
        // Appendix E).
        let mut caps = vec![Capability::Imap4Rev1, Capability::from(atom("IMAP4rev2"))];
        match self.state {
            State::NotAuthenticated => {
                if self.policy.starttls_available && !self.tls {
                    caps.push(Capability::StartTls);
                }
                if self.tls || self.policy.plaintext_auth {
                    caps.push(Capability::Auth(AuthMechanism::Plain));
                    caps.push(Capability::SaslIr);
                } else {
                    caps.push(Capability::LoginDisabled);
                }
            }
            _ => {
                caps.extend([
                    Capability::Enable,
                    Capability::Idle,
                    Capability::Namespace,
                    Capability::Id,
                    Capability::Unselect,
                    Capability::UidPlus,
                    Capability::Move,
                    Capability::CondStore,
                    Capability::QResync,
                    Capability::StatusSize,
                    Capability::Binary,
                    Capability::from(atom("SPECIAL-USE")),
                    // extended.rs
                    Capability::from(atom("ESEARCH")),
                    Capability::from(atom("SEARCHRES")),
                    Capability::from(atom("LIST-EXTENDED")),
                    Capability::from(atom("LIST-STATUS")),
                ]);
            }
        }
        caps.extend([Capability::LiteralPlus]);
        caps
    }

    fn capability_code(&self) -> Option<Code<'static>> {
        Vec1::try_from(self.capabilities())
            .ok()
            .map(Code::Capability)
    }

    /// Encodes a response into `out`, a buffer per fragment as encoded (a literal is not
    /// copied again into one buffer with its lines).
    fn respond(&mut self, response: &Response<'static>) {
        self.out.extend(
            ResponseCodec::default()
                .encode(response)
                .map(|fragment| match fragment {
                    Fragment::Line { data } | Fragment::Literal { data, .. } => data,
                }),
        );
    }

    fn send_data(&mut self, data: Data<'static>) {
        self.respond(&Response::Data(data));
    }

    fn send_status(&mut self, status: Status<'static>) {
        self.respond(&Response::Status(status));
    }

    fn tagged(&mut self, status: Status<'static>) {
        self.send_status(status);
    }

    fn ok(&mut self, tag: Tag<'static>, text: &str) {
        self.tagged(status_ok(tag, None, text));
    }

    fn no(&mut self, tag: Tag<'static>, text: &str) {
        self.tagged(status_no(tag, None, text));
    }

    fn bad(&mut self, tag: Option<Tag<'static>>, text: &str) {
        self.errors += 1;
        self.tagged(status_bad(tag, text));
        if self.errors >= self.policy.max_errors {
            self.tagged(Status::bye(None, "Too many errors").expect("valid text"));
            self.closing = true;
        }
    }

    fn run(&mut self, pending: Pending, request: Request) {
        self.pending = Some(pending);
        self.action = Some(Action::Run(request));
    }

    /// A failure of the command; a missing mailbox is NONEXISTENT (RFC 9051 7.1).
    fn failure(&mut self, tag: Tag<'static>, failure: Failure) {
        self.failure_of(tag, failure, false);
    }

    /// `target`: the mailbox an APPEND, COPY or MOVE puts messages in, which, missing, the
    /// client may create and try again (TRYCREATE).
    fn failure_of(&mut self, tag: Tag<'static>, failure: Failure, target: bool) {
        let status = match failure {
            Failure::NoSuchMailbox if target => {
                status_no(tag, Some(Code::TryCreate), "No such mailbox")
            }
            Failure::NoSuchMailbox => {
                status_no(tag, Some(other_code(b"NONEXISTENT")), "No such mailbox")
            }
            Failure::AlreadyExists => status_no(
                tag,
                Some(other_code(b"ALREADYEXISTS")),
                "Mailbox already exists",
            ),
            Failure::Refused(why) => status_no(tag, None, &why),
            Failure::OverQuota => status_no(
                tag,
                Some(other_code(b"OVERQUOTA")),
                "The account's quota would be exceeded",
            ),
            Failure::Limit(why) => status_no(tag, Some(other_code(b"LIMIT")), &why),
            Failure::Temporary => status_no(
                tag,
                Some(other_code(b"UNAVAILABLE")),
                "Temporary failure, try again",
            ),
        };
        self.tagged(status);
    }

    /// A command, in the state it arrived in.
    fn command(&mut self, command: Command<'static>) {
        let Command { tag, body } = command;
        if matches!(self.state, State::Logout) {
            return;
        }
        match body {
            CommandBody::Capability => {
                if let Ok(caps) = Vec1::try_from(self.capabilities()) {
                    self.send_data(Data::Capability(caps));
                }
                self.ok(tag, "CAPABILITY completed");
            }
            CommandBody::Noop | CommandBody::Check => self.sync(Some(tag)),
            CommandBody::Logout => {
                self.send_status(Status::bye(None, "Logging out").expect("valid text"));
                self.ok(tag, "LOGOUT completed");
                self.state = State::Logout;
                self.closing = true;
            }
            CommandBody::StartTLS => {
                if !matches!(self.state, State::NotAuthenticated) {
                    self.bad(Some(tag), "Already authenticated");
                } else if self.tls || !self.policy.starttls_available {
                    self.bad(Some(tag), "TLS is not available here");
                } else {
                    self.ok(tag, "Begin TLS negotiation now");
                    self.starttls = true;
                }
            }
            CommandBody::Login { username, password } => {
                if !matches!(self.state, State::NotAuthenticated) {
                    return self.bad(Some(tag), "Already authenticated");
                }
                if !(self.tls || self.policy.plaintext_auth) {
                    let code = other_code(b"PRIVACYREQUIRED");
                    return self.tagged(status_no(tag, Some(code), "Use TLS first"));
                }
                let username = String::from_utf8_lossy(username.as_ref()).into_owned();
                let password = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.pending = Some(Pending::Login { tag, sasl: false });
                self.action = Some(Action::Login { username, password });
            }
            CommandBody::Enable { capabilities } => {
                if matches!(self.state, State::NotAuthenticated) {
                    return self.bad(Some(tag), "Log in first");
                }
                let mut enabled = Vec::new();
                for cap in capabilities.into_inner() {
                    if cap == CapabilityEnable::CondStore {
                        self.condstore = true;
                        enabled.push(cap);
                    } else if cap.to_string().eq_ignore_ascii_case("IMAP4rev2") {
                        self.rev2 = true;
                        enabled.push(cap);
                    } else if cap.to_string().eq_ignore_ascii_case("QRESYNC") {
                        // RFC 7162 3.2.3: QRESYNC implies CONDSTORE.
                        self.qresync = true;
                        self.condstore = true;
                        enabled.push(cap);
                    }
                }
                self.send_data(Data::Enabled {
                    capabilities: enabled,
                });
                self.ok(tag, "ENABLE completed");
            }
            CommandBody::Id { .. } => {
                self.send_data(Data::Id {
                    parameters: Some(vec![(
                        "name".try_into().expect("valid"),
                        "Pochta".try_into().expect("valid"),
                    )]),
                });
                self.ok(tag, "ID completed");
            }
            body if matches!(self.state, State::NotAuthenticated) => {
                let _ = body;
                self.bad(Some(tag), "Log in first")
            }
            CommandBody::Namespace => {
                use imap_next::imap_types::extensions::namespace::{Namespace, Namespaces};
                let personal: Namespaces<'static> = vec![Namespace {
                    prefix: "".try_into().expect("valid"),
                    delimiter: Some(DELIMITER.try_into().expect("valid")),
                    extensions: vec![],
                }];
                self.send_data(Data::Namespace {
                    personal,
                    other: vec![],
                    shared: vec![],
                });
                self.ok(tag, "NAMESPACE completed");
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(
                tag,
                &reference,
                std::slice::from_ref(&mailbox_wildcard),
                Listing::plain(false),
            ),
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(
                tag,
                &reference,
                std::slice::from_ref(&mailbox_wildcard),
                Listing::plain(true),
            ),
            CommandBody::Create { mailbox } => match names::mailbox_name(&mailbox, !self.rev2) {
                Some(name) if name == "INBOX" => {
                    self.failure(tag, Failure::AlreadyExists);
                }
                Some(name) => self.run(
                    Pending::Done {
                        tag,
                        what: "CREATE",
                    },
                    Request::Create { name },
                ),
                None => self.bad(Some(tag), "Invalid mailbox name"),
            },
            CommandBody::Delete { mailbox } => match names::mailbox_name(&mailbox, !self.rev2) {
                Some(name) if name == "INBOX" => {
                    self.failure(tag, Failure::Refused("INBOX cannot be deleted".into()))
                }
                Some(name) => self.run(
                    Pending::Done {
                        tag,
                        what: "DELETE",
                    },
                    Request::Delete { name },
                ),
                None => self.failure(tag, Failure::NoSuchMailbox),
            },
            CommandBody::Rename { from, to } => {
                match (
                    names::mailbox_name(&from, !self.rev2),
                    names::mailbox_name(&to, !self.rev2),
                ) {
                    // INBOX always exists; renaming it moves its messages (RFC 9051 6.3.6).
                    (Some(_), Some(t)) if t == "INBOX" => self.failure(tag, Failure::AlreadyExists),
                    (Some(from), Some(to)) => self.run(
                        Pending::Done {
                            tag,
                            what: "RENAME",
                        },
                        Request::Rename { from, to },
                    ),
                    _ => self.bad(Some(tag), "Invalid mailbox name"),
                }
            }
            CommandBody::Subscribe { mailbox } | CommandBody::Unsubscribe { mailbox }
                if names::mailbox_name(&mailbox, !self.rev2).is_none() =>
            {
                self.bad(Some(tag), "Invalid mailbox name")
            }
            CommandBody::Subscribe { mailbox } => self.run(
                Pending::Done {
                    tag,
                    what: "SUBSCRIBE",
                },
                Request::Subscribe {
                    name: names::mailbox_name(&mailbox, !self.rev2).unwrap_or_default(),
                    on: true,
                },
            ),
            CommandBody::Unsubscribe { mailbox } => self.run(
                Pending::Done {
                    tag,
                    what: "UNSUBSCRIBE",
                },
                Request::Subscribe {
                    name: names::mailbox_name(&mailbox, !self.rev2).unwrap_or_default(),
                    on: false,
                },
            ),
            CommandBody::Select {
                mailbox,
                parameters,
            } => self.select(tag, &mailbox, &parameters, false),
            CommandBody::Examine {
                mailbox,
                parameters,
            } => self.select(tag, &mailbox, &parameters, true),
            CommandBody::Status {
                mailbox,
                item_names,
            } => match names::mailbox_name(&mailbox, !self.rev2) {
                Some(name) => {
                    let deleted = counts_deleted(item_names.as_ref());
                    self.run(
                        Pending::Status {
                            tag,
                            items: item_names.into_owned(),
                        },
                        Request::Status { name, deleted },
                    )
                }
                None => self.failure(tag, Failure::NoSuchMailbox),
            },
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let Some(name) = names::mailbox_name(&mailbox, !self.rev2) else {
                    return self.failure(tag, Failure::NoSuchMailbox);
                };
                let content = match message {
                    imap_next::imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => {
                        l.into_inner().into_owned()
                    }
                    imap_next::imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => {
                        l.data.into_owned()
                    }
                };
                let date = date.map(|d| d.as_ref().with_timezone(&Utc));
                self.run(
                    Pending::Append { tag },
                    Request::Append {
                        name,
                        content,
                        flags: flag_strings(&flags),
                        date,
                    },
                );
            }
            body if !matches!(self.state, State::Selected(_)) => {
                let _ = body;
                self.bad(Some(tag), "No mailbox selected")
            }
            CommandBody::Unselect => {
                self.state = State::Authenticated;
                self.ok(tag, "UNSELECT completed");
            }
            CommandBody::Close => {
                let (id, read_only) = self
                    .view()
                    .map_or((0, true), |v| (v.mailbox.id, v.read_only));
                if read_only {
                    self.state = State::Authenticated;
                    self.ok(tag, "CLOSE completed");
                } else {
                    self.run(
                        Pending::Expunge { tag, close: true },
                        Request::Expunge {
                            mailbox_id: id,
                            uids: None,
                        },
                    );
                }
            }
            CommandBody::Expunge => self.expunge(tag, None),
            CommandBody::ExpungeUid { sequence_set } => self.expunge(tag, Some(sequence_set)),
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => self.fetch(tag, &sequence_set, macro_or_item_names, uid, &modifiers),
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => self.store(tag, &sequence_set, kind, response, &flags, uid, &modifiers),
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, &sequence_set, &mailbox, uid, false),
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, &sequence_set, &mailbox, uid, true),
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => self.search(tag, charset, criteria, uid, None),
            _ => self.bad(Some(tag), "Command not supported"),
        }
    }

    /// A command of an extension imap-codec does not parse, in the state it arrived in.
    fn extended(&mut self, command: Extended) {
        let tag = match &command {
            Extended::Search { tag, .. } | Extended::Nothing { tag, .. } => tag,
            Extended::List(list) => &list.tag,
            Extended::Saved(command) => &command.tag,
        };
        let tag = tag.clone();
        match (&self.state, command) {
            (State::Logout, _) => {}
            (State::NotAuthenticated, _) => self.bad(Some(tag), "Log in first"),
            (
                State::Selected(_),
                Extended::Search {
                    tag,
                    uid,
                    charset,
                    criteria,
                    returns,
                },
            ) => self.search(tag, charset, criteria, uid, returns),
            (State::Selected(_), Extended::Nothing { tag, what }) => {
                self.ok(tag, &format!("{what} completed"));
            }
            (_, Extended::Search { .. } | Extended::Nothing { .. }) => {
                self.bad(Some(tag), "No mailbox selected")
            }
            (_, Extended::Saved(command)) => self.command(command),
            (_, Extended::List(list)) => self.list(
                list.tag,
                &list.reference,
                &list.patterns,
                Listing {
                    select: list.select,
                    status: list.status,
                    ..Listing::plain(false)
                },
            ),
        }
    }

    /// The messages of the saved SEARCH result (`$`, RFC 5182) still in the mailbox, as a
    /// sequence set of UIDs or of message numbers; None if there are none.
    fn saved_set(&self, uid: bool) -> Option<String> {
        let view = self.view()?;
        let values = view.saved.iter().filter_map(|u| {
            let place = view.index_of_uid(u)?;
            Some(if uid { u } else { place as u32 + 1 })
        });
        let text = set_text(values);
        (!text.is_empty()).then_some(text)
    }

    fn view(&self) -> Option<&View> {
        match &self.state {
            State::Selected(view) => Some(view),
            _ => None,
        }
    }

    fn view_mut(&mut self) -> Option<&mut View> {
        match &mut self.state {
            State::Selected(view) => Some(view),
            _ => None,
        }
    }

    /// NOOP, CHECK: tells what changed in the selected mailbox, then completes.
    fn sync(&mut self, tag: Option<Tag<'static>>) {
        match self.watching_now() {
            Some((mailbox_id, since_modseq, known_uid_max)) => self.run(
                Pending::Sync { tag },
                Request::Changes {
                    mailbox_id,
                    since_modseq,
                    known_uid_max,
                },
            ),
            None => {
                if let Some(tag) = tag {
                    self.ok(tag, "NOOP completed");
                }
            }
        }
    }

    fn watching_now(&self) -> Option<(i64, u64, u32)> {
        self.view()
            .map(|v| (v.mailbox.id, v.mailbox.highest_modseq, v.highest_uid()))
    }

    /// LIST and LSUB; `list` comes with its options and no patterns yet.
    fn list(
        &mut self,
        tag: Tag<'static>,
        reference: &Mailbox<'_>,
        patterns: &[ListMailbox<'_>],
        mut list: Listing,
    ) {
        let utf7 = !self.rev2;
        let reference = match reference {
            Mailbox::Inbox => "INBOX".to_owned(),
            Mailbox::Other(o) => names::list_pattern(o.as_ref(), utf7),
        };
        let patterns: Vec<String> = patterns
            .iter()
            .map(|p| names::list_pattern(&names::list_text(p), utf7))
            .collect();
        if patterns == [""] && list.select == ListSelect::default() {
            // The hierarchy delimiter and root (RFC 9051 6.3.9).
            self.send_data(Data::List {
                items: vec![FlagNameAttribute::Noselect],
                delimiter: DELIMITER.try_into().ok(),
                mailbox: Mailbox::try_from("").unwrap_or(Mailbox::Inbox),
            });
            return self.ok(tag, "LIST completed");
        }
        list.patterns = patterns
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| format!("{reference}{p}"))
            .collect();
        self.run(Pending::List { tag, list }, Request::Mailboxes);
    }

    /// A LIST's mailboxes: those matching a pattern and meeting the selection options
    /// (RFC 5258 3.1), then their STATUS if asked (RFC 5819).
    fn listed(&mut self, tag: Tag<'static>, list: Listing, mailboxes: &[MailboxSummary]) {
        let Listing {
            patterns,
            lsub,
            select,
            status,
        } = list;
        let matching = |name: &str| patterns.iter().any(|p| names::matches(p, name));
        let meets = |m: &MailboxSummary| {
            (m.subscribed || !(lsub || select.subscribed))
                && (m.special_use.is_some() || !select.special_use)
        };
        let mut names = VecDeque::new();
        for m in mailboxes {
            if !matching(&m.name) {
                continue;
            }
            let prefix = format!("{}{DELIMITER}", m.name);
            let mut descendants = mailboxes.iter().filter(|c| c.name.starts_with(&prefix));
            let children = descendants.clone().next().is_some();
            // RECURSIVEMATCH (RFC 5258 3.5): a descendant that meets the options but that no
            // pattern lists is told by its parent's CHILDINFO.
            let child_info =
                select.recursive_match && descendants.any(|c| meets(c) && !matching(&c.name));
            if !meets(m) && !child_info {
                continue;
            }
            let mut items = vec![FlagNameAttribute::from(atom(if children {
                "HasChildren"
            } else {
                "HasNoChildren"
            }))];
            if let Some(special) = &m.special_use {
                items.push(FlagNameAttribute::from(atom(
                    special.trim_start_matches('\\'),
                )));
            }
            if !lsub && m.subscribed {
                items.push(FlagNameAttribute::from(atom("Subscribed")));
            }
            let delimiter = DELIMITER.try_into().ok();
            let mailbox = mailbox(&m.name, !self.rev2);
            let data = if lsub {
                Data::Lsub {
                    items,
                    delimiter,
                    mailbox,
                }
            } else {
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                }
            };
            self.send_data(data);
            if child_info {
                // The extended item goes at the end of the line, before its CRLF.
                if let Some(line) = self.out.back_mut() {
                    line.truncate(line.len() - 2);
                    line.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n");
                }
            }
            if meets(m) {
                names.push_back(m);
            }
        }
        match status {
            // The listing carries each mailbox's counts: only \Deleted's must be counted.
            Some(items) if !counts_deleted(&items) => {
                for m in names {
                    self.send_status_of(m, &m.counts, &items);
                }
                self.ok(tag, "LIST completed");
            }
            Some(items) => {
                let names = names.into_iter().map(|m| m.name.clone()).collect();
                self.list_status(tag, items, names);
            }
            None => self.ok(
                tag,
                if lsub {
                    "LSUB completed"
                } else {
                    "LIST completed"
                },
            ),
        }
    }

    /// LIST-STATUS: the next listed mailbox's STATUS, or the end of the LIST.
    fn list_status(
        &mut self,
        tag: Tag<'static>,
        items: Vec<StatusDataItemName>,
        mut names: VecDeque<String>,
    ) {
        let Some(name) = names.pop_front() else {
            return self.ok(tag, "LIST completed");
        };
        let deleted = counts_deleted(&items);
        self.run(
            Pending::ListStatus { tag, items, names },
            Request::Status { name, deleted },
        );
    }

    fn select(
        &mut self,
        tag: Tag<'static>,
        mailbox: &Mailbox<'_>,
        parameters: &[SelectParameter],
        read_only: bool,
    ) {
        if matches!(self.state, State::Selected(_)) {
            // RFC 7162 3.2.11 / RFC 9051 7.1: the old mailbox is closed first.
            self.send_status(
                Status::ok(None, Some(Code::Closed), "Previous mailbox closed")
                    .expect("valid text"),
            );
            self.state = State::Authenticated;
        }
        let mut resync = None;
        for parameter in parameters {
            match parameter {
                SelectParameter::CondStore => self.condstore = true,
                // RFC 7162 3.2.5: only once the client has enabled QRESYNC.
                SelectParameter::QResync { .. } if !self.qresync => {
                    return self.bad(Some(tag), "ENABLE QRESYNC first");
                }
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    seq_match_data: _,
                } => {
                    resync = Some(Resync {
                        uid_validity: uid_validity.get(),
                        modseq: mod_sequence_value.get(),
                        known_uids: known_uids.clone(),
                    });
                }
            }
        }
        match names::mailbox_name(mailbox, !self.rev2) {
            Some(name) => self.run(
                Pending::Select {
                    tag,
                    read_only,
                    resync,
                },
                Request::Select { name },
            ),
            None => self.failure(tag, Failure::NoSuchMailbox),
        }
    }

    fn expunge(&mut self, tag: Tag<'static>, set: Option<SequenceSet>) {
        let Some(view) = self.view() else { return };
        if view.read_only {
            return self.no(tag, "Mailbox is read-only");
        }
        let uids = match set {
            None => None,
            Some(set) => match view.resolve(&set, true) {
                Ok(places) => Some(view.uids_at(&places)),
                Err(_) => return self.bad(Some(tag), "Invalid UID set"),
            },
        };
        let mailbox_id = view.mailbox.id;
        self.run(
            Pending::Expunge { tag, close: false },
            Request::Expunge { mailbox_id, uids },
        );
    }

    fn fetch(
        &mut self,
        tag: Tag<'static>,
        set: &SequenceSet,
        names: MacroOrMessageDataItemNames<'static>,
        uid: bool,
        modifiers: &[imap_next::imap_types::command::FetchModifier],
    ) {
        let Some(view) = self.view() else { return };
        let mut items = match names {
            MacroOrMessageDataItemNames::Macro(m) => m
                .expand()
                .into_iter()
                .map(IntoStatic::into_static)
                .collect(),
            MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
        };
        let places = match view.resolve(set, uid) {
            Ok(places) => places,
            Err(_) => return self.bad(Some(tag), "Invalid message set"),
        };
        let mut changed_since = None;
        let mut vanished = false;
        let mut vanished_uids = None;
        for modifier in modifiers {
            match modifier {
                imap_next::imap_types::command::FetchModifier::ChangedSince(since) => {
                    changed_since = Some(since.get());
                    if !items.contains(&MessageDataItemName::ModSeq) {
                        items.push(MessageDataItemName::ModSeq);
                    }
                }
                imap_next::imap_types::command::FetchModifier::Vanished => vanished = true,
            }
        }
        if vanished {
            // RFC 7162 3.2.6: UID FETCH with CHANGEDSINCE, once QRESYNC is enabled.
            if !(uid && self.qresync && changed_since.is_some()) {
                return self.bad(
                    Some(tag),
                    "VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC",
                );
            }
            // No record of expunges is kept: every UID of the set that is not here is told
            // (RFC 7162 3.2.6 lets a server report more than what changed since).
            vanished_uids = range_set(&view.missing(set));
        }
        let (mailbox_id, uids) = (view.mailbox.id, view.uids_at(&places));
        // RFC 7162 3.1.4.1: CHANGEDSINCE enables CONDSTORE.
        self.condstore |= changed_since.is_some();
        if let Some(known_uids) = vanished_uids {
            self.send_data(Data::Vanished {
                earlier: true,
                known_uids,
            });
        }
        if uids.is_empty() {
            return self.ok(tag, "FETCH completed");
        }
        let job = FetchJob {
            tag,
            uid,
            items,
            messages: Vec::new(),
            changed_since,
            seen_now: Vec::new(),
            seen_modseq: None,
            seen_told: 0,
            unknown_cte: false,
        };
        self.run(
            Pending::FetchMeta { fetch: job },
            Request::Messages { mailbox_id, uids },
        );
    }

    /// The messages' metadata is in: set \Seen first if the items read bodies, then read.
    fn fetch_known(&mut self, mut job: FetchJob, messages: Vec<Message>) {
        let Some(view) = self.view() else { return };
        job.messages = messages
            .into_iter()
            .filter(|m| job.changed_since.is_none_or(|since| m.modseq > since))
            .filter_map(|m| Some((view.index_of_uid(m.uid)?, m)))
            .collect();
        let unseen: Vec<u32> = job
            .messages
            .iter()
            .filter(|(_, m)| !m.has("\\Seen"))
            .map(|(_, m)| m.uid)
            .collect();
        if fetch::sets_seen(&job.items) && !view.read_only && !unseen.is_empty() {
            let mailbox_id = view.mailbox.id;
            return self.run(
                Pending::FetchSeen { fetch: job },
                Request::StoreFlags {
                    mailbox_id,
                    uids: unseen,
                    change: StoreType::Add,
                    flags: vec!["\\Seen".into()],
                    unchanged_since: None,
                },
            );
        }
        self.fetch_read(job);
    }

    /// Sends what needs no octets, or asks for the next batch of octets.
    fn fetch_read(&mut self, mut job: FetchJob) {
        let need = fetch::needs_content(&job.items);
        if need == fetch::Need::Nothing {
            let all: Vec<usize> = (0..job.messages.len()).collect();
            self.fetch_send(&mut job, &all, &mut HashMap::new());
            return self.fetch_done(job);
        }
        let reading = Reading {
            messages: Vec::new(),
            from: 0,
            next: 0,
            headers_only: need == fetch::Need::Header,
            matched: Vec::new(),
        };
        self.fetch_next(job, reading);
    }

    fn fetch_next(&mut self, job: FetchJob, mut reading: Reading) {
        if let Some(streamed) = self.streamed(&job, reading.next) {
            (reading.from, reading.next) = (reading.next, reading.next + 1);
            self.pending = Some(Pending::Fetch {
                fetch: job,
                reading,
            });
            self.action = Some(Action::Stream(streamed));
            return;
        }
        let batch = next_batch(
            &job.messages,
            reading.next,
            reading.headers_only,
            self.policy.read_batch_bytes,
        );
        if batch.is_empty() {
            return self.fetch_done(job);
        }
        let entry_ids = batch.clone().map(|i| job.messages[i].1.entry_id).collect();
        (reading.from, reading.next) = (batch.start, batch.end);
        let headers_only = reading.headers_only;
        let mut next = self.batch_after(&job.messages, &reading);
        if self.stream_range(&job, reading.next).is_some() {
            // That one is streamed, not read ahead whole.
            next.clear();
        }
        self.run(
            Pending::Fetch {
                fetch: job,
                reading,
            },
            Request::Contents {
                entry_ids,
                headers_only,
                next,
            },
        );
    }

    /// The message at `at` as a `Streamed` response, if it is larger than a read batch and the
    /// items send it as it is stored: held whole, one such message could take any amount of
    /// memory (a batch holds at least one message).
    fn streamed(&self, job: &FetchJob, at: usize) -> Option<Streamed> {
        let (from, len) = self.stream_range(job, at)?;
        let (place, m) = &job.messages[at];
        // The response with an empty literal where the octets go.
        let mut items =
            fetch::items(m, &job.items, Some(Vec::new()), job.uid, self.condstore).ok()?;
        if job.seen_now.contains(&m.uid) && !job.items.contains(&MessageDataItemName::Flags) {
            items.push(imap_next::imap_types::fetch::MessageDataItem::Flags(
                fetch::flags(&m.flags),
            ));
        }
        let response = Response::Data(fetch_data(*place, items));
        let fragments: Vec<Fragment> = ResponseCodec::default().encode(&response).collect();
        // The items other than the octets carry no strings, so that literal is the only one.
        let [
            Fragment::Line { data: head },
            Fragment::Literal { data: empty, .. },
            Fragment::Line { data: tail },
        ] = fragments.as_slice()
        else {
            return None;
        };
        let head = head.strip_suffix(b"{0}\r\n")?;
        if !empty.is_empty() {
            return None;
        }
        let mut head = head.to_vec();
        head.extend_from_slice(format!("{{{len}}}\r\n").as_bytes());
        Some(Streamed {
            entry_id: m.entry_id,
            head,
            from,
            len,
            tail: tail.clone(),
        })
    }

    /// The range of the message at `at` sent, if it is streamed (`streamed`).
    fn stream_range(&self, job: &FetchJob, at: usize) -> Option<(u64, u64)> {
        let size = job.messages.get(at)?.1.size;
        if u64::from(size) <= self.policy.read_batch_bytes {
            return None;
        }
        fetch::streamable(&job.items, size)
    }

    /// The tagged reply: OK, or NO [UNKNOWN-CTE] when BINARY left a message out (RFC 3516 4.1).
    fn fetch_done(&mut self, job: FetchJob) {
        // Every message whose \Seen this FETCH set went out with its flags.
        if job.seen_told == job.seen_now.len() {
            self.took_own_change(job.seen_modseq);
        }
        if job.unknown_cte {
            return self.tagged(status_no(
                job.tag,
                Some(Code::UnknownCte),
                "Cannot decode a part's Content-Transfer-Encoding",
            ));
        }
        self.ok(job.tag, "FETCH completed");
    }

    /// FETCH responses for these of the job's messages (indices into `job.messages`); their
    /// octets are taken from `contents` into the responses.
    fn fetch_send(
        &mut self,
        job: &mut FetchJob,
        which: &[usize],
        contents: &mut HashMap<i64, Vec<u8>>,
    ) {
        let condstore = self.condstore;
        let needs_content = fetch::needs_content(&job.items) != fetch::Need::Nothing;
        let mut out = Vec::with_capacity(which.len());
        for &i in which {
            let (place, m) = &job.messages[i];
            let content = contents.remove(&m.entry_id);
            if needs_content && content.is_none() {
                // Expunged elsewhere since the view last looked: nothing to send.
                continue;
            }
            let Ok(mut items) = fetch::items(m, &job.items, content, job.uid, condstore) else {
                job.unknown_cte = true;
                continue;
            };
            if job.seen_now.contains(&m.uid) {
                job.seen_told += 1;
                if !job.items.contains(&MessageDataItemName::Flags) {
                    items.push(imap_next::imap_types::fetch::MessageDataItem::Flags(
                        fetch::flags(&m.flags),
                    ));
                }
            }
            out.push(fetch_data(*place, items));
        }
        for data in out {
            self.send_data(data);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        tag: Tag<'static>,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
        modifiers: &[imap_next::imap_types::command::StoreModifier],
    ) {
        let Some(view) = self.view() else { return };
        if view.read_only {
            return self.no(tag, "Mailbox is read-only");
        }
        let places = match view.resolve(set, uid) {
            Ok(places) => places,
            Err(_) => return self.bad(Some(tag), "Invalid message set"),
        };
        let unchanged_since = modifiers.iter().map(|m| match m {
            imap_next::imap_types::command::StoreModifier::UnchangedSince(n) => *n,
        });
        let unchanged_since = unchanged_since.min();
        let uids = view.uids_at(&places);
        let mailbox_id = view.mailbox.id;
        self.run(
            Pending::Store {
                tag,
                uid,
                silent: response == StoreResponse::Silent,
                conditional: unchanged_since.is_some(),
                uids: uids.clone(),
            },
            Request::StoreFlags {
                mailbox_id,
                uids,
                change: kind,
                flags: flag_strings(flags),
                unchanged_since,
            },
        );
    }

    fn copy(
        &mut self,
        tag: Tag<'static>,
        set: &SequenceSet,
        target: &Mailbox<'_>,
        uid: bool,
        remove: bool,
    ) {
        let Some(view) = self.view() else { return };
        if remove && view.read_only {
            return self.no(tag, "Mailbox is read-only");
        }
        let places = match view.resolve(set, uid) {
            Ok(places) => places,
            Err(_) => return self.bad(Some(tag), "Invalid message set"),
        };
        let Some(to) = names::mailbox_name(target, !self.rev2) else {
            return self.failure(tag, Failure::NoSuchMailbox);
        };
        let uids = view.uids_at(&places);
        let mailbox_id = view.mailbox.id;
        self.run(
            Pending::Copy { tag, remove },
            Request::Copy {
                mailbox_id,
                uids,
                to,
                remove,
            },
        );
    }

    fn search(
        &mut self,
        tag: Tag<'static>,
        charset: Option<Charset<'static>>,
        criteria: Vec1<SearchKey<'static>>,
        uid: bool,
        returns: Option<SearchReturn>,
    ) {
        if let Some(charset) = charset {
            let name = charset.as_ref().to_ascii_uppercase();
            if name != "UTF-8" && name != "US-ASCII" {
                let code = Code::badcharset(vec![
                    Charset::try_from("UTF-8").expect("valid"),
                    Charset::try_from("US-ASCII").expect("valid"),
                ]);
                return self.tagged(status_no(tag, Some(code), "Unsupported charset"));
            }
        }
        let key = SearchKey::And(criteria);
        let Some(need) = search::needs_content(&key, 0) else {
            return self.bad(Some(tag), "Search keys nested too deep");
        };
        if search::key_count(&key) > search::MAX_KEYS {
            return self.bad(Some(tag), "Too many search keys");
        }
        // RFC 7162 3.1.5: a MODSEQ key enables CONDSTORE, so the result carries (MODSEQ n).
        self.condstore |= search::names_modseq(&key);
        // RFC 9051 6.4.4: an IMAP4rev2 session is answered ESEARCH, ALL when not told.
        let returns = returns.or(self.rev2.then_some(SearchReturn {
            all: true,
            ..SearchReturn::default()
        }));
        let search = SearchJob {
            tag,
            uid,
            key,
            need,
            store_modseq: 0,
            returns,
        };
        let key = &search.key;
        let Some(view) = self.view() else { return };
        if view.uids.is_empty() {
            return self.search_done(search, &mut [], 0);
        }
        let mailbox_id = view.mailbox.id;
        // COUNT alone of a key about flags, sizes, dates or UIDs: the store counts, and only
        // the messages the view has (those that arrived since are not told yet).
        let count_only = search
            .returns
            .is_some_and(|r| r.count && !(r.all || r.min || r.max || r.save));
        if count_only && search.need == fetch::Need::Nothing {
            let known = Sequence::Range(
                SeqOrUid::Value(NonZeroU32::MIN),
                SeqOrUid::Value(nonzero(view.highest_uid())),
            );
            let keys = vec![
                search::with_uid_sets(key, view),
                SearchKey::Uid(known.into()),
            ];
            let key = SearchKey::And(Vec1::try_from(keys).expect("two keys"));
            return self.run(
                Pending::SearchCounted { search },
                Request::SearchCount { mailbox_id, key },
            );
        }
        // Flags, sizes, dates, UIDs and the header fields the store keeps: only the matches
        // (and the messages it cannot decide) need leave the store. Otherwise every message's
        // metadata, then its octets.
        let request = if search.need == fetch::Need::Nothing || search::decidable_in_store(key) {
            let mut store_key = search::with_uid_sets(key, view);
            // CONDSTORE's (MODSEQ n) is the store's highest over its matches: those that
            // arrived after the view last looked are not told, so they are kept out.
            if self.condstore {
                let known = Sequence::Range(
                    SeqOrUid::Value(NonZeroU32::MIN),
                    SeqOrUid::Value(nonzero(view.highest_uid())),
                );
                let keys = vec![store_key, SearchKey::Uid(known.into())];
                store_key = SearchKey::And(Vec1::try_from(keys).expect("two keys"));
            }
            Request::Search {
                mailbox_id,
                key: store_key,
            }
        } else {
            Request::Messages {
                mailbox_id,
                uids: view.uids.iter().collect(),
            }
        };
        let pending = match request {
            Request::Search { .. } => Pending::SearchFound { search },
            _ => Pending::SearchMeta {
                search,
                matched: Vec::new(),
            },
        };
        self.run(pending, request);
    }

    /// The store's answer to a search: its matches, and the messages whose octets must decide.
    fn search_found(&mut self, mut search: SearchJob, found: Found) {
        let Some(view) = self.view() else {
            return self.search_done(search, &mut [], 0);
        };
        // Matches the view does not have (arrived since) are not told yet. Their own
        // mod-sequences are not needed: the store's highest stands for them all.
        let mut matched: Vec<(usize, u32, u64)> = found
            .matched
            .iter()
            .filter_map(|&uid| Some((view.index_of_uid(uid)?, uid, 0)))
            .collect();
        let undecided: Vec<u32> = found
            .undecided
            .into_iter()
            .filter(|&uid| view.index_of_uid(uid).is_some())
            .collect();
        search.store_modseq = found.highest_modseq;
        if undecided.is_empty() {
            let modseq = search.store_modseq;
            return self.search_done(search, &mut matched, modseq);
        }
        let mailbox_id = view.mailbox.id;
        self.run(
            Pending::SearchMeta { search, matched },
            Request::Messages {
                mailbox_id,
                uids: undecided,
            },
        );
    }

    /// The metadata of the messages to read is in: read octets batch by batch and search
    /// them, adding to what is `matched` already.
    fn search_known(
        &mut self,
        search: SearchJob,
        messages: Vec<Message>,
        matched: Vec<(usize, u32, u64)>,
    ) {
        let Some(view) = self.view() else { return };
        let reading = Reading {
            messages: messages
                .into_iter()
                .filter_map(|m| Some((view.index_of_uid(m.uid)?, m)))
                .collect(),
            from: 0,
            next: 0,
            headers_only: search.need == fetch::Need::Header,
            matched,
        };
        self.search_next(search, reading);
    }

    fn search_next(&mut self, search: SearchJob, mut reading: Reading) {
        let batch = next_batch(
            &reading.messages,
            reading.next,
            reading.headers_only,
            self.policy.read_batch_bytes,
        );
        if batch.is_empty() {
            let mut matched = std::mem::take(&mut reading.matched);
            let modseq = search.store_modseq;
            return self.search_done(search, &mut matched, modseq);
        }
        let entry_ids = batch
            .clone()
            .map(|i| reading.messages[i].1.entry_id)
            .collect();
        (reading.from, reading.next) = (batch.start, batch.end);
        let headers_only = reading.headers_only;
        let next = self.batch_after(&reading.messages, &reading);
        self.run(
            Pending::Search { search, reading },
            Request::Contents {
                entry_ids,
                headers_only,
                next,
            },
        );
    }

    /// Answers an ESEARCH that asked for COUNT alone (RFC 4731 3.1): the count, and with
    /// CONDSTORE the highest mod-sequence of the matches (RFC 7162 3.1.5) when there are any.
    fn search_counted(&mut self, search: SearchJob, count: u32, modseq: u64) {
        let mut line = format!("* ESEARCH (TAG \"{}\")", search.tag.as_ref());
        if search.uid {
            line.push_str(" UID");
        }
        line.push_str(&format!(" COUNT {count}"));
        if self.condstore && count > 0 && modseq > 0 {
            line.push_str(&format!(" MODSEQ {modseq}"));
        }
        line.push_str("\r\n");
        self.out.push_back(line.into_bytes());
        self.ok(search.tag, "SEARCH completed");
    }

    /// Answers a SEARCH: `matched` holds (place, UID, mod-sequence) of each match, and
    /// `modseq` the highest of those whose own is not there (0 for them).
    fn search_done(&mut self, search: SearchJob, matched: &mut [(usize, u32, u64)], modseq: u64) {
        // The store's matches and those read from octets come in two runs.
        if !matched.is_sorted() {
            matched.sort_unstable();
        }
        let number = |&(place, uid, _): &(usize, u32, u64)| {
            if search.uid { uid } else { place as u32 + 1 }
        };
        let modseq = if self.condstore {
            matched
                .iter()
                .map(|&(_, _, m)| m)
                .max()
                .map(|m| m.max(modseq))
                .and_then(NonZeroU64::new)
        } else {
            None
        };
        let Some(returns) = search.returns else {
            let numbers = matched.iter().map(|m| nonzero(number(m))).collect();
            self.send_data(Data::Search(numbers, modseq));
            return self.ok(search.tag, "SEARCH completed");
        };
        // The UIDs of the MIN and MAX asked for.
        let ends = matched.first().zip(matched.last());
        let end_uids: Vec<u32> = ends
            .map(|(first, last)| [(returns.min, first.1), (returns.max, last.1)])
            .into_iter()
            .flatten()
            .filter_map(|(asked, uid)| asked.then_some(uid))
            .collect();
        // MIN or MAX without ALL or COUNT: what is saved and what MODSEQ tells are theirs.
        let ends_only = (returns.min || returns.max) && !(returns.all || returns.count);
        if returns.save {
            // RFC 9051 6.4.4.1.
            let uids = match ends_only {
                true => end_uids.clone(),
                false => matched.iter().map(|m| m.1).collect(),
            };
            if let Some(view) = self.view_mut() {
                view.saved = Uids::new(uids);
            }
            if !(returns.min || returns.max || returns.all || returns.count) {
                // SAVE alone: no ESEARCH response.
                return self.ok(search.tag, "SEARCH completed");
            }
        }
        // RFC 4731 3.1: MIN, MAX and ALL only when something matched; COUNT always.
        let mut line = format!("* ESEARCH (TAG \"{}\")", search.tag.as_ref());
        if search.uid {
            line.push_str(" UID");
        }
        if let Some((first, last)) = ends {
            if returns.min {
                line.push_str(&format!(" MIN {}", number(first)));
            }
            if returns.max {
                line.push_str(&format!(" MAX {}", number(last)));
            }
        }
        if returns.count {
            line.push_str(&format!(" COUNT {}", matched.len()));
        }
        if returns.all && !matched.is_empty() {
            line.push_str(&format!(" ALL {}", set_text(matched.iter().map(number))));
        }
        match (modseq, ends) {
            // RFC 7162 3.1.5: with MIN or MAX alone, the mod-sequence of the messages
            // returned, which the store tells.
            (Some(_), Some(_)) if ends_only => {
                let Some(view) = self.view() else { return };
                let mailbox_id = view.mailbox.id;
                if let Some(set) = uid_set(&end_uids) {
                    return self.run(
                        Pending::SearchModseq {
                            tag: search.tag,
                            line,
                        },
                        Request::Search {
                            mailbox_id,
                            key: SearchKey::Uid(set),
                        },
                    );
                }
            }
            (Some(modseq), Some(_)) => line.push_str(&format!(" MODSEQ {modseq}")),
            _ => {}
        }
        line.push_str("\r\n");
        self.out.push_back(line.into_bytes());
        self.ok(search.tag, "SEARCH completed");
    }

    /// The entry ids of the batch after the one `reading` has just asked for.
    fn batch_after(&self, messages: &[(usize, Message)], reading: &Reading) -> Vec<i64> {
        let after = next_batch(
            messages,
            reading.next,
            reading.headers_only,
            self.policy.read_batch_bytes,
        );
        after.map(|i| messages[i].1.entry_id).collect()
    }

    /// The world's answer to the session's last `Action::Run`.
    pub fn answer(&mut self, answer: Answer) {
        let Some(pending) = self.pending.take() else {
            debug_assert!(false, "no request is pending");
            return;
        };
        match (pending, answer) {
            (Pending::List { tag, list }, Answer::Mailboxes(Ok(mailboxes))) => {
                self.listed(tag, list, &mailboxes);
            }
            (
                Pending::Select {
                    tag,
                    read_only,
                    resync,
                },
                Answer::Selected(Ok((summary, uids))),
            ) => {
                self.send_data(Data::Flags(SYSTEM_FLAGS.to_vec()));
                self.send_data(Data::Exists(uids.len() as u32));
                if !self.rev2 {
                    // Gone from IMAP4rev2 (RFC 9051 Appendix E); a rev1 client expects it.
                    self.send_data(Data::Recent(0));
                }
                let mut permanent: Vec<FlagPerm<'static>> =
                    SYSTEM_FLAGS.iter().cloned().map(FlagPerm::Flag).collect();
                permanent.push(FlagPerm::Asterisk);
                let codes = [
                    Some(Code::PermanentFlags(if read_only {
                        vec![]
                    } else {
                        permanent
                    })),
                    Some(Code::UidValidity(nonzero(summary.uid_validity))),
                    Some(Code::UidNext(nonzero(summary.uid_next))),
                    NonZeroU64::new(summary.highest_modseq)
                        .filter(|_| self.condstore)
                        .map(Code::HighestModSeq),
                ];
                for code in codes.into_iter().flatten() {
                    self.send_status(Status::ok(None, Some(code), "ok").expect("valid text"));
                }
                let code = if read_only {
                    Code::ReadOnly
                } else {
                    Code::ReadWrite
                };
                let mailbox_id = summary.id;
                let resync = resync.filter(|r| r.uid_validity == summary.uid_validity);
                let view = View {
                    mailbox: summary,
                    read_only,
                    uids: Uids::new(uids),
                    saved: Uids::default(),
                };
                let Some(resync) = resync else {
                    self.state = State::Selected(view);
                    return self.tagged(status_ok(tag, Some(code), "SELECT completed"));
                };
                // RFC 7162 3.2.5.2: what vanished, then the flags changed since the client's
                // mod-sequence, before the tagged OK.
                let known = resync.known_uids.unwrap_or_else(|| {
                    let below_next = view.mailbox.uid_next.saturating_sub(1).max(1);
                    SequenceSet::try_from(format!("1:{below_next}").as_str())
                        .expect("a valid range")
                });
                if let Some(known_uids) = range_set(&view.missing(&known)) {
                    self.send_data(Data::Vanished {
                        earlier: true,
                        known_uids,
                    });
                }
                self.state = State::Selected(view);
                self.run(
                    Pending::Resync { tag, code },
                    Request::Changes {
                        mailbox_id,
                        since_modseq: resync.modseq,
                        known_uid_max: 0,
                    },
                );
            }
            (Pending::Resync { tag, code }, Answer::Changes(Ok(changes))) => {
                let mut out = Vec::new();
                if let Some(view) = self.view() {
                    for m in &changes.changed {
                        // Arrived after the SELECT's look: told as new by the next NOOP.
                        if let Some(place) = view.index_of_uid(m.uid) {
                            out.push(fetch_data(place, fetch::flag_items(m, true)));
                        }
                    }
                }
                for data in out {
                    self.send_data(data);
                }
                self.tagged(status_ok(tag, Some(code), "SELECT completed"));
            }
            (Pending::Status { tag, items }, Answer::Status(Ok((summary, counts)))) => {
                self.send_status_of(&summary, &counts, &items);
                self.ok(tag, "STATUS completed");
            }
            (Pending::ListStatus { tag, items, names }, Answer::Status(Ok((summary, counts)))) => {
                self.send_status_of(&summary, &counts, &items);
                self.list_status(tag, items, names);
            }
            // Deleted since it was listed: nothing to tell of it.
            (
                Pending::ListStatus { tag, items, names },
                Answer::Status(Err(Failure::NoSuchMailbox)),
            ) => self.list_status(tag, items, names),
            (Pending::SearchModseq { tag, mut line }, Answer::Found(Ok(found))) => {
                if found.highest_modseq > 0 {
                    line.push_str(&format!(" MODSEQ {}", found.highest_modseq));
                }
                line.push_str("\r\n");
                self.out.push_back(line.into_bytes());
                self.ok(tag, "SEARCH completed");
            }
            (Pending::Done { tag, what }, Answer::Done(Ok(()))) => {
                self.ok(tag, &format!("{what} completed"));
            }
            (Pending::Append { tag }, Answer::Placed(Ok((validity, uids)))) => {
                let code = uids.first().map(|&(_, uid)| Code::AppendUid {
                    uid_validity: nonzero(validity),
                    uid: nonzero(uid),
                });
                self.tagged(status_ok(tag, code, "APPEND completed"));
            }
            (Pending::FetchMeta { fetch }, Answer::Messages(Ok(messages))) => {
                self.fetch_known(fetch, messages);
            }
            (Pending::FetchSeen { mut fetch }, Answer::Flags(Ok((changed, _)))) => {
                fetch.seen_modseq = newest_modseq(&changed);
                for m in changed {
                    if let Some((_, known)) =
                        fetch.messages.iter_mut().find(|(_, k)| k.uid == m.uid)
                    {
                        fetch.seen_now.push(m.uid);
                        *known = m;
                    }
                }
                self.fetch_read(fetch);
            }
            (
                Pending::Fetch {
                    mut fetch,
                    mut reading,
                },
                Answer::Contents(Ok(contents)),
            ) => {
                let mut contents = reading.cut(contents);
                // This batch: those of the messages asked for whose octets came.
                let batch: Vec<usize> = (reading.from..reading.next)
                    .filter(|&i| contents.contains_key(&fetch.messages[i].1.entry_id))
                    .collect();
                self.fetch_send(&mut fetch, &batch, &mut contents);
                self.fetch_next(fetch, reading);
            }
            (Pending::Fetch { mut fetch, reading }, Answer::Streamed(Ok(sent))) => {
                let uid = fetch.messages.get(reading.from).map(|(_, m)| m.uid);
                if sent && uid.is_some_and(|uid| fetch.seen_now.contains(&uid)) {
                    fetch.seen_told += 1;
                }
                self.fetch_next(fetch, reading)
            }
            (Pending::SearchMeta { search, matched }, Answer::Messages(Ok(messages))) => {
                self.search_known(search, messages, matched)
            }
            (Pending::SearchFound { search }, Answer::Found(Ok(found))) => {
                self.search_found(search, found)
            }
            (Pending::SearchCounted { search }, Answer::Counted(Ok((count, modseq)))) => {
                self.search_counted(search, count, modseq)
            }
            (
                Pending::Search {
                    search,
                    mut reading,
                },
                Answer::Contents(Ok(contents)),
            ) => {
                let contents = reading.cut(contents);
                if let Some(view) = self.view() {
                    for (place, m) in &reading.messages[reading.from..reading.next] {
                        if let Some(content) = contents.get(&m.entry_id)
                            && search::matches(&search.key, view, *place, m, Some(content))
                        {
                            reading.matched.push((*place, m.uid, m.modseq));
                        }
                    }
                }
                // Batches follow one another in place order: matches stay ascending.
                self.search_next(search, reading);
            }
            (
                Pending::Store {
                    tag,
                    uid,
                    silent,
                    conditional,
                    uids,
                },
                Answer::Flags(Ok((changed, modified))),
            ) => {
                // The client hears of the change from this STORE (its FLAGS, or with
                // CONDSTORE its MODSEQ), or asked not to and has no mod-sequences to learn.
                if !silent || conditional || !self.condstore {
                    self.took_own_change(newest_modseq(&changed));
                }
                if silent {
                    if conditional {
                        // RFC 7162 3.1.3: a FETCH with MODSEQ for each message changed, even
                        // for .SILENT, so the client's cache learns the new mod-sequences.
                        let changed: Vec<&Message> = changed.iter().collect();
                        self.report_stored(&changed, false, uid, true);
                    }
                    return self.store_done(tag, &modified);
                }
                let Some(view) = self.view() else {
                    return self.store_done(tag, &modified);
                };
                // The flags now, of every message named (changed here or not).
                let mailbox_id = view.mailbox.id;
                self.run(
                    Pending::StoreReport { tag, uid, modified },
                    Request::Messages { mailbox_id, uids },
                );
            }
            (Pending::StoreReport { tag, uid, modified }, Answer::Messages(Ok(messages))) => {
                let unmodified: Vec<&Message> = messages
                    .iter()
                    .filter(|m| !modified.contains(&m.uid))
                    .collect();
                self.report_stored(&unmodified, true, uid, self.condstore);
                self.store_done(tag, &modified);
            }
            (Pending::Expunge { tag, close }, Answer::Expunged(Ok(uids))) => {
                if close {
                    self.state = State::Authenticated;
                    return self.ok(tag, "CLOSE completed");
                }
                self.tell_expunged(&uids);
                self.ok(tag, "EXPUNGE completed");
            }
            (Pending::Copy { tag, remove }, Answer::Placed(Ok((validity, pairs)))) => {
                let code = match (
                    uid_plus_set(pairs.iter().map(|p| p.0)),
                    uid_plus_set(pairs.iter().map(|p| p.1)),
                ) {
                    (Some(source), Some(destination)) => Some(Code::CopyUid {
                        uid_validity: nonzero(validity),
                        source,
                        destination,
                    }),
                    _ => None,
                };
                if remove {
                    if let Some(code) = code {
                        self.send_status(Status::ok(None, Some(code), "moved").expect("valid"));
                    }
                    let gone: Vec<u32> = pairs.iter().map(|p| p.0).collect();
                    self.tell_expunged(&gone);
                    self.ok(tag, "MOVE completed");
                } else {
                    self.tagged(status_ok(tag, code, "COPY completed"));
                }
            }
            (Pending::Sync { tag }, Answer::Changes(Ok(changes))) => {
                self.apply_changes(changes);
                if let Some(tag) = tag {
                    self.ok(tag, "NOOP completed");
                }
            }
            (
                pending,
                Answer::Changes(Err(failure))
                | Answer::Done(Err(failure))
                | Answer::Mailboxes(Err(failure))
                | Answer::Selected(Err(failure))
                | Answer::Status(Err(failure))
                | Answer::Placed(Err(failure))
                | Answer::Contents(Err(failure))
                | Answer::Streamed(Err(failure))
                | Answer::Flags(Err(failure))
                | Answer::Expunged(Err(failure))
                | Answer::Found(Err(failure))
                | Answer::Counted(Err(failure))
                | Answer::Messages(Err(failure)),
            ) => {
                // RFC 9051 6.4.4.1: a SEARCH that was to save and failed empties `$`.
                if pending.saves()
                    && let Some(view) = self.view_mut()
                {
                    view.saved = Uids::default();
                }
                let target = matches!(pending, Pending::Append { .. } | Pending::Copy { .. });
                if let Some(tag) = pending.tag() {
                    self.failure_of(tag, failure, target);
                }
            }
            (pending, answer) => {
                debug_assert!(false, "answer {answer:?} does not match the request");
                if let Some(tag) = pending.tag() {
                    self.failure(tag, Failure::Temporary);
                }
            }
        }
    }

    /// An untagged STATUS response (RFC 9051 7.2.4) with the items asked for.
    fn send_status_of(
        &mut self,
        summary: &MailboxSummary,
        counts: &Counts,
        items: &[StatusDataItemName],
    ) {
        let data: Vec<StatusDataItem> = items
            .iter()
            .filter_map(|item| {
                Some(match item {
                    StatusDataItemName::Messages => StatusDataItem::Messages(counts.messages),
                    StatusDataItemName::Recent => StatusDataItem::Recent(0),
                    StatusDataItemName::UidNext => {
                        StatusDataItem::UidNext(nonzero(summary.uid_next))
                    }
                    StatusDataItemName::UidValidity => {
                        StatusDataItem::UidValidity(nonzero(summary.uid_validity))
                    }
                    StatusDataItemName::Unseen => StatusDataItem::Unseen(counts.unseen),
                    StatusDataItemName::Deleted => StatusDataItem::Deleted(counts.deleted),
                    StatusDataItemName::DeletedStorage => {
                        StatusDataItem::DeletedStorage(counts.deleted_size)
                    }
                    StatusDataItemName::Size => StatusDataItem::Size(counts.size),
                    StatusDataItemName::HighestModSeq => {
                        StatusDataItem::HighestModSeq(summary.highest_modseq)
                    }
                    #[allow(unreachable_patterns)]
                    _ => return None,
                })
            })
            .collect();
        self.send_data(Data::Status {
            mailbox: mailbox(&summary.name, !self.rev2),
            items: data.into(),
        });
    }

    /// The view learns the mod-sequence of the session's own change (`View::took_own_change`).
    fn took_own_change(&mut self, modseq: Option<u64>) {
        if let (Some(modseq), Some(view)) = (modseq, self.view_mut()) {
            view.took_own_change(modseq);
        }
    }

    /// A STORE's untagged FETCH for each of these messages still in the view: `[FLAGS (..)]
    /// [UID u] [MODSEQ (m)]`.
    fn report_stored(&mut self, messages: &[&Message], flags: bool, uid: bool, modseq: bool) {
        use imap_next::imap_types::fetch::MessageDataItem;
        let mut out = Vec::new();
        if let Some(view) = self.view() {
            for m in messages {
                let Some(place) = view.index_of_uid(m.uid) else {
                    continue;
                };
                let mut items = Vec::new();
                if flags {
                    items.push(MessageDataItem::Flags(fetch::flags(&m.flags)));
                }
                if uid {
                    items.push(MessageDataItem::Uid(nonzero(m.uid)));
                }
                if modseq && let Some(ms) = NonZeroU64::new(m.modseq) {
                    items.push(MessageDataItem::ModSeq(ms));
                }
                out.push(fetch_data(place, items));
            }
        }
        for data in out {
            self.send_data(data);
        }
    }

    fn store_done(&mut self, tag: Tag<'static>, modified: &[u32]) {
        let code = if modified.is_empty() {
            None
        } else {
            uid_set(modified).map(Code::Modified)
        };
        self.tagged(status_ok(tag, code, "STORE completed"));
    }

    /// EXPUNGE responses for messages gone from the view, highest number first; once QRESYNC
    /// is enabled, one VANISHED naming their UIDs instead (RFC 7162 3.2.10).
    fn tell_expunged(&mut self, uids: &[u32]) {
        let qresync = self.qresync;
        let mut out = Vec::new();
        if let Some(view) = self.view_mut() {
            let mut places: Vec<usize> =
                uids.iter().filter_map(|u| view.index_of_uid(*u)).collect();
            places.sort_unstable_by(|a, b| b.cmp(a));
            let mut gone = Vec::new();
            for p in places {
                gone.push(view.uids.remove(p));
                if !qresync {
                    out.push(Data::Expunge(nonzero(p as u32 + 1)));
                }
            }
            if let Some(known_uids) = uid_set(&gone).filter(|_| qresync) {
                out.push(Data::Vanished {
                    earlier: false,
                    known_uids,
                });
            }
        }
        for data in out {
            self.send_data(data);
        }
    }

    /// The outcome of `Action::Login`.
    pub fn login_result(&mut self, result: LoginResult) {
        let Some(Pending::Login { tag, sasl }) = self.pending.take() else {
            debug_assert!(false, "no login is pending");
            return;
        };
        let status = match result {
            LoginResult::Ok => {
                self.state = State::Authenticated;
                status_ok(tag, self.capability_code(), "Logged in")
            }
            LoginResult::BadCredentials => {
                let code = other_code(b"AUTHENTICATIONFAILED");
                status_no(tag, Some(code), "Authentication failed")
            }
            LoginResult::RateLimited => {
                let code = other_code(b"LIMIT");
                status_no(tag, Some(code), "Too many failed logins, try later")
            }
            LoginResult::TooManySessions => {
                let code = other_code(b"LIMIT");
                status_no(tag, Some(code), "Too many sessions for this account")
            }
            LoginResult::TemporaryFailure => {
                let code = other_code(b"UNAVAILABLE");
                status_no(tag, Some(code), "Temporary failure, try again")
            }
        };
        if sasl {
            if let Err(status) = self.server.authenticate_finish(status) {
                self.tagged(status);
            }
        } else {
            self.tagged(status);
        }
    }

    fn authenticate(
        &mut self,
        tag: Tag<'static>,
        mechanism: AuthMechanism<'static>,
        initial: Option<Vec<u8>>,
    ) {
        let refuse = |s: &mut Self, status: Status<'static>| {
            if let Err(status) = s.server.authenticate_finish(status) {
                s.tagged(status);
            }
        };
        if !matches!(self.state, State::NotAuthenticated) {
            self.errors += 1;
            return refuse(self, status_bad(Some(tag), "Already authenticated"));
        }
        if !(self.tls || self.policy.plaintext_auth) {
            let code = other_code(b"PRIVACYREQUIRED");
            return refuse(self, status_no(tag, Some(code), "Use TLS first"));
        }
        if mechanism != AuthMechanism::Plain {
            return refuse(self, status_no(tag, None, "Unsupported mechanism"));
        }
        match initial {
            Some(response) => self.plain(tag, &response),
            None => {
                self.sasl_tag = Some(tag);
                let _ = self
                    .server
                    .authenticate_continue(CommandContinuationRequest::base64(Vec::new()));
            }
        }
    }

    /// SASL PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd; an authzid other than the
    /// authcid is refused.
    fn plain(&mut self, tag: Tag<'static>, response: &[u8]) {
        let mut fields = response.split(|&b| b == 0);
        let (authz, authc, password) = (fields.next(), fields.next(), fields.next());
        let parsed = match (authz, authc, password, fields.next()) {
            (Some(z), Some(c), Some(p), None) if z.is_empty() || z == c => Some((c, p)),
            _ => None,
        };
        match parsed {
            Some((user, password)) => {
                self.pending = Some(Pending::Login { tag, sasl: true });
                self.action = Some(Action::Login {
                    username: String::from_utf8_lossy(user).into_owned(),
                    password: String::from_utf8_lossy(password).into_owned(),
                });
            }
            None => {
                self.errors += 1;
                let status = status_bad(Some(tag), "Malformed PLAIN response");
                if let Err(status) = self.server.authenticate_finish(status) {
                    self.tagged(status);
                }
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::GreetingSent { .. } | Event::ResponseSent { .. } => {}
            Event::CommandReceived { command } => self.command(command),
            Event::CommandAuthenticateReceived {
                command_authenticate,
            } => {
                let initial = command_authenticate
                    .initial_response
                    .map(|r| r.declassify().to_vec());
                self.authenticate(
                    command_authenticate.tag,
                    command_authenticate.mechanism,
                    initial,
                );
            }
            Event::AuthenticateDataReceived { authenticate_data } => {
                let Some(tag) = self.sasl_tag.take() else {
                    return;
                };
                match authenticate_data {
                    AuthenticateData::Continue(data) => self.plain(tag, data.declassify()),
                    AuthenticateData::Cancel => {
                        let status = status_bad(Some(tag), "Authentication cancelled");
                        if let Err(status) = self.server.authenticate_finish(status) {
                            self.tagged(status);
                        }
                    }
                }
            }
            Event::IdleCommandReceived { tag } => {
                if matches!(self.state, State::NotAuthenticated | State::Logout) {
                    self.errors += 1;
                    let _ = self
                        .server
                        .idle_reject(status_bad(Some(tag), "Log in first"));
                } else {
                    let idling =
                        CommandContinuationRequest::basic(None, "idling").expect("valid text");
                    let _ = self.server.idle_accept(idling);
                    self.idling = Some(tag);
                }
            }
            Event::IdleDoneReceived => {
                if let Some(tag) = self.idling.take() {
                    self.ok(tag, "IDLE terminated");
                }
            }
        }
    }

    fn malformed(&mut self, error: ServerError) {
        match error {
            ServerError::ExpectedCrlfGotLf { discarded_bytes }
            | ServerError::MalformedMessage { discarded_bytes } => {
                let bytes = discarded_bytes.declassify();
                // What imap-codec has no grammar for (extended.rs).
                let why = match extended::parse(bytes, &|uid| self.saved_set(uid)) {
                    Some(Ok(command)) => return self.extended(command),
                    Some(Err(why)) => why,
                    None => "Syntax error",
                };
                let tag = bytes
                    .split(|&b| b == b' ')
                    .next()
                    .and_then(|t| Tag::try_from(t).ok())
                    .map(IntoStatic::into_static);
                self.bad(tag, why);
            }
            // imap-next has already answered the literal with a tagged BAD.
            ServerError::LiteralTooLong { .. } => self.errors += 1,
            ServerError::CommandTooLong { .. } => {
                self.tagged(Status::bye(None, "Command too long").expect("valid text"));
                self.closing = true;
            }
        }
    }
}

impl Pending {
    /// A SEARCH with RETURN (SAVE).
    fn saves(&self) -> bool {
        match self {
            Pending::Search { search, .. }
            | Pending::SearchMeta { search, .. }
            | Pending::SearchFound { search }
            | Pending::SearchCounted { search } => search.returns.is_some_and(|r| r.save),
            _ => false,
        }
    }

    fn tag(self) -> Option<Tag<'static>> {
        Some(match self {
            Pending::Login { tag, .. }
            | Pending::List { tag, .. }
            | Pending::ListStatus { tag, .. }
            | Pending::SearchModseq { tag, .. }
            | Pending::Select { tag, .. }
            | Pending::Resync { tag, .. }
            | Pending::Status { tag, .. }
            | Pending::Done { tag, .. }
            | Pending::Append { tag }
            | Pending::Store { tag, .. }
            | Pending::StoreReport { tag, .. }
            | Pending::Expunge { tag, .. }
            | Pending::Copy { tag, .. } => tag,
            Pending::FetchMeta { fetch }
            | Pending::FetchSeen { fetch }
            | Pending::Fetch { fetch, .. } => fetch.tag,
            Pending::Search { search, .. }
            | Pending::SearchMeta { search, .. }
            | Pending::SearchFound { search }
            | Pending::SearchCounted { search } => search.tag,
            Pending::Sync { tag } => return tag,
        })
    }
}

/// A header block's size, guessed for batching (the store cuts it at its empty line).
const HEADER_GUESS: u64 = 4096;

/// The next messages to read, from `next`: at least one, then as many as fit `budget` octets
/// (256 at most; 1,024 when only header blocks are read).
fn next_batch(
    messages: &[(usize, Message)],
    next: usize,
    headers_only: bool,
    budget: u64,
) -> std::ops::Range<usize> {
    let most = if headers_only { 1024 } else { 256 };
    let mut used = 0u64;
    let mut end = next;
    for (_, m) in &messages[next.min(messages.len())..] {
        let size = u64::from(m.size);
        let size = if headers_only {
            size.min(HEADER_GUESS)
        } else {
            size
        };
        if end > next && (used + size > budget || end - next >= most) {
            break;
        }
        used += size;
        end += 1;
    }
    next..end
}

/// Ascending runs of consecutive values: [1, 2, 3, 7] is [(1, 3), (7, 7)].
fn runs(values: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut sorted: Vec<u32> = values.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for v in sorted {
        match runs.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(v) => *end = v,
            _ => runs.push((v, v)),
        }
    }
    runs
}

/// UIDs as a sequence set ("1:3,7"), for MODIFIED and VANISHED.
pub(crate) fn uid_set(uids: &[u32]) -> Option<SequenceSet> {
    range_set(&runs(uids.iter().copied()))
}

/// Ascending ranges as a sequence set; None when there are none.
pub(crate) fn range_set(ranges: &[(u32, u32)]) -> Option<SequenceSet> {
    let text: Vec<String> = ranges
        .iter()
        .copied()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}:{b}")
            }
        })
        .collect();
    SequenceSet::try_from(text.join(",").as_str()).ok()
}

/// A response code imap-types has no variant for (RFC 5530's, RFC 9051 7.1).
fn other_code(name: &'static [u8]) -> Code<'static> {
    Code::Other(imap_next::imap_types::response::CodeOther::unvalidated(
        name,
    ))
}

/// Numbers as a sequence set ("1:3,7"); empty when there are none.
fn set_text(values: impl IntoIterator<Item = u32>) -> String {
    runs(values)
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}:{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Do the STATUS items need the deleted messages counted (a scan of the mailbox)?
fn counts_deleted(items: &[StatusDataItemName]) -> bool {
    items.iter().any(|item| {
        matches!(
            item,
            StatusDataItemName::Deleted | StatusDataItemName::DeletedStorage
        )
    })
}

/// UIDs as COPYUID's set (RFC 4315), in the order given: source and destination sets list
/// their UIDs in corresponding order.
fn uid_plus_set(uids: impl IntoIterator<Item = u32>) -> Option<UidSet> {
    use imap_next::imap_types::extensions::uidplus::UidElement;
    let elements: Vec<UidElement> = runs(uids)
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                UidElement::Single(nonzero(a))
            } else {
                UidElement::Range(nonzero(a), nonzero(b))
            }
        })
        .collect();
    Vec1::try_from(elements).ok().map(UidSet)
}

impl pochta_session::Session for Session {
    type Action = Action;

    fn feed(&mut self, bytes: &[u8]) {
        self.input.push(bytes);
    }

    fn poll(&mut self) -> Option<Output<Action>> {
        loop {
            if let Some(bytes) = self.out.pop_front() {
                // STARTTLS's OK is the last thing queued: the handshake comes next.
                if self.out.is_empty() {
                    self.starttls_ready = std::mem::take(&mut self.starttls);
                }
                return Some(Output::Send(bytes));
            }
            if let Some(action) = self.action.take() {
                return Some(Output::Action(action));
            }
            if self.pending.is_some() || self.closed {
                return None;
            }
            if self.starttls_ready {
                // The OK has been handed out; nothing after STARTTLS is read in the clear.
                self.starttls_ready = false;
                return Some(Output::StartTls);
            }
            match self.server.next() {
                Ok(event) => {
                    if !matches!(
                        event,
                        Event::ResponseSent { .. } | Event::GreetingSent { .. }
                    ) {
                        // A whole command (or line) was taken from the input.
                        self.message_taken(matches!(event, Event::CommandReceived { .. }));
                    }
                    self.event(event);
                }
                Err(Interrupt::Io(Io::Output(bytes))) => return Some(Output::Send(bytes)),
                Err(Interrupt::Io(Io::NeedMoreInput)) => {
                    if self.closing {
                        self.closed = true;
                        return Some(Output::Close);
                    }
                    // Here the parser has sent all it queued (a refused literal's BAD, say):
                    // nothing of it is lost with it. Not while it waits for IDLE's DONE or
                    // an AUTHENTICATE response, which a fresh one would not.
                    if std::mem::take(&mut self.renew_due)
                        && self.idling.is_none()
                        && self.sasl_tag.is_none()
                    {
                        self.renew_parser();
                    }
                    // The parser has taken all it was given: the next piece.
                    let piece = self.input.next_piece()?;
                    self.in_parser = self.in_parser.saturating_add(piece.len());
                    self.server.enqueue_input(piece);
                }
                Err(Interrupt::Error(error)) => {
                    // A message refused (malformed, a literal too long) grew the buffer as
                    // much as a command taken.
                    self.message_taken(true);
                    self.malformed(error);
                }
            }
        }
    }

    fn tls_established(&mut self) {
        self.tls = true;
        // A fresh parser: anything the client sent after STARTTLS in the clear is dropped
        // (RFC 9051 6.2.1), and no greeting goes out again.
        self.input.clear();
        self.renew_parser();
    }

    fn timed_out(&mut self) {
        self.send_status(Status::bye(None, "Autologout; idle for too long").expect("valid text"));
        self.closing = true;
    }

    fn shutting_down(&mut self) {
        self.send_status(Status::bye(None, "Server shutting down").expect("valid text"));
        self.closing = true;
    }

    fn interruptible(&self) -> bool {
        self.pending.is_none()
    }

    /// In the middle of a command (a literal being sent, above all).
    fn in_data(&self) -> bool {
        self.buffered_bytes() > 0
    }

    /// About what the parser holds: input since the last whole command.
    fn buffered_bytes(&self) -> usize {
        self.in_parser.saturating_add(self.input.len())
    }
}
