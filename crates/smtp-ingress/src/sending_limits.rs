//! How much mail the ingress takes: an authenticated user's messages an hour and a day (a
//! compromised account's reach), and the backlog waiting for one hold or relay domain (a
//! flood to a backup MX must not fill the store). Both are counted in the store, so every
//! replica applies the same limit; sessions racing each other may pass it by a few messages.

use std::time::{Duration, Instant};

use pochta_config::SmtpConfig;
use pochta_mail::Untrusted;
use pochta_service::cache::TtlCache;
use pochta_smtp::SenderVerdict;
use pochta_store::{DomainBacklog, Store};

/// How long a domain's backlog count is reused (a burst of RCPTs costs one query a second).
const BACKLOG_TTL: Duration = Duration::from_secs(1);
const BACKLOG_ENTRIES: usize = 10_000;

pub struct SendingLimits {
    per_hour: u64,
    per_day: u64,
    backlog_messages: u64,
    backlog_bytes: u64,
    backlogs: TtlCache<String, DomainBacklog>,
}

impl SendingLimits {
    pub fn new(config: &SmtpConfig) -> Self {
        SendingLimits {
            per_hour: config.sender_messages_per_hour.into(),
            per_day: config.sender_messages_per_day.into(),
            backlog_messages: config.domain_backlog_messages,
            backlog_bytes: config.domain_backlog_bytes,
            backlogs: TtlCache::new(BACKLOG_TTL, BACKLOG_ENTRIES),
        }
    }

    /// May `user` start another message? 0 turns a limit off.
    pub async fn check_sender(&self, store: &Store, user: &str) -> SenderVerdict {
        if self.per_hour == 0 && self.per_day == 0 {
            return SenderVerdict::Accept;
        }
        let usage = match store.sender_usage(user).await {
            Ok(usage) => usage,
            Err(e) => {
                tracing::error!("counting the sender's messages failed: {e}");
                return SenderVerdict::TemporaryFailure;
            }
        };
        let over = |limit: u64, count: u64| limit > 0 && count >= limit;
        let why = if over(self.per_hour, usage.last_hour) {
            format!("{} messages in the last hour", usage.last_hour)
        } else if over(self.per_day, usage.last_day) {
            format!("{} messages in the last day", usage.last_day)
        } else {
            return SenderVerdict::Accept;
        };
        tracing::warn!(user = %Untrusted(user), "{why}: sending limit reached");
        SenderVerdict::RateLimited(why)
    }

    /// Is there room for more mail for `domain` (a hold or relay domain)? `None`: the store
    /// could not say.
    pub async fn domain_has_room(&self, store: &Store, domain: &str) -> Option<bool> {
        if self.backlog_messages == 0 && self.backlog_bytes == 0 {
            return Some(true);
        }
        let now = Instant::now();
        let backlog = match self.backlogs.get(&domain.to_owned(), now) {
            Some(backlog) => backlog,
            None => match store.domain_backlog(domain).await {
                Ok(backlog) => {
                    self.backlogs.insert(domain.to_owned(), backlog, now);
                    backlog
                }
                Err(e) => {
                    tracing::error!("counting the domain's backlog failed: {e}");
                    return None;
                }
            },
        };
        let full = |limit: u64, count: u64| limit > 0 && count >= limit;
        let room = !full(self.backlog_messages, backlog.messages)
            && !full(self.backlog_bytes, backlog.bytes);
        if !room {
            tracing::warn!(domain, ?backlog, "domain backlog full: recipients deferred");
        }
        Some(room)
    }
}
