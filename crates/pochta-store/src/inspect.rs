//! Read-only views for operators, metrics and tests.

use crate::content::{in_chunk_order, join};
use crate::{
    AttemptRecord, EnvelopeDetail, QueueDepth, RecipientDetail, RecipientState, Result, Store,
    StoreCounts,
};

impl Store {
    /// Row counts, recipients per state.
    pub async fn counts(&self) -> Result<StoreCounts> {
        let (messages, message_chunks, envelopes, maildrop_entries): (i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM message_chunks),
                        (SELECT count(*) FROM envelopes), (SELECT count(*) FROM maildrop_entries)",
            )
            .fetch_one(&self.pool)
            .await?;
        let by_state: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM recipients GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        let recipients = by_state
            .into_iter()
            .map(|(state, n)| Ok((RecipientState::try_from(state)?, n)))
            .collect::<Result<Vec<_>>>()?;
        Ok(StoreCounts {
            messages,
            message_chunks,
            envelopes,
            maildrop_entries,
            recipients,
        })
    }

    /// How many recipients wait, by kind of wait (the partial index on queued recipients
    /// serves the first two).
    pub async fn queue_depth(&self) -> Result<QueueDepth> {
        let (due, deferred, held): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'queued' AND next_attempt_at <= now()),
                    count(*) FILTER (WHERE state = 'queued' AND next_attempt_at > now()),
                    count(*) FILTER (WHERE state = 'held')
             FROM recipients WHERE state IN ('queued', 'held')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueDepth {
            due,
            deferred,
            held,
        })
    }

    /// Octets in the maildrops of accounts with a quota (as POP3 STAT counts them), and how
    /// many of those maildrops hold their quota or more, from the mailboxes' counters.
    pub async fn quota_usage(&self) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT coalesce(sum(u.used), 0)::bigint, count(*) FILTER (WHERE u.used >= u.quota)
             FROM (SELECT a.quota_bytes AS quota,
                          (SELECT coalesce(sum(m.messages_size), 0) FROM mailboxes m
                           WHERE m.account_id = a.id) AS used
                   FROM accounts a WHERE a.quota_bytes IS NOT NULL) u",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// A message's content as stored (what the queue delivers), or None if there is no such
    /// message or garbage collection has freed its content.
    pub async fn message_content(&self, message_id: i64) -> Result<Option<Vec<u8>>> {
        type Row = (i64, Option<i32>, Option<i16>, Option<Vec<u8>>);
        let mut rows: Vec<Row> = sqlx::query_as(
            "SELECT m.size, c.seq, c.codec, c.data FROM messages m
             LEFT JOIN message_chunks c ON c.message_id = m.id
             WHERE m.id = $1 AND m.content_collected_at IS NULL",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?;
        in_chunk_order(&mut rows, |r| r.1);
        let Some(&(size, ..)) = rows.first() else {
            return Ok(None);
        };
        let chunks = rows
            .into_iter()
            .filter_map(|(_, _, codec, data)| Some((codec?, data?)));
        Ok(Some(join(message_id, Vec::new(), chunks, size as usize)?))
    }

    /// One envelope by queue id, with its recipients and their attempt histories (oldest first).
    pub async fn envelope_detail(&self, queue_id: &str) -> Result<Option<EnvelopeDetail>> {
        let Some(mut envelope) = sqlx::query_as::<_, EnvelopeDetail>(
            "SELECT e.id, e.queue_id, e.message_id, m.size, e.reverse_path, e.envid, e.ret, e.body,
                    e.smtputf8, host(e.client_address) AS client_address, e.client_helo,
                    e.auth_user, e.received_by, e.traceparent, e.arrived_at, e.expires_at,
                    m.quarantine, e.requiretls
             FROM envelopes e JOIN messages m ON m.id = e.message_id
             WHERE e.queue_id = $1",
        )
        .bind(queue_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        envelope.recipients = sqlx::query_as::<_, RecipientDetail>(
            "SELECT id, envelope_id, address, orcpt, notify, state, attempts, next_attempt_at, last_reply_code,
                    last_status, last_diagnostic, last_remote_mta, lease_owner, lease_expires_at,
                    finished_at
             FROM recipients WHERE envelope_id = $1 ORDER BY id",
        )
        .bind(envelope.id)
        .fetch_all(&self.pool)
        .await?;
        let history = sqlx::query_as::<_, AttemptRecord>(
            "SELECT a.recipient_id, a.attempted_at, a.worker, a.remote_mta, a.reply_code, a.status,
                    a.diagnostic, a.result
             FROM delivery_attempts a JOIN recipients r ON r.id = a.recipient_id
             WHERE r.envelope_id = $1 ORDER BY a.id",
        )
        .bind(envelope.id)
        .fetch_all(&self.pool)
        .await?;
        for attempt in history {
            if let Some(r) = envelope
                .recipients
                .iter_mut()
                .find(|r| r.id == attempt.recipient_id)
            {
                r.history.push(attempt);
            }
        }
        Ok(Some(envelope))
    }
}
