//! Listeners, connection limits, and each connection's `pochta_imap::Session` run by the
//! shared driver (`pochta_service::drive`): this logs in, answers the session's requests
//! from the store, and, while the session waits for input, tells it of changes the store
//! announced for its mailbox (`watch.rs`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use pochta_config::{Config, PlaintextAuth};
use pochta_imap::imap_types::search::SearchKey;
use pochta_imap::imap_types::sequence::{SeqOrUid, Sequence};
use pochta_imap::{
    Action, Answer, Changes, Contents, Failure, FlagChange, Found, LoginResult, MailboxSummary,
    Message, Policy, Request, Session, Streamed,
};
use pochta_service::Shutdown;
use pochta_service::conn::Conn;
use pochta_service::drive::{Driver, Ended, Handler, Io, MemoryBudget, Timeouts};
use pochta_service::limits::{ConnectionLimiter, PerKeyGuard, PerKeyLimiter, Refusal};
use pochta_service::listen::ProxyPeers;
use pochta_service::login::{Authenticator, LoginOutcome, LoginRules};
use pochta_service::spawn::spawn_beside;
use pochta_store::{
    EntryPart, HeaderBlocks, MailboxInfo, MailboxLimits, MailboxMessage, MessageFilter,
    SearchField, Store, StoreError,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::watch::{MailboxWatch, Seen};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Imap,
    Imaps,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Imap => "imap",
            ListenerKind::Imaps => "imaps",
        }
    }
}

struct Metrics {
    sessions: Counter<u64>,
    logins: Counter<u64>,
    commands: Counter<u64>,
}

/// Everything the connections of this process share.
pub struct Server {
    store: Store,
    logins: Authenticator,
    tls: Option<TlsAcceptor>,
    limiter: ConnectionLimiter,
    proxy_peers: ProxyPeers,
    plaintext_auth: PlaintextAuth,
    max_errors: usize,
    max_literal: u32,
    read_batch_bytes: u64,
    change_check: Duration,
    timeouts: Timeouts,
    /// Client input all sessions hold (literals being received).
    memory: MemoryBudget,
    /// Sessions logged in, by account.
    accounts: PerKeyLimiter<i64>,
    watch: Arc<MailboxWatch>,
    metrics: Metrics,
}

impl Server {
    pub fn new(
        config: &Config,
        store: Store,
        tls: Option<TlsAcceptor>,
        watch: Arc<MailboxWatch>,
    ) -> anyhow::Result<Arc<Self>> {
        let imap = &config.imap;
        let meter = opentelemetry::global::meter("imap-access");
        Ok(Arc::new(Server {
            logins: Authenticator::new(
                store.clone(),
                LoginRules {
                    max_failures: imap.auth_max_failures,
                    failure_window: Duration::from_secs(imap.auth_failure_window_secs),
                    failure_delay: Duration::from_millis(imap.auth_failure_delay_ms),
                    cache_ttl: Duration::from_secs(imap.auth_cache_secs),
                    ipv6_prefix: imap.ipv6_limit_prefix,
                    max_checks: imap.max_password_checks as usize,
                    check_wait: Duration::from_secs(10),
                },
            )?,
            store: store.with_mailbox_limits(MailboxLimits {
                max_mailboxes: i64::from(imap.max_mailboxes),
                max_keywords: imap.max_keywords as usize,
                max_keyword_length: imap.max_keyword_length as usize,
            }),
            tls,
            limiter: ConnectionLimiter::new(
                imap.max_connections as usize,
                imap.max_connections_per_ip as usize,
                imap.ipv6_limit_prefix,
            ),
            proxy_peers: ProxyPeers {
                trusted: imap.proxy_protocol_from.clone(),
                header_timeout: Duration::from_secs(imap.proxy_header_timeout_secs),
            },
            plaintext_auth: imap.plaintext_auth,
            max_errors: imap.max_errors as usize,
            max_literal: imap.max_literal_bytes,
            read_batch_bytes: u64::from(imap.read_batch_bytes),
            change_check: Duration::from_millis(imap.change_check_ms),
            // One inactivity timeout: a literal is part of its command.
            timeouts: Timeouts {
                command: Duration::from_secs(imap.timeout_secs),
                data: Duration::from_secs(imap.timeout_secs),
                handshake: Duration::from_secs(imap.tls_handshake_timeout_secs),
                write: Duration::from_secs(imap.write_timeout_secs),
                session: Duration::from_secs(imap.max_session_secs),
            },
            memory: MemoryBudget::new(imap.max_input_memory_bytes as usize),
            accounts: PerKeyLimiter::new(imap.max_sessions_per_account as usize),
            watch,
            metrics: Metrics {
                sessions: meter
                    .u64_counter("pochta.imap.sessions")
                    .with_description("IMAP sessions opened")
                    .build(),
                logins: meter
                    .u64_counter("pochta.imap.logins")
                    .with_description("IMAP logins, by result")
                    .build(),
                commands: meter
                    .u64_counter("pochta.imap.requests")
                    .with_description("IMAP requests answered from the store, by kind")
                    .build(),
            },
        }))
    }

