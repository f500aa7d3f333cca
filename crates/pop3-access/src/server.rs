//! Listeners and the per-connection loop that drives a `pochta_pop3::Session`: logins (with
//! the maildrop lock shared by every replica), streaming RETR/TOP from the store, QUIT's
//! deletions, lock renewal, timeouts and limits. Any end of a session other than a successful
//! QUIT releases the lock and deletes nothing (RFC 1939 6).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use pochta_config::{Config, PlaintextAuth};
use pochta_pop3::{DotStuffer, Entry, LoginResult, Output, Policy, Session};
use pochta_service::Shutdown;
use pochta_service::conn::Conn;
use pochta_service::limits::{ConnectionLimiter, Refusal};
use pochta_service::listen::ProxyPeers;
use pochta_service::login::{Authenticator, LoginOutcome};
use pochta_store::Store;
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Pop3,
    Pop3s,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Pop3 => "pop3",
            ListenerKind::Pop3s => "pop3s",
        }
    }
}

struct Metrics {
    sessions: Counter<u64>,
    logins: Counter<u64>,
    retrievals: Counter<u64>,
}

pub struct Server {
    store: Store,
    logins: Authenticator,
    tls: Option<TlsAcceptor>,
    limiter: ConnectionLimiter,
    proxy_peers: ProxyPeers,
    plaintext_auth: PlaintextAuth,
    max_errors: usize,
    timeout: Duration,
    handshake_timeout: Duration,
    lock_ttl: Duration,
    chunk: i64,
    read_ahead: u64,
    /// Makes lock owners unique per session.
    owner_prefix: String,
    sessions_started: AtomicU64,
    metrics: Metrics,
}

/// The maildrop this session has locked.
struct Locked {
    account_id: i64,
    owner: String,
    /// The maildrop as listed at login: entry ids and RETR sizes, in order.
    listing: Vec<(i64, u64)>,
    /// Messages read ahead and not yet sent.
    ahead: std::collections::HashMap<i64, Vec<u8>>,
    /// The batches after `ahead`, in listing order, being read while `ahead` is sent.
    next: std::collections::VecDeque<Prefetch>,
}

/// An entry id and what RETR sends for it.
type Whole = (i64, Vec<u8>);

/// A read-ahead batch being read in the background; aborted when dropped.
struct Prefetch {
    /// Where the batch starts in the listing, and how many entries it holds.
    at: usize,
    len: usize,
    task: tokio::task::JoinHandle<pochta_store::Result<Vec<Whole>>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read-ahead batches read in the background at once, beyond the one being sent.
const PREFETCH_DEPTH: usize = 2;

/// Pending output beyond this is written before the next message is added.
const FLUSH_BYTES: usize = 256 * 1024;

impl Server {
    pub fn new(
        config: &Config,
        store: Store,
        tls: Option<TlsAcceptor>,
    ) -> anyhow::Result<Arc<Self>> {
        let pop3 = &config.pop3;
        let meter = opentelemetry::global::meter("pop3-access");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Ok(Arc::new(Server {
            logins: Authenticator::new(
                store.clone(),
                pop3.auth_max_failures,
                Duration::from_secs(pop3.auth_failure_window_secs),
                Duration::from_millis(pop3.auth_failure_delay_ms),
                Duration::from_secs(pop3.auth_cache_secs),
            )?,
            store,
            tls,
            limiter: ConnectionLimiter::new(
                pop3.max_connections as usize,
                pop3.max_connections_per_ip as usize,
            ),
            proxy_peers: ProxyPeers {
                trusted: pop3.proxy_protocol_from.clone(),
                header_timeout: Duration::from_secs(pop3.proxy_header_timeout_secs),
            },
            plaintext_auth: pop3.plaintext_auth,
            max_errors: pop3.max_errors as usize,
            timeout: Duration::from_secs(pop3.timeout_secs),
            handshake_timeout: Duration::from_secs(pop3.tls_handshake_timeout_secs),
            lock_ttl: Duration::from_secs(pop3.lock_ttl_secs),
            chunk: i64::from(pop3.retrieve_chunk_bytes),
            read_ahead: u64::from(pop3.read_ahead_bytes),
            owner_prefix: format!(
                "{}:{}:{:08x}",
                host.trim(),
                std::process::id(),
                rand::rng().random::<u32>()
            ),
            sessions_started: AtomicU64::new(0),
            metrics: Metrics {
                sessions: meter
                    .u64_counter("pochta.pop3.sessions")
                    .with_description("POP3 sessions opened")
                    .build(),
                logins: meter
                    .u64_counter("pochta.pop3.logins")
                    .with_description("POP3 logins, by result")
                    .build(),
                retrievals: meter
                    .u64_counter("pochta.pop3.retrievals")
                    .with_description("RETR and TOP responses sent")
                    .build(),
            },
        }))
    }

