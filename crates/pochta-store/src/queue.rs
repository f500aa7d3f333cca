//! The queue: enqueueing accepted transactions, leasing due recipients, recording attempts,
//! ETRN release and garbage collection.

use std::time::Duration;

use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgConnection};

use chrono::{DateTime, Utc};
use pochta_mail::{Disposition, Mailbox, Orcpt};

use crate::content::{Chunks, ContentCompression, PreparedContent, Rows, SearchColumns};
use crate::{
    AttemptOutcome, AttemptReport, Claim, ClaimedRecipient, Collected, DestinationDeferral,
    EXPLAIN, Enqueued, GcSweep, NewEnvelope, Released, Result, Store, StoreError, secs,
};

/// A claimed recipient as its row holds it.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    recipient_id: i64,
    envelope_id: i64,
    queue_id: String,
    message_id: i64,
    address: String,
    orcpt: Option<String>,
    notify: Option<String>,
    attempts: i32,
    reverse_path: String,
    envid: Option<String>,
    ret: Option<String>,
    body: Option<String>,
    smtputf8: bool,
    requiretls: bool,
    arrived_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    traceparent: Option<String>,
    lease_expires_at: DateTime<Utc>,
    delay_reported: bool,
    cancelled: bool,
    last_status: Option<String>,
    original_address: Option<String>,
}

impl ClaimedRow {
    /// The row's texts as the values they were written from. The schema's CHECKs admit only
    /// what those values print as; should a text not parse anyway, it reads as absent rather
    /// than failing the claim (one bad row must not stop every delivery).
    fn typed(self) -> ClaimedRecipient {
        fn parsed<T: std::str::FromStr>(text: Option<String>) -> Option<T> {
            text.and_then(|t| t.parse().ok())
        }
        let address = Mailbox::from_stored(&self.address).unwrap_or_else(|| Mailbox {
            local_part: self.address.clone(),
            domain: String::new(),
        });
        ClaimedRecipient {
            recipient_id: self.recipient_id,
            envelope_id: self.envelope_id,
            queue_id: self.queue_id,
            message_id: self.message_id,
            address,
            orcpt: parsed::<Orcpt>(self.orcpt),
            notify: parsed(self.notify),
            attempts: self.attempts,
            reverse_path: Mailbox::from_stored(&self.reverse_path),
            envid: self.envid,
            ret: parsed(self.ret),
            body: parsed(self.body),
            smtputf8: self.smtputf8,
            requiretls: self.requiretls,
            arrived_at: self.arrived_at,
            expires_at: self.expires_at,
            traceparent: self.traceparent,
            lease_expires_at: self.lease_expires_at,
            delay_reported: self.delay_reported,
            cancelled: self.cancelled,
            last_status: self.last_status,
            original_address: self
                .original_address
                .as_deref()
                .and_then(Mailbox::from_stored),
        }
    }
}

impl Store {
    /// Commits a whole accepted transaction (content, envelope, every recipient) in one
    /// statement, so it is stored entirely or not at all. After this returns Ok, a 250 may be
    /// sent (invariant 1).
    pub async fn enqueue(&self, envelope: &NewEnvelope, content: &[u8]) -> Result<Enqueued> {
        enqueue_on(
            &mut *self.pool.acquire().await?,
            envelope,
            content,
            self.compression,
        )
        .await
    }

    /// Commits several accepted transactions in one statement (one commit for all): either
    /// all are stored or none. The ids are in input order. Ingress sessions that finish DATA
    /// at the same time share one commit this way (group commit).
    pub async fn enqueue_many(&self, batch: &[(&NewEnvelope, &[u8])]) -> Result<Vec<Enqueued>> {
        let rows: Vec<Rows> = batch
            .iter()
            .map(|(e, content)| Rows::of(content, self.compression, e.reaches_a_mailbox()))
            .collect();
        let batch: Vec<_> = batch
            .iter()
            .zip(&rows)
            .map(|((e, c), r)| (*e, *c, r))
            .collect();
        enqueue_rows_on(&mut *self.pool.acquire().await?, &batch).await
    }

    /// Content made ready to store (`enqueue_prepared`) with `envelope`: cut into rows and
    /// compressed as this store's settings say, its search fields taken if the envelope
    /// `reaches_a_mailbox`. CPU work, done by the caller where it suits it.
    pub fn prepare(&self, envelope: &NewEnvelope, content: Vec<u8>) -> PreparedContent {
        PreparedContent::new(content, self.compression, envelope.reaches_a_mailbox())
    }

    /// `enqueue_many` of prepared content: the statement only sends the rows.
    pub async fn enqueue_prepared(
        &self,
        batch: &[(&NewEnvelope, &PreparedContent)],
    ) -> Result<Vec<Enqueued>> {
        let batch: Vec<_> = batch
            .iter()
            .map(|(e, p)| (*e, p.text(), p.rows()))
            .collect();
        enqueue_rows_on(&mut *self.pool.acquire().await?, &batch).await
    }