    /// Accepts on every listener until shutdown, then gives open sessions `grace` to end.
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<(TcpListener, ListenerKind)>,
        shutdown: Shutdown,
        grace: Duration,
    ) {
        let stop = shutdown.clone();
        let refusal = |refused, kind| {
            let line = match refused {
                Refusal::TooManyConnections => "* BYE [UNAVAILABLE] Too many connections\r\n",
                Refusal::TooManyFromAddress => {
                    "* BYE [UNAVAILABLE] Too many connections from your address\r\n"
                }
            };
            // Nothing in the clear on the implicit-TLS port.
            (kind == ListenerKind::Imap).then_some(line)
        };
        pochta_service::listen::serve(
            listeners,
            shutdown,
            grace,
            self.limiter.clone(),
            self.proxy_peers.clone(),
            refusal,
            move |tcp, peer, kind| self.clone().session(tcp, peer, kind, stop.clone()),
        )
        .await;
    }

    fn session(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        kind: ListenerKind,
        shutdown: Shutdown,
    ) -> impl Future<Output = ()> + Send + 'static {
        let client = peer.ip();
        self.metrics
            .sessions
            .add(1, &[KeyValue::new("listener", kind.name())]);
        let span = tracing::info_span!("imap.session", %client, listener = kind.name(), user = tracing::field::Empty);
        async move {
            let session = Session::new(self.policy(kind, client));
            let driver = Driver {
                tls: self.tls.as_ref(),
                timeouts: self.timeouts,
                memory: Some(&self.memory),
                shutdown: &shutdown,
            };
            let mut connection = Connection {
                server: self.clone(),
                client,
                account_id: None,
                account_session: None,
                watching: None,
                ahead: None,
            };
            let ended = driver
                .drive(
                    Conn::Plain(tcp),
                    session,
                    kind == ListenerKind::Imaps,
                    &mut connection,
                )
                .await;
            connection.unwatch();
            tracing::debug!(?ended, "session ended");
        }
        .instrument(span)
    }

    fn policy(&self, kind: ListenerKind, client: IpAddr) -> Policy {
        Policy {
            starttls_available: self.tls.is_some() && kind == ListenerKind::Imap,
            implicit_tls: kind == ListenerKind::Imaps,
            plaintext_auth: match self.plaintext_auth {
                PlaintextAuth::Never => false,
                PlaintextAuth::Loopback => client.is_loopback(),
                PlaintextAuth::Always => true,
            },
            max_errors: self.max_errors,
            max_literal: self.max_literal,
            read_batch_bytes: self.read_batch_bytes,
        }
    }
}

/// Stored octets read for the first piece of a streamed message.
const FIRST_PIECE: i64 = 64 * 1024;

/// One client's connection: its account once logged in, and the mailbox it watches.
pub struct Connection {
    server: Arc<Server>,
    client: IpAddr,
    account_id: Option<i64>,
    /// The session's place among its account's, once logged in.
    account_session: Option<PerKeyGuard<i64>>,
    watching: Option<(i64, Seen)>,
    /// The content batch a FETCH or SEARCH will ask for next, being read.
    ahead: Option<ReadAhead>,
}

