//! MTA-STS for outbound mail (RFC 8461 5): which policy applies to a recipient domain.
//!
//! The `_mta-sts` TXT record names the current policy id. A policy the store holds for that
//! id, and not expired, is used as it is; otherwise it is fetched from
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (certificate verified, no redirects, at
//! most 64 KiB, within `mta_sts_timeout_secs`) and saved for its max_age. When the record or
//! the web server cannot be reached, an unexpired cached policy still applies (5.1): hiding
//! them is the attack the cache defends against. Answers are remembered in the process for
//! a minute so a busy destination costs no lookups per delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use http_body_util::Full;
use pochta_mail::mta_sts::{StsMode, StsPolicy, parse_policy, record_id};
use pochta_service::cache::TtlCache;
use pochta_store::Store;

use crate::https::Https;

/// The largest policy file read (RFC 8461 3.3 suggests 64 KiB).
const MAX_POLICY_BYTES: usize = 64 * 1024;

/// How long one process reuses what it found for a domain before asking DNS and the store
/// again.
const REMEMBER: Duration = Duration::from_secs(60);

pub struct MtaSts {
    resolver: TokioResolver,
    https: Https,
    port: u16,
    timeout: Duration,
    store: Store,
    recent: TtlCache<String, Option<Arc<StsPolicy>>>,
}

impl MtaSts {
    pub fn new(
        resolver: TokioResolver,
        https: Https,
        port: u16,
        timeout: Duration,
        store: Store,
    ) -> Self {
        MtaSts {
            resolver,
            https,
            port,
            timeout,
            store,
            recent: TtlCache::new(REMEMBER, 10_000),
        }
    }

    /// The policy mail to `domain` must follow now: None when it has none (or withdrew it
    /// with mode none).
    pub async fn policy(&self, domain: &str) -> Option<Arc<StsPolicy>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(found) = self.recent.get(&domain, Instant::now()) {
            return found;
        }
        let found = self
            .discover(&domain)
            .await
            .filter(|p| p.mode != StsMode::None)
            .map(Arc::new);
        self.recent
            .insert(domain.clone(), found.clone(), Instant::now());
        found
    }

    async fn discover(&self, domain: &str) -> Option<StsPolicy> {
        let cached = match self.store.mta_sts_policy(domain).await {
            Ok(cached) => cached.filter(|c| c.expires_in_secs > 0),
            Err(e) => {
                tracing::warn!(%domain, "reading the cached MTA-STS policy failed: {e}");
                None
            }
        };
        let Some(id) = self.record(domain).await else {
            return cached.map(|c| c.policy);
        };
        if let Some(cached) = cached.as_ref().filter(|c| c.policy_id == id) {
            return Some(cached.policy.clone());
        }
        match tokio::time::timeout(self.timeout, self.fetch(domain)).await {
            Ok(Ok(policy)) => {
                if let Err(e) = self.store.save_mta_sts_policy(domain, &id, &policy).await {
                    tracing::warn!(%domain, "caching the MTA-STS policy failed: {e}");
                }
                tracing::info!(%domain, mode = policy.mode.as_str(), id, "MTA-STS policy fetched");
                Some(policy)
            }
            Ok(Err(why)) => {
                tracing::warn!(%domain, "MTA-STS policy not fetched: {why}");
                cached.map(|c| c.policy)
            }
            Err(_) => {
                tracing::warn!(%domain, "MTA-STS policy not fetched within {:?}", self.timeout);
                cached.map(|c| c.policy)
            }
        }
    }

    /// The policy id of the domain's `_mta-sts` record, if it has exactly one (3.1).
    async fn record(&self, domain: &str) -> Option<String> {
        let ids: Vec<String> =
            crate::mx::txt_records(&self.resolver, &format!("_mta-sts.{domain}"))
                .await
                .iter()
                .filter_map(|text| record_id(text))
                .collect();
        match ids.as_slice() {
            [id] => Some(id.clone()),
            _ => None,
        }
    }

    /// GET the policy file over HTTPS (3.3): a 200 answer only, no redirects followed.
    async fn fetch(&self, domain: &str) -> Result<StsPolicy, String> {
        let host = format!("mta-sts.{domain}");
        let request = http::Request::get("/.well-known/mta-sts.txt")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = self
            .https
            .send(&host, self.port, request, MAX_POLICY_BYTES)
            .await?;
        if status != http::StatusCode::OK {
            return Err(format!("{host} answered {status}"));
        }
        let text =
            std::str::from_utf8(&body).map_err(|_| format!("{host}: the policy is not text"))?;
        parse_policy(text).map_err(|e| format!("{host}: {e}"))
    }
}
