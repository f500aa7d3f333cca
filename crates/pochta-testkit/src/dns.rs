//! A DNS server for tests: the queue resolves MX and address records through it, so routing
//! is tested without the machine's resolver; the ingress reads SPF, DKIM and DMARC records.

use std::net::SocketAddr;

/// Starts a tiny authoritative DNS server over UDP on loopback for a test's zone and returns
/// its address: it answers A, MX and TXT queries from `records`, NXDOMAIN for unknown names, and an
/// empty answer for known names without records of the type asked for.
pub async fn dns_server(records: Vec<(&'static str, Record)>) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if let Some(reply) = answer(&buf[..n], &records) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    addr
}

/// A record the test DNS server answers with.
#[derive(Debug, Clone, Copy)]
pub enum Record {
    Mx(u16, &'static str),
    A([u8; 4]),
    /// Text, sent as strings of at most 255 octets (RFC 1035 3.3.14).
    Txt(&'static str),
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn answer(query: &[u8], records: &[(&'static str, Record)]) -> Option<Vec<u8>> {
    let mut i = 12;
    let mut labels = Vec::new();
    while *query.get(i)? != 0 {
        let len = query[i] as usize;
        labels.push(String::from_utf8_lossy(query.get(i + 1..i + 1 + len)?).to_ascii_lowercase());
        i += len + 1;
    }
    let name = labels.join(".");
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let question_end = i + 5;
    let known: Vec<Record> = records
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, r)| *r)
        .collect();
    let answers: Vec<Record> = known
        .iter()
        .copied()
        .filter(|r| {
            matches!(
                (r, qtype),
                (Record::Mx(..), 15) | (Record::A(_), 1) | (Record::Txt(_), 16)
            )
        })
        .collect();
    let rcode = if known.is_empty() { 3 } else { 0 };
    let mut out = query[..2].to_vec();
    out.extend_from_slice(&(0x8400u16 | rcode).to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..question_end]);
    for rec in answers {
        out.extend_from_slice(&[0xC0, 0x0C]);
        let (rtype, rdata) = match rec {
            Record::Mx(preference, exchange) => {
                let mut data = preference.to_be_bytes().to_vec();
                encode_name(exchange, &mut data);
                (15u16, data)
            }
            Record::A(ip) => (1u16, ip.to_vec()),
            Record::Txt(text) => {
                let mut data = Vec::new();
                for string in text.as_bytes().chunks(255) {
                    data.push(string.len() as u8);
                    data.extend_from_slice(string);
                }
                (16u16, data)
            }
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some(out)
}
