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
