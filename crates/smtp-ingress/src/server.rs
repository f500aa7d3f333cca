//! Listeners, connection limits, and each connection's `pochta_smtp::Session` run by the
//! shared driver (`pochta_service::drive`), which this performs the session's actions for.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use pochta_config::{Config, PlaintextAuth};
use pochta_service::Shutdown;
use pochta_service::conn::Conn;
use pochta_service::drive::{Driver, Ended, Handler, Io, MemoryBudget, Timeouts};
use pochta_service::limits::{ConnectionLimiter, Refusal};
use pochta_service::listen::ProxyPeers;
use pochta_smtp::{Action, ConnectionPolicy, Session, SessionConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::actions::Actions;

/// The three kinds of listener (RFC 5321, RFC 6409, RFC 8314).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Mx,
    Submission,
    Submissions,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Mx => "mx",
            ListenerKind::Submission => "submission",
            ListenerKind::Submissions => "submissions",
        }
    }
}

struct Metrics {
    sessions: Counter<u64>,
    accepted: Counter<u64>,
    accepted_bytes: Counter<u64>,
    rejected: Counter<u64>,
}

impl Metrics {
    fn new() -> Self {
        let meter = opentelemetry::global::meter("smtp-ingress");
        Metrics {
            sessions: meter
                .u64_counter("pochta.smtp.sessions")
                .with_description("SMTP sessions opened")
                .build(),
            accepted: meter
                .u64_counter("pochta.smtp.messages.accepted")
                .with_description("Messages committed")
                .build(),
            accepted_bytes: meter
                .u64_counter("pochta.smtp.messages.bytes")
                .with_unit("By")
                .with_description("Octets of messages committed")
                .build(),
            rejected: meter
                .u64_counter("pochta.smtp.replies.rejected")
                .with_description("4xx and 5xx replies, by code")
                .build(),
        }
    }

    /// Counts the negative final reply lines in a chunk of replies.
    fn count_rejections(&self, bytes: &[u8]) {
        for line in bytes.split(|&b| b == b'\n') {
            if line.len() >= 4 && line[3] == b' ' && matches!(line[0], b'4' | b'5') {
                let code = String::from_utf8_lossy(&line[..3]).into_owned();
                self.rejected.add(1, &[KeyValue::new("code", code)]);
            }
        }
    }
}

/// Everything the connections of this process share.
pub struct Ingress {
    actions: Arc<Actions>,
    session: Arc<SessionConfig>,
    tls: Option<TlsAcceptor>,
    limiter: ConnectionLimiter,
    proxy_peers: ProxyPeers,
    plaintext_auth: PlaintextAuth,
    timeouts: Timeouts,
    /// Message text held in memory by every session together.
    memory: MemoryBudget,
    metrics: Metrics,
}

impl Ingress {
    pub fn new(config: &Config, actions: Arc<Actions>, tls: Option<TlsAcceptor>) -> Arc<Self> {
        let smtp = &config.smtp;
        Arc::new(Ingress {
            session: Arc::new(SessionConfig {
                hostname: actions.hostname.clone(),
                max_message_size: smtp.max_message_size as usize,
                max_recipients: smtp.max_recipients as usize,
                submission_max_recipients: smtp.submission_max_recipients as usize,
                max_received_headers: smtp.max_received_headers as usize,
                bare_line_endings: smtp.bare_line_endings,
                max_errors: smtp.max_errors as usize,
                max_commands: smtp.max_commands as usize,
                postmaster_domain: smtp.postmaster_domain.clone(),
                enforce_sender_ownership: smtp.enforce_sender_ownership,
                submission_null_sender: smtp.submission_null_sender,
            }),
            actions,
            tls,
            limiter: ConnectionLimiter::new(
                smtp.max_connections as usize,
                smtp.max_connections_per_ip as usize,
                smtp.ipv6_limit_prefix,
            ),
            proxy_peers: ProxyPeers {
                trusted: smtp.proxy_protocol_from.clone(),
                header_timeout: Duration::from_secs(smtp.proxy_header_timeout_secs),
            },
            plaintext_auth: smtp.plaintext_auth,
            timeouts: Timeouts {
                command: Duration::from_secs(smtp.command_timeout_secs),
                data: Duration::from_secs(smtp.data_timeout_secs),
                handshake: Duration::from_secs(smtp.tls_handshake_timeout_secs),
                write: Duration::from_secs(smtp.write_timeout_secs),
                session: Duration::from_secs(smtp.max_session_secs),
            },
            memory: MemoryBudget::new(smtp.max_data_memory_bytes as usize),
            metrics: Metrics::new(),
        })
    }