/// Message octets for one `Request::Contents`. Header blocks that do not end in their first
/// stored row take their whole message to read: those are read only while the batch holds
/// at most `batch_bytes` (at least one message), and the answer ends before the first one
/// left (`Contents::answered`), which the session asks for again.
async fn read_contents(
    store: Store,
    account: i64,
    entry_ids: Vec<i64>,
    headers_only: bool,
    batch_bytes: u64,
) -> pochta_store::Result<Contents> {
    if !headers_only {
        let whole = store.maildrop_entries_whole(account, &entry_ids).await?;
        return Ok(whole.into_iter().collect());
    }
    let blocks = store.maildrop_entries_headers(account, &entry_ids).await?;
    let (answered, whole) = headers_answered(&entry_ids, &blocks, batch_bytes);
    let mut octets: HashMap<i64, Vec<u8>> = blocks.found.into_iter().collect();
    for id in &entry_ids[answered..] {
        octets.remove(id);
    }
    if !whole.is_empty() {
        octets.extend(store.maildrop_entries_whole(account, &whole).await?);
    }
    Ok(Contents {
        octets,
        answered: (answered < entry_ids.len()).then_some(answered),
    })
}

/// How many of `entry_ids`, from the first, a headers-only answer holds so that its octets
/// stay within `batch_bytes` (at least one), and which of those must be read whole.
fn headers_answered(
    entry_ids: &[i64],
    blocks: &HeaderBlocks,
    batch_bytes: u64,
) -> (usize, Vec<i64>) {
    let longer: HashMap<i64, i64> = blocks.longer.iter().copied().collect();
    if longer.is_empty() {
        return (entry_ids.len(), Vec::new());
    }
    let found: HashMap<i64, usize> = blocks
        .found
        .iter()
        .map(|(id, block)| (*id, block.len()))
        .collect();
    let (mut held, mut whole) = (0u64, Vec::new());
    for (i, id) in entry_ids.iter().enumerate() {
        let (octets, read_whole) = match (found.get(id), longer.get(id)) {
            (Some(&len), _) => (len as u64, false),
            (None, Some(&size)) => (size.max(0) as u64, true),
            // Not in the maildrop (expunged meanwhile).
            (None, None) => (0, false),
        };
        if i > 0 && held + octets > batch_bytes {
            return (i, whole);
        }
        held += octets;
        if read_whole {
            whole.push(*id);
        }
    }
    (entry_ids.len(), whole)
}

/// A content batch read in the background (on its own store connection) while the one before
/// it is sent; aborted when dropped (the session asked for something else, or ended).
struct ReadAhead {
    entry_ids: Vec<i64>,
    headers_only: bool,
    task: tokio::task::JoinHandle<pochta_store::Result<Contents>>,
}

impl ReadAhead {
    async fn start(
        store: Store,
        account: i64,
        entry_ids: Vec<i64>,
        headers_only: bool,
        batch_bytes: u64,
    ) -> Self {
        let read = read_contents(store, account, entry_ids.clone(), headers_only, batch_bytes);
        ReadAhead {
            entry_ids,
            headers_only,
            task: spawn_beside(read.in_current_span()).await,
        }
    }

