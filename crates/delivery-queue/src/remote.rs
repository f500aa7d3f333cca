//! Remote delivery: SMTP connections to a route's servers, each driving a
//! `pochta_smtp::client::ClientSession` for one message and its recipients at a time. A
//! connection that ends a message cleanly waits a short while in the `Pool` for the next
//! message to the same server (and TLS policy), which saves the connection set-up, greeting,
//! EHLO and TLS handshake.
//!
//! TLS is opportunistic by default (RFC 7435): the server's certificate is not verified,
//! because MX hosts' names are not authenticated by plain DNS anyway; it protects against
//! passive eavesdropping, and `outbound_tls = "required"` refuses plaintext.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pochta_smtp::client::{ClientOutput, ClientSession, Outgoing, RecipientOutcome, TlsPolicy};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Accepts any certificate: encryption without authentication (opportunistic TLS).
#[derive(Debug)]
struct Opportunistic(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Opportunistic {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn tls_connector() -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Opportunistic(provider)))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while STARTTLS replaces the plain stream.
    Gone,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Gone => Ok(0),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

pub struct Target<'a> {
    /// The server's name (for TLS and diagnostics).
    pub host: &'a str,
    /// Where to connect: `ip:port` or `host:port`.
    pub address: String,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub tls: &'a TlsConnector,
}

/// An open SMTP session with one server.
pub struct Connection {
    stream: Stream,
    session: ClientSession,
    messages: u32,
}

impl Connection {
    /// Ends the session politely (QUIT, not waiting for the answer).
    async fn close(mut self) {
        self.session.quit();
        while let Some(output) = self.session.poll() {
            if let ClientOutput::Send(bytes) = output
                && self.stream.write_all(&bytes).await.is_err()
            {
                return;
            }
        }
    }
}

type PoolKey = (String, TlsPolicy);

/// Idle connections, by server address and TLS policy, each for at most `idle_time`, and
/// for at most `max_messages` messages in all.
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<(u64, Connection)>>>,
    next_id: AtomicU64,
    pub idle_time: Duration,
    pub max_messages: u32,
}

impl Pool {
    pub fn new(idle_time: Duration, max_messages: u32) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            idle_time,
            max_messages,
        }
    }

    fn take(&self, key: &PoolKey) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(key)?;
        let (_, connection) = list.pop()?;
        if list.is_empty() {
            idle.remove(key);
        }
        Some(connection)
    }

    /// Keeps `connection` for the next message to the same server, or closes it.
    async fn put(self: &Arc<Self>, key: PoolKey, connection: Connection) {
        if !connection.session.reusable()
            || connection.messages >= self.max_messages
            || self.idle_time.is_zero()
        {
            return connection.close().await;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.idle
            .lock()
            .expect("pool lock")
            .entry(key.clone())
            .or_default()
            .push((id, connection));
        let pool = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pool.idle_time).await;
            let expired = {
                let mut idle = pool.idle.lock().expect("pool lock");
                let list = idle.get_mut(&key);
                let expired = list.and_then(|list| {
                    let at = list.iter().position(|(i, _)| *i == id)?;
                    Some(list.remove(at).1)
                });
                if idle.get(&key).is_some_and(Vec::is_empty) {
                    idle.remove(&key);
                }
                expired
            };
            if let Some(connection) = expired {
                connection.close().await;
            }
        });
    }

    /// Closes every idle connection (at shutdown).
    pub async fn close_all(&self) {
        let all: Vec<Connection> = {
            let mut idle = self.idle.lock().expect("pool lock");
            idle.drain()
                .flat_map(|(_, list)| list.into_iter().map(|(_, c)| c))
                .collect()
        };
        for connection in all {
            connection.close().await;
        }
    }
}