    /// Which of `queue_ids` are stored: after a commit whose outcome is unknown (the
    /// connection was lost after COMMIT was sent), the ingress asks before it answers.
    pub async fn stored_queue_ids(&self, queue_ids: &[&str]) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT queue_id FROM envelopes WHERE queue_id = ANY($1)")
                .bind(queue_ids)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Leases due recipients of one `class` (local or remote) to `owner` for `lease`, whole
    /// envelopes at a time: the envelopes of the `limit` most overdue recipients are locked
    /// (skipping any another claimer is locking, never waiting), and every due recipient of
    /// the class in each is leased, so one worker sees all of a message's due recipients of
    /// the class together (one report per message and class). Any number of queue replicas can
    /// claim at once and no two get the same recipient; a lease that expired (its worker died)
    /// is claimable again.
    pub async fn claim_due(
        &self,
        owner: &str,
        class: Claim,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedRecipient>> {
        let sql = claim_statement(class);
        let rows = sqlx::query_as::<_, ClaimedRow>(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .bind(owner)
            .bind(secs(lease))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(ClaimedRow::typed).collect())
    }

    /// How PostgreSQL runs one claim of `class` now (EXPLAIN ANALYZE, BUFFERS), in a
    /// transaction that is rolled back: nothing is leased. For tests and diagnosis of a large
    /// backlog (the plan must not grow with deferred mail).
    pub async fn explain_claim(&self, class: Claim, limit: u32) -> Result<String> {
        let sql = format!("{EXPLAIN}{}", claim_statement(class));
        let mut tx = self.pool.begin().await?;
        let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .bind("explain")
            .bind(60.0f64)
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        Ok(lines.join("\n"))
    }

    /// How PostgreSQL records one deferred attempt of a recipient `owner` holds (EXPLAIN
    /// ANALYZE, BUFFERS), in a transaction that is rolled back: nothing is recorded. For
    /// tests and diagnosis (the plan must not grow with the backlog).
    pub async fn explain_record_attempt(&self, owner: &str, recipient_id: i64) -> Result<String> {
        let sql = format!("{EXPLAIN}{RECORD_ATTEMPTS}");
        let mut tx = self.pool.begin().await?;
        let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind([recipient_id])
            .bind(owner)
            .bind(["queued"])
            .bind([60.0f64])
            .bind([451])
            .bind(["4.4.1"])
            .bind(["explain"])
            .bind([None::<String>])
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        Ok(lines.join("\n"))
    }

    /// Gives recipients `owner` holds to the remote delivery loops, due now: their domain has
    /// stopped being local since they were accepted.
    pub async fn hand_to_remote(&self, owner: &str, recipient_ids: &[i64]) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE recipients SET local = false, lease_owner = NULL, lease_expires_at = NULL,
                 next_attempt_at = now()
             WHERE id = ANY($1) AND (lease_owner = $2 AND state = 'queued') IS TRUE",
        )
        .bind(recipient_ids)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Extends `owner`'s leases on these recipients during a long delivery. Returns how many
    /// are still held; the others were taken over and must not be reported on.
    pub async fn renew_leases(
        &self,
        owner: &str,
        recipient_ids: &[i64],
        lease: Duration,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE recipients SET lease_expires_at = now() + $3 * interval '1 second'
             WHERE id = ANY($1) AND (lease_owner = $2 AND state = 'queued') IS TRUE",
        )
        .bind(recipient_ids)
        .bind(owner)
        .bind(secs(lease))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Records one attempt's result for a recipient `owner` holds, releases the lease and
    /// appends to the attempt history. Fails with `LeaseLost` if another worker took the
    /// recipient over (its lease expired and was claimed again), changing nothing.
    pub async fn record_attempt(
        &self,
        owner: &str,
        recipient_id: i64,
        outcome: AttemptOutcome,
        report: &AttemptReport,
    ) -> Result<()> {
        record_attempt_on(
            &mut *self.pool.acquire().await?,
            owner,
            recipient_id,
            outcome,
            report,
        )
        .await
    }