    async fn take(mut self) -> Result<Contents, Failure> {
        match (&mut self.task).await {
            Ok(read) => read.map_err(failure),
            Err(e) => {
                tracing::error!("reading ahead failed: {e}");
                Err(Failure::Temporary)
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    /// Sends a FETCH response whose message is read from the store a piece (about a read
    /// batch) at a time, the next read while one is written. Whether the message was
    /// there; a store failure before the response began is the FETCH's, after it the
    /// connection's (the literal's size is out).
    async fn stream(&mut self, s: &Streamed, io: &mut Io) -> Result<Result<bool, Failure>, Ended> {
        let Some(account) = self.account_id else {
            return Ok(Err(Failure::Temporary));
        };
        // A read ahead for the batch after this message is of no use now.
        self.ahead = None;
        let store = &self.server.store;
        let piece = i64::try_from(self.server.read_batch_bytes).unwrap_or(i64::MAX);
        // A small first piece, so that the response begins at once.
        let mut part = match store
            .maildrop_entry_part(account, s.entry_id, 0, piece.min(FIRST_PIECE))
            .await
        {
            Ok(Some(part)) => part,
            Ok(None) => return Ok(Ok(false)),
            Err(e) => return Ok(Err(failure(e))),
        };
        io.out().extend_from_slice(&s.head);
        let (mut at, mut sent) = (0u64, 0u64);
        loop {
            let piece_len = part.octets.len() as u64;
            let carried = s.carry(at, &mut part.octets);
            sent += carried.len() as u64;
            at += piece_len;
            // The next piece is read while this one is written, on a task of its own so that
            // decoding it (zstd, base64) may run on another core. None left, or expunged by
            // another session meanwhile: an empty piece (the literal is completed below and
            // the expunge is told as any other).
            let next = part.next.filter(|_| sent < s.len);
            let (store, entry_id) = (store.clone(), s.entry_id);
            let read = spawn_beside(
                async move {
                    match next {
                        Some(next) => store
                            .maildrop_entry_part(account, entry_id, next, piece)
                            .await
                            .map(Option::unwrap_or_default),
                        None => Ok(EntryPart::default()),
                    }
                }
                .in_current_span(),
            )
            .await;
            // The piece goes out from where it was decoded, not copied into the buffer.
            let (written, read) = tokio::join!(io.flush_then(carried), read);
            written.map_err(|e| Ended::Failed(format!("writing: {e}")))?;
            let read = read.map_err(|e| e.to_string());
            part = read
                .and_then(|read| read.map_err(|e| e.to_string()))
                .map_err(|e| Ended::Failed(format!("reading a message being sent: {e}")))?;
            if part.octets.is_empty() {
                break;
            }
        }
        if sent < s.len {
            tracing::warn!(
                entry = s.entry_id,
                sent,
                size = s.len,
                "message ended early"
            );
            s.pad(sent, io.out());
        }
        io.out().extend_from_slice(&s.tail);
        Ok(Ok(true))
    }

    fn unwatch(&mut self) {
        if let Some((id, _)) = self.watching.take() {
            self.server.watch.unwatch(id);
        }
    }

    async fn login(&mut self, username: &str, password: String) -> LoginResult {
        let server = &self.server;
        let account = match server.logins.login(username, password, self.client).await {
            LoginOutcome::Success(account) => account,
            LoginOutcome::Failure => return LoginResult::BadCredentials,
            LoginOutcome::RateLimited => return LoginResult::RateLimited,
            LoginOutcome::TemporaryFailure => return LoginResult::TemporaryFailure,
        };
        let Some(place) = server.accounts.try_acquire(account.id) else {
            tracing::info!(account = account.id, "login refused: too many sessions");
            return LoginResult::TooManySessions;
        };
        if let Err(e) = server.store.ensure_default_mailboxes(account.id).await {
            tracing::error!("making the default mailboxes failed: {e}");
            return LoginResult::TemporaryFailure;
        }
        tracing::Span::current()
            .record("user", format!("{}@{}", account.local_part, account.domain));
        self.account_id = Some(account.id);
        self.account_session = Some(place);
        LoginResult::Ok
    }

    async fn run(&mut self, request: Request) -> Answer {
        let Some(account) = self.account_id else {
            // The session asks only once logged in.
            return Answer::Done(Err(Failure::Temporary));
        };
        let store = &self.server.store;
        let kind = request_kind(&request);
        self.server
            .metrics
            .commands
            .add(1, &[KeyValue::new("request", kind)]);
        match request {
            Request::Mailboxes => Answer::Mailboxes(
                store
                    .list_mailboxes(account)
                    .await
                    .map(|list| list.into_iter().map(summary).collect())
                    .map_err(failure),
            ),
            Request::Select { name } => Answer::Selected(self.select(account, &name).await),
            Request::Status { name, deleted } => Answer::Status(
                async {
                    let mailbox = store
                        .mailbox(account, &name)
                        .await?
                        .ok_or(StoreError::UnknownMailbox(name))?;
                    let summary = summary(mailbox);
                    if !deleted {
                        // The mailbox's row keeps the rest (migration 18).
                        let counts = summary.counts;
                        return Ok((summary, counts));
                    }
                    let counts = store.mailbox_counts(summary.id, true).await?;
                    Ok((
                        summary,
                        pochta_imap::Counts {
                            messages: clamp(counts.messages),
                            unseen: clamp(counts.unseen),
                            deleted: clamp(counts.deleted.unwrap_or(0)),
                            size: counts.size.max(0) as u64,
                            deleted_size: counts.deleted_size.unwrap_or(0).max(0) as u64,
                        },
                    ))
                }
                .await
                .map_err(failure),
            ),
            Request::Create { name } => Answer::Done(
                store
                    .create_mailbox(account, &name, None)
                    .await
                    .map(drop)
                    .map_err(failure),
            ),
            Request::Delete { name } => Answer::Done(found(
                store.delete_mailbox(account, &name).await.map_err(failure),
            )),
            Request::Rename { from, to } => Answer::Done(found(
                store
                    .rename_mailbox(account, &from, &to)
                    .await
                    .map_err(failure),
            )),
            Request::Subscribe { name, on } => Answer::Done(found(
                store
                    .set_subscribed(account, &name, on)
                    .await
                    .map_err(failure),
            )),
            Request::Append {
                name,
                content,
                flags,
                date,
            } => Answer::Placed(
                async {
                    let mailbox = store
                        .mailbox(account, &name)
                        .await?
                        .ok_or(StoreError::UnknownMailbox(name))?;
                    store
                        .append_message(mailbox.id, &content, &flags, date)
                        .await
                }
                .await
                .map(placed)
                .map_err(failure),
            ),
            Request::Messages { mailbox_id, uids } => {
                let uids: Vec<i64> = uids.into_iter().map(i64::from).collect();
                Answer::Messages(
                    store
                        .mailbox_messages_by_uid(mailbox_id, &uids)
                        .await
                        .map(|list| list.into_iter().map(message).collect())
                        .map_err(failure),
                )
            }
            Request::Contents {
                entry_ids,
                headers_only,
                next,
            } => {
                let ahead = self.ahead.take();
                let batch_bytes = self.server.read_batch_bytes;
                let read = match ahead {
                    Some(ahead)
                        if ahead.entry_ids == entry_ids && ahead.headers_only == headers_only =>
                    {
                        ahead.take().await
                    }
                    _ => {
                        read_contents(store.clone(), account, entry_ids, headers_only, batch_bytes)
                            .await
                            .map_err(failure)
                    }
                };
                // The next batch is read while this one is sent, unless this one was cut
                // short (the next starts elsewhere).
                let cut = matches!(&read, Ok(c) if c.answered.is_some());
                if !next.is_empty() && !cut {
                    let ahead =
                        ReadAhead::start(store.clone(), account, next, headers_only, batch_bytes);
                    self.ahead = Some(ahead.await);
                }
                Answer::Contents(read)
            }
            Request::StoreFlags {
                mailbox_id,
                uids,
                change,
                flags,
                unchanged_since,
            } => {
                let uids: Vec<i64> = uids.into_iter().map(i64::from).collect();
                let change = match change {
                    FlagChange::Add => pochta_store::FlagChange::Add,
                    FlagChange::Remove => pochta_store::FlagChange::Remove,
                    FlagChange::Replace => pochta_store::FlagChange::Replace,
                };
                let since = unchanged_since.map(|n| n.min(i64::MAX as u64) as i64);
                Answer::Flags(
                    store
                        .store_flags(mailbox_id, &uids, change, &flags, since)
                        .await
                        .map(|stored| {
                            (
                                stored.changed.into_iter().map(message).collect(),
                                stored.modified.into_iter().map(clamp).collect(),
                            )
                        })
                        .map_err(failure),
                )
            }
            Request::Expunge { mailbox_id, uids } => {
                let uids: Option<Vec<i64>> = uids.map(|u| u.into_iter().map(i64::from).collect());
                Answer::Expunged(
                    store
                        .expunge(mailbox_id, uids.as_deref())
                        .await
                        .map(|gone| gone.into_iter().map(clamp).collect())
                        .map_err(failure),
                )
            }
            Request::Copy {
                mailbox_id,
                uids,
                to,
                remove,
            } => {
                let uids: Vec<i64> = uids.into_iter().map(i64::from).collect();
                Answer::Placed(
                    async {
                        let target = store
                            .mailbox(account, &to)
                            .await?
                            .ok_or(StoreError::UnknownMailbox(to))?;
                        store
                            .copy_messages(mailbox_id, &uids, target.id, remove)
                            .await
                    }
                    .await
                    .map(placed)
                    .map_err(failure),
                )
            }
            Request::Changes {
                mailbox_id,
                since_modseq,
                known_uid_max,
            } => Answer::Changes(changes(store, mailbox_id, since_modseq, known_uid_max).await),
            Request::SearchCount { mailbox_id, key } => Answer::Counted(
                store
                    .mailbox_search_count(mailbox_id, &filter(&key))
                    .await
                    .map(|(count, modseq)| (clamp(count), modseq.max(0) as u64))
                    .map_err(failure),
            ),
            Request::Search { mailbox_id, key } => Answer::Found(
                store
                    .mailbox_search(mailbox_id, &filter(&key))
                    .await
                    .map(|found| Found {
                        matched: found.matched.into_iter().map(clamp).collect(),
                        undecided: found.undecided.into_iter().map(clamp).collect(),
                        highest_modseq: found.highest_modseq.max(0) as u64,
                    })
                    .map_err(failure),
            ),
        }
    }

    /// SELECT: watches the mailbox before reading it, so no change in between goes unheard.
    async fn select(
        &mut self,
        account: i64,
        name: &str,
    ) -> Result<(MailboxSummary, Vec<u32>), Failure> {
        self.unwatch();
        let store = &self.server.store;
        let mailbox = store
            .mailbox(account, name)
            .await
            .map_err(failure)?
            .ok_or(Failure::NoSuchMailbox)?;
        let seen = self.server.watch.watch(mailbox.id);
        self.watching = Some((mailbox.id, seen));
        // The mailbox row was read before the UIDs: whatever changes in between has a
        // mod-sequence above the HIGHESTMODSEQ read, so the session's next look finds it.
        let uids: Vec<u32> = store
            .mailbox_uids(mailbox.id)
            .await
            .map_err(failure)?
            .into_iter()
            .map(clamp)
            .collect();
        let mut summary = summary(mailbox);
        // A message that arrived in between is listed: UIDNEXT lies above it.
        if let Some(&last) = uids.last() {
            summary.uid_next = summary.uid_next.max(last.saturating_add(1));
        }
        Ok((summary, uids))
    }
}

async fn changes(
    store: &Store,
    mailbox_id: i64,
    since_modseq: u64,
    known_uid_max: u32,
) -> Result<Changes, Failure> {
    let since = since_modseq.min(i64::MAX as u64) as i64;
    let (changed, present) = store
        .mailbox_changes(mailbox_id, since, i64::from(known_uid_max))
        .await
        .map_err(failure)?;
    let mailbox = store.mailbox_by_id(mailbox_id).await.map_err(failure)?;
    Ok(Changes {
        mailbox: mailbox.map(summary),
        changed: changed.into_iter().map(message).collect(),
        present: present.into_iter().map(clamp).collect(),
    })
}

fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Mailboxes => "list",
        Request::Select { .. } => "select",
        Request::Status { .. } => "status",
        Request::Create { .. } => "create",
        Request::Delete { .. } => "delete",
        Request::Rename { .. } => "rename",
        Request::Subscribe { .. } => "subscribe",
        Request::Append { .. } => "append",
        Request::Messages { .. } => "messages",
        Request::Contents { .. } => "contents",
        Request::StoreFlags { .. } => "store",
        Request::Expunge { .. } => "expunge",
        Request::Copy { .. } => "copy",
        Request::Changes { .. } => "changes",
        Request::Search { .. } | Request::SearchCount { .. } => "search",
    }
}

/// UIDs, counts and sizes are 32-bit in IMAP; the store's columns are checked to fit.
fn clamp(n: i64) -> u32 {
    n.clamp(0, i64::from(u32::MAX)) as u32
}

/// A search key the store can evaluate (its message sets UID sets, as the session sends it)
/// as the store's filter. HEADER, BODY and TEXT never come here; should one, it matches
/// nothing.
fn filter(key: &SearchKey<'_>) -> MessageFilter {
    let flag = |f: &str| MessageFilter::Flag(f.to_owned());
    let field = |field, needle: &[u8]| {
        MessageFilter::FieldContains(field, String::from_utf8_lossy(needle).into_owned())
    };
    let not = |f: MessageFilter| MessageFilter::Not(Box::new(f));
    match key {
        SearchKey::And(keys) => MessageFilter::And(keys.as_ref().iter().map(filter).collect()),
        SearchKey::Or(a, b) => MessageFilter::Or(Box::new(filter(a)), Box::new(filter(b))),
        SearchKey::Not(k) => not(filter(k)),
        SearchKey::Uid(set) => MessageFilter::Uids(
            set.0
                .as_ref()
                .iter()
                .map(|sequence| {
                    let value = |v: &SeqOrUid| match v {
                        SeqOrUid::Value(n) => i64::from(n.get()),
                        SeqOrUid::Asterisk => i64::from(u32::MAX),
                    };
                    let (a, b) = match sequence {
                        Sequence::Single(v) => (value(v), value(v)),
                        Sequence::Range(a, b) => (value(a), value(b)),
                    };
                    (a.min(b), a.max(b))
                })
                .collect(),
        ),
        SearchKey::All | SearchKey::Old => MessageFilter::All,
        SearchKey::Answered => flag("\\Answered"),
        SearchKey::Deleted => flag("\\Deleted"),
        SearchKey::Draft => flag("\\Draft"),
        SearchKey::Flagged => flag("\\Flagged"),
        SearchKey::Seen => flag("\\Seen"),
        SearchKey::Unanswered => not(flag("\\Answered")),
        SearchKey::Undeleted => not(flag("\\Deleted")),
        SearchKey::Undraft => not(flag("\\Draft")),
        SearchKey::Unflagged => not(flag("\\Flagged")),
        SearchKey::Unseen => not(flag("\\Seen")),
        SearchKey::Keyword(k) => flag(k.as_ref()),
        SearchKey::Unkeyword(k) => not(flag(k.as_ref())),
        SearchKey::Larger(n) => MessageFilter::Larger(i64::from(*n)),
        SearchKey::Smaller(n) => MessageFilter::Smaller(i64::from(*n)),
        SearchKey::Before(d) => MessageFilter::Before(*d.as_ref()),
        SearchKey::On(d) => MessageFilter::On(*d.as_ref()),
        SearchKey::Since(d) => MessageFilter::Since(*d.as_ref()),
        SearchKey::ModSequence { modseq, .. } => {
            MessageFilter::ModSeqAtLeast(i64::try_from(*modseq).unwrap_or(i64::MAX))
        }
        SearchKey::Subject(s) => field(SearchField::Subject, s.as_ref()),
        SearchKey::From(s) => field(SearchField::From, s.as_ref()),
        SearchKey::To(s) => field(SearchField::To, s.as_ref()),
        SearchKey::Cc(s) => field(SearchField::Cc, s.as_ref()),
        SearchKey::Bcc(s) => field(SearchField::Bcc, s.as_ref()),
        SearchKey::SentBefore(d) => MessageFilter::SentBefore(*d.as_ref()),
        SearchKey::SentOn(d) => MessageFilter::SentOn(*d.as_ref()),
        SearchKey::SentSince(d) => MessageFilter::SentSince(*d.as_ref()),
        // \Recent is never set (RFC 9051 drops it); sequence sets arrive as UID sets.
        _ => not(MessageFilter::All),
    }
}

fn summary(m: MailboxInfo) -> MailboxSummary {
    MailboxSummary {
        id: m.id,
        name: m.name,
        special_use: m.special_use,
        subscribed: m.subscribed,
        uid_validity: clamp(m.uid_validity),
        uid_next: clamp(m.uid_next),
        highest_modseq: m.highest_modseq.max(0) as u64,
        counts: pochta_imap::Counts {
            messages: clamp(m.messages),
            unseen: clamp(m.unseen),
            size: m.messages_size.max(0) as u64,
            ..Default::default()
        },
    }
}

fn message(m: MailboxMessage) -> Message {
    Message {
        entry_id: m.entry_id,
        uid: clamp(m.uid),
        flags: m.flags,
        modseq: m.modseq.max(0) as u64,
        size: clamp(m.size),
        internal_date: m.internal_date,
    }
}

fn placed(p: pochta_store::Placed) -> (u32, Vec<(u32, u32)>) {
    (
        clamp(p.uid_validity),
        p.uids
            .into_iter()
            .map(|(a, b)| (clamp(a), clamp(b)))
            .collect(),
    )
}

fn found(done: Result<bool, Failure>) -> Result<(), Failure> {
    match done {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure::NoSuchMailbox),
        Err(e) => Err(e),
    }
}

