//! DNS servers for tests: the queue resolves MX and address records through them, so routing
//! is tested without the machine's resolver; the ingress reads SPF, DKIM and DMARC records.
//! `dns_server` answers plainly; `signed_dns_server` serves the same records as a
//! DNSSEC-signed root zone (RRSIGs, NSEC denials) that a validating resolver can prove
//! from the trust anchor it hands out.

use std::net::SocketAddr;

/// Starts a tiny authoritative DNS server over UDP on loopback for a test's zone and returns
/// its address: it answers A, MX and TXT queries from `records`, NXDOMAIN for unknown names, and an
/// empty answer for known names without records of the type asked for.
pub async fn dns_server(records: Vec<(&'static str, Record)>) -> SocketAddr {
    serve(move |query| answer(query, &records)).await
}

/// Binds a UDP socket on loopback and answers each query datagram with `respond`'s reply
/// (none: no answer), until the runtime ends; returns the socket's address.
async fn serve(respond: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if let Some(reply) = respond(&buf[..n]) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    addr
}

/// A record the test DNS server answers with.
#[derive(Debug, Clone)]
pub enum Record {
    Mx(u16, &'static str),
    A([u8; 4]),
    /// Text, sent as strings of at most 255 octets (RFC 1035 3.3.14).
    Txt(&'static str),
    /// TLSA: certificate usage, selector, matching type, data (RFC 6698 2.1).
    Tlsa(u8, u8, u8, Vec<u8>),
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
        .map(|(_, r)| r.clone())
        .collect();
    let answers: Vec<Record> = known
        .iter()
        .filter(|r| r.type_code() == qtype)
        .cloned()
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
        let rdata = match &rec {
            Record::Mx(preference, exchange) => {
                let mut data = preference.to_be_bytes().to_vec();
                encode_name(exchange, &mut data);
                data
            }
            Record::A(ip) => ip.to_vec(),
            Record::Txt(text) => {
                let mut data = Vec::new();
                for string in text.as_bytes().chunks(255) {
                    data.push(string.len() as u8);
                    data.extend_from_slice(string);
                }
                data
            }
            Record::Tlsa(usage, selector, matching, data) => {
                [&[*usage, *selector, *matching][..], data].concat()
            }
        };
        out.extend_from_slice(&rec.type_code().to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some(out)
}

impl Record {
    fn type_code(&self) -> u16 {
        match self {
            Record::Mx(..) => 15,
            Record::A(_) => 1,
            Record::Txt(_) => 16,
            Record::Tlsa(..) => 52,
        }
    }

    fn rdata(&self) -> RData {
        match self {
            Record::Mx(preference, exchange) => RData::MX(MX::new(*preference, fqdn(exchange))),
            Record::A(ip) => RData::A(A::from(std::net::Ipv4Addr::from(*ip))),
            Record::Txt(text) => RData::TXT(TXT::new(
                text.as_bytes()
                    .chunks(255)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect(),
            )),
            Record::Tlsa(usage, selector, matching, data) => RData::TLSA(TLSA::new(
                (*usage).into(),
                (*selector).into(),
                (*matching).into(),
                data.clone(),
            )),
        }
    }
}

use std::collections::BTreeMap;

use hickory_resolver::proto::dnssec::crypto::Ed25519SigningKey;
use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData, NSEC, RRSIG, SigInput};
use hickory_resolver::proto::dnssec::{Algorithm, DnssecSigner, SigningKey, TBS};
use hickory_resolver::proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, MX, NS, SOA, TLSA, TXT};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record as Rr, RecordType, SerialNumber};

/// A signed test zone's server: where it listens, and the trust anchor (a DNSKEY line of
/// the root zone, as `queue.dnssec_trust_anchor` reads) that proves its answers.
pub struct SignedDns {
    pub addr: SocketAddr,
    pub trust_anchor: String,
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).expect("a test name")
}

/// The zone: every name's record sets, each with its RRSIG, and the NSEC chain; and the
/// unsigned zones delegated from it, served as their own servers would.
struct Zone {
    sets: BTreeMap<Name, BTreeMap<RecordType, (Vec<Rr>, Rr)>>,
    unsigned_zones: Vec<Name>,
    unsigned: Plain,
}

type Plain = BTreeMap<Name, BTreeMap<RecordType, Vec<Rr>>>;

fn add(zone: &mut Plain, name: Name, rdata: RData) {
    let rtype = rdata.record_type();
    zone.entry(name.clone())
        .or_default()
        .entry(rtype)
        .or_default()
        .push(Rr::from_rdata(name, 60, rdata));
}

impl Zone {
    fn set(&self, name: &Name, rtype: RecordType) -> Vec<Rr> {
        match self.sets.get(name).and_then(|types| types.get(&rtype)) {
            Some((records, rrsig)) => records.iter().cloned().chain([rrsig.clone()]).collect(),
            None => Vec::new(),
        }
    }

    /// The NSEC (with its RRSIG) whose span covers `name`: the last owner before it.
    fn covering_nsec(&self, name: &Name) -> Vec<Rr> {
        let owner = self
            .sets
            .keys()
            .rev()
            .find(|owner| *owner < name)
            .expect("the root sorts first");
        self.set(owner, RecordType::NSEC)
    }

