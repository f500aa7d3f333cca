//! Password logins shared by SMTP AUTH and POP3: argon2id off the async threads, the same
//! cost for unknown accounts as for wrong passwords, a delay before each failure is answered,
//! and a limit on failures per client address.
//!
//! Successful verifications are remembered for a while (like Dovecot's auth cache), so a
//! client that logs in again and again does not pay argon2id each time. An entry is a keyed
//! BLAKE2 MAC (a random key per process) of the address, the stored PHC string and the
//! password: changing the password changes the PHC string and so misses the cache at once, and
//! the account (disabled or not, its current hash) is always read from the store.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use blake2::digest::{KeyInit, Mac};

use pochta_store::{AccountCredentials, MailboxAddress, Store};

use crate::limits::FailureLimiter;

#[derive(Debug)]
pub enum LoginOutcome {
    Success(AccountCredentials),
    Failure,
    /// Too many failures from this address: refuse without checking.
    RateLimited,
    TemporaryFailure,
}

pub struct Authenticator {
    store: Store,
    failures: FailureLimiter,
    failure_delay: Duration,
    /// A hash of a random secret, verified when the account does not exist so that a missing
    /// account takes as long to refuse as a wrong password (no user enumeration by timing).
    dummy_hash: String,
    verified: VerifiedCache,
}

/// Recently verified credentials: MAC → when the entry expires.
struct VerifiedCache {
    key: [u8; 32],
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

impl VerifiedCache {
    fn mac(&self, username: &str, phc: &str, password: &str) -> [u8; 32] {
        type Mac256 = blake2::Blake2bMac<blake2::digest::consts::U32>;
        let mut mac =
            <Mac256 as KeyInit>::new_from_slice(&self.key).expect("a 32-byte key is valid");
        for part in [username.to_ascii_lowercase().as_str(), phc, password] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn contains(&self, mac: &[u8; 32], now: Instant) -> bool {
        !self.ttl.is_zero()
            && self
                .entries
                .lock()
                .expect("cache lock")
                .get(mac)
                .is_some_and(|expires| *expires > now)
    }

    fn insert(&self, mac: [u8; 32], now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= self.max_entries {
            entries.retain(|_, expires| *expires > now);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(mac, now + self.ttl);
    }
}

impl Authenticator {
    /// `cache_ttl`: how long a successful verification is remembered (zero: never).
    pub fn new(
        store: Store,
        max_failures: u32,
        window: Duration,
        failure_delay: Duration,
        cache_ttl: Duration,
    ) -> anyhow::Result<Self> {
        use rand::Rng;
        let secret: String = std::iter::repeat_with(rand_char).take(32).collect();
        Ok(Authenticator {
            store,
            failures: FailureLimiter::new(max_failures as usize, window),
            failure_delay,
            dummy_hash: pochta_auth::hash_password(&secret)?,
            verified: VerifiedCache {
                key: rand::rng().random(),
                ttl: cache_ttl,
                max_entries: 100_000,
                entries: Mutex::new(HashMap::new()),
            },
        })
    }

    /// Checks `username` (an account address) and `password`. Disabled accounts fail.
    pub async fn login(&self, username: &str, password: String, client: IpAddr) -> LoginOutcome {
        if self.failures.is_blocked(client, Instant::now()) {
            return LoginOutcome::RateLimited;
        }
        let account = match MailboxAddress::parse(username) {
            Ok(address) => match self.store.account_credentials(&address).await {
                Ok(account) => account,
                Err(e) => {
                    tracing::error!("credential lookup failed: {e}");
                    return LoginOutcome::TemporaryFailure;
                }
            },
            Err(_) => None,
        };
        let hash = account
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |a| a.password_hash.clone());
        let mac = self.verified.mac(username, &hash, &password);
        let matches = if account.is_some() && self.verified.contains(&mac, Instant::now()) {
            true
        } else {
            let matches = tokio::task::spawn_blocking(move || {
                pochta_auth::verify_password(&password, &hash).unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            if matches && account.is_some() {
                self.verified.insert(mac, Instant::now());
            }
            matches
        };
        match account {
            Some(account) if matches && !account.disabled => LoginOutcome::Success(account),
            _ => {
                let blocked = self.failures.record_failure(client, Instant::now());
                tracing::warn!(%client, user = %username, "login failed");
                tokio::time::sleep(self.failure_delay).await;
                if blocked {
                    LoginOutcome::RateLimited
                } else {
                    LoginOutcome::Failure
                }
            }
        }
    }
}

impl Authenticator {
    /// Remembered verifications (for tests and diagnostics).
    pub fn cached_logins(&self) -> usize {
        self.verified.entries.lock().expect("cache lock").len()
    }
}

fn rand_char() -> char {
    use rand::Rng;
    rand::rng().sample(rand::distr::Alphanumeric) as char
}
