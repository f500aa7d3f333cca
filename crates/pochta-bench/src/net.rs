//! A line-oriented client connection, plain or TLS (STARTTLS / STLS upgrade it in place).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Every read and write must make progress within this.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A TLS client trusting the CA certificates in a PEM file (the server's own certificate
/// works for a self-signed one).
pub fn connector(ca_file: &std::path::Path) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("reading {}", ca_file.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

enum Stream {
    Plain(BufReader<TcpStream>),
    Tls(Box<BufReader<TlsStream<TcpStream>>>),
}

pub struct Conn {
    stream: Stream,
    line: Vec<u8>,
}

async fn timed<T>(what: &str, f: impl Future<Output = std::io::Result<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(r) => r.with_context(|| what.to_owned()),
        Err(_) => bail!("{what}: timed out"),
    }
}

impl Conn {
    pub async fn connect(address: &str) -> anyhow::Result<Conn> {
        let tcp = timed(
            &format!("connecting to {address}"),
            TcpStream::connect(address),
        )
        .await?;
        tcp.set_nodelay(true)?;
        Ok(Conn {
            stream: Stream::Plain(BufReader::with_capacity(64 * 1024, tcp)),
            line: Vec::with_capacity(1024),
        })
    }

    /// Upgrades to TLS; the server's name is checked against its certificate.
    pub async fn start_tls(self, tls: &TlsConnector, server_name: &str) -> anyhow::Result<Conn> {
        let Stream::Plain(reader) = self.stream else {
            bail!("TLS is already on");
        };
        if !reader.buffer().is_empty() {
            bail!("the server sent data before the TLS handshake");
        }
        let name = ServerName::try_from(server_name.to_owned())?;
        let tls = timed("TLS handshake", tls.connect(name, reader.into_inner())).await?;
        Ok(Conn {
            stream: Stream::Tls(Box::new(BufReader::with_capacity(64 * 1024, tls))),
            line: self.line,
        })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match &mut self.stream {
            Stream::Plain(r) => timed("writing", r.get_mut().write_all(bytes)).await,
            Stream::Tls(r) => {
                let s = r.get_mut();
                timed("writing", async {
                    s.write_all(bytes).await?;
                    s.flush().await
                })
                .await
            }
        }
    }

    /// One line, without its line end. Fails at end of stream.
    pub async fn read_line(&mut self) -> anyhow::Result<&[u8]> {
        self.line.clear();
        let n = match &mut self.stream {
            Stream::Plain(r) => timed("reading", r.read_until(b'\n', &mut self.line)).await?,
            Stream::Tls(r) => timed("reading", r.read_until(b'\n', &mut self.line)).await?,
        };
        if n == 0 {
            bail!("the server closed the connection");
        }
        while self.line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            self.line.pop();
        }
        Ok(&self.line)
    }

    /// An SMTP reply: its code and last line.
    pub async fn smtp_reply(&mut self) -> anyhow::Result<(u16, String)> {
        loop {
            let line = self.read_line().await?;
            let code = line
                .get(..3)
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse().ok())
                .with_context(|| {
                    format!("not an SMTP reply: {:?}", String::from_utf8_lossy(line))
                })?;
            if line.get(3) != Some(&b'-') {
                return Ok((code, String::from_utf8_lossy(line).into_owned()));
            }
        }
    }

    /// A POP3 status line: Ok(text) for +OK, an error for -ERR.
    pub async fn pop3_status(&mut self) -> anyhow::Result<String> {
        let line = String::from_utf8_lossy(self.read_line().await?).into_owned();
        if line.starts_with("+OK") {
            Ok(line)
        } else {
            bail!("{line}")
        }
    }

    /// The rest of a POP3 multi-line response, up to the `.` line; returns its size in octets.
    pub async fn pop3_body(&mut self) -> anyhow::Result<usize> {
        let mut size = 0;
        loop {
            let line = self.read_line().await?;
            if line == b"." {
                return Ok(size);
            }
            size += line.len() + 2;
        }
    }
}
