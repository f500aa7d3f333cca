//! What the ingress's sending limits count: an authenticated sender's recent messages and the
//! mail waiting for a hold or relay domain. Read from the store so every replica sees the
//! same numbers.

use crate::{DomainBacklog, Result, SenderUsage, Store};

impl Store {
    /// Messages `auth_user` submitted in the last hour and the last day. Finished envelopes
    /// are kept for the queue's retention, so the day's count is whole while that is a day
    /// or more.
    pub async fn sender_usage(&self, auth_user: &str) -> Result<SenderUsage> {
        let (last_hour, last_day): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE arrived_at > now() - interval '1 hour'), count(*)
             FROM envelopes
             WHERE auth_user = $1 AND arrived_at > now() - interval '1 day'",
        )
        .bind(auth_user)
        .fetch_one(&self.pool)
        .await?;
        Ok(SenderUsage {
            last_hour: last_hour as u64,
            last_day: last_day as u64,
        })
    }

    /// Messages (and their octets) with a recipient at `domain` still queued or held.
    pub async fn domain_backlog(&self, domain: &str) -> Result<DomainBacklog> {
        let (messages, bytes): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(m.size), 0)::bigint
             FROM (SELECT DISTINCT envelope_id FROM recipients
                   WHERE domain = $1 AND state IN ('queued', 'held')) w
             JOIN envelopes e ON e.id = w.envelope_id
             JOIN messages m ON m.id = e.message_id",
        )
        .bind(domain)
        .fetch_one(&self.pool)
        .await?;
        Ok(DomainBacklog {
            messages: messages as u64,
            bytes: bytes as u64,
        })
    }
}