    /// Whether `name` exists: it owns records or is an empty non-terminal above some.
    fn exists(&self, name: &Name) -> bool {
        self.sets.keys().any(|owner| name.zone_of(owner))
    }

    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        let question = request.queries.first()?.clone();
        let name = question.name().to_lowercase();
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.add_query(question.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        edns.enable_dnssec();
        response.set_edns(edns);
        let soa = self.set(&Name::root(), RecordType::SOA);
        let qtype = question.query_type();
        let delegated = self.unsigned_zones.iter().any(|zone| {
            zone.zone_of(&name)
                && !(*zone == name && matches!(qtype, RecordType::DS | RecordType::NS))
        });
        if delegated {
            // The child zone's own answer: no signatures, no proofs.
            match self.unsigned.get(&name) {
                Some(types) => response.add_answers(types.get(&qtype).cloned().unwrap_or_default()),
                None => {
                    response.metadata.response_code = ResponseCode::NXDomain;
                    &mut response
                }
            };
        } else if self.sets.contains_key(&name) {
            let answers = self.set(&name, question.query_type());
            if answers.is_empty() {
                // NODATA, proven by the name's own NSEC (RFC 4035 3.1.3.1).
                response.add_authorities(soa);
                response.add_authorities(self.set(&name, RecordType::NSEC));
            } else {
                response.add_answers(answers);
            }
        } else if self.exists(&name) {
            // An empty non-terminal: NODATA, proven by the NSEC that spans it.
            response.add_authorities(soa);
            response.add_authorities(self.covering_nsec(&name));
        } else {
            // NXDOMAIN: no such name, and no wildcard at its closest encloser (RFC 4035
            // 3.1.3.2).
            response.metadata.response_code = ResponseCode::NXDomain;
            let mut encloser = name.base_name();
            while !encloser.is_root() && !self.exists(&encloser) {
                encloser = encloser.base_name();
            }
            let wildcard = Name::from_ascii("*").ok()?.append_domain(&encloser).ok()?;
            let mut nsecs = self.covering_nsec(&name);
            for record in self.covering_nsec(&wildcard) {
                if !nsecs.contains(&record) {
                    nsecs.push(record);
                }
            }
            response.add_authorities(soa);
            response.add_authorities(nsecs);
        }
        response.to_vec().ok()
    }
}

/// Starts a DNS server over UDP on loopback serving `records` as a DNSSEC-signed root zone
/// (Ed25519, RFC 8080) with NSEC denials, and returns its address and trust anchor. The
/// signatures of the names in `bogus` are spoiled, so a validating resolver refuses them.
/// The zones in `unsigned` are delegated without DS (provably insecure, RFC 4035 5.2), and
/// their records are served unsigned.
pub async fn signed_dns_server(
    records: Vec<(&'static str, Record)>,
    bogus: &[&str],
    unsigned: &[&str],
) -> SignedDns {
    let key = Ed25519SigningKey::from_pkcs8(&Ed25519SigningKey::generate_pkcs8().unwrap()).unwrap();
    let dnskey = DNSKEY::new(true, true, false, key.to_public_key().unwrap());
    let trust_anchor = format!(". 3600 IN DNSKEY {dnskey}\n");
    let signer = DnssecSigner::new(
        dnskey.clone(),
        Box::new(key),
        Name::root(),
        std::time::Duration::from_secs(86_400),
    );
    let mut plain = Plain::new();
    add(
        &mut plain,
        Name::root(),
        RData::SOA(SOA::new(
            fqdn("ns.test"),
            fqdn("hostmaster.test"),
            1,
            3600,
            600,
            86_400,
            60,
        )),
    );
    add(
        &mut plain,
        Name::root(),
        RData::DNSSEC(DNSSECRData::DNSKEY(dnskey)),
    );
    let unsigned_zones: Vec<Name> = unsigned.iter().map(|z| fqdn(z)).collect();
    let mut child = Plain::new();
    for zone in &unsigned_zones {
        let server = Name::from_ascii("ns").unwrap().append_domain(zone).unwrap();
        add(&mut plain, zone.clone(), RData::NS(NS(server)));
    }
    for (name, record) in &records {
        let name = fqdn(name);
        if unsigned_zones.iter().any(|zone| zone.zone_of(&name)) {
            add(&mut child, name, record.rdata());
        } else {
            add(&mut plain, name, record.rdata());
        }
    }
    let names: Vec<Name> = plain.keys().cloned().collect();
    for (i, name) in names.iter().enumerate() {
        let next = names[(i + 1) % names.len()].clone();
        let types: Vec<RecordType> = plain[name].keys().copied().collect();
        add(
            &mut plain,
            name.clone(),
            RData::DNSSEC(DNSSECRData::NSEC(NSEC::new_cover_self(next, types))),
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let bogus: Vec<Name> = bogus.iter().map(|n| fqdn(n)).collect();
    let mut sets = BTreeMap::new();
    for (name, types) in plain {
        let mut signed = BTreeMap::new();
        for (rtype, rrset) in types {
            let input = SigInput {
                type_covered: rtype,
                algorithm: Algorithm::ED25519,
                num_labels: name.num_labels(),
                original_ttl: 60,
                sig_expiration: SerialNumber::new(now + 86_400),
                sig_inception: SerialNumber::new(now - 3600),
                key_tag: signer.calculate_key_tag().unwrap(),
                signer_name: Name::root(),
            };
            let tbs = TBS::from_input(&name, DNSClass::IN, &input, rrset.iter()).unwrap();
            let mut signature = signer.sign(&tbs).unwrap();
            if bogus.contains(&name) {
                signature[0] ^= 0x55;
            }
            let rrsig = Rr::from_rdata(
                name.clone(),
                60,
                RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, signature))),
            );
            signed.insert(rtype, (rrset, rrsig));
        }
        sets.insert(name, signed);
    }
    let zone = Zone {
        sets,
        unsigned_zones,
        unsigned: child,
    };
    let addr = serve(move |query| zone.answer(query)).await;
    SignedDns { addr, trust_anchor }
}
