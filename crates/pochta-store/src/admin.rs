//! Queue administration (`pochtactl queue`): list by filter, and retry / hold / release /
//! delete (with or without a failure report) every live recipient matching a filter, or just
//! count them (dry run).

use crate::{
    EnvelopeSummary, QueueAction, QueueFilter, RecipientDetail, RecipientState, Released, Result,
    Store, secs,
};

/// The recipient-level predicate every admin query shares (`r` recipients, `e` envelopes).
/// $1 states, $2 domain, $3 queue id, $4 sender, $5 older-than seconds, $6 only recipients
/// whose next attempt is in the future.
macro_rules! matching {
    () => {
        "r.state = ANY($1)
         AND ($2::text IS NULL OR r.domain = $2)
         AND ($3::text IS NULL OR e.queue_id = $3)
         AND ($4::text IS NULL OR lower(e.reverse_path) = lower($4))
         AND ($5::float8 IS NULL OR e.arrived_at <= now() - $5 * interval '1 second')
         AND (NOT $6 OR r.next_attempt_at > now())"
    };
}

struct Bound {
    states: Vec<String>,
    domain: Option<String>,
    queue_id: Option<String>,
    sender: Option<String>,
    older_than: Option<f64>,
}

fn bind(filter: &QueueFilter, eligible: &[RecipientState]) -> Bound {
    let wanted: Vec<RecipientState> = if filter.states.is_empty() {
        vec![RecipientState::Queued, RecipientState::Held]
    } else {
        filter.states.clone()
    };
    Bound {
        states: wanted
            .iter()
            .filter(|s| eligible.is_empty() || eligible.contains(s))
            .map(|s| s.as_str().to_owned())
            .collect(),
        domain: filter
            .recipient_domain
            .as_ref()
            .map(|d| d.to_ascii_lowercase()),
        queue_id: filter.queue_id.clone(),
        sender: filter.sender.as_ref().map(|s| {
            if s == "<>" {
                String::new()
            } else {
                s.trim_matches(['<', '>']).to_owned()
            }
        }),
        older_than: filter.older_than.map(secs),
    }
}

impl Store {
    /// Envelopes with at least one recipient matching, newest first, with all their recipients.
    /// Returns at most `limit` and whether more matched.
    pub async fn list_envelopes(
        &self,
        filter: &QueueFilter,
        limit: u32,
    ) -> Result<(Vec<EnvelopeSummary>, bool)> {
        let b = bind(filter, &[]);
        let mut envelopes = sqlx::query_as::<_, EnvelopeSummary>(concat!(
            "SELECT e.id, e.queue_id, e.reverse_path, m.size, e.arrived_at
             FROM envelopes e JOIN messages m ON m.id = e.message_id
             WHERE EXISTS (SELECT 1 FROM recipients r WHERE r.envelope_id = e.id AND ",
            matching!(),
            ") ORDER BY e.arrived_at DESC, e.id DESC LIMIT $7"
        ))
        .bind(&b.states)
        .bind(&b.domain)
        .bind(&b.queue_id)
        .bind(&b.sender)
        .bind(b.older_than)
        .bind(false)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let truncated = envelopes.len() > limit as usize;
        envelopes.truncate(limit as usize);
        let ids: Vec<i64> = envelopes.iter().map(|e| e.id).collect();
        let recipients = sqlx::query_as::<_, RecipientDetail>(
            "SELECT id, envelope_id, address, orcpt, notify, state, attempts, next_attempt_at,
                    last_reply_code, last_status, last_diagnostic, last_remote_mta, lease_owner,
                    lease_expires_at, finished_at
             FROM recipients WHERE envelope_id = ANY($1) ORDER BY id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        for recipient in recipients {
            if let Some(e) = envelopes.iter_mut().find(|e| e.id == recipient.envelope_id) {
                e.recipients.push(recipient);
            }
        }
        Ok((envelopes, truncated))
    }

    /// Applies `action` to the live recipients matching `filter`, or with `dry_run` only counts
    /// them. Each action touches only the states it applies to.
    pub async fn admin_queue(
        &self,
        filter: &QueueFilter,
        action: QueueAction,
        dry_run: bool,
    ) -> Result<Released> {
        use RecipientState::{Held, Queued};
        let eligible: &[RecipientState] = match action {
            QueueAction::RetryNow | QueueAction::Hold => &[Queued],
            QueueAction::Release => &[Held],
            QueueAction::Delete | QueueAction::DeleteWithReport => &[Queued, Held],
        };
        let b = bind(filter, eligible);
        // RetryNow only concerns recipients that are waiting for a later attempt.
        let future_only = action == QueueAction::RetryNow;
        // Every statement ends with the same count over what it touched.
        let sql = match (action, dry_run) {
            (_, true) => concat!(
                "WITH t AS (SELECT r.envelope_id FROM recipients r JOIN envelopes e ON e.id = r.envelope_id WHERE ",
                matching!(),
                ") SELECT count(*), count(DISTINCT envelope_id) FROM t"
            ),
            (QueueAction::RetryNow, false) => concat!(
                "WITH t AS (UPDATE recipients r SET next_attempt_at = now()
                            FROM envelopes e WHERE e.id = r.envelope_id AND ",
                matching!(),
                " RETURNING r.envelope_id) SELECT count(*), count(DISTINCT envelope_id) FROM t"
            ),
            (QueueAction::Hold, false) => concat!(
                "WITH t AS (UPDATE recipients r SET state = 'held', lease_owner = NULL, lease_expires_at = NULL
                            FROM envelopes e WHERE e.id = r.envelope_id AND ",
                matching!(),
                " RETURNING r.envelope_id) SELECT count(*), count(DISTINCT envelope_id) FROM t"
            ),
            (QueueAction::Release, false) => concat!(
                "WITH t AS (UPDATE recipients r SET state = 'queued', next_attempt_at = now()
                            FROM envelopes e WHERE e.id = r.envelope_id AND ",
                matching!(),
                " RETURNING r.envelope_id) SELECT count(*), count(DISTINCT envelope_id) FROM t"
            ),
            // Due now, for the worker to fail with the report; an attempt in flight may still
            // finish first.
            (QueueAction::DeleteWithReport, false) => concat!(
                "WITH t AS (UPDATE recipients r SET state = 'queued', next_attempt_at = now(), cancelled = true
                            FROM envelopes e WHERE e.id = r.envelope_id AND ",
                matching!(),
                " RETURNING r.envelope_id) SELECT count(*), count(DISTINCT envelope_id) FROM t"
            ),
            // The envelope stays until garbage collection finds it without live recipients.
            (QueueAction::Delete, false) => concat!(
                "WITH t AS (DELETE FROM recipients r USING envelopes e WHERE e.id = r.envelope_id AND ",
                matching!(),
                " RETURNING r.envelope_id) SELECT count(*), count(DISTINCT envelope_id) FROM t"
            ),
        };
        let (recipients, messages): (i64, i64) = sqlx::query_as(sql)
            .bind(&b.states)
            .bind(&b.domain)
            .bind(&b.queue_id)
            .bind(&b.sender)
            .bind(b.older_than)
            .bind(future_only)
            .fetch_one(&self.pool)
            .await?;
        Ok(Released {
            recipients: recipients as u64,
            messages: messages as u64,
        })
    }
}