    /// Records several attempts and enqueues the report about them in one transaction, so a
    /// recipient never becomes final without the report it owes, nor is reported twice. With
    /// `delay_report`, the recipients are also marked as having had their one delay report.
    /// If any recipient's lease was lost, nothing is written and `LeaseLost` names it.
    ///
    /// Deferrals alone, with no report, commit without waiting for the WAL to reach the disk
    /// (`synchronous_commit = off` for that transaction): a crash can lose only the last
    /// moment's deferrals, and a deferral lost means the recipient is attempted once more when
    /// its lease expires; nothing was delivered, so nothing is lost or delivered twice. A
    /// backlog of deferred mail then costs no disk flush per retry.
    pub async fn record_attempts_with_report(
        &self,
        owner: &str,
        attempts: &[(i64, AttemptOutcome, AttemptReport)],
        report: Option<(&NewEnvelope, &[u8])>,
        delay_report: bool,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let deferrals_only = attempts
            .iter()
            .all(|(_, outcome, _)| matches!(outcome, AttemptOutcome::Deferred { .. }));
        if deferrals_only && report.is_none() && !delay_report {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        record_attempts_on(&mut tx, owner, attempts).await?;
        if delay_report {
            let ids: Vec<i64> = attempts.iter().map(|(id, _, _)| *id).collect();
            sqlx::query("UPDATE recipients SET delay_reported = true WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((envelope, content)) = report {
            enqueue_on(&mut tx, envelope, content, self.compression).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// ETRN (RFC 1985): makes the held and deferred recipients of `domain` due now, and with
    /// `include_subdomains` (the `@domain` form) those of its subdomains too.
    pub async fn release_domain(&self, domain: &str, include_subdomains: bool) -> Result<Released> {
        let (recipients, messages): (i64, i64) = sqlx::query_as(
            "WITH r AS (
                 UPDATE recipients SET state = 'queued', next_attempt_at = now()
                 WHERE (domain = $1
                        OR ($2 AND right(domain, length($1) + 1) = '.' || $1))
                   AND (state = 'held' OR (state = 'queued' AND next_attempt_at > now()))
                 RETURNING envelope_id
             )
             SELECT count(*), count(DISTINCT envelope_id) FROM r",
        )
        .bind(domain.to_ascii_lowercase())
        .bind(include_subdomains)
        .fetch_one(&self.pool)
        .await?;
        Ok(Released {
            recipients: recipients as u64,
            messages: messages as u64,
        })
    }

    /// Defers at once the remote recipients of a destination whose servers are all
    /// unreachable, without a worker claiming each (as Postfix defers a dead destination's
    /// queue): those due within `within` that no worker holds, each as one more attempt
    /// deferred with the queue's backoff (jittered per envelope, so they do not come due
    /// together again) and a line in the attempt history. Left for a worker, which decides
    /// each: recipients cancelled, expired or expiring within `within`, owed a delay report,
    /// or whose message requires TLS (it may fail, not wait). Returns how many were deferred.
    ///
    /// In transactions of `DEFER_CHUNK` recipients, each locking only rows no one else has
    /// locked (a worker recording or claiming them keeps them): short, and never waiting, so
    /// never in a deadlock with the workers. Each commits without waiting for the WAL flush,
    /// as a worker's deferrals do: a deferral lost in a crash only has the recipient
    /// attempted once more.
    pub async fn defer_destination(&self, d: DestinationDeferral<'_>) -> Result<u64> {
        // Found once (an index scan of the domain's live rows), then deferred by id in
        // chunks, each checked again as it is locked: a chunk costs its own rows only.
        let find = format!(
            "SELECT t.id, t.envelope_id, t.attempts
             FROM recipients t JOIN envelopes e ON e.id = t.envelope_id
             WHERE t.domain = lower($1) AND {DEFERRABLE} ORDER BY t.id"
        );
        let found: Vec<(i64, i64, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(find))
            .bind(d.domain)
            .bind(secs(d.within))
            .bind(secs(d.delay_report_after))
            .fetch_all(&self.pool)
            .await?;
        // A recipient attempted meanwhile is due later than the window and left out by the
        // check as it is locked, so the attempts read here are the ones it has then.
        let (ids, retry_after): (Vec<i64>, Vec<f64>) = found
            .into_iter()
            .map(|(id, envelope, attempts)| (id, secs((d.retry_after)(attempts, envelope))))
            .unzip();
        let defer = format!(
            "WITH a AS (
                 SELECT * FROM unnest($4::bigint[], $5::float8[]) AS a(id, retry_after)
             ), due AS (
                 SELECT t.id, a.retry_after
                 FROM a JOIN recipients t ON t.id = a.id JOIN envelopes e ON e.id = t.envelope_id
                 WHERE t.domain = lower($1) AND {DEFERRABLE}
                 FOR UPDATE OF t SKIP LOCKED
             ), {DEFER_DUE}"
        );
        let mut total = 0;
        for (ids, retry_after) in ids.chunks(DEFER_CHUNK).zip(retry_after.chunks(DEFER_CHUNK)) {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
            let deferred: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(defer.as_str()))
                .bind(d.domain)
                .bind(secs(d.within))
                .bind(secs(d.delay_report_after))
                .bind(ids)
                .bind(retry_after)
                .bind(d.worker)
                .bind(d.status)
                .bind(d.diagnostic)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            total += deferred as u64;
        }
        Ok(total)
    }

    /// Makes held recipients past their envelope's lifetime due, so the next claim expires
    /// them with the report they owe (held mail expires like queued mail). Returns how many.
    pub async fn expire_held(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE recipients r SET state = 'queued', next_attempt_at = now()
             FROM envelopes e
             WHERE e.id = r.envelope_id AND r.state = 'held' AND e.expires_at <= now()",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Frees the content of messages that nothing can read any more (every recipient of their
    /// envelopes finished, no maildrop entry holds them), then removes envelopes whose
    /// recipients all finished more than `retention` ago, then the rows of messages that
    /// neither an envelope nor a maildrop entry references. An authenticated sender's
    /// envelopes stay at least a day: its sending limits count them. Looks at every message
    /// of the store (`collect_garbage_step` looks at a part).
    pub async fn collect_garbage(&self, retention: Duration) -> Result<Collected> {
        self.collect_in(retention, 0, (0, 0)).await
    }

    /// One pass of incremental garbage collection: as `collect_garbage`, but looking only at
    /// the messages that may have lost their last maildrop entry since a pass last looked
    /// (migration 19's `gc_candidates`), those that are new since the pass before the last
    /// (the queue's own, whose recipients finish), the rows of envelopes this pass removes,
    /// and `window` more, taken in id order from where `sweep` left off: the whole store is
    /// gone over once every (messages / `window`) passes, which is what catches the rest (a
    /// deferred recipient that finished days later, a candidate lost to a crash).
    pub async fn collect_garbage_step(
        &self,
        retention: Duration,
        sweep: &mut GcSweep,
        window: i64,
    ) -> Result<Collected> {
        let newest: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM messages")
            .fetch_one(&self.pool)
            .await?;
        let from = sweep.window_from;
        let to = from.saturating_add(window.max(1));
        let collected = self
            .collect_in(retention, sweep.recent_from, (from, to))
            .await?;
        sweep.recent_from = sweep.newest_seen;
        sweep.newest_seen = newest;
        sweep.window_from = if to > newest { 0 } else { to };
        Ok(collected)
    }

    /// Garbage collection over the messages with ids from `recent_from` on, those in
    /// `window` (from, to), the candidates recorded since the last pass, and the messages of
    /// the envelopes removed.
    async fn collect_in(
        &self,
        retention: Duration,
        recent_from: i64,
        window: (i64, i64),
    ) -> Result<Collected> {
        // Taken once, for both sweeps below. A candidate whose message is still held is
        // dropped: the deletion that frees it records it again.
        let candidates: Vec<i64> =
            sqlx::query_scalar("DELETE FROM gc_candidates RETURNING message_id")
                .fetch_all(&self.pool)
                .await?;
        // Finished recipients never become live again and a maildrop entry is only made by
        // finishing a recipient (or copying an entry, which holds its source: FOR KEY SHARE),
        // so what this snapshot finds freeable stays freeable.
        let contents: i64 = sqlx::query_scalar(
            "WITH freed AS (
                 UPDATE messages m SET content_collected_at = now()
                 WHERE m.content_collected_at IS NULL
                   AND (m.id = ANY ($1) OR m.id >= $2 OR (m.id >= $3 AND m.id < $4))
                   -- OFFSET 0 keeps each check a probe of the index: as an anti join the
                   -- planner hashed every entry of the store for a window of 100,000.
                   AND NOT EXISTS (SELECT 1 FROM maildrop_entries me
                                   WHERE me.message_id = m.id OFFSET 0)
                   AND NOT EXISTS (
                       SELECT 1 FROM envelopes e JOIN recipients r ON r.envelope_id = e.id
                       WHERE e.message_id = m.id AND r.state IN ('queued', 'held'))
                 RETURNING m.id
             ), chunks AS (
                 -- An array, not a join: a join may scan every chunk of the store.
                 DELETE FROM message_chunks WHERE message_id = ANY (ARRAY(SELECT id FROM freed))
             )
             SELECT count(*) FROM freed",
        )
        .bind(&candidates)
        .bind(recent_from)
        .bind(window.0)
        .bind(window.1)
        .fetch_one(&self.pool)
        .await?;
        let unenveloped: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM envelopes e
             WHERE e.arrived_at < now() - $1 * interval '1 second'
               AND (e.auth_user IS NULL OR e.arrived_at < now() - interval '1 day')
               AND NOT EXISTS (
                   SELECT 1 FROM recipients r
                   WHERE r.envelope_id = e.id
                     AND (r.finished_at IS NULL OR r.finished_at > now() - $1 * interval '1 second'))
             RETURNING e.message_id",
        )
        .bind(secs(retention))
        .fetch_all(&self.pool)
        .await?;
        // Chunks go here too, for a message the sweep above has not seen.
        let messages: i64 = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM messages m
                 WHERE (m.id = ANY ($1) OR m.id = ANY ($2) OR m.id >= $3
                        OR (m.id >= $4 AND m.id < $5))
                   AND NOT EXISTS (SELECT 1 FROM envelopes e WHERE e.message_id = m.id OFFSET 0)
                   AND NOT EXISTS (SELECT 1 FROM maildrop_entries me
                                   WHERE me.message_id = m.id OFFSET 0)
                 RETURNING id, content_collected_at
             ), chunks AS (
                 DELETE FROM message_chunks WHERE message_id = ANY (ARRAY(
                     SELECT id FROM gone WHERE content_collected_at IS NULL))
             )
             SELECT count(*) FROM gone",
        )
        .bind(&candidates)
        .bind(&unenveloped)
        .bind(recent_from)
        .bind(window.0)
        .bind(window.1)
        .fetch_one(&self.pool)
        .await?;
        Ok(Collected {
            contents: contents as u64,
            envelopes: unenveloped.len() as u64,
            messages: messages as u64,
        })
    }
}

