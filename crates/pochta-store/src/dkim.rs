//! DKIM signing keys (RFC 6376, RFC 8463): made and rotated by the operator (`pochtactl
//! dkim`), read by the ingress, which signs submitted mail with each active key of the
//! From: domain.
//!
//! A rotation keeps two selectors live: the new key is added as `pending` while the old one
//! still signs, so its DNS record can be published and spread; `rotate_dkim_key` then makes
//! it sign and retires the old key, whose record must stay published until mail signed with
//! it has been verified (days); `remove_dkim_key` forgets it.

use chrono::{DateTime, Utc};

use crate::{DkimAlgorithm, DkimKeyState, DomainRole, Result, Store, StoreError};

/// A key to add: the private key as PKCS#8 DER, the public key as the record's p= carries it.
#[derive(Debug, Clone)]
pub struct NewDkimKey {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
}

/// A key as the operator sees it (never the private key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKeyInfo {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    pub state: DkimKeyState,
    pub public_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub changed_at: DateTime<Utc>,
}

/// A key the ingress signs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSigningKey {
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    pub private_key: Vec<u8>,
}

/// The outcome of a rotation: the selector now signing, and the one retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimRotation {
    pub active: String,
    pub retired: Option<String>,
}

/// A selector is a DNS label sequence (RFC 6376 3.1): letters, digits, hyphens, dots.
pub fn is_dkim_selector(selector: &str) -> bool {
    !selector.is_empty()
        && selector.len() <= 63
        && selector.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

type KeyRow = (
    String,
    String,
    String,
    String,
    Vec<u8>,
    DateTime<Utc>,
    DateTime<Utc>,
);

impl Store {
    /// Adds a key to a local domain: active when the domain has no active key of its
    /// algorithm, else pending (for `rotate_dkim_key`). A second pending key of one
    /// algorithm is refused: rotate to the first or remove it.
    pub async fn add_dkim_key(&self, key: &NewDkimKey) -> Result<DkimKeyState> {
        let domain = key.domain.to_ascii_lowercase();
        if !is_dkim_selector(&key.selector) {
            return Err(StoreError::DkimKey(format!(
                "{:?} is not a selector (letters, digits, hyphens and dots)",
                key.selector
            )));
        }
        let mut tx = self.pool.begin().await?;
        let role: Option<(String,)> =
            sqlx::query_as("SELECT role FROM domains WHERE name = $1 FOR SHARE")
                .bind(&domain)
                .fetch_optional(&mut *tx)
                .await?;
        match role {
            None => return Err(StoreError::UnknownDomain(domain)),
            Some((role,)) => match DomainRole::try_from(role)? {
                DomainRole::Local => {}
                role => return Err(StoreError::DomainNotLocal { domain, role }),
            },
        }
        let states: Vec<(String, String)> = sqlx::query_as(
            "SELECT state, selector FROM dkim_keys
             WHERE domain = $1 AND algorithm = $2 AND state IN ('active', 'pending')",
        )
        .bind(&domain)
        .bind(key.algorithm.as_str())
        .fetch_all(&mut *tx)
        .await?;
        if let Some((_, selector)) = states.iter().find(|(state, _)| state == "pending") {
            return Err(StoreError::DkimKey(format!(
                "{domain} already has a pending {} key (selector {selector}): \
                 `pochtactl dkim rotate` to it or remove it first",
                key.algorithm
            )));
        }
        let state = if states.is_empty() {
            DkimKeyState::Active
        } else {
            DkimKeyState::Pending
        };
        let inserted = sqlx::query(
            "INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key, state)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&domain)
        .bind(&key.selector)
        .bind(key.algorithm.as_str())
        .bind(&key.private_key)
        .bind(&key.public_key)
        .bind(state.as_str())
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if StoreError::is_unique_violation(&e) => {
                return Err(StoreError::DkimKey(format!(
                    "{domain} already has a key with selector {}",
                    key.selector
                )));
            }
            other => other?,
        };
        tx.commit().await?;
        Ok(state)
    }

    /// The pending key of `algorithm` starts signing and the active one is retired.
    pub async fn rotate_dkim_key(
        &self,
        domain: &str,
        algorithm: DkimAlgorithm,
    ) -> Result<DkimRotation> {
        let domain = domain.to_ascii_lowercase();
        let mut tx = self.pool.begin().await?;
        let retired: Option<(String,)> = sqlx::query_as(
            "UPDATE dkim_keys SET state = 'retired', changed_at = now()
             WHERE domain = $1 AND algorithm = $2 AND state = 'active'
             RETURNING selector",
        )
        .bind(&domain)
        .bind(algorithm.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let active: Option<(String,)> = sqlx::query_as(
            "UPDATE dkim_keys SET state = 'active', changed_at = now()
             WHERE domain = $1 AND algorithm = $2 AND state = 'pending'
             RETURNING selector",
        )
        .bind(&domain)
        .bind(algorithm.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((active,)) = active else {
            return Err(StoreError::DkimKey(format!(
                "{domain} has no pending {algorithm} key: `pochtactl dkim generate` one, \
                 publish its record, then rotate"
            )));
        };
        tx.commit().await?;
        Ok(DkimRotation {
            active,
            retired: retired.map(|(s,)| s),
        })
    }

    /// Forgets a pending or retired key; an active one is refused (rotate first).
    pub async fn remove_dkim_key(&self, domain: &str, selector: &str) -> Result<()> {
        let domain = domain.to_ascii_lowercase();
        let state: Option<(String,)> = sqlx::query_as(
            "DELETE FROM dkim_keys WHERE domain = $1 AND selector = $2 AND state <> 'active'
             RETURNING state",
        )
        .bind(&domain)
        .bind(selector)
        .fetch_optional(&self.pool)
        .await?;
        if state.is_some() {
            return Ok(());
        }
        let active: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM dkim_keys WHERE domain = $1 AND selector = $2")
                .bind(&domain)
                .bind(selector)
                .fetch_optional(&self.pool)
                .await?;
        Err(StoreError::DkimKey(match active {
            Some(_) => format!("{selector} signs {domain}'s mail: rotate to another key first"),
            None => format!("{domain} has no key with selector {selector}"),
        }))
    }

    /// Every key, or those of one domain, by domain, algorithm and age.
    pub async fn list_dkim_keys(&self, domain: Option<&str>) -> Result<Vec<DkimKeyInfo>> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT domain, selector, algorithm, state, public_key, created_at, changed_at
             FROM dkim_keys WHERE $1::text IS NULL OR domain = $1
             ORDER BY domain, algorithm, created_at, id",
        )
        .bind(domain.map(str::to_ascii_lowercase))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(domain, selector, algorithm, state, public_key, created_at, changed_at)| {
                    Ok(DkimKeyInfo {
                        domain,
                        selector,
                        algorithm: algorithm.parse()?,
                        state: state.parse()?,
                        public_key,
                        created_at,
                        changed_at,
                    })
                },
            )
            .collect()
    }

    /// The domains whose mail is signed now (those with an active key).
    pub async fn dkim_signing_domains(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT domain FROM dkim_keys WHERE state = 'active'")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }

    /// The keys `domain`'s mail is signed with now (at most one per algorithm).
    pub async fn dkim_signing_keys(&self, domain: &str) -> Result<Vec<DkimSigningKey>> {
        let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT selector, algorithm, private_key FROM dkim_keys
             WHERE domain = $1 AND state = 'active' ORDER BY algorithm",
        )
        .bind(domain.to_ascii_lowercase())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(selector, algorithm, private_key)| {
                Ok(DkimSigningKey {
                    selector,
                    algorithm: algorithm.parse()?,
                    private_key,
                })
            })
            .collect()
    }
}