fn failure(e: StoreError) -> Failure {
    match e {
        StoreError::UnknownMailbox(_) => Failure::NoSuchMailbox,
        StoreError::MailboxExists(_) => Failure::AlreadyExists,
        StoreError::InboxFixed => Failure::Refused("INBOX cannot be deleted or renamed".into()),
        StoreError::OverQuota { .. } => Failure::OverQuota,
        e @ (StoreError::TooManyMailboxes(_)
        | StoreError::TooManyKeywords(_)
        | StoreError::KeywordTooLong(_)) => Failure::Limit(capitalized(&e.to_string())),
        e => {
            tracing::error!("store request failed: {e}");
            Failure::Temporary
        }
    }
}

/// A store error's message as the text of a response.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

impl Handler<Session> for Connection {
    async fn perform(
        &mut self,
        action: Action,
        session: &mut Session,
        io: &mut Io,
    ) -> Result<(), Ended> {
        match action {
            Action::Login { username, password } => {
                let result = self.login(&username, password).await;
                let name = match &result {
                    LoginResult::Ok => "ok",
                    LoginResult::BadCredentials => "bad_credentials",
                    LoginResult::RateLimited => "rate_limited",
                    LoginResult::TooManySessions => "too_many_sessions",
                    LoginResult::TemporaryFailure => "temporary_failure",
                };
                let logins = &self.server.metrics.logins;
                logins.add(1, &[KeyValue::new("result", name)]);
                session.login_result(result);
            }
            Action::Run(request) => {
                let answer = self.run(request).await;
                session.answer(answer);
                if session.selected() != self.watching.map(|(id, _)| id) {
                    // Unselected, or the select failed.
                    self.unwatch();
                }
            }
            Action::Stream(streamed) => {
                let answer = self.stream(&streamed, io).await?;
                session.answer(Answer::Streamed(answer));
            }
        }
        Ok(())
    }

