//! Remote delivery: one SMTP connection to a route's server, driving a
//! `pochta_smtp::client::ClientSession` for one message and its recipients there.
//!
//! TLS is opportunistic by default (RFC 7435): the server's certificate is not verified,
//! because MX hosts' names are not authenticated by plain DNS anyway; it protects against
//! passive eavesdropping, and `outbound_tls = "required"` refuses plaintext.

use std::sync::Arc;
use std::time::Duration;

use pochta_smtp::client::{ClientOutput, ClientSession, Outgoing, RecipientOutcome};
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

/// Delivers `message` to the recipients in `outgoing` at `target`; returns each recipient's
/// outcome, or why no connection could be made (so the next host can be tried). Trouble
/// after connecting defers the recipients without an outcome yet.
pub async fn deliver(
    target: &Target<'_>,
    outgoing: Outgoing,
    message: &[u8],
) -> Result<Vec<RecipientOutcome>, String> {
    let address = target.address.clone();
    let connected =
        tokio::time::timeout(target.connect_timeout, TcpStream::connect(&address)).await;
    let mut stream = match connected {
        Ok(Ok(tcp)) => Stream::Plain(tcp),
        Ok(Err(e)) => return Err(format!("connecting to {} ({address}): {e}", target.host)),
        Err(_) => {
            return Err(format!(
                "connecting to {} ({address}): timed out",
                target.host
            ));
        }
    };
    let mut session = ClientSession::new(outgoing);
    Ok(converse(target, &address, &mut stream, &mut session, message).await)
}

async fn converse(
    target: &Target<'_>,
    address: &str,
    stream: &mut Stream,
    session: &mut ClientSession,
    message: &[u8],
) -> Vec<RecipientOutcome> {
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
                    let name = ServerName::try_from(target.host.to_owned()).unwrap_or_else(|_| {
                        ServerName::try_from("localhost").expect("a valid name")
                    });
                    match tokio::time::timeout(target.reply_timeout, target.tls.connect(name, tcp))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            *stream = Stream::Tls(Box::new(tls));
                            session.tls_established();
                            Ok(())
                        }
                        Ok(Err(e)) => {
                            return lost(session, &format!("TLS handshake with {address}: {e}"));
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
