//! `pochtactl dkim`: signing keys and the DNS records that publish them (RFC 6376 3.6,
//! RFC 8463), and `pochtactl domain records`: every record a domain should publish.

use anyhow::Context;
use base64::Engine;
use clap::Subcommand;
use pochta_store::{DkimAlgorithm, DkimKeyInfo, NewDkimKey};

#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Make a key for a local domain and print the DNS record to publish. The domain's first
    /// key of an algorithm signs at once (publish the record first); a later one waits as
    /// pending until `dkim rotate`.
    Generate {
        domain: String,
        /// rsa (2048 bits, verified everywhere) or ed25519 (RFC 8463; small, not yet
        /// verified by every receiver: use it beside an RSA key).
        #[arg(long, default_value = "rsa", value_parser = parse_algorithm)]
        algorithm: DkimAlgorithm,
        /// The selector (the record is SELECTOR._domainkey.DOMAIN); by default the
        /// algorithm and today's date, e.g. rsa20261206.
        #[arg(long)]
        selector: Option<String>,
        /// RSA key size: 2048 (the default) to 4096.
        #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(2048..=4096))]
        bits: u32,
    },
    /// Make the pending key of an algorithm sign, and retire the key that signed. Keep the
    /// retired key's record published for a few days (mail in transit), then `dkim remove` it.
    Rotate {
        domain: String,
        #[arg(long, default_value = "rsa", value_parser = parse_algorithm)]
        algorithm: DkimAlgorithm,
    },
    /// List keys (with their DNS records).
    List {
        /// Only this domain's keys.
        domain: Option<String>,
    },
    /// Forget a pending or retired key (its record can be taken out of DNS).
    Remove { domain: String, selector: String },
}

fn parse_algorithm(s: &str) -> Result<DkimAlgorithm, String> {
    s.parse::<DkimAlgorithm>()
        .map_err(|_| "expected rsa or ed25519".to_owned())
}

/// A new key pair: the private key as PKCS#8 DER, the public key as p= carries it (RSA: the
/// SubjectPublicKeyInfo DER; Ed25519: the 32 octets of the key, RFC 8463 4.2).
pub fn generate_key(algorithm: DkimAlgorithm, bits: u32) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    match algorithm {
        DkimAlgorithm::Rsa => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
            let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits as usize)
                .context("making an RSA key")?;
            let public = private
                .to_public_key()
                .to_public_key_der()
                .context("encoding the public key")?;
            let private = private.to_pkcs8_der().context("encoding the private key")?;
            Ok((private.as_bytes().to_vec(), public.as_bytes().to_vec()))
        }
        DkimAlgorithm::Ed25519 => {
            use ring::signature::KeyPair;
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("making an Ed25519 key failed"))?;
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|_| anyhow::anyhow!("reading the new Ed25519 key failed"))?;
            Ok((pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
        }
    }
}

/// The key to store for `generate`.
pub fn new_key(
    domain: &str,
    algorithm: DkimAlgorithm,
    selector: Option<String>,
    bits: u32,
) -> anyhow::Result<NewDkimKey> {
    let selector = selector.unwrap_or_else(|| {
        let prefix = match algorithm {
            DkimAlgorithm::Rsa => "rsa",
            DkimAlgorithm::Ed25519 => "ed",
        };
        format!("{prefix}{}", chrono::Utc::now().format("%Y%m%d"))
    });
    let (private_key, public_key) = generate_key(algorithm, bits)?;
    Ok(NewDkimKey {
        domain: domain.to_owned(),
        selector,
        algorithm,
        private_key,
        public_key,
    })
}

/// The name a key's record is published at.
pub fn record_name(domain: &str, selector: &str) -> String {
    format!("{selector}._domainkey.{domain}")
}

/// The TXT record of a public key (RFC 6376 3.6.1).
pub fn record_text(algorithm: DkimAlgorithm, public_key: &[u8]) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        algorithm,
        base64::engine::general_purpose::STANDARD.encode(public_key)
    )
}