    /// Accepts on every listener until shutdown, then gives open sessions `grace` to end
    /// (idle ones are told at once; ones in the middle of something finish it first).
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<(TcpListener, ListenerKind)>,
        shutdown: Shutdown,
        grace: Duration,
    ) {
        let stop = shutdown.clone();
        let refusal = |refused, kind| {
            let line = match refused {
                Refusal::TooManyConnections => "-ERR [SYS/TEMP] Too many connections\r\n",
                Refusal::TooManyFromAddress => {
                    "-ERR [SYS/TEMP] Too many connections from your address\r\n"
                }
            };
            // Nothing in the clear on the implicit-TLS port.
            (kind == ListenerKind::Pop3).then_some(line)
        };
        pochta_service::listen::serve(
            listeners,
            shutdown,
            grace,
            self.limiter.clone(),
            self.proxy_peers.clone(),
            refusal,
            move |tcp, peer, kind, open| self.clone().start(tcp, peer, kind, stop.clone(), open),
        )
        .await;
    }

    fn start(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        kind: ListenerKind,
        shutdown: Shutdown,
        open: pochta_service::listen::Open,
    ) {
        let client = peer.ip();
        let _ = tcp.set_nodelay(true);
        self.metrics
            .sessions
            .add(1, &[KeyValue::new("listener", kind.name())]);
        let span = tracing::info_span!("pop3.session", %client, listener = kind.name(), tls = tracing::field::Empty, user = tracing::field::Empty);
        tokio::spawn(
            async move {
                let _open = open;
                let mut locked = None;
                self.session(Conn::Plain(tcp), client, kind, shutdown, &mut locked)
                    .await;
                // Ended without a successful QUIT: release the maildrop, delete nothing.
                if let Some(l) = locked
                    && let Err(e) = self.store.unlock_maildrop(l.account_id, &l.owner).await
                {
                    tracing::warn!("releasing the maildrop lock failed (it will expire): {e}");
                }
            }
            .instrument(span),
        );
    }

    fn policy(&self, kind: ListenerKind, client: IpAddr) -> Policy {
        Policy {
            stls_available: self.tls.is_some() && kind == ListenerKind::Pop3,
            implicit_tls: kind == ListenerKind::Pop3s,
            plaintext_auth: match self.plaintext_auth {
                PlaintextAuth::Never => false,
                PlaintextAuth::Loopback => client.is_loopback(),
                PlaintextAuth::Always => true,
            },
            max_errors: self.max_errors,
        }
    }

