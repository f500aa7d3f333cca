//! The PROXY protocol v2 header from a trusted load balancer (parsed by
//! `pochta_session::proxy`): accepted only from configured peers, since from anyone else the
//! header would let a client choose its own address. `read_header` reads exactly the header's
//! bytes, so nothing of the client's data is consumed.

use std::net::SocketAddr;
use std::time::Duration;

use pochta_session::proxy::{self, FIXED_LEN, Header};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Header(proxy::Error),
    Io(String),
    Timeout,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Header(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "reading the PROXY header: {e}"),
            Error::Timeout => write!(f, "no PROXY header in time"),
        }
    }
}

impl std::error::Error for Error {}

/// Reads one header from `tcp` within `timeout` and returns the client's address: the one
/// the header names, or `peer` for a LOCAL header.
pub async fn read_header(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, Error> {
    let read = async {
        let mut fixed = [0u8; FIXED_LEN];
        tcp.read_exact(&mut fixed)
            .await
            .map_err(|e| Error::Io(e.to_string()))?;
        let mut rest = vec![0u8; proxy::remaining_len(&fixed).map_err(Error::Header)?];
        tcp.read_exact(&mut rest)
            .await
            .map_err(|e| Error::Io(e.to_string()))?;
        proxy::parse(&fixed, &rest).map_err(Error::Header)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Header::Proxied { source })) => Ok(source),
        Ok(Ok(Header::Local)) => Ok(peer),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pochta_session::proxy::{FIXED_LEN, SIGNATURE};

    fn header(command: u8, family: u8, block: &[u8]) -> ([u8; FIXED_LEN], Vec<u8>) {
        let mut fixed = [0u8; FIXED_LEN];
        fixed[..12].copy_from_slice(&SIGNATURE);
        fixed[12] = 0x20 | command;
        fixed[13] = family;
        fixed[14..].copy_from_slice(&(block.len() as u16).to_be_bytes());
        (fixed, block.to_vec())
    }

    #[tokio::test]
    async fn reads_exactly_the_header_and_leaves_the_client_bytes() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let (fixed, rest) = header(1, 0x11, &[198, 51, 100, 9, 127, 0, 0, 1, 0, 99, 0, 25]);
            tcp.write_all(&[&fixed[..], &rest, b"EHLO client\r\n"].concat())
                .await
                .unwrap();
            tcp
        });
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let source = read_header(&mut tcp, peer, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(source, "198.51.100.9:99".parse().unwrap());
        let mut line = [0u8; 13];
        tcp.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"EHLO client\r\n");
        let _client = client.await.unwrap();

        // A peer that says nothing times out.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (mut tcp, peer) = listener.accept().await.unwrap();
        assert_eq!(
            read_header(&mut tcp, peer, Duration::from_millis(50)).await,
            Err(Error::Timeout)
        );
    }
}