/// Delivers `message` to the recipients in `outgoing` at `target`, over an idle connection to
/// it when there is one that still works, else a new one; returns each recipient's outcome, or
/// why no connection could be made (so the next host can be tried). Trouble after connecting
/// defers the recipients without an outcome yet.
pub async fn deliver(
    pool: &Arc<Pool>,
    target: &Target<'_>,
    outgoing: Outgoing,
    message: &[u8],
) -> Result<Vec<RecipientOutcome>, String> {
    let key = (target.address.clone(), outgoing.tls);
    while let Some(mut connection) = pool.take(&key) {
        connection.session.next_message(outgoing.clone());
        let outcomes = connection.converse(target, message).await;
        if connection.session.stale() {
            tracing::debug!(address = %target.address, "idle connection no longer usable");
            continue;
        }
        pool.put(key, connection).await;
        return Ok(outcomes);
    }
    let mut connection = connect(target, outgoing).await?;
    let outcomes = connection.converse(target, message).await;
    pool.put(key, connection).await;
    Ok(outcomes)
}

async fn connect(target: &Target<'_>, outgoing: Outgoing) -> Result<Connection, String> {
    let address = &target.address;
    let connected = tokio::time::timeout(target.connect_timeout, TcpStream::connect(address)).await;
    match connected {
        Ok(Ok(tcp)) => Ok(Connection {
            stream: Stream::Plain(tcp),
            session: ClientSession::new(outgoing),
            messages: 0,
        }),
        Ok(Err(e)) => Err(format!("connecting to {} ({address}): {e}", target.host)),
        Err(_) => Err(format!(
            "connecting to {} ({address}): timed out",
            target.host
        )),
    }
}

impl Connection {
    /// Runs the session until the current message's outcomes are known.
    async fn converse(&mut self, target: &Target<'_>, message: &[u8]) -> Vec<RecipientOutcome> {
        self.messages += 1;
        let address = &target.address;
        let (stream, session) = (&mut self.stream, &mut self.session);
        let mut buf = vec![0u8; 8192];
        loop {
            while let Some(output) = session.poll() {
                let result = match output {
                    ClientOutput::Send(bytes) => stream.write_all(&bytes).await,
                    ClientOutput::SendMessage => send_message(stream, message)
                        .await
                        .map(|()| session.message_sent()),
                    ClientOutput::StartTls => {
                        let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Gone) else {
                            return lost(session, "STARTTLS twice");
                        };
                        let name =
                            ServerName::try_from(target.host.to_owned()).unwrap_or_else(|_| {
                                ServerName::try_from("localhost").expect("a valid name")
                            });
                        match tokio::time::timeout(
                            target.reply_timeout,
                            target.tls.connect(name, tcp),
                        )
                        .await
                        {
                            Ok(Ok(tls)) => {
                                *stream = Stream::Tls(Box::new(tls));
                                session.tls_established();
                                Ok(())
                            }
                            Ok(Err(e)) => {
                                return lost(
                                    session,
                                    &format!("TLS handshake with {address}: {e}"),
                                );
                            }
                            Err(_) => {
                                return lost(
                                    session,
                                    &format!("TLS handshake with {address}: timed out"),
                                );
                            }
                        }
                    }
                    ClientOutput::Done(outcomes) => return outcomes,
                };
                if let Err(e) = result {
                    return lost(session, &format!("writing to {address}: {e}"));
                }
            }
            match tokio::time::timeout(target.reply_timeout, stream.read(&mut buf)).await {
                Ok(Ok(0)) => return lost(session, &format!("{address} closed the connection")),
                Ok(Ok(n)) => session.feed(&buf[..n]),
                Ok(Err(e)) => return lost(session, &format!("reading from {address}: {e}")),
                Err(_) => return lost(session, &format!("{address} did not answer in time")),
            }
        }
    }
}

fn lost(session: &mut ClientSession, why: &str) -> Vec<RecipientOutcome> {
    session.connection_lost(why);
    loop {
        if let Some(ClientOutput::Done(outcomes)) = session.poll() {
            return outcomes;
        }
    }
}

/// The message text, dot-stuffed (RFC 5321 4.5.2), then `.` CRLF.
async fn send_message(stream: &mut Stream, message: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 5);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    stream.write_all(&out).await
}
