//! Listeners, connection limits, and each connection's `pochta_pop3::Session` run by the
//! shared driver (`pochta_service::drive`): this performs the session's actions (in
//! `actions.rs`: login and the maildrop lock, RETR/TOP, QUIT's deletions; the lock is kept
//! alive by `lock.rs` while the session lives). Any end of a session other than a successful
//! QUIT releases the lock and deletes nothing (RFC 1939 6).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use pochta_config::{Config, PlaintextAuth};
use pochta_pop3::{Action, LoginResult, Policy, Session};
use pochta_service::Shutdown;
use pochta_service::conn::Conn;
use pochta_service::drive::{Driver, Ended, Handler, Io, Timeouts};
use pochta_service::limits::{ConnectionLimiter, Refusal};
use pochta_service::listen::ProxyPeers;
use pochta_service::login::{Authenticator, LoginRules};
use pochta_store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::actions::Locked;

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

/// Everything the connections of this process share.
pub struct Server {
    pub store: Store,
    pub logins: Authenticator,
    tls: Option<TlsAcceptor>,
    limiter: ConnectionLimiter,
    proxy_peers: ProxyPeers,
    plaintext_auth: PlaintextAuth,
    max_errors: usize,
    max_commands: usize,
    timeouts: Timeouts,
    pub lock_ttl: Duration,
    /// RETR reads large messages in pieces of this many octets.
    pub chunk: i64,
    /// Small messages are read ahead up to this many octets a batch.
    pub read_ahead: u64,
    /// Makes lock owners unique per session.
    pub owner_prefix: String,
    pub sessions_started: AtomicU64,
    metrics: Metrics,
}

impl Server {
    /// `instance` names this process (`ServiceContext::instance`); lock owners extend it.
    pub fn new(
        config: &Config,
        store: Store,
        tls: Option<TlsAcceptor>,
        instance: String,
    ) -> anyhow::Result<Arc<Self>> {
        let pop3 = &config.pop3;
        let meter = opentelemetry::global::meter("pop3-access");
        Ok(Arc::new(Server {
            logins: Authenticator::new(
                store.clone(),
                LoginRules {
                    max_failures: pop3.auth_max_failures,
                    failure_window: Duration::from_secs(pop3.auth_failure_window_secs),
                    failure_delay: Duration::from_millis(pop3.auth_failure_delay_ms),
                    cache_ttl: Duration::from_secs(pop3.auth_cache_secs),
                    ipv6_prefix: pop3.ipv6_limit_prefix,
                    max_checks: pop3.max_password_checks as usize,
                    check_wait: Duration::from_secs(10),
                },
            )?,
            store,
            tls,
            limiter: ConnectionLimiter::new(
                pop3.max_connections as usize,
                pop3.max_connections_per_ip as usize,
                pop3.ipv6_limit_prefix,
            ),
            proxy_peers: ProxyPeers {
                trusted: pop3.proxy_protocol_from.clone(),
                header_timeout: Duration::from_secs(pop3.proxy_header_timeout_secs),
            },
            plaintext_auth: pop3.plaintext_auth,
            max_errors: pop3.max_errors as usize,
            max_commands: pop3.max_commands as usize,
            // POP3 has no data phase: one inactivity timeout (RFC 1939 3).
            timeouts: Timeouts {
                command: Duration::from_secs(pop3.timeout_secs),
                data: Duration::from_secs(pop3.timeout_secs),
                handshake: Duration::from_secs(pop3.tls_handshake_timeout_secs),
                write: Duration::from_secs(pop3.write_timeout_secs),
                session: Duration::from_secs(pop3.max_session_secs),
            },
            lock_ttl: Duration::from_secs(pop3.lock_ttl_secs),
            chunk: i64::from(pop3.retrieve_chunk_bytes),
            read_ahead: u64::from(pop3.read_ahead_bytes),
            owner_prefix: instance,
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
            move |tcp, peer, kind| self.clone().session(tcp, peer, kind, stop.clone()),
        )
        .await;
    }

    /// One client's session, from its admission to its end.
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
        let span = tracing::info_span!("pop3.session", %client, listener = kind.name(), tls = tracing::field::Empty, user = tracing::field::Empty);
        async move {
            let session = Session::new(self.policy(kind, client));
            let driver = Driver {
                tls: self.tls.as_ref(),
                timeouts: self.timeouts,
                memory: None,
                shutdown: &shutdown,
            };
            let mut connection = Connection {
                server: self.clone(),
                client,
                locked: None,
            };
            let implicit_tls = kind == ListenerKind::Pop3s;
            let ended = driver
                .drive(Conn::Plain(tcp), session, implicit_tls, &mut connection)
                .await;
            tracing::debug!(?ended, "session ended");
            // Ended without a successful QUIT: release the maildrop, delete nothing.
            if let Some(l) = connection.locked
                && let Err(e) = self.store.unlock_maildrop(l.account_id, &l.owner).await
            {
                tracing::warn!("releasing the maildrop lock failed (it will expire): {e}");
            }
        }
        .instrument(span)
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
            max_commands: self.max_commands,
        }
    }
}

/// How often a session waiting for input checks that its maildrop lock still holds.
const LOCK_CHECK: Duration = Duration::from_secs(1);

/// One client's connection: what its session's actions are performed with, and the maildrop
/// it has locked (from login until the session ends).
pub struct Connection {
    pub server: Arc<Server>,
    pub client: IpAddr,
    pub locked: Option<Locked>,
}

impl Handler<Session> for Connection {
    async fn perform(
        &mut self,
        action: Action,
        session: &mut Session,
        io: &mut Io,
    ) -> Result<(), Ended> {
        match action {
            Action::Login(credentials) => {
                let result = self
                    .login(&credentials.username, credentials.password)
                    .await;
                let name = match &result {
                    LoginResult::Ok(_) => "ok",
                    LoginResult::BadCredentials => "bad_credentials",
                    LoginResult::InUse => "in_use",
                    LoginResult::RateLimited => "rate_limited",
                    LoginResult::TemporaryFailure => "temporary_failure",
                };
                let logins = &self.server.metrics.logins;
                logins.add(1, &[KeyValue::new("result", name)]);
                session.login_result(result);
            }
            Action::Retrieve {
                entry_id,
                size,
                top_lines,
            } => {
                let sent = self
                    .retrieve(io, entry_id, size, top_lines)
                    .await
                    .map_err(|e| Ended::Failed(format!("sending a message failed: {e}")))?;
                if sent {
                    self.server.metrics.retrievals.add(1, &[]);
                }
                session.retrieved(sent);
            }
            Action::Commit { delete } => session.committed(self.commit(&delete).await),
        }
        Ok(())
    }

    /// While the session waits for input, it ends if its maildrop lock was lost (the lock is
    /// renewed by its `LockKeeper`, whatever the session is doing).
    fn duty_period(&self) -> Option<Duration> {
        self.locked.as_ref().map(|_| LOCK_CHECK)
    }

    async fn duty(&mut self, _session: &mut Session, io: &mut Io) -> Result<(), Ended> {
        if !self.locked.as_ref().is_some_and(|l| l.keeper.lost()) {
            return Ok(());
        }
        // Another session may have the maildrop now: this one must not touch it.
        tracing::warn!("maildrop lock lost; ending the session");
        self.locked = None;
        io.out()
            .extend_from_slice(b"-ERR [SYS/TEMP] Maildrop lock lost; nothing deleted\r\n");
        io.close().await;
        Err(Ended::Failed("maildrop lock lost".into()))
    }
}
