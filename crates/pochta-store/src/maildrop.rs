//! Maildrops: local delivery (exactly once), what POP3 lists, reads and deletes, and the
//! maildrop lock shared by every pop3-access replica.

use std::time::Duration;

use sqlx::PgConnection;

use crate::content::{CHUNK, decode, in_chunk_order, join};
use crate::queue::enqueue_on;
use crate::{
    EXPLAIN, EntryPart, LocalDelivery, MaildropDelivery, MaildropEntry, NewEnvelope, Result, Store,
    StoreError, secs,
};

/// A maildrop's entries in UID order ($1: the account). INBOX is found first, so the planner
/// knows one mailbox's rows come out of the (mailbox, UID) index already sorted, and that
/// index carries every column asked for: an index-only scan, however scattered the entries
/// are in the heap (migration 13).
const MAILDROP_LISTING: &str = "SELECT e.id, e.uid, e.pop3_size FROM maildrop_entries e
     WHERE e.mailbox_id = (SELECT m.id FROM mailboxes m
                           WHERE m.account_id = $1 AND m.name = 'INBOX')
     ORDER BY e.imap_uid";

/// What an account's mailboxes hold, in the octets POP3 STAT counts: the sum of their
/// counters (migration 18), a row per mailbox however many messages they hold.
pub(crate) const ACCOUNT_USAGE: &str =
    "SELECT coalesce(sum(messages_size), 0)::bigint FROM mailboxes WHERE account_id = $1";

/// Takes an account's turn for the rest of the transaction: deliveries to an account with a
/// quota, and IMAP's additions and new mailboxes, take turns with each other. An advisory
/// lock, because a row lock (FOR UPDATE) needs the UPDATE privilege on `accounts`, which the
/// services' roles do not have. The two-key form under the accounts table's oid shares no key
/// with other advisory locks (sqlx's migration lock takes the one-key form); ids 2^31 - 1
/// apart share a key, which only makes those two accounts wait for each other.
pub(crate) const ACCOUNT_TURN: &str =
    "SELECT pg_advisory_xact_lock('accounts'::regclass::oid::int4, ($1 % 2147483647)::int4)";

/// An account's quota, what its maildrop holds and the size of recipient $2's message: read
/// after `ACCOUNT_TURN`, in a statement of its own (a statement that waited for the turn
/// would read with a snapshot from before it, and miss what the turn before it committed).
const QUOTA_USAGE: &str = "SELECT a.quota_bytes,
            (SELECT coalesce(sum(x.messages_size), 0)::bigint FROM mailboxes x
             WHERE x.account_id = a.id),
            (SELECT m.size FROM recipients r
             JOIN envelopes e ON e.id = r.envelope_id
             JOIN messages m ON m.id = e.message_id
             WHERE r.id = $2)
     FROM accounts a WHERE a.id = $1";

impl Store {
    /// Delivers a live recipient into an account's maildrop and marks it delivered, atomically.
    ///
    /// Exactly once (invariant 3): the recipient row is locked and must still be `queued`, and
    /// `maildrop_entries.recipient_id` is UNIQUE, so a second call for the same recipient, from
    /// this worker or a replica that took over an expired lease, writes nothing and returns
    /// `AlreadyFinal`. `header_prefix` is the per-delivery `Return-Path:`/`Delivered-To:` block.
    pub async fn deliver_to_maildrop(
        &self,
        worker: &str,
        recipient_id: i64,
        account_id: i64,
        header_prefix: &[u8],
    ) -> Result<LocalDelivery> {
        deliver_on(
            &mut *self.pool.acquire().await?,
            worker,
            recipient_id,
            account_id,
            header_prefix,
        )
        .await
    }

    /// Many local deliveries in one statement (one commit), each exactly once as in
    /// `deliver_to_maildrop`; the results are in input order. The statement is atomic: on an
    /// error nothing is delivered and every recipient is still live. It does not look at
    /// quotas: accounts with one are delivered to by `deliver_to_maildrop_with_report`.
    pub async fn deliver_many_to_maildrops(
        &self,
        worker: &str,
        deliveries: &[MaildropDelivery],
    ) -> Result<Vec<LocalDelivery>> {
        let recipient_ids: Vec<i64> = deliveries.iter().map(|d| d.recipient_id).collect();
        let account_ids: Vec<i64> = deliveries.iter().map(|d| d.account_id).collect();
        let prefixes: Vec<&[u8]> = deliveries.iter().map(|d| &d.header_prefix[..]).collect();
        deliver_many_on(
            &mut *self.pool.acquire().await?,
            worker,
            &recipient_ids,
            &account_ids,
            &prefixes,
        )
        .await
    }