/// `Store::enqueue` on a given connection (or transaction).
pub(crate) async fn enqueue_on(
    conn: &mut PgConnection,
    envelope: &NewEnvelope,
    content: &[u8],
    compression: Option<ContentCompression>,
) -> Result<Enqueued> {
    let rows = Rows::of(content, compression, envelope.reaches_a_mailbox());
    let enqueued = enqueue_rows_on(conn, &[(envelope, content, &rows)]).await?;
    Ok(enqueued[0])
}

/// Enqueues a batch (each envelope with its content and the rows it is stored as) on a given
/// connection (or transaction), in one statement.
async fn enqueue_rows_on(
    conn: &mut PgConnection,
    batch: &[(&NewEnvelope, &[u8], &Rows)],
) -> Result<Vec<Enqueued>> {
    if batch.iter().any(|(e, ..)| e.recipients.is_empty()) {
        return Err(StoreError::NoRecipients);
    }
    let sizes: Vec<i64> = batch.iter().map(|(_, c, _)| c.len() as i64).collect();
    let messages: Vec<(&[u8], &Rows)> = batch.iter().map(|(_, c, r)| (*c, *r)).collect();
    let chunks = Chunks::of(&messages);
    let search = SearchColumns::of(batch.iter().map(|(_, _, r)| r.search.as_ref()));
    let envelopes = || batch.iter().map(|(e, ..)| *e);
    let queue_ids: Vec<&str> = envelopes().map(|e| e.queue_id.as_str()).collect();
    // The null reverse-path `<>` is stored as ''.
    let reverse_paths: Vec<String> = envelopes()
        .map(|e| {
            e.reverse_path
                .as_ref()
                .map(Mailbox::address)
                .unwrap_or_default()
        })
        .collect();
    let envids: Vec<Option<&str>> = envelopes().map(|e| e.envid.as_deref()).collect();
    let rets: Vec<Option<&str>> = envelopes().map(|e| e.ret.map(|r| r.as_str())).collect();
    let bodies: Vec<Option<&str>> = envelopes().map(|e| e.body.map(|b| b.as_str())).collect();
    let smtputf8s: Vec<bool> = envelopes().map(|e| e.smtputf8).collect();
    let requiretlss: Vec<bool> = envelopes().map(|e| e.requiretls).collect();
    let clients: Vec<Option<String>> = envelopes()
        .map(|e| e.client_address.map(|a| a.to_string()))
        .collect();
    let helos: Vec<Option<&str>> = envelopes().map(|e| e.client_helo.as_deref()).collect();
    let auth_users: Vec<Option<&str>> = envelopes().map(|e| e.auth_user.as_deref()).collect();
    let received_bys: Vec<Option<&str>> = envelopes().map(|e| e.received_by.as_deref()).collect();
    let traceparents: Vec<Option<&str>> = envelopes().map(|e| e.traceparent.as_deref()).collect();
    let lifetimes: Vec<f64> = envelopes().map(|e| secs(e.lifetime)).collect();
    let quarantines: Vec<Option<&str>> = envelopes().map(|e| e.quarantine.as_deref()).collect();
    // Recipients flattened, each with its envelope's queue id.
    let rcpts = || envelopes().flat_map(|e| e.recipients.iter().map(move |r| (e, r)));
    let rcpt_queue_ids: Vec<&str> = rcpts().map(|(e, _)| e.queue_id.as_str()).collect();
    let addresses: Vec<String> = rcpts().map(|(_, r)| r.address.to_string()).collect();
    let domains: Vec<&str> = rcpts().map(|(_, r)| r.address.domain.as_str()).collect();
    let orcpts: Vec<Option<&str>> = rcpts()
        .map(|(_, r)| r.orcpt.as_ref().map(Orcpt::as_str))
        .collect();
    let notifies: Vec<Option<String>> = rcpts()
        .map(|(_, r)| r.notify.map(|n| n.to_string()))
        .collect();
    let states: Vec<&str> = rcpts()
        .map(|(_, r)| match r.disposition {
            Disposition::Hold => "held",
            Disposition::Local | Disposition::Remote => "queued",
        })
        .collect();
    let locals: Vec<bool> = rcpts()
        .map(|(_, r)| r.disposition == Disposition::Local)
        .collect();
    // One statement, so the whole batch is stored or none of it. The message ids are drawn
    // first (a volatile CTE is evaluated once), so each envelope gets its own content; chunk
    // rows find their message by its place in the batch, an index into the array of the new
    // ids. The chunk arrays are unnested in the select list, so rows stream into the INSERT:
    // unnest in FROM with a join copied every chunk into a tuplestore and a hash table first
    // (measured in bench/history.md, "chunk rows streamed"). They are not sorted (a sort
    // would copy every chunk too): readers order chunks themselves.
    // The arguments' buffer (33 parameters, mostly the chunks' octets) is sized up front:
    // grown by doubling, it would copy the content several times over before it is sent.
    let mut args = PgArguments::default();
    args.reserve(33, chunks.encoded_len() + 1024 * batch.len());
    for add in [
        args.add(&sizes),
        args.add(&queue_ids),
        args.add(&reverse_paths),
        args.add(&envids),
        args.add(&rets),
        args.add(&bodies),
        args.add(&smtputf8s),
        args.add(&clients),
        args.add(&helos),
        args.add(&auth_users),
        args.add(&received_bys),
        args.add(&traceparents),
        args.add(&lifetimes),
        args.add(&rcpt_queue_ids),
        args.add(&addresses),
        args.add(&domains),
        args.add(&orcpts),
        args.add(&notifies),
        args.add(&states),
        args.add(&chunks.owners),
        args.add(&chunks.seqs),
        args.add(&chunks.data),
        args.add(&locals),
        args.add(&quarantines),
        args.add(&requiretlss),
        args.add(&chunks.codecs),
        args.add(&search.kept),
        args.add(&search.subject),
        args.add(&search.from),
        args.add(&search.to),
        args.add(&search.cc),
        args.add(&search.bcc),
        args.add(&search.sent_on),
    ] {
        add.map_err(sqlx::Error::Encode)?;
    }
    let rows: Vec<(String, i64, i64)> = sqlx::query_as_with(
        "WITH input AS (
                 SELECT i.*, nextval(pg_get_serial_sequence('messages', 'id')) AS message_id
                 FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::bool[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::text[], $13::float8[], $24::text[], $25::bool[], $27::bool[],
                     $28::text[], $29::text[], $30::text[], $31::text[], $32::text[],
                     $33::date[])
                     WITH ORDINALITY AS i (size, queue_id, reverse_path, envid, ret, body,
                         smtputf8, client_address, client_helo, auth_user, received_by,
                         traceparent, lifetime, quarantine, requiretls, search_fields,
                         search_subject, search_from, search_to, search_cc, search_bcc,
                         search_sent_on, n)
             ), m AS (
                 INSERT INTO messages (id, size, quarantine, search_fields, search_subject,
                     search_from, search_to, search_cc, search_bcc, search_sent_on)
                     OVERRIDING SYSTEM VALUE
                 SELECT message_id, size, quarantine, search_fields, search_subject,
                     search_from, search_to, search_cc, search_bcc, search_sent_on
                 FROM input ORDER BY n
             ), c AS (
                 INSERT INTO message_chunks (message_id, seq, data, codec)
                 SELECT (SELECT array_agg(message_id ORDER BY n) FROM input)[n], seq, data,
                     codec
                 FROM (SELECT unnest($20::int8[]) AS n, unnest($21::int4[]) AS seq,
                           unnest($22::bytea[]) AS data, unnest($26::int2[]) AS codec) AS c
             ), e AS (
                 INSERT INTO envelopes (queue_id, message_id, reverse_path, envid, ret, body,
                     smtputf8, client_address, client_helo, auth_user, received_by, traceparent,
                     expires_at, requiretls)
                 SELECT queue_id, message_id, reverse_path, envid, ret, body, smtputf8,
                     client_address::inet, client_helo, auth_user, received_by, traceparent,
                     now() + lifetime * interval '1 second', requiretls
                 FROM input ORDER BY n
                 RETURNING queue_id, id, message_id
             ), r AS (
                 INSERT INTO recipients (envelope_id, address, domain, orcpt, notify, state, local)
                 SELECT e.id, a.address, a.domain, a.orcpt, a.notify, a.state, a.local
                 FROM unnest($14::text[], $15::text[], $16::text[], $17::text[], $18::text[],
                     $19::text[], $23::bool[])
                     WITH ORDINALITY AS a (queue_id, address, domain, orcpt, notify, state, local,
                         n)
                 JOIN e ON e.queue_id = a.queue_id
                 ORDER BY a.n
             )
             SELECT queue_id, id, message_id FROM e",
        args,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut ids: std::collections::HashMap<String, Enqueued> = rows
        .into_iter()
        .map(|(queue_id, envelope_id, message_id)| {
            (
                queue_id,
                Enqueued {
                    envelope_id,
                    message_id,
                },
            )
        })
        .collect();
    queue_ids
        .iter()
        .map(|q| {
            ids.remove(*q).ok_or_else(|| {
                StoreError::Database(sqlx::Error::Protocol(format!(
                    "envelope {q} was not stored"
                )))
            })
        })
        .collect()
}

