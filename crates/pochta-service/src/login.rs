//! Password logins shared by SMTP AUTH and POP3: argon2id off the async threads, the same
//! cost for unknown accounts as for wrong passwords, a delay before each failure is answered,
//! and a limit on failures per client address.
//!
//! Successful verifications are remembered for a while (like Dovecot's auth cache), so a
//! client that logs in again and again does not pay argon2id each time. An entry is a keyed
//! BLAKE2 MAC (a random key per process) of the address, the stored PHC string and the
//! password: changing the password changes the PHC string and so misses the cache at once, and
//! the account (disabled or not, its current hash) is always read from the store.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use blake2::digest::{KeyInit, Mac};

use pochta_mail::{Mailbox, Untrusted};
use pochta_store::{AccountCredentials, Store};

use crate::cache::TtlCache;
use crate::limits::WindowLimiter;

#[derive(Debug)]
pub enum LoginOutcome {
    Success(AccountCredentials),
    Failure,
    /// Too many failures from this address: refuse without checking.
    RateLimited,
    TemporaryFailure,
}

/// The rules of password logins, from a service's configuration section.
#[derive(Debug, Clone, Copy)]
pub struct LoginRules {
    /// Failed logins per client network within `failure_window` before it is refused.
    pub max_failures: u32,
    pub failure_window: Duration,
    /// How long a failure waits before it is answered.
    pub failure_delay: Duration,
    /// How long a successful verification is remembered (zero: never).
    pub cache_ttl: Duration,
    /// IPv6 clients sharing this many leading bits count as one (`limits::client_network`).
    pub ipv6_prefix: u8,
    /// argon2id verifications running at once (each takes ~19 MiB and a core for a while).
    pub max_checks: usize,
    /// How long a login waits for one of `max_checks` before it fails temporarily.
    pub check_wait: Duration,
}

pub struct Authenticator {
    store: Store,
    failures: WindowLimiter,
    failure_delay: Duration,
    /// Permits for argon2id verifications.
    checks: tokio::sync::Semaphore,
    check_wait: Duration,
    /// A hash of a random secret, verified when the account does not exist so that a missing
    /// account takes as long to refuse as a wrong password (no user enumeration by timing).
    dummy_hash: String,
    verified: VerifiedCache,
}

/// Recently verified credentials, by MAC.
struct VerifiedCache {
    key: [u8; 32],
    entries: TtlCache<[u8; 32], ()>,
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
}

impl Authenticator {
    pub fn new(store: Store, rules: LoginRules) -> anyhow::Result<Self> {
        use rand::Rng;
        let secret: String = std::iter::repeat_with(rand_char).take(32).collect();
        Ok(Authenticator {
            store,
            failures: WindowLimiter::new(
                rules.max_failures as usize,
                rules.failure_window,
                rules.ipv6_prefix,
            ),
            failure_delay: rules.failure_delay,
            checks: tokio::sync::Semaphore::new(rules.max_checks.max(1)),
            check_wait: rules.check_wait,
            dummy_hash: pochta_auth::hash_password(&secret)?,
            verified: VerifiedCache {
                key: rand::rng().random(),
                entries: TtlCache::new(rules.cache_ttl, 100_000),
            },
        })
    }

    /// Checks `username` (an account address) and `password`. Disabled accounts fail.
    pub async fn login(&self, username: &str, password: String, client: IpAddr) -> LoginOutcome {
        if self.failures.is_blocked(client, Instant::now()) {
            return LoginOutcome::RateLimited;
        }
        let account = match Mailbox::parse(username) {
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
        let matches =
            if account.is_some() && self.verified.entries.get(&mac, Instant::now()).is_some() {
                true
            } else {
                let Ok(Ok(_permit)) =
                    tokio::time::timeout(self.check_wait, self.checks.acquire()).await
                else {
                    tracing::warn!(%client, "too many password checks at once; try later");
                    return LoginOutcome::TemporaryFailure;
                };
                let matches = tokio::task::spawn_blocking(move || {
                    pochta_auth::verify_password(&password, &hash).unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                if matches && account.is_some() {
                    self.verified.entries.insert(mac, (), Instant::now());
                }
                matches
            };
        match account {
            Some(account) if matches && !account.disabled => LoginOutcome::Success(account),
            _ => {
                let blocked = self.failures.record(client, Instant::now());
                tracing::warn!(%client, user = %Untrusted(username), "login failed");
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
        self.verified.entries.len()
    }
}

fn rand_char() -> char {
    use rand::Rng;
    rand::rng().sample(rand::distr::Alphanumeric) as char
}