    async fn session(
        &self,
        mut conn: Conn,
        client: IpAddr,
        kind: ListenerKind,
        shutdown: Shutdown,
        locked: &mut Option<Locked>,
    ) {
        if kind == ListenerKind::Pop3s {
            let Some(tls) = &self.tls else { return };
            match tokio::time::timeout(self.handshake_timeout, conn.accept_tls(tls)).await {
                Ok(Ok(())) => tracing::Span::current().record("tls", true),
                _ => return tracing::debug!("TLS handshake failed"),
            };
        }
        let mut session = Session::new(self.policy(kind, client));
        let mut buf = vec![0u8; 16 * 1024];
        let mut pending = Vec::new();
        let mut renew = tokio::time::interval(self.lock_ttl / 3);
        renew.tick().await;
        let mut told_shutdown = false;
        loop {
            while let Some(output) = session.poll() {
                match output {
                    Output::Send(bytes) => pending.extend_from_slice(&bytes),
                    Output::StartTls => {
                        if conn.write_all(&std::mem::take(&mut pending)).await.is_err() {
                            return;
                        }
                        let Some(tls) = &self.tls else { return };
                        match tokio::time::timeout(self.handshake_timeout, conn.accept_tls(tls))
                            .await
                        {
                            Ok(Ok(())) => {
                                tracing::Span::current().record("tls", true);
                                session.tls_established();
                            }
                            _ => return tracing::debug!("STLS handshake failed"),
                        }
                    }
                    Output::Login(credentials) => {
                        let result = self
                            .login(&credentials.username, credentials.password, client, locked)
                            .await;
                        let name = match &result {
                            LoginResult::Ok(_) => "ok",
                            LoginResult::BadCredentials => "bad_credentials",
                            LoginResult::InUse => "in_use",
                            LoginResult::RateLimited => "rate_limited",
                            LoginResult::TemporaryFailure => "temporary_failure",
                        };
                        self.metrics.logins.add(1, &[KeyValue::new("result", name)]);
                        session.login_result(result);
                    }
                    Output::Retrieve {
                        entry_id,
                        size,
                        top_lines,
                    } => {
                        let Some(l) = locked.as_mut() else { return };
                        match self
                            .retrieve(&mut conn, &mut pending, l, entry_id, size, top_lines)
                            .await
                        {
                            Ok(sent) => {
                                if sent {
                                    self.metrics.retrievals.add(1, &[]);
                                }
                                session.retrieved(sent);
                            }
                            Err(e) => return tracing::debug!("sending a message failed: {e}"),
                        }
                    }
                    Output::Commit { delete } => {
                        let Some(l) = locked.as_ref() else { return };
                        let result = self
                            .store
                            .delete_maildrop_entries_and_unlock(l.account_id, &l.owner, &delete)
                            .await;
                        match result {
                            Ok(n) => {
                                tracing::info!(deleted = n, "maildrop updated");
                                *locked = None;
                                session.committed(Ok(n));
                            }
                            Err(e) => {
                                tracing::error!("QUIT could not delete: {e}");
                                session.committed(Err(()));
                            }
                        }
                    }
                    Output::Close => {
                        let _ = conn.write_all(&pending).await;
                        conn.shutdown().await;
                        return;
                    }
                }
            }
            if !pending.is_empty() && conn.write_all(&std::mem::take(&mut pending)).await.is_err() {
                return;
            }
            tokio::select! {
                read = tokio::time::timeout(self.timeout, conn.read(&mut buf)) => match read {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => session.feed(&buf[..n]),
                    Err(_) => session.timed_out(),
                },
                _ = renew.tick(), if locked.is_some() => {
                    let l = locked.as_ref().expect("checked");
                    match self.store.renew_maildrop_lock(l.account_id, &l.owner, self.lock_ttl).await {
                        Ok(true) => {}
                        // Another session may have the maildrop now: this one must not touch it.
                        _ => {
                            tracing::warn!("maildrop lock lost; ending the session");
                            *locked = None;
                            let _ = conn.write_all(b"-ERR [SYS/TEMP] Maildrop lock lost; nothing deleted\r\n").await;
                            return;
                        }
                    }
                }
                _ = shutdown.wait(), if !told_shutdown => {
                    told_shutdown = true;
                    session.shutting_down();
                }
            }
        }
    }