/// The longest text kept from an attempt's report (it may come from a remote server).
const MAX_REPORT_TEXT: usize = 2000;

/// `text` as a text column can hold it: PostgreSQL refuses NUL in text (a remote server's
/// reply must never make recording its attempt fail), and length is bounded.
fn storable(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '\0')
        .take(MAX_REPORT_TEXT)
        .collect()
}

/// `Store::record_attempt` on a given connection (or transaction).
/// The claim statement of `claim_due` for one class ($1 limit, $2 owner, $3 lease seconds).
fn claim_statement(class: Claim) -> String {
    // The class is spelled out, not a parameter, so each query matches its partial index.
    let class = match class {
        Claim::Local => "r.local",
        Claim::Remote => "NOT r.local",
    };
    format!(
        "WITH locked AS (
             SELECT e.id FROM recipients r JOIN envelopes e ON e.id = r.envelope_id
             WHERE r.state = 'queued' AND {class} AND r.next_attempt_at <= now()
               AND (r.lease_expires_at IS NULL OR r.lease_expires_at <= now())
             ORDER BY r.next_attempt_at
             LIMIT $1
             FOR NO KEY UPDATE OF e SKIP LOCKED
         ), due AS (
             -- Re-checked against the latest row versions: a recipient another claimer
             -- leased meanwhile is left out. One locked right now is being delivered or
             -- changed: skipped, never waited for (a delivery must not wait on a claim).
             -- The conditions are one IS TRUE test, which no index matches, asked of each
             -- locked envelope's recipients: they are found through the envelope index
             -- whatever the statistics say. Matched to the partial due index, whose
             -- statistics lag behind a growing backlog, the conditions made PostgreSQL scan
             -- the whole backlog once per locked envelope; as a semi-join against `locked`,
             -- with column statistics older than the backlog, it read the whole table once
             -- per claim (bench/history.md; the test a_deferred_backlog_costs_nothing_...).
             SELECT d.id FROM locked l, LATERAL (
                 SELECT r.id FROM recipients r
                 WHERE r.envelope_id = l.id
                   AND (r.state = 'queued' AND {class} AND r.next_attempt_at <= now()
                        AND (r.lease_expires_at IS NULL OR r.lease_expires_at <= now())) IS TRUE
                 FOR UPDATE OF r SKIP LOCKED
             ) d
         )
         UPDATE recipients r
         SET lease_owner = $2, lease_expires_at = now() + $3 * interval '1 second'
         FROM due, envelopes e
         WHERE r.id = due.id AND e.id = r.envelope_id
         RETURNING r.id AS recipient_id, r.envelope_id, e.queue_id, e.message_id, r.address,
             r.orcpt, r.notify, r.attempts, e.reverse_path, e.envid, e.ret, e.body,
             e.smtputf8, e.requiretls, e.arrived_at, e.expires_at, e.traceparent,
             r.lease_expires_at,
             r.delay_reported, r.cancelled, r.last_status, r.original_address"
    )
}