    fn policy(&self, kind: ListenerKind, client: IpAddr) -> ConnectionPolicy {
        let plaintext_auth = match self.plaintext_auth {
            PlaintextAuth::Never => false,
            PlaintextAuth::Loopback => client.is_loopback(),
            PlaintextAuth::Always => true,
        };
        ConnectionPolicy {
            starttls_available: self.tls.is_some() && kind != ListenerKind::Submissions,
            implicit_tls: kind == ListenerKind::Submissions,
            auth_enabled: true,
            auth_required: kind != ListenerKind::Mx,
            plaintext_auth,
        }
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
                Refusal::TooManyConnections => {
                    "421 4.7.0 Too many connections; try again later\r\n"
                }
                Refusal::TooManyFromAddress => {
                    "421 4.7.0 Too many connections from your address\r\n"
                }
            };
            // Nothing in the clear on the implicit-TLS port.
            (kind != ListenerKind::Submissions).then_some(line)
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
        let span = tracing::info_span!("smtp.session", %client, listener = kind.name(), tls = tracing::field::Empty, user = tracing::field::Empty);
        async move {
            let session = Session::new(self.session.clone(), self.policy(kind, client));
            let ingress = self.clone();
            let driver = Driver {
                tls: ingress.tls.as_ref(),
                timeouts: ingress.timeouts,
                memory: Some(&ingress.memory),
                shutdown: &shutdown,
            };
            let mut connection = Connection {
                ingress: self,
                client,
            };
            let implicit_tls = kind == ListenerKind::Submissions;
            let ended = driver
                .drive(Conn::Plain(tcp), session, implicit_tls, &mut connection)
                .await;
            tracing::debug!(?ended, "session ended");
        }
        .instrument(span)
    }
}

/// One client's connection: what its session's actions are performed with.
struct Connection {
    ingress: Arc<Ingress>,
    client: IpAddr,
}

impl Handler<Session> for Connection {
    async fn perform(
        &mut self,
        action: Action,
        session: &mut Session,
        _io: &mut Io,
    ) -> Result<(), Ended> {
        let (actions, client) = (&self.ingress.actions, self.client);
        match action {
            Action::VerifyRecipient {
                recipient,
                authenticated,
            } => {
                let verdict = actions
                    .verify_recipient(&recipient, authenticated, client)
                    .await;
                session.recipient_verdict(verdict);
            }
            Action::Authenticate(credentials) => {
                let result = actions.authenticate(credentials, client).await;
                if let pochta_smtp::AuthResult::Success { user } = &result {
                    tracing::Span::current().record("user", user.as_str());
                }
                session.auth_result(result);
            }
            Action::StoreMessage(message) => {
                let size = message.body.len() as u64;
                let span = tracing::info_span!(
                    "smtp.transaction",
                    queue_id = tracing::field::Empty,
                    size,
                    recipients = message.recipients.len()
                );
                let result = actions
                    .store_message(message, client)
                    .instrument(span)
                    .await;
                if matches!(result, pochta_smtp::StoreResult::Stored { .. }) {
                    let metrics = &self.ingress.metrics;
                    metrics.accepted.add(1, &[]);
                    metrics.accepted_bytes.add(size, &[]);
                }
                session.store_result(result);
            }
            Action::Etrn { domain, subdomains } => {
                session.etrn_result(actions.etrn(&domain, subdomains, client).await);
            }
            Action::VerifySender { user } => {
                session.sender_verdict(actions.verify_sender(&user).await);
            }
        }
        Ok(())
    }

    fn sending(&mut self, bytes: &[u8]) {
        self.ingress.metrics.count_rejections(bytes);
    }
}