    /// Local delivery and, in the same transaction, the report it owes (NOTIFY=SUCCESS): a
    /// crash can neither lose the report nor send it for a delivery that did not happen.
    ///
    /// With `has_quota` (the account has one, as its lookup said), the account row is locked and
    /// its quota read again, and an entry that would take the maildrop past it is not written
    /// (`OverQuota`): deliveries to one account with a quota take turns, and what they count is
    /// what POP3 STAT reports. Accounts without a quota never wait for each other (and the batch
    /// statement, `deliver_many_to_maildrops`, is only for them).
    pub async fn deliver_to_maildrop_with_report(
        &self,
        worker: &str,
        recipient_id: i64,
        account_id: i64,
        header_prefix: &[u8],
        has_quota: bool,
        report: Option<(&NewEnvelope, &[u8])>,
    ) -> Result<LocalDelivery> {
        if !has_quota && report.is_none() {
            // One statement is atomic on its own: no transaction round trips.
            return self
                .deliver_to_maildrop(worker, recipient_id, account_id, header_prefix)
                .await;
        }
        let mut tx = self.pool.begin().await?;
        if has_quota
            && let Some(over) =
                over_quota_on(&mut tx, recipient_id, account_id, header_prefix).await?
        {
            return Ok(over);
        }
        let delivery = deliver_on(&mut tx, worker, recipient_id, account_id, header_prefix).await?;
        if let (LocalDelivery::Delivered { .. }, Some((envelope, content))) = (&delivery, report) {
            enqueue_on(&mut tx, envelope, content, self.compression).await?;
        }
        tx.commit().await?;
        Ok(delivery)
    }