/// Recipients `Store::defer_destination` defers per transaction at most.
const DEFER_CHUNK: usize = 5000;

/// Which recipients `Store::defer_destination` may defer (`t` the recipient, `e` its
/// envelope; $2 the window in seconds, $3 the delay report's wait in seconds): queued for
/// remote delivery, due within the window, held by no worker, and owed nothing but a
/// deferral (not cancelled, not expiring within the window, no delay report due, no
/// REQUIRETLS).
const DEFERRABLE: &str = "t.state = 'queued' AND NOT t.local AND NOT t.cancelled
         AND t.next_attempt_at <= now() + $2 * interval '1 second'
         AND (t.lease_expires_at IS NULL OR t.lease_expires_at <= now())
         AND e.expires_at > now() + $2 * interval '1 second'
         AND NOT e.requiretls
         AND NOT (NOT t.delay_reported AND e.reverse_path <> ''
                  AND coalesce(t.notify LIKE '%DELAY%', false)
                  AND e.arrived_at <= now() - $3 * interval '1 second')";

/// The rest of `Store::defer_destination`'s statement after its `due` recipients (with their
/// retry delays in seconds): each deferred as one attempt ($6 the worker, $7 the status, $8
/// the diagnostic), with its line of history.
const DEFER_DUE: &str = "r AS (
         UPDATE recipients t SET
             attempts = t.attempts + 1,
             last_attempt_at = now(),
             next_attempt_at = now() + due.retry_after * interval '1 second',
             last_reply_code = NULL, last_status = $7, last_diagnostic = $8,
             last_remote_mta = NULL
         FROM due
         WHERE t.id = due.id
         RETURNING t.id
     ), history AS (
         INSERT INTO delivery_attempts (recipient_id, worker, remote_mta, reply_code, status,
             diagnostic, result)
         SELECT id, $6, NULL, NULL, $7, $8, 'queued' FROM r
     )
     SELECT count(*) FROM r";

