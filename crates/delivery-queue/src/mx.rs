//! Where a domain's mail goes, by DNS (RFC 5321 5.1): its MX hosts in preference order, or
//! the domain itself when it has no MX (implicit MX). A domain that does not exist, or that
//! publishes a null MX (RFC 7505), does not accept mail.
//!
//! With DANE on (`queue.dane`), the resolver validates every answer with DNSSEC (hickory's
//! validator, from the configured trust anchors): bogus answers are lookup failures, and each
//! answer says whether it was proven secure, which decides whether a host's TLSA records
//! (RFC 7672 2.2) are looked up and believed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::TrustAnchors;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record};
use hickory_resolver::{Resolver, TokioResolver};
use pochta_mail::dane::Tlsa;

pub enum Resolution {
    /// Host names to try, best first; `secure` when DNSSEC proved the MX records (or their
    /// absence: then the domain's own address records decide).
    Hosts { hosts: Vec<String>, secure: bool },
    /// The domain does not exist or accepts no mail: a permanent failure, with its enhanced
    /// status code.
    NoMail { status: &'static str, why: String },
    /// DNS did not answer usefully now: try later.
    TryLater(String),
}

/// The resolver: the given servers, or the system's (`/etc/resolv.conf`) when none are given;
/// validating with DNSSEC from `trust_anchors` when they are given.
pub fn resolver(
    servers: &[SocketAddr],
    trust_anchors: Option<Arc<TrustAnchors>>,
) -> anyhow::Result<TokioResolver> {
    let builder = if servers.is_empty() {
        Resolver::builder_tokio()?
    } else {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
    };
    let mut options = ResolverOpts::default();
    options.attempts = 2;
    let builder = builder.with_options(options);
    let builder = match trust_anchors {
        Some(anchors) => builder.with_trust_anchor(anchors),
        None => builder,
    };
    Ok(builder.build()?)
}

/// The DNSSEC trust anchors of `queue.dnssec_trust_anchor` (DNSKEY records in zone-file
/// form), or the IANA root keys.
pub fn trust_anchors(file: Option<&std::path::Path>) -> anyhow::Result<Arc<TrustAnchors>> {
    let Some(file) = file else {
        return Ok(Arc::new(TrustAnchors::default()));
    };
    let setting = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("queue.dnssec_trust_anchor {}: {e}", file.display())
    };
    let text = std::fs::read_to_string(file).map_err(|e| setting(&e))?;
    let anchors: TrustAnchors = text.parse().map_err(|e| setting(&e))?;
    if !text.contains("DNSKEY") {
        return Err(setting(&"no DNSKEY records"));
    }
    Ok(Arc::new(anchors))
}

/// Whether DNSSEC proved every record of an answer (none: not proven).
fn all_secure(records: &[Record]) -> bool {
    !records.is_empty() && records.iter().all(|r| r.proof.is_secure())
}

fn no_records(e: &NetError) -> Option<ResponseCode> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => Some(no.response_code),
        _ => None,
    }
}

pub async fn mail_hosts(resolver: &TokioResolver, domain: &str) -> Resolution {
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(lookup) => {
            let mut hosts: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some((
                        mx.preference,
                        mx.exchange.to_ascii().trim_end_matches('.').to_owned(),
                    )),
                    _ => None,
                })
                .collect();
            if hosts.iter().any(|(_, h)| h.is_empty()) {
                return Resolution::NoMail {
                    status: "5.1.10",
                    why: format!("{domain} publishes a null MX: it accepts no mail (RFC 7505)"),
                };
            }
            hosts.sort();
            if hosts.is_empty() {
                return implicit_mx(domain);
            }
            Resolution::Hosts {
                hosts: hosts.into_iter().map(|(_, h)| h).collect(),
                secure: all_secure(lookup.answers()),
            }
        }
        Err(e) => match no_records(&e) {
            Some(ResponseCode::NXDomain) => Resolution::NoMail {
                status: "5.1.2",
                why: format!("{domain} does not exist (NXDOMAIN)"),
            },
            Some(_) => implicit_mx(domain),
            None => Resolution::TryLater(format!("MX lookup for {domain} failed: {e}")),
        },
    }
}

