//! DKIM signing (RFC 6376) of the mail Pochta sends: what its users submit (smtp-ingress) and
//! what the queue writes itself (delivery status notifications, TLS reports). Keys come from
//! the store (`pochtactl dkim`), cached for `mail_auth.key_cache_secs`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use pochta_service::cache::TtlCache;
use pochta_store::{DkimAlgorithm, DkimSigningKey, Store};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

type Signer = DkimSigner<DkimKey, Done>;

/// The store's active keys, ready to sign, cached per domain.
pub struct DkimSigning {
    store: Store,
    /// The domains that have an active key: a message from any other domain costs no more
    /// than parsing its From: field (and every message, where no domain has keys, nothing).
    signing_domains: TtlCache<(), Arc<HashSet<String>>>,
    /// Each domain's active keys, parsed (a rotation shows within the cache's time).
    signers: TtlCache<String, Arc<[Signer]>>,
}

impl DkimSigning {
    pub fn new(store: Store, key_cache: Duration) -> Self {
        DkimSigning {
            store,
            signing_domains: TtlCache::new(key_cache, 1),
            signers: TtlCache::new(key_cache, 10_000),
        }
    }

    /// A report the queue writes (From: an address at its host name) with its DKIM-Signature
    /// fields in front: signed by the From: domain or the nearest parent of it with keys (a
    /// report from `MAILER-DAEMON@mx.example.org` by example.org, which DMARC's relaxed
    /// alignment accepts, RFC 7489 3.1.1); as it is where no such domain has keys.
    pub async fn signed_report(&self, content: Vec<u8>) -> Vec<u8> {
        let fields = self.signatures_by(&content, true).await;
        if fields.is_empty() {
            return content;
        }
        let mut signed = fields.into_bytes();
        signed.extend_from_slice(&content);
        signed
    }

    /// DKIM-Signature fields for `content` (mail a user of ours submitted), one per active key
    /// of its From: domain; empty when the domain has none. A store error leaves the message
    /// unsigned rather than refusing it (logged).
    pub async fn signatures(&self, content: &[u8]) -> String {
        self.signatures_by(content, false).await
    }

    /// `parents`: a parent of the From: domain may sign when the domain itself has no keys.
    async fn signatures_by(&self, content: &[u8], parents: bool) -> String {
        let domains = match self.signing_domains.get(&(), Instant::now()) {
            Some(domains) => domains,
            None => match self.store.dkim_signing_domains().await {
                Ok(domains) => {
                    let domains = Arc::new(domains.into_iter().collect::<HashSet<_>>());
                    self.signing_domains
                        .insert((), domains.clone(), Instant::now());
                    domains
                }
                Err(e) => {
                    tracing::error!("reading the signing domains failed; sent unsigned: {e}");
                    return String::new();
                }
            },
        };
        if domains.is_empty() {
            return String::new();
        }
        let from = from_domain(content);
        let Some(domain) = from.and_then(|from| match parents {
            true => signing_domain(&from, &domains),
            false => domains.contains(&from).then_some(from),
        }) else {
            return String::new();
        };
        let signers = match self.signers.get(&domain, Instant::now()) {
            Some(signers) => signers,
            None => match self.store.dkim_signing_keys(&domain).await {
                Ok(keys) => {
                    let signers: Arc<[Signer]> = keys
                        .iter()
                        .filter_map(|key| match signer(&domain, key) {
                            Ok(signer) => Some(signer),
                            Err(e) => {
                                tracing::error!(%domain, selector = %key.selector, "unusable DKIM key: {e}");
                                None
                            }
                        })
                        .collect();
                    self.signers
                        .insert(domain.clone(), signers.clone(), Instant::now());
                    signers
                }
                Err(e) => {
                    tracing::error!(%domain, "reading DKIM keys failed; sent unsigned: {e}");
                    return String::new();
                }
            },
        };
        if signers.is_empty() {
            return String::new();
        }
        // An RSA-2048 signature takes about a millisecond of CPU: this worker's other
        // tasks move to another thread meanwhile rather than wait behind it.
        tokio::task::block_in_place(|| {
            let mut fields = String::new();
            for signer in signers.iter() {
                match signer.sign(content) {
                    Ok(signature) => fields.push_str(&signature.to_header()),
                    Err(e) => tracing::warn!(%domain, "DKIM signing failed: {e}"),
                }
            }
            fields
        })
    }
}

/// The domain that signs mail from `from`: itself or its nearest parent with keys, never a
/// top-level name.
fn signing_domain(from: &str, domains: &HashSet<String>) -> Option<String> {
    let mut candidate = from;
    loop {
        if domains.contains(candidate) {
            return Some(candidate.to_owned());
        }
        let (_, parent) = candidate.split_once('.')?;
        if !parent.contains('.') {
            return None;
        }
        candidate = parent;
    }
}

/// The domain of the message's From: field (its first mailbox), lower-cased. Only that
/// field is parsed (mail-parser, for its comments, quoting and encodings).
fn from_domain(content: &[u8]) -> Option<String> {
    let field = pochta_mail::headers::header_fields(content).find(|f| {
        content[f.clone()]
            .split(|b| *b == b':')
            .next()
            .is_some_and(|name| name.trim_ascii().eq_ignore_ascii_case(b"from"))
    })?;
    let mut only_from = content[field].to_vec();
    only_from.extend_from_slice(b"\r\n");
    let headers = mail_parser::MessageParser::new().parse_headers(&only_from)?;
    let address = headers.from()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

/// A signer for `domain` with a stored key: relaxed/relaxed canonicalization (survives the
/// re-folding and white space changes of relays).
fn signer(domain: &str, key: &DkimSigningKey) -> Result<Signer, mail_auth::Error> {
    let private = match key.algorithm {
        DkimAlgorithm::Ed25519 => DkimKey::Ed25519(Ed25519Key::from_pkcs8_der(&key.private_key)?),
        DkimAlgorithm::Rsa => DkimKey::Rsa(RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(key.private_key.as_slice()),
        ))?),
    };
    Ok(DkimSigner::from_key(private)
        .domain(domain)
        .selector(key.selector.as_str())
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_from_domain_is_the_first_mailbox_of_from() {
        assert_eq!(
            from_domain(b"Subject: x\r\nFrom: A <a@Example.ORG>, b@other.example\r\n\r\nbody"),
            Some("example.org".into())
        );
        assert_eq!(from_domain(b"Subject: none\r\n\r\n"), None);
        assert_eq!(from_domain(b"From: undisclosed\r\n\r\n"), None);
    }

    #[test]
    fn the_nearest_domain_with_keys_signs() {
        let domains: HashSet<String> = ["example.org", "deep.sub.example.net"]
            .map(String::from)
            .into();
        let signs = |from: &str| signing_domain(from, &domains);
        assert_eq!(signs("example.org").as_deref(), Some("example.org"));
        assert_eq!(signs("mx.example.org").as_deref(), Some("example.org"));
        assert_eq!(signs("a.b.example.org").as_deref(), Some("example.org"));
        assert_eq!(signs("sub.example.net"), None);
        assert_eq!(
            signs("x.deep.sub.example.net").as_deref(),
            Some("deep.sub.example.net")
        );
        assert_eq!(signs("example.com"), None);
        // Never a top-level name, even were one to have keys.
        let org: HashSet<String> = ["org".to_string()].into();
        assert_eq!(signing_domain("example.org", &org), None);
    }
}
