//! Password logins shared by SMTP AUTH and POP3: argon2id off the async threads, the same
//! cost for unknown accounts as for wrong passwords, a delay before each failure is answered,
//! and a limit on failures per client address.

use std::net::IpAddr;
use std::time::{Duration, Instant};

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
}

impl Authenticator {
    pub fn new(
        store: Store,
        max_failures: u32,
        window: Duration,
        failure_delay: Duration,
    ) -> anyhow::Result<Self> {
        let secret: String = std::iter::repeat_with(rand_char).take(32).collect();
        Ok(Authenticator {
            store,
            failures: FailureLimiter::new(max_failures as usize, window),
            failure_delay,
            dummy_hash: pochta_auth::hash_password(&secret)?,
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
        let matches = tokio::task::spawn_blocking(move || {
            pochta_auth::verify_password(&password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
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

fn rand_char() -> char {
    use rand::Rng;
    rand::rng().sample(rand::distr::Alphanumeric) as char
}