/// Records attempts, one per recipient ($1: ids; $3..$8: per attempt the state, retry delay
/// in seconds (NULL: not deferred), reply code, status, diagnostic and remote MTA), each
/// only while `$2` holds the recipient's lease; returns the ids recorded. One statement for
/// any number: the cost of a statement, not of a row, is what recording pays most.
/// The lease and state conditions are one IS TRUE test, which no index matches, so rows are
/// found by their primary key whatever the statistics say. As plain conditions they matched
/// the partial due and live-domain indexes: with statistics taken before a backlog (which
/// saw those indexes empty), PostgreSQL scanned the whole backlog for every attempt it
/// recorded (bench/scale: 100,000 recipients deferred for a dead destination, 10 ms of CPU
/// per attempt).
const RECORD_ATTEMPTS: &str = "WITH a AS (
         SELECT * FROM unnest($1::bigint[], $3::text[], $4::float8[], $5::int4[], $6::text[],
                              $7::text[], $8::text[])
             AS a(id, state, retry_after, reply_code, status, diagnostic, remote_mta)
     ), r AS (
         UPDATE recipients t SET
             state = a.state,
             attempts = t.attempts + 1,
             last_attempt_at = now(),
             next_attempt_at = CASE WHEN t.cancelled THEN now()
                                    WHEN a.retry_after IS NULL THEN t.next_attempt_at
                                    ELSE now() + a.retry_after * interval '1 second' END,
             last_reply_code = a.reply_code, last_status = a.status,
             last_diagnostic = a.diagnostic, last_remote_mta = a.remote_mta,
             lease_owner = NULL, lease_expires_at = NULL,
             finished_at = CASE WHEN a.state = 'queued' THEN NULL ELSE now() END
         FROM a
         WHERE t.id = a.id AND (t.lease_owner = $2 AND t.state = 'queued') IS TRUE
         RETURNING t.id, a.state, a.reply_code, a.status, a.diagnostic, a.remote_mta
     )
     INSERT INTO delivery_attempts (recipient_id, worker, remote_mta, reply_code, status,
         diagnostic, result)
     SELECT id, $2, remote_mta, reply_code, status, diagnostic, state FROM r
     RETURNING recipient_id";

