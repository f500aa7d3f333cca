//! Listeners and the per-connection loop that drives a `pochta_smtp::Session`: it only moves
//! bytes, performs the session's actions, and enforces timeouts and connection limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use pochta_config::{Config, PlaintextAuth};
use pochta_service::Shutdown;
use pochta_service::conn::Conn;
use pochta_service::limits::{ConnectionLimiter, Refusal};
use pochta_service::listen::ProxyPeers;
use pochta_smtp::{ConnectionPolicy, Output, Session, SessionConfig};
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
    command_timeout: Duration,
    data_timeout: Duration,
    handshake_timeout: Duration,
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
                max_received_headers: smtp.max_received_headers as usize,
                bare_line_endings: smtp.bare_line_endings,
                max_errors: smtp.max_errors as usize,
                postmaster_domain: smtp.postmaster_domain.clone(),
                enforce_sender_ownership: smtp.enforce_sender_ownership,
            }),
            actions,
            tls,
            limiter: ConnectionLimiter::new(
                smtp.max_connections as usize,
                smtp.max_connections_per_ip as usize,
            ),
            proxy_peers: ProxyPeers {
                trusted: smtp.proxy_protocol_from.clone(),
                header_timeout: Duration::from_secs(smtp.proxy_header_timeout_secs),
            },
            plaintext_auth: smtp.plaintext_auth,
            command_timeout: Duration::from_secs(smtp.command_timeout_secs),
            data_timeout: Duration::from_secs(smtp.data_timeout_secs),
            handshake_timeout: Duration::from_secs(smtp.tls_handshake_timeout_secs),
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
        let span = tracing::info_span!("smtp.session", %client, listener = kind.name(), tls = tracing::field::Empty, user = tracing::field::Empty);
        tokio::spawn(
            async move {
                let _open = open;
                self.session(Conn::Plain(tcp), client, kind, shutdown).await;
            }
            .instrument(span),
        );
    }

    async fn session(
        &self,
        mut conn: Conn,
        client: IpAddr,
        kind: ListenerKind,
        shutdown: Shutdown,
    ) {
        if kind == ListenerKind::Submissions {
            let Some(tls) = &self.tls else { return };
            match tokio::time::timeout(self.handshake_timeout, conn.accept_tls(tls)).await {
                Ok(Ok(())) => tracing::Span::current().record("tls", true),
                _ => return tracing::debug!("TLS handshake failed"),
            };
        }
        let mut session = Session::new(self.session.clone(), self.policy(kind, client));
        let mut buf = vec![0u8; 16 * 1024];
        let mut pending_write = Vec::new();
        let mut told_shutdown = false;
        loop {
            while let Some(output) = session.poll() {
                match output {
                    Output::Send(bytes) => {
                        self.metrics.count_rejections(&bytes);
                        pending_write.extend_from_slice(&bytes);
                    }
                    Output::StartTls => {
                        if conn
                            .write_all(&std::mem::take(&mut pending_write))
                            .await
                            .is_err()
                        {
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
                            _ => return tracing::debug!("STARTTLS handshake failed"),
                        }
                    }
                    Output::VerifyRecipient {
                        recipient,
                        authenticated,
                    } => {
                        let verdict = self
                            .actions
                            .verify_recipient(&recipient, authenticated, client)
                            .await;
                        session.recipient_verdict(verdict);
                    }
                    Output::Authenticate(credentials) => {
                        let result = self.actions.authenticate(credentials, client).await;
                        if let pochta_smtp::AuthResult::Success { user } = &result {
                            tracing::Span::current().record("user", user.as_str());
                        }
                        session.auth_result(result);
                    }
                    Output::StoreMessage(message) => {
                        let span = tracing::info_span!(
                            "smtp.transaction",
                            queue_id = tracing::field::Empty,
                            size = message.body.len(),
                            recipients = message.recipients.len()
                        );
                        let result = self
                            .actions
                            .store_message(&message, client)
                            .instrument(span)
                            .await;
                        if matches!(result, pochta_smtp::StoreResult::Stored { .. }) {
                            self.metrics.accepted.add(1, &[]);
                            self.metrics
                                .accepted_bytes
                                .add(message.body.len() as u64, &[]);
                        }
                        session.store_result(result);
                    }
                    Output::Etrn { domain, subdomains } => {
                        let result = self.actions.etrn(&domain, subdomains).await;
                        session.etrn_result(result);
                    }
                    Output::Close => {
                        let _ = conn.write_all(&pending_write).await;
                        conn.shutdown().await;
                        return;
                    }
                }
            }
            // The session wants input: send what is pending in one write (RFC 2920).
            if !pending_write.is_empty()
                && conn
                    .write_all(&std::mem::take(&mut pending_write))
                    .await
                    .is_err()
            {
                return;
            }
            let timeout = if session.in_data() {
                self.data_timeout
            } else {
                self.command_timeout
            };
            tokio::select! {
                read = tokio::time::timeout(timeout, conn.read(&mut buf)) => match read {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => session.feed(&buf[..n]),
                    Err(_) => session.timed_out(),
                },
                _ = shutdown.wait(), if session.is_idle() && !told_shutdown => {
                    told_shutdown = true;
                    session.shutting_down();
                }
            }
        }
    }
}