/// A key's record as a zone file line. Text longer than 255 octets is split into several
/// strings of one record (RFC 7208 3.3 style), as DNS requires.
pub fn zone_line(key: &DkimKeyInfo) -> String {
    zone_txt(
        &record_name(&key.domain, &key.selector),
        &record_text(key.algorithm, &key.public_key),
    )
}

/// `name. IN TXT "..." "..."`: text cut into strings of at most 255 octets.
pub fn zone_txt(name: &str, text: &str) -> String {
    let strings: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{name}. IN TXT {}", strings.join(" "))
}

/// Every record `domain` should publish for its mail to be delivered and trusted, with the
/// MTA-STS policy file: `mx_host` receives its mail; `keys` are its DKIM keys.
pub fn domain_records(domain: &str, mx_host: &str, keys: &[DkimKeyInfo]) -> String {
    let policy_id = chrono::Utc::now().format("%Y%m%d%H%M%S");
    let mut out = format!(
        "; Mail for {domain} (put these in its zone)\n\
         {domain}. IN MX 10 {mx_host}.\n\
         ; SPF (RFC 7208): only the domain's MX hosts send its mail\n\
         {spf}\n",
        spf = zone_txt(domain, "v=spf1 mx -all"),
    );
    out.push_str("; DKIM (RFC 6376): one record per key");
    if keys.is_empty() {
        out.push_str(&format!(" (none yet: pochtactl dkim generate {domain})"));
    }
    out.push('\n');
    for key in keys {
        out.push_str(&format!(
            "; {} key, {}\n{}\n",
            key.algorithm,
            key.state,
            zone_line(key)
        ));
    }
    out.push_str(&format!(
        "; DMARC (RFC 7489): start with p=none, move to quarantine and reject once the \
         reports show only your own mail failing\n\
         {dmarc}\n\
         ; MTA-STS (RFC 8461): change id= whenever the policy file changes\n\
         {sts}\n\
         ; TLS reporting (RFC 8460)\n\
         {tlsrpt}\n\
         ; Serve this at https://mta-sts.{domain}/.well-known/mta-sts.txt (a valid \
         certificate for mta-sts.{domain}); start with mode: testing\n\
         ;   version: STSv1\n\
         ;   mode: enforce\n\
         ;   mx: {mx_host}\n\
         ;   max_age: 604800\n",
        dmarc = zone_txt(
            &format!("_dmarc.{domain}"),
            &format!("v=DMARC1; p=none; rua=mailto:postmaster@{domain}")
        ),
        sts = zone_txt(
            &format!("_mta-sts.{domain}"),
            &format!("v=STSv1; id={policy_id}")
        ),
        tlsrpt = zone_txt(
            &format!("_smtp._tls.{domain}"),
            &format!("v=TLSRPTv1; rua=mailto:postmaster@{domain}")
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_keys_publish_their_32_octets() {
        let (private, public) = generate_key(DkimAlgorithm::Ed25519, 0).unwrap();
        assert_eq!(public.len(), 32);
        assert!(!private.is_empty());
        let text = record_text(DkimAlgorithm::Ed25519, &public);
        assert!(text.starts_with("v=DKIM1; k=ed25519; p="), "{text}");
        assert_eq!(text.len(), "v=DKIM1; k=ed25519; p=".len() + 44);
    }

    #[test]
    fn long_records_are_split_into_strings_of_255() {
        let text = "x".repeat(600);
        let line = zone_txt("s._domainkey.example.org", &text);
        let strings: Vec<&str> = line
            .split('"')
            .filter(|s| !s.trim().is_empty() && !s.contains("IN TXT"))
            .collect();
        assert_eq!(
            strings.iter().map(|s| s.len()).collect::<Vec<_>>(),
            [255, 255, 90]
        );
        assert!(line.starts_with("s._domainkey.example.org. IN TXT \""));
    }
}