/// The domain exists without MX: its own address records (RFC 5321 5.1). A validating
/// resolver refused a forged denial in a signed zone (bogus), so whether DANE applies rests
/// on the domain's address records being secure (RFC 7672 2.2.1).
fn implicit_mx(domain: &str) -> Resolution {
    Resolution::Hosts {
        hosts: vec![domain.to_owned()],
        secure: true,
    }
}

/// Addresses of one mail host (empty when it has none), and whether DNSSEC proved them.
pub async fn addresses(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<IpAddr>, bool), String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((vec![ip], false));
    }
    match resolver
        .lookup_ip(format!("{}.", host.trim_end_matches('.')))
        .await
    {
        Ok(ips) => {
            let answers = ips.as_lookup().answers();
            let addresses: Vec<&Record> = answers
                .iter()
                .filter(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)))
                .collect();
            let secure = !addresses.is_empty() && addresses.iter().all(|r| r.proof.is_secure());
            Ok((ips.iter().collect(), secure))
        }
        Err(e) if no_records(&e).is_some() => Ok((Vec::new(), false)),
        Err(e) => Err(format!("address lookup for {host} failed: {e}")),
    }
}

/// The TLSA records of a mail host's SMTP service (`_25._tcp.HOST`, RFC 7672 2.2) when
/// DNSSEC proved them; None when there are none or they are not proven (no DANE then); an
/// error when the lookup failed or was bogus (the host is not to be used, RFC 7672 2.2).
pub async fn tlsa_records(
    resolver: &TokioResolver,
    host: &str,
) -> Result<Option<Vec<Tlsa>>, String> {
    let name = format!("_25._tcp.{}.", host.trim_end_matches('.'));
    match resolver.tlsa_lookup(name.as_str()).await {
        Ok(lookup) => {
            let records: Vec<&Record> = lookup
                .answers()
                .iter()
                .filter(|r| matches!(r.data, RData::TLSA(_)))
                .collect();
            if records.is_empty() || !records.iter().all(|r| r.proof.is_secure()) {
                return Ok(None);
            }
            Ok(Some(
                records
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TLSA(tlsa) => Some(Tlsa {
                            usage: tlsa.cert_usage.into(),
                            selector: tlsa.selector.into(),
                            matching: tlsa.matching.into(),
                            data: tlsa.cert_data.clone(),
                        }),
                        _ => None,
                    })
                    .collect(),
            ))
        }
        Err(e) if no_records(&e).is_some() => Ok(None),
        Err(e) => Err(format!("TLSA lookup for {name} failed: {e}")),
    }
}

/// The texts of the TXT records at `name` (each record's strings joined, RFC 7208 3.3), or
/// none when the lookup fails or finds nothing.
pub async fn txt_records(resolver: &TokioResolver, name: &str) -> Vec<String> {
    let Ok(lookup) = resolver.txt_lookup(format!("{name}.").as_str()).await else {
        return Vec::new();
    };
    lookup
        .answers()
        .iter()
        .filter_map(|record| {
            let RData::TXT(txt) = &record.data else {
                return None;
            };
            let text: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            String::from_utf8(text).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::trust_anchors;

    /// A trust anchor file that is missing, unreadable as DNSKEY records, or empty stops the
    /// start with the setting's name; a DNSKEY line loads.
    #[test]
    fn trust_anchor_files_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "; nothing here\n").unwrap();
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, ". 3600 IN DNSKEY not a key\n").unwrap();
        for file in [missing, empty, garbage] {
            let Err(e) = trust_anchors(Some(&file)) else {
                panic!("{} was accepted", file.display());
            };
            assert!(e.to_string().contains("queue.dnssec_trust_anchor"), "{e}");
        }
        let good = dir.path().join("good");
        std::fs::write(
            &good,
            ". 3600 IN DNSKEY 257 3 15 l02Woi0iS8Aa25FQkUd9RMzZHJpBoRQwAQEX1SxZJA4=\n",
        )
        .unwrap();
        assert!(trust_anchors(Some(&good)).is_ok());
        assert!(trust_anchors(None).is_ok(), "the IANA root keys");
    }
}