    /// The entries of a maildrop (the account's INBOX), oldest first: the snapshot a POP3
    /// session works on. Read from the index on (mailbox, UID) alone, in its order (migration
    /// 13): INBOX is found first, so the planner knows the rows come out sorted.
    pub async fn maildrop_entries(&self, account_id: i64) -> Result<Vec<MaildropEntry>> {
        Ok(sqlx::query_as::<_, MaildropEntry>(MAILDROP_LISTING)
            .bind(account_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// How PostgreSQL lists a maildrop (`maildrop_entries`) and sums its sizes for a quota
    /// check at delivery (EXPLAIN ANALYZE, BUFFERS). For tests and diagnosis: the listing may
    /// not read the heap page by page as the maildrop grows (migration 13), and the sum reads
    /// the account's mailbox rows, not its entries (migration 18).
    pub async fn explain_maildrop_reads(
        &self,
        account_id: i64,
        recipient_id: i64,
    ) -> Result<(String, String)> {
        let mut tx = self.pool.begin().await?;
        let listing: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("{EXPLAIN}{MAILDROP_LISTING}")))
                .bind(account_id)
                .fetch_all(&mut *tx)
                .await?;
        let usage: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("{EXPLAIN}{QUOTA_USAGE}")))
                .bind(account_id)
                .bind(recipient_id)
                .fetch_all(&mut *tx)
                .await?;
        tx.rollback().await?;
        Ok((listing.join("\n"), usage.join("\n")))
    }

    /// One entry's header prefix and message content, or None if it is not in that maildrop.
    pub async fn maildrop_entry_content(
        &self,
        account_id: i64,
        entry_id: i64,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let rows = self.entry_chunks(account_id, &[entry_id]).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let (prefix, message_id) = (first.header_prefix.clone(), first.message_id);
        let size = (first.pop3_size as usize).saturating_sub(prefix.len());
        let chunks = rows.into_iter().filter_map(|r| Some((r.codec?, r.data?)));
        Ok(Some((prefix, join(message_id, Vec::new(), chunks, size)?)))
    }

    /// What RETR sends for an entry (its header prefix, then the message) in pieces of about
    /// `octets` stored octets: the chunk rows from seq `from` on, decoded (the piece from 0
    /// begins with the prefix), and the seq the next piece starts at (None after the last).
    /// None if the entry is not in that maildrop. Only the rows asked for are read, so a large
    /// message is streamed rather than held whole.
    pub async fn maildrop_entry_part(
        &self,
        account_id: i64,
        entry_id: i64,
        from: i32,
        octets: i64,
    ) -> Result<Option<EntryPart>> {
        let rows = (octets / CHUNK as i64).clamp(1, i32::MAX as i64) as i32;
        let mut chunks: Vec<PartChunk> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT e.message_id, {FIRST_ROW_PREFIX}, c.seq, c.codec, c.data
             FROM maildrop_entries e
             LEFT JOIN message_chunks c ON c.message_id = e.message_id
                 AND c.seq >= $3 AND c.seq < $3::int8 + $4
             WHERE e.account_id = $1 AND e.id = $2"
        )))
        .bind(account_id)
        .bind(entry_id)
        .bind(from)
        .bind(rows)
        .fetch_all(&self.pool)
        .await?;
        in_chunk_order(&mut chunks, |r| r.seq);
        let Some(first) = chunks.first() else {
            return Ok(None);
        };
        let message_id = first.message_id;
        let prefix = if from == 0 {
            first.header_prefix.clone()
        } else {
            Vec::new()
        };
        let read = chunks.iter().filter(|r| r.data.is_some()).count();
        let next = (read == rows as usize).then(|| from.saturating_add(rows));
        let rows = chunks.into_iter().filter_map(|r| Some((r.codec?, r.data?)));
        Ok(Some(EntryPart {
            octets: decode(message_id, prefix, rows)?,
            next,
        }))
    }

    /// What RETR sends (header prefix, then the message) for several entries of a maildrop at
    /// once, in entry order; entries not in it are left out.
    pub async fn maildrop_entries_whole(
        &self,
        account_id: i64,
        entry_ids: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        let rows = self.entry_chunks(account_id, entry_ids).await?;
        let mut entries = Vec::new();
        let mut rows = rows.into_iter().peekable();
        while let Some(first) = rows.next() {
            let EntryChunk {
                id,
                message_id,
                pop3_size,
                header_prefix,
                codec,
                data,
                ..
            } = first;
            let rest = std::iter::from_fn(|| rows.next_if(|r| r.id == id));
            let head = codec.zip(data);
            let chunks = head
                .into_iter()
                .chain(rest.filter_map(|r| Some((r.codec?, r.data?))));
            let text = join(message_id, header_prefix, chunks, pop3_size as usize)?;
            entries.push((id, text));
        }
        Ok(entries)
    }

    /// The header block (through its empty line) of several entries of a maildrop: the
    /// header prefix, then the content up to its first empty line, cut in the database so that
    /// only headers cross the wire (SEARCH by header field, FETCH of header fields). An entry
    /// whose header does not end within its first chunk is not read here but named with its
    /// size (`HeaderBlocks::longer`): its header block takes the whole message to find, which
    /// the caller reads (`maildrop_entries_whole`) as its memory allows. Entries not in the
    /// maildrop are left out.
    pub async fn maildrop_entries_headers(
        &self,
        account_id: i64,
        entry_ids: &[i64],
    ) -> Result<HeaderBlocks> {
        // A raw first chunk is cut in the database; a compressed one comes whole and is
        // decoded and cut here.
        let rows: Vec<HeaderBlock> = sqlx::query_as(
            "SELECT e.id, e.message_id, e.header_prefix,
                    e.pop3_size - octet_length(e.header_prefix) AS size, c.codec,
                    CASE WHEN h.at > 0 THEN substring(c.data FROM 1 FOR h.at + 3)
                         ELSE c.data END AS head,
                    coalesce(h.at > 0
                        OR e.pop3_size - octet_length(e.header_prefix) <= octet_length(c.data),
                        true) AS complete
             FROM maildrop_entries e
             LEFT JOIN message_chunks c ON c.message_id = e.message_id AND c.seq = 0
             CROSS JOIN LATERAL (SELECT CASE WHEN c.codec = 0
                 THEN position('\\x0d0a0d0a'::bytea IN c.data) ELSE 0 END AS at) h
             WHERE e.account_id = $1 AND e.id = ANY($2)",
        )
        .bind(account_id)
        .bind(entry_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut blocks = HeaderBlocks {
            found: Vec::with_capacity(rows.len()),
            longer: Vec::new(),
        };
        for row in rows {
            let (head, complete) = match (row.codec, row.head) {
                (Some(codec), Some(data)) if codec != 0 => {
                    let mut head = decode(row.message_id, Vec::new(), [(codec, data)])?;
                    let end = memchr::memmem::find(&head, b"\r\n\r\n");
                    let whole = head.len() as i64 >= row.size;
                    if let Some(end) = end {
                        head.truncate(end + 4);
                    }
                    (head, end.is_some() || whole)
                }
                (_, head) => (head.unwrap_or_default(), row.complete),
            };
            if complete {
                blocks
                    .found
                    .push((row.id, [row.header_prefix, head].concat()));
            } else {
                let size = row.size + row.header_prefix.len() as i64;
                blocks.longer.push((row.id, size));
            }
        }
        Ok(blocks)
    }

    /// The content chunks of some entries of a maildrop, in entry then chunk order, each row
    /// with its entry's own (small) columns, the header prefix on the first row only; an
    /// entry with empty content has one row without data.
    async fn entry_chunks(&self, account_id: i64, entry_ids: &[i64]) -> Result<Vec<EntryChunk>> {
        let mut rows: Vec<EntryChunk> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT e.id, e.message_id, e.pop3_size, {FIRST_ROW_PREFIX}, c.seq, c.codec, c.data
             FROM maildrop_entries e
             LEFT JOIN message_chunks c ON c.message_id = e.message_id
             WHERE e.account_id = $1 AND e.id = ANY($2)"
        )))
        .bind(account_id)
        .bind(entry_ids)
        .fetch_all(&self.pool)
        .await?;
        in_chunk_order(&mut rows, |r| (r.id, r.seq));
        Ok(rows)
    }

    /// POP3 UPDATE state (RFC 1939 6): deletes the marked entries and releases the lock, in one
    /// statement, only while `owner` holds the maildrop lock. Returns how many were deleted.
    pub async fn delete_maildrop_entries_and_unlock(
        &self,
        account_id: i64,
        owner: &str,
        entry_ids: &[i64],
    ) -> Result<u64> {
        let (locked, deleted, _): (i64, i64, i64) = sqlx::query_as(
            "WITH lock AS (
                 DELETE FROM maildrop_locks WHERE account_id = $1 AND owner = $2
                 RETURNING account_id
             ), inbox AS (
                 -- An expunge for IMAP sessions of this INBOX (RFC 7162: a new mod-sequence).
                 -- Its row is locked before the entries (the store's lock order): the
                 -- deletion below waits for this row.
                 UPDATE mailboxes SET highest_modseq = highest_modseq + 1
                 WHERE account_id IN (SELECT account_id FROM lock) AND name = 'INBOX'
                   AND cardinality($3::int8[]) > 0
                 RETURNING id
             ), gone AS (
                 DELETE FROM maildrop_entries
                 WHERE mailbox_id IN (SELECT id FROM inbox) AND id = ANY($3)
                 RETURNING id
             )
             SELECT (SELECT count(*) FROM lock), (SELECT count(*) FROM gone),
                    (SELECT count(pg_notify($4, id::text)) FROM inbox)",
        )
        .bind(account_id)
        .bind(owner)
        .bind(entry_ids)
        .bind(crate::MAILBOX_CHANNEL)
        .fetch_one(&self.pool)
        .await?;
        if locked == 1 {
            Ok(deleted as u64)
        } else {
            Err(StoreError::LockNotHeld(account_id))
        }
    }

    /// Takes the maildrop lock for `ttl` if it is free, expired, or already `owner`'s.
    /// Returns false when another live session holds it (POP3 `[IN-USE]`).
    pub async fn lock_maildrop(&self, account_id: i64, owner: &str, ttl: Duration) -> Result<bool> {
        let got: Option<String> = sqlx::query_scalar(
            "INSERT INTO maildrop_locks (account_id, owner, expires_at)
             VALUES ($1, $2, now() + $3 * interval '1 second')
             ON CONFLICT (account_id) DO UPDATE
                 SET owner = EXCLUDED.owner, acquired_at = now(), expires_at = EXCLUDED.expires_at
                 WHERE maildrop_locks.expires_at <= now() OR maildrop_locks.owner = EXCLUDED.owner
             RETURNING owner",
        )
        .bind(account_id)
        .bind(owner)
        .bind(secs(ttl))
        .fetch_optional(&self.pool)
        .await?;
        Ok(got.is_some())
    }

    /// Extends `owner`'s lock. False when the lock is no longer `owner`'s.
    pub async fn renew_maildrop_lock(
        &self,
        account_id: i64,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE maildrop_locks SET expires_at = now() + $3 * interval '1 second'
             WHERE account_id = $1 AND owner = $2",
        )
        .bind(account_id)
        .bind(owner)
        .bind(secs(ttl))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Releases `owner`'s lock without deleting anything. False when it was not `owner`'s.
    pub async fn unlock_maildrop(&self, account_id: i64, owner: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM maildrop_locks WHERE account_id = $1 AND owner = $2")
            .bind(account_id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// An entry's header prefix on its first chunk row (or its only row, content empty) and
/// nothing on the others: a large message's thousands of rows do not each carry it.
const FIRST_ROW_PREFIX: &str = "CASE WHEN c.seq IS NULL OR c.seq = 0 THEN e.header_prefix ELSE '\\x'::bytea END \
     AS header_prefix";

/// What `Store::maildrop_entries_headers` found.
#[derive(Debug, Default)]
pub struct HeaderBlocks {
    /// Entry ids and their header blocks.
    pub found: Vec<(i64, Vec<u8>)>,
    /// Entry ids and sizes (octets, as FETCH BODY[] sends them) of the entries whose header
    /// block did not end within their first stored row.
    pub longer: Vec<(i64, i64)>,
}

/// A row of `Store::maildrop_entries_headers`: an entry's prefix and the start of its first
/// chunk, through the header's empty line when `complete`.
#[derive(sqlx::FromRow)]
struct HeaderBlock {
    id: i64,
    message_id: i64,
    header_prefix: Vec<u8>,
    /// The content's size.
    size: i64,
    codec: Option<i16>,
    head: Option<Vec<u8>>,
    /// Whether a raw `head` holds the whole header block.
    complete: bool,
}

/// A row of `Store::entry_chunks`.
#[derive(sqlx::FromRow)]
struct EntryChunk {
    id: i64,
    message_id: i64,
    pop3_size: i64,
    header_prefix: Vec<u8>,
    seq: Option<i32>,
    codec: Option<i16>,
    data: Option<Vec<u8>>,
}

/// A row of `Store::maildrop_entry_part`: the entry's prefix and one chunk of the piece
/// (none: seq, codec and data are NULL).
#[derive(sqlx::FromRow)]
struct PartChunk {
    message_id: i64,
    header_prefix: Vec<u8>,
    seq: Option<i32>,
    codec: Option<i16>,
    data: Option<Vec<u8>>,
}

/// `Store::deliver_to_maildrop` on a given connection (or transaction).
/// In a transaction: locks the account row, and says `OverQuota` if the recipient's message
/// with `header_prefix` would take the maildrop past the account's quota (read under the lock).
async fn over_quota_on(
    conn: &mut PgConnection,
    recipient_id: i64,
    account_id: i64,
    header_prefix: &[u8],
) -> Result<Option<LocalDelivery>> {
    sqlx::query(ACCOUNT_TURN)
        .bind(account_id)
        .execute(&mut *conn)
        .await?;
    let row: Option<(Option<i64>, i64, Option<i64>)> = sqlx::query_as(QUOTA_USAGE)
        .bind(account_id)
        .bind(recipient_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some((Some(quota), used, Some(size))) => {
            let size = size + header_prefix.len() as i64;
            (used + size > quota).then_some(LocalDelivery::OverQuota { used, quota, size })
        }
        _ => None,
    })
}

async fn deliver_on(
    conn: &mut PgConnection,
    worker: &str,
    recipient_id: i64,
    account_id: i64,
    header_prefix: &[u8],
) -> Result<LocalDelivery> {
    let mut delivered = deliver_many_on(
        conn,
        worker,
        &[recipient_id],
        &[account_id],
        &[header_prefix],
    )
    .await?;
    Ok(delivered.remove(0))
}

/// `Store::deliver_many_to_maildrops` on a given connection: the i-th delivery is
/// `recipient_ids[i]` into `account_ids[i]` with `prefixes[i]`.
async fn deliver_many_on(
    conn: &mut PgConnection,
    worker: &str,
    recipient_ids: &[i64],
    account_ids: &[i64],
    prefixes: &[&[u8]],
) -> Result<Vec<LocalDelivery>> {
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "WITH wanted AS (
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::bytea[])
                     AS w (recipient_id, account_id, header_prefix)
             ), r AS (
                 -- Locked in id order, so two batches cannot deadlock.
                 SELECT r.id, e.message_id, w.account_id, w.header_prefix FROM recipients r
                 JOIN wanted w ON w.recipient_id = r.id
                 JOIN envelopes e ON e.id = r.envelope_id
                 -- IS TRUE: no partial index matches, so stale statistics cannot pick
                 -- one over the primary key (see queue.rs, RECORD_ATTEMPTS).
                 WHERE (r.state = 'queued') IS TRUE
                 ORDER BY r.id
                 FOR UPDATE OF r
             ), inbox AS (
                 -- Each INBOX's UIDs are taken under its row lock, so they rise in commit
                 -- order; the rows are locked in id order, so two batches cannot deadlock.
                 SELECT id, account_id FROM mailboxes
                 WHERE account_id IN (SELECT account_id FROM r) AND name = 'INBOX'
                 ORDER BY id
                 FOR UPDATE
             ), taken AS (
                 UPDATE mailboxes m SET uid_next = m.uid_next + n.count,
                     highest_modseq = m.highest_modseq + 1
                 FROM inbox i,
                     (SELECT account_id, count(*) FROM r GROUP BY account_id) n
                 WHERE m.id = i.id AND n.account_id = i.account_id
                 RETURNING m.id, m.account_id, m.uid_next - n.count AS first_uid,
                     m.highest_modseq
             ), entry AS (
                 INSERT INTO maildrop_entries (account_id, message_id, recipient_id,
                     header_prefix, pop3_size, mailbox_id, imap_uid, modseq)
                 SELECT r.account_id, m.id, r.id, r.header_prefix,
                     octet_length(r.header_prefix) + m.size, t.id,
                     t.first_uid - 1 + row_number() OVER (PARTITION BY r.account_id ORDER BY r.id),
                     t.highest_modseq
                 FROM r JOIN messages m ON m.id = r.message_id
                 JOIN taken t ON t.account_id = r.account_id
                 ORDER BY r.id
                 ON CONFLICT (recipient_id) DO NOTHING
                 RETURNING recipient_id, id, uid
             ), done AS (
                 UPDATE recipients SET state = 'delivered', attempts = attempts + 1,
                     last_attempt_at = now(), finished_at = now(),
                     last_reply_code = NULL, last_status = '2.0.0',
                     last_diagnostic = 'delivered to maildrop', last_remote_mta = NULL,
                     lease_owner = NULL, lease_expires_at = NULL
                 FROM r WHERE recipients.id = r.id
                     -- Never delivered without an entry: every account has an INBOX (made
                     -- with it, never deleted or renamed), and one without stays queued.
                     AND r.account_id IN (SELECT account_id FROM taken)
                 RETURNING recipients.id
             ), history AS (
                 INSERT INTO delivery_attempts (recipient_id, worker, status, diagnostic, result)
                 SELECT id, $4, '2.0.0', 'delivered to maildrop', 'delivered' FROM done
             ), announced AS (
                 -- Wakes IMAP sessions idling in these INBOXes, at commit.
                 SELECT count(pg_notify($5, id::text)) FROM taken
             )
             SELECT recipient_id, id, uid FROM entry, announced",
    )
    .bind(recipient_ids)
    .bind(account_ids)
    .bind(prefixes)
    .bind(worker)
    .bind(crate::MAILBOX_CHANNEL)
    .fetch_all(&mut *conn)
    .await?;
    let mut delivered: std::collections::HashMap<i64, (i64, String)> = rows
        .into_iter()
        .map(|(recipient_id, entry_id, uid)| (recipient_id, (entry_id, uid)))
        .collect();
    Ok(recipient_ids
        .iter()
        .map(|id| match delivered.remove(id) {
            Some((entry_id, uid)) => LocalDelivery::Delivered { entry_id, uid },
            None => LocalDelivery::AlreadyFinal,
        })
        .collect())
}
