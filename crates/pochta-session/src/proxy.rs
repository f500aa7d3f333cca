//! The PROXY protocol, version 2 (HAProxy's "proxy-protocol.txt", section 2.2): a load
//! balancer in front of a server sends one binary header before the client's bytes, naming
//! the client's real address. This is the header's pure parser (bytes in, header out);
//! `pochta_service::proxy` reads exactly its bytes from a connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Signature, version/command, family/protocol, 2 length bytes.
pub const FIXED_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A connection on behalf of a client at `source`.
    Proxied { source: SocketAddr },
    /// The balancer's own connection (e.g. a health check), or an address family the
    /// protocol cannot name (UNSPEC, UNIX): the peer's address stands.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Signature,
    Version(u8),
    Command(u8),
    /// The address block is shorter than its family needs.
    Length {
        family: u8,
        len: usize,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Signature => write!(f, "no PROXY protocol v2 signature"),
            Error::Version(v) => write!(f, "PROXY protocol version {v} (only 2 is accepted)"),
            Error::Command(c) => write!(f, "unknown PROXY command {c}"),
            Error::Length { family, len } => {
                write!(f, "address block of {len} bytes for family {family:#x}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Checks the fixed part and returns how many bytes follow it (addresses and TLVs).
pub fn remaining_len(fixed: &[u8; FIXED_LEN]) -> Result<usize, Error> {
    if fixed[..12] != SIGNATURE {
        return Err(Error::Signature);
    }
    let version = fixed[12] >> 4;
    if version != 2 {
        return Err(Error::Version(version));
    }
    Ok(usize::from(u16::from_be_bytes([fixed[14], fixed[15]])))
}

/// Parses a whole header: the fixed part and the `remaining_len` bytes after it. TLVs
/// (after the addresses) are ignored.
pub fn parse(fixed: &[u8; FIXED_LEN], rest: &[u8]) -> Result<Header, Error> {
    remaining_len(fixed)?;
    match fixed[12] & 0x0f {
        0 => return Ok(Header::Local),
        1 => {}
        other => return Err(Error::Command(other)),
    }
    let family = fixed[13];
    let short = || Error::Length {
        family,
        len: rest.len(),
    };
    // High nibble: address family; low nibble: transport (1 stream, 2 datagram).
    let source = match family >> 4 {
        1 => {
            let a = rest.get(..12).ok_or_else(short)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]]))
        }
        2 => {
            let a = rest.get(..36).ok_or_else(short)?;
            let octets: [u8; 16] = a[..16].try_into().expect("16 bytes");
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([a[32], a[33]]),
            )
        }
        _ => return Ok(Header::Local),
    };
    Ok(Header::Proxied { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(command: u8, family: u8, block: &[u8]) -> ([u8; FIXED_LEN], Vec<u8>) {
        let mut fixed = [0u8; FIXED_LEN];
        fixed[..12].copy_from_slice(&SIGNATURE);
        fixed[12] = 0x20 | command;
        fixed[13] = family;
        fixed[14..].copy_from_slice(&(block.len() as u16).to_be_bytes());
        (fixed, block.to_vec())
    }

    #[test]
    fn tcp4_and_tcp6_sources_with_tlvs_ignored() {
        let mut block = vec![192, 0, 2, 7, 10, 0, 0, 1, 0xc3, 0x50, 0, 25];
        block.extend_from_slice(&[0x04, 0, 2, b'h', b'i']); // a NOOP TLV
        let (fixed, rest) = header(1, 0x11, &block);
        assert_eq!(remaining_len(&fixed), Ok(rest.len()));
        assert_eq!(
            parse(&fixed, &rest),
            Ok(Header::Proxied {
                source: "192.0.2.7:50000".parse().unwrap()
            })
        );

        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0x10, 0x00, 0, 25]);
        let (fixed, rest) = header(1, 0x21, &block);
        assert_eq!(
            parse(&fixed, &rest),
            Ok(Header::Proxied {
                source: "[2001:db8::5]:4096".parse().unwrap()
            })
        );
    }

    #[test]
    fn local_and_unspecified_keep_the_peer() {
        let (fixed, rest) = header(0, 0x11, &[0; 12]);
        assert_eq!(parse(&fixed, &rest), Ok(Header::Local));
        let (fixed, rest) = header(1, 0x00, &[]);
        assert_eq!(parse(&fixed, &rest), Ok(Header::Local));
        let (fixed, rest) = header(1, 0x31, &[0; 216]);
        assert_eq!(parse(&fixed, &rest), Ok(Header::Local), "AF_UNIX");
    }

    #[test]
    fn malformed_headers_are_refused() {
        let mut fixed = [0u8; FIXED_LEN];
        fixed[..4].copy_from_slice(b"EHLO");
        assert_eq!(remaining_len(&fixed), Err(Error::Signature));

        let (mut fixed, _) = header(1, 0x11, &[0; 12]);
        fixed[12] = 0x11;
        assert_eq!(remaining_len(&fixed), Err(Error::Version(1)));

        let (fixed, rest) = header(2, 0x11, &[0; 12]);
        assert_eq!(parse(&fixed, &rest), Err(Error::Command(2)));

        let (fixed, rest) = header(1, 0x11, &[0; 8]);
        assert_eq!(
            parse(&fixed, &rest),
            Err(Error::Length {
                family: 0x11,
                len: 8
            })
        );
        let (fixed, rest) = header(1, 0x21, &[0; 12]);
        assert!(matches!(parse(&fixed, &rest), Err(Error::Length { .. })));
    }
}
