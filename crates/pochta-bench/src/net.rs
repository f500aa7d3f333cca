//! A line-oriented client connection, plain or TLS (STARTTLS / STLS upgrade it in place).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
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

    /// The rest of a POP3 multi-line response, up to the `.` line; returns its size in octets
    /// (as sent: dot-stuffed, with line ends). Scans the read buffer in place rather than line
    /// by line, so the load generator costs little beside the server it measures.
    pub async fn pop3_body(&mut self) -> anyhow::Result<usize> {
        match &mut self.stream {
            Stream::Plain(r) => dot_body(r).await,
            Stream::Tls(r) => dot_body(r.as_mut()).await,
        }
    }
}

/// Where the scan of a multi-line response stands within the current line.
#[derive(Clone, Copy)]
enum Line {
    Start,
    /// The line so far is the first `n` octets of `.\r`: it may be the terminator.
    Dot(usize),
    /// Cannot be the terminator.
    Other,
}

/// Reads a multi-line response body through its terminating `.` line (RFC 1939 3: `.CRLF`;
/// a bare `.LF` is taken too), leaving what follows in the buffer. Returns the body's octets.
async fn dot_body<R: AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<usize> {
    let mut size = 0;
    let mut line = Line::Start;
    loop {
        let buf = timed("reading", r.fill_buf()).await?;
        if buf.is_empty() {
            bail!("the server closed the connection");
        }
        let mut pos = 0;
        while pos < buf.len() {
            let rest = &buf[pos..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                line = match (line, rest) {
                    (Line::Start, b"." | b".\r") => Line::Dot(rest.len()),
                    (Line::Dot(1), b"\r") => Line::Dot(2),
                    _ => Line::Other,
                };
                size += rest.len();
                pos = buf.len();
                break;
            };
            let piece = &rest[..=nl];
            let end = matches!(
                (line, piece),
                (Line::Start, b".\n" | b".\r\n")
                    | (Line::Dot(1), b"\n" | b"\r\n")
                    | (Line::Dot(2), b"\n")
            );
            pos += piece.len();
            if end {
                // The terminator's octets seen in earlier buffers were counted as body.
                if let Line::Dot(n) = line {
                    size -= n;
                }
                r.consume(pos);
                return Ok(size);
            }
            size += piece.len();
            line = Line::Start;
        }
        r.consume(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two responses back to back, read through buffers of every size from 1 octet up: each
    /// body ends at its own `.` line (not at a dot-stuffed `..` line, not at a `.` inside a
    /// line) with the same size, and the next response is left for the next read.
    #[tokio::test]
    async fn dot_body_ends_at_the_dot_line_whatever_the_buffer_size() {
        let first = b"Subject: x\r\n\r\n..\r\n.. not the end\r\nnot.\r\n.\r\r\n..\r\n";
        let second = b"a\r\n.\n";
        let mut stream = Vec::new();
        stream.extend_from_slice(first);
        stream.extend_from_slice(b".\r\n");
        stream.extend_from_slice(second);
        stream.extend_from_slice(b"+OK next\r\n");
        for capacity in 1..=stream.len() {
            let mut r = BufReader::with_capacity(capacity, &stream[..]);
            assert_eq!(
                dot_body(&mut r).await.unwrap(),
                first.len(),
                "at {capacity}"
            );
            assert_eq!(dot_body(&mut r).await.unwrap(), second.len() - 2);
            let mut rest = String::new();
            r.read_line(&mut rest).await.unwrap();
            assert_eq!(rest, "+OK next\r\n", "at {capacity}");
        }
    }

    #[tokio::test]
    async fn dot_body_fails_when_the_server_closes_first() {
        let mut r = BufReader::with_capacity(4, &b"body\r\n.\r"[..]);
        assert!(dot_body(&mut r).await.is_err());
    }
}
