//! One HTTPS request with hyper's HTTP/1 client over the verifying tokio-rustls connector:
//! the MTA-STS policy fetch (RFC 8461 3.3) and TLS reports posted to `https:` addresses
//! (RFC 8460 5.4). The host is resolved through the queue's resolver; redirects are never
//! followed; the answer's body is read up to a limit.

use std::net::SocketAddr;

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

#[derive(Clone)]
pub struct Https {
    pub resolver: TokioResolver,
    /// Verifies the server's certificate (the roots of `queue.tls_ca_file`).
    pub connector: TlsConnector,
}

impl Https {
    /// Sends `request` to `host:port` and returns the answer's status and body (at most
    /// `limit` octets). The request's Host header is set here.
    pub async fn send(
        &self,
        host: &str,
        port: u16,
        mut request: http::Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let ip = self
            .resolver
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .iter()
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let tcp = tokio::net::TcpStream::connect(SocketAddr::new(ip, port))
            .await
            .map_err(|e| format!("connecting to {host}: {e}"))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
        tokio::spawn(connection);
        let value = http::HeaderValue::from_str(host).map_err(|e| format!("{host}: {e}"))?;
        request.headers_mut().insert(http::header::HOST, value);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| format!("reading the answer of {host}: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}
