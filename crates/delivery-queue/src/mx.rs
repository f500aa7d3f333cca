//! Where a domain's mail goes, by DNS (RFC 5321 5.1): its MX hosts in preference order, or
//! the domain itself when it has no MX (implicit MX). A domain that does not exist, or that
//! publishes a null MX (RFC 7505), does not accept mail.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

pub enum Resolution {
    /// Host names to try, best first.
    Hosts(Vec<String>),
    /// The domain does not exist or accepts no mail: a permanent failure, with its enhanced
    /// status code.
    NoMail { status: &'static str, why: String },
    /// DNS did not answer usefully now: try later.
    TryLater(String),
}

/// The resolver: the given servers, or the system's (`/etc/resolv.conf`) when none are given.
pub fn resolver(servers: &[SocketAddr]) -> anyhow::Result<TokioResolver> {
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
    Ok(builder.with_options(options).build()?)
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
                return Resolution::Hosts(vec![domain.to_owned()]);
            }
            Resolution::Hosts(hosts.into_iter().map(|(_, h)| h).collect())
        }
        Err(e) => match no_records(&e) {
            Some(ResponseCode::NXDomain) => Resolution::NoMail {
                status: "5.1.2",
                why: format!("{domain} does not exist (NXDOMAIN)"),
            },
            // The domain exists without MX: its own address records (RFC 5321 5.1).
            Some(_) => Resolution::Hosts(vec![domain.to_owned()]),
            None => Resolution::TryLater(format!("MX lookup for {domain} failed: {e}")),
        },
    }
}

/// Addresses of one mail host; empty when it has none.
pub async fn addresses(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match resolver
        .lookup_ip(format!("{}.", host.trim_end_matches('.')))
        .await
    {
        Ok(ips) => Ok(ips.iter().collect()),
        Err(e) if no_records(&e).is_some() => Ok(Vec::new()),
        Err(e) => Err(format!("address lookup for {host} failed: {e}")),
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
