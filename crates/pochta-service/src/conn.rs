//! A connection, plain or TLS, that STARTTLS (SMTP, either side) or STLS (POP3) upgrades in
//! place.

use std::io;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

pub enum Conn {
    Plain(TcpStream),
    /// The server or the client side of a TLS session.
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while an upgrade is in progress (or after it failed).
    Gone,
}

impl Conn {
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Gone => Ok(0),
        }
    }

    /// Waits until a read would find input (or the end, or an error) without holding a
    /// buffer, so a session waiting on a quiet client costs none.
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.readable().await,
            Conn::Tls(s) => {
                let (tcp, has_input) = match s.as_mut() {
                    TlsStream::Server(s) => {
                        let (tcp, tls) = s.get_mut();
                        (tcp, buffered_input(tls.process_new_packets()))
                    }
                    TlsStream::Client(s) => {
                        let (tcp, tls) = s.get_mut();
                        (tcp, buffered_input(tls.process_new_packets()))
                    }
                };
                // Records rustls took in with the handshake or an earlier read are input
                // already: the socket may stay quiet while they wait.
                if has_input {
                    return Ok(());
                }
                tcp.readable().await
            }
            Conn::Gone => Ok(()),
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(bytes).await,
            Conn::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Conn::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
            Conn::Gone => Ok(()),
        };
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// The server side of the TLS handshake on a plain connection (implicit TLS, or after
    /// STARTTLS / STLS).
    pub async fn accept_tls(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let tcp = self.take_plain()?;
        *self = Conn::Tls(Box::new(acceptor.accept(tcp).await?.into()));
        Ok(())
    }

    /// The client side of the TLS handshake with `server` (after the server's 220 to STARTTLS).
    pub async fn connect_tls(
        &mut self,
        connector: &TlsConnector,
        server: ServerName<'static>,
    ) -> io::Result<()> {
        let tcp = self.take_plain()?;
        *self = Conn::Tls(Box::new(connector.connect(server, tcp).await?.into()));
        Ok(())
    }

    fn take_plain(&mut self) -> io::Result<TcpStream> {
        match std::mem::replace(self, Conn::Gone) {
            Conn::Plain(tcp) => Ok(tcp),
            other => {
                *self = other;
                Err(io::Error::other("not a plain connection"))
            }
        }
    }
}

/// Whether rustls holds what a read should return now: decrypted input, the peer's close, or
/// an error (which the read reports).
fn buffered_input(state: Result<rustls::IoState, rustls::Error>) -> bool {
    match state {
        Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
        Err(_) => true,
    }
}