pub(crate) async fn record_attempt_on(
    conn: &mut PgConnection,
    owner: &str,
    recipient_id: i64,
    outcome: AttemptOutcome,
    report: &AttemptReport,
) -> Result<()> {
    record_attempts_on(conn, owner, &[(recipient_id, outcome, report.clone())]).await
}

/// Records `attempts` in one statement; if any recipient's lease was lost (or it is no
/// longer queued), says `LeaseLost` with the first such id, and the caller's transaction
/// must not commit (the others were recorded in it).
pub(crate) async fn record_attempts_on(
    conn: &mut PgConnection,
    owner: &str,
    attempts: &[(i64, AttemptOutcome, AttemptReport)],
) -> Result<()> {
    let mut ids = Vec::with_capacity(attempts.len());
    let mut states = Vec::with_capacity(attempts.len());
    let mut retry_after = Vec::with_capacity(attempts.len());
    let mut codes = Vec::with_capacity(attempts.len());
    let mut statuses = Vec::with_capacity(attempts.len());
    let mut diagnostics = Vec::with_capacity(attempts.len());
    let mut remote_mtas = Vec::with_capacity(attempts.len());
    for (id, outcome, report) in attempts {
        ids.push(*id);
        states.push(outcome.state().as_str());
        retry_after.push(match outcome {
            AttemptOutcome::Deferred { retry_after } => Some(secs(*retry_after)),
            _ => None,
        });
        codes.push(
            report
                .reply_code
                .filter(|c| (200..600).contains(c))
                .map(i32::from),
        );
        statuses.push(report.status.as_deref().map(storable));
        diagnostics.push(storable(&report.diagnostic));
        remote_mtas.push(report.remote_mta.as_deref().map(storable));
    }
    let recorded: Vec<i64> = sqlx::query_scalar(RECORD_ATTEMPTS)
        .bind(&ids)
        .bind(owner)
        .bind(&states)
        .bind(&retry_after)
        .bind(&codes)
        .bind(&statuses)
        .bind(&diagnostics)
        .bind(&remote_mtas)
        .fetch_all(&mut *conn)
        .await?;
    if recorded.len() == ids.len() {
        return Ok(());
    }
    let recorded: std::collections::HashSet<i64> = recorded.into_iter().collect();
    match ids.into_iter().find(|id| !recorded.contains(id)) {
        Some(lost) => Err(StoreError::LeaseLost(lost)),
        None => Ok(()),
    }
}
