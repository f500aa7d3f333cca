//! The MTA-STS policy cache (RFC 8461 5.1): what the queue fetched for a recipient domain,
//! until the policy's max_age runs out.

use pochta_mail::mta_sts::{StsMode, StsPolicy};

use crate::{Result, Store};

/// A cached policy and the id of the record it was fetched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedStsPolicy {
    pub policy_id: String,
    pub policy: StsPolicy,
    /// Seconds left before it expires (negative once it has).
    pub expires_in_secs: i64,
}

impl Store {
    /// The cached policy of `domain`, expired or not (the caller decides).
    pub async fn mta_sts_policy(&self, domain: &str) -> Result<Option<CachedStsPolicy>> {
        let row: Option<(String, String, Vec<String>, i64, f64)> = sqlx::query_as(
            "SELECT policy_id, mode, mx, max_age,
                    extract(epoch FROM expires_at - now())::float8
             FROM mta_sts_policies WHERE domain = $1",
        )
        .bind(domain.to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(policy_id, mode, mx, max_age, expires_in)| {
            Some(CachedStsPolicy {
                policy_id,
                policy: StsPolicy {
                    mode: StsMode::parse(&mode)?,
                    mx,
                    max_age: u64::try_from(max_age).ok()?,
                },
                expires_in_secs: expires_in as i64,
            })
        }))
    }

    /// Keeps `policy` (fetched now for the record with `policy_id`) for its max_age.
    pub async fn save_mta_sts_policy(
        &self,
        domain: &str,
        policy_id: &str,
        policy: &StsPolicy,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO mta_sts_policies (domain, policy_id, mode, mx, max_age, expires_at)
             VALUES ($1, $2, $3, $4, $5, now() + $5 * interval '1 second')
             ON CONFLICT (domain) DO UPDATE SET policy_id = $2, mode = $3, mx = $4,
                 max_age = $5, fetched_at = now(), expires_at = now() + $5 * interval '1 second'",
        )
        .bind(domain.to_ascii_lowercase())
        .bind(policy_id)
        .bind(policy.mode.as_str())
        .bind(&policy.mx)
        .bind(policy.max_age as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