    fn duty_period(&self) -> Option<Duration> {
        self.watching.map(|_| self.server.change_check)
    }

    /// Tells a session in IDLE what changed in its mailbox, when a change was announced since
    /// it last looked.
    async fn duty(&mut self, session: &mut Session, _io: &mut Io) -> Result<(), Ended> {
        let Some((id, seen)) = self.watching else {
            return Ok(());
        };
        if session.selected() != Some(id) {
            // UNSELECT, CLOSE or LOGOUT, which need nothing from the store.
            self.unwatch();
            return Ok(());
        }
        let Some((mailbox_id, since, known_max)) = session.watching() else {
            return Ok(());
        };
        let now = self.server.watch.now(id);
        if now == seen || mailbox_id != id {
            return Ok(());
        }
        self.watching = Some((id, now));
        match changes(&self.server.store, mailbox_id, since, known_max).await {
            Ok(changes) => session.apply_changes(changes),
            // Looked at again after the next announcement.
            Err(_) => self.watching = Some((id, seen)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(found: &[(i64, usize)], longer: &[(i64, i64)]) -> HeaderBlocks {
        HeaderBlocks {
            found: found.iter().map(|&(id, n)| (id, vec![b'h'; n])).collect(),
            longer: longer.to_vec(),
        }
    }

    #[test]
    fn header_blocks_read_whole_are_cut_to_a_batch() {
        // All found in their first rows: all answered, whatever their octets.
        let all_found = blocks(&[(1, 900), (2, 900)], &[]);
        assert_eq!(headers_answered(&[1, 2], &all_found, 1000), (2, vec![]));
        // Whole messages are read while the batch holds at most its octets; the answer ends
        // before the first that would pass it.
        let mixed = blocks(&[(1, 100), (3, 100)], &[(2, 500), (4, 500), (5, 10)]);
        assert_eq!(
            headers_answered(&[1, 2, 3, 4, 5], &mixed, 1000),
            (3, vec![2])
        );
        assert_eq!(
            headers_answered(&[1, 2, 3, 4, 5], &mixed, 1300),
            (5, vec![2, 4, 5])
        );
        // At least one, however large; one gone meanwhile counts nothing.
        let huge = blocks(&[], &[(7, 50_000_000), (8, 50_000_000)]);
        assert_eq!(headers_answered(&[9, 7, 8], &huge, 1000), (1, vec![]));
        assert_eq!(headers_answered(&[7, 8], &huge, 1000), (1, vec![7]));
    }
}