    /// Checks the credentials, takes the maildrop lock and lists the maildrop.
    async fn login(
        &self,
        username: &str,
        password: String,
        client: IpAddr,
        locked: &mut Option<Locked>,
    ) -> LoginResult {
        let account = match self.logins.login(username, password, client).await {
            LoginOutcome::Success(account) => account,
            LoginOutcome::Failure => return LoginResult::BadCredentials,
            LoginOutcome::RateLimited => return LoginResult::RateLimited,
            LoginOutcome::TemporaryFailure => return LoginResult::TemporaryFailure,
        };
        let n = self.sessions_started.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{}:{n}", self.owner_prefix);
        match self
            .store
            .lock_maildrop(account.id, &owner, self.lock_ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => return LoginResult::InUse,
            Err(e) => {
                tracing::error!("locking the maildrop failed: {e}");
                return LoginResult::TemporaryFailure;
            }
        }
        tracing::Span::current()
            .record("user", format!("{}@{}", account.local_part, account.domain));
        let listed = self.store.maildrop_entries(account.id).await;
        *locked = Some(Locked {
            account_id: account.id,
            owner,
            listing: listed.as_ref().map_or_else(
                |_| Vec::new(),
                |entries| entries.iter().map(|e| (e.id, e.pop3_size as u64)).collect(),
            ),
            ahead: Default::default(),
            next: Default::default(),
        });
        match listed {
            Ok(entries) => LoginResult::Ok(
                entries
                    .into_iter()
                    .map(|e| Entry {
                        id: e.id,
                        uid: e.uid,
                        size: e.pop3_size as u64,
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::error!("listing the maildrop failed: {e}");
                LoginResult::TemporaryFailure
            }
        }
    }

    /// Sends `+OK` and the message in pieces read from the store, dot-stuffed. Returns false
    /// (and sends nothing) if the message is gone. A small message comes from the read-ahead,
    /// and its text joins `pending` (written when it grows large or input is awaited), so
    /// pipelined RETRs go out in few writes.
    async fn retrieve(
        &self,
        conn: &mut Conn,
        pending: &mut Vec<u8>,
        l: &mut Locked,
        entry_id: i64,
        size: u64,
        top_lines: Option<u64>,
    ) -> anyhow::Result<bool> {
        let mut stuffer = match top_lines {
            Some(n) => DotStuffer::top(n),
            None => DotStuffer::whole(),
        };
        if let Some(whole) = self.read_ahead(l, entry_id).await? {
            if pending.len() >= FLUSH_BYTES {
                conn.write_all(&std::mem::take(pending)).await?;
            }
            pending.extend_from_slice(&pochta_pop3::session::retrieve_ok(size));
            stuffer.push(&whole, pending);
            stuffer.finish(pending);
            return Ok(true);
        }
        let account_id = l.account_id;
        let first = self
            .store
            .maildrop_entry_part(account_id, entry_id, 0, self.chunk)
            .await?;
        let Some(mut piece) = first else {
            return Ok(false);
        };
        pending.extend_from_slice(&pochta_pop3::session::retrieve_ok(size));
        let mut offset = 0i64;
        loop {
            stuffer.push(&piece, pending);
            offset += piece.len() as i64;
            let last = (piece.len() as i64) < self.chunk || stuffer.is_done();
            conn.write_all(&std::mem::take(pending)).await?;
            if last {
                break;
            }
            piece = self
                .store
                .maildrop_entry_part(account_id, entry_id, offset, self.chunk)
                .await?
                .unwrap_or_default();
        }
        stuffer.finish(pending);
        Ok(true)
    }

    /// `entry_id`'s whole text if it is small enough to read ahead: from what was read with an
    /// earlier message, or read now together with the small messages listed after it (up to
    /// `read_ahead_bytes`). None: read it in pieces (or it is gone). Whenever a batch is taken,
    /// the ones after it are read in the background, so a client does not wait for the store
    /// between batches.
    async fn read_ahead(&self, l: &mut Locked, entry_id: i64) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(whole) = l.ahead.remove(&entry_id) {
            return Ok(Some(whole));
        }
        let Some(at) = l.listing.iter().position(|(id, _)| *id == entry_id) else {
            return Ok(None);
        };
        let (batch, len) = match l.next.pop_front() {
            Some(mut next) if next.at == at => ((&mut next.task).await??, next.len),
            _ => {
                // A jump (or the first RETR): what was being read is for elsewhere.
                l.next.clear();
                let ids = self.batch_at(l, at);
                if ids.is_empty() {
                    return Ok(None);
                }
                let batch = self
                    .store
                    .maildrop_entries_whole(l.account_id, &ids)
                    .await?;
                (batch, ids.len())
            }
        };
        l.ahead.clear();
        l.ahead.extend(batch);
        // The listing is fixed at login and only this session deletes (at QUIT), so the
        // batches after this one can be read now, PREFETCH_DEPTH of them at once (on their
        // own connections), so reading overlaps both sending and each other.
        let mut from = l.next.back().map_or(at + len, |p| p.at + p.len);
        while l.next.len() < PREFETCH_DEPTH {
            let ids = self.batch_at(l, from);
            if ids.is_empty() {
                break;
            }
            let (store, account_id, len) = (self.store.clone(), l.account_id, ids.len());
            let read = async move { store.maildrop_entries_whole(account_id, &ids).await };
            l.next.push_back(Prefetch {
                at: from,
                len,
                task: tokio::spawn(read.in_current_span()),
            });
            from += len;
        }
        Ok(l.ahead.remove(&entry_id))
    }

    /// The ids of the read-ahead batch that starts at listing position `at`: the small
    /// messages from there, up to `read_ahead_bytes` in all (none if the first is not small).
    fn batch_at(&self, l: &Locked, at: usize) -> Vec<i64> {
        let small = |size: u64| size < self.chunk as u64 && size <= self.read_ahead;
        let mut ids = Vec::new();
        let mut budget = self.read_ahead;
        for (id, size) in l.listing.get(at..).unwrap_or_default() {
            if !small(*size) || *size > budget || ids.len() >= 256 {
                break;
            }
            budget -= size;
            ids.push(*id);
        }
        ids
    }
}
