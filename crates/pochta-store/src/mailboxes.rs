//! IMAP mailboxes (migration 0011): the folders of an account, the messages in each with their
//! UIDs, flags and mod-sequences, and the changes IMAP makes to them. INBOX is the maildrop POP3
//! sees; content is shared, so a copy or move never copies a message's octets.
//!
//! Lock order, so that no two of these can deadlock: the account's turn first (an advisory
//! lock, `ACCOUNT_TURN`, taken only by the paths that check its quota or limits), then
//! mailbox rows (in id order when there are two), then their entries. Local delivery and
//! POP3's QUIT keep the same order.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, Postgres, QueryBuilder};

use pochta_mail::header_search::SearchFields;

use crate::content::{Chunks, Rows, SearchColumns, decode_into};
use crate::maildrop::{ACCOUNT_TURN, ACCOUNT_USAGE};
use crate::{Result, Store, StoreError};

/// The PostgreSQL channel a change to a mailbox is announced on; the payload is the
/// mailbox id. imap-access listens on it (one connection per process) to wake idle sessions.
pub const MAILBOX_CHANNEL: &str = "pochta_mailbox";

/// The folders every account gets at its first IMAP login, with their special use (RFC 6154).
pub const SPECIAL_MAILBOXES: [(&str, &str); 4] = [
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
];

/// What IMAP's changes to one account's mailboxes may take (`Store::with_mailbox_limits`);
/// the account's quota applies to APPEND and COPY besides. The default limits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Mailboxes of one account, INBOX and the special-use folders included (those are made
    /// at login whatever this says).
    pub max_mailboxes: i64,
    /// Keywords (flags not beginning with `\`) on one message.
    pub max_keywords: usize,
    /// Octets of one keyword.
    pub max_keyword_length: usize,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            max_mailboxes: i64::MAX,
            max_keywords: usize::MAX,
            max_keyword_length: usize::MAX,
        }
    }
}

impl MailboxLimits {
    /// Refuses flags that hold a keyword too long, or more distinct keywords than a message
    /// may carry.
    fn check_keywords(&self, flags: &[String]) -> Result<()> {
        let keywords: std::collections::HashSet<&str> = flags
            .iter()
            .map(String::as_str)
            .filter(|f| !f.starts_with('\\'))
            .collect();
        if keywords.iter().any(|k| k.len() > self.max_keyword_length) {
            return Err(StoreError::KeywordTooLong(self.max_keyword_length));
        }
        if keywords.len() > self.max_keywords {
            return Err(StoreError::TooManyKeywords(self.max_keywords));
        }
        Ok(())
    }
}

/// An account's quota and what its mailboxes hold, read in its turn (`ACCOUNT_TURN`).
#[derive(Debug, Clone, Copy)]
struct Room {
    quota: i64,
    used: i64,
}

impl Room {
    /// `OverQuota` unless `adding` more octets fit.
    fn take(self, adding: i64) -> Result<()> {
        if self.used.saturating_add(adding) > self.quota {
            return Err(StoreError::OverQuota {
                quota: self.quota,
                used: self.used,
                adding,
            });
        }
        Ok(())
    }
}

/// For the account that owns `mailbox_id`, if it has a quota: takes its turn
/// (`ACCOUNT_TURN`, held to the end of the transaction) and reads its usage, in a statement
/// after the turn was granted so that it sees what the turn before committed.
/// None without a quota (nothing waits). `UnknownMailbox` if there is no such mailbox.
async fn room_on(conn: &mut PgConnection, mailbox_id: i64) -> Result<Option<Room>> {
    let account: Option<(i64, Option<i64>)> = sqlx::query_as(
        "SELECT a.id, a.quota_bytes FROM mailboxes m JOIN accounts a ON a.id = m.account_id
         WHERE m.id = $1",
    )
    .bind(mailbox_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((account_id, quota)) = account else {
        return Err(StoreError::UnknownMailbox(mailbox_id.to_string()));
    };
    let Some(quota) = quota else {
        return Ok(None);
    };
    sqlx::query(ACCOUNT_TURN)
        .bind(account_id)
        .execute(&mut *conn)
        .await?;
    let used: i64 = sqlx::query_scalar(ACCOUNT_USAGE)
        .bind(account_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some(Room { quota, used }))
}

/// One mailbox of an account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MailboxInfo {
    pub id: i64,
    pub name: String,
    pub special_use: Option<String>,
    pub subscribed: bool,
    pub uid_validity: i64,
    pub uid_next: i64,
    pub highest_modseq: i64,
    /// Its messages, their size and the unseen: the counters migration 18 keeps.
    pub messages: i64,
    pub messages_size: i64,
    pub unseen: i64,
}

/// One message in a mailbox, without its content.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MailboxMessage {
    /// The maildrop entry (the id content reads take).
    pub entry_id: i64,
    pub uid: i64,
    pub flags: Vec<String>,
    pub modseq: i64,
    /// RFC822.SIZE: the octets FETCH BODY[] sends.
    pub size: i64,
    pub internal_date: DateTime<Utc>,
}

/// A SEARCH over what is kept of each message besides its content (RFC 9051 6.4.4: the keys
/// about flags, sizes, internal dates, UIDs and mod-sequences, and about the header fields
/// kept for search), evaluated by PostgreSQL so that only the matches leave it. A key about a
/// header field is unknown for a message whose fields were not kept (SQL's NULL, which AND,
/// OR and NOT carry as the logic of unknowns says): such a message is returned undecided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageFilter {
    All,
    And(Vec<MessageFilter>),
    Or(Box<MessageFilter>, Box<MessageFilter>),
    Not(Box<MessageFilter>),
    /// Has this flag: a system flag as stored (`\Seen`), a keyword in any case.
    Flag(String),
    Larger(i64),
    Smaller(i64),
    /// The internal date's day (UTC) is before, on, or on or after this one.
    Before(NaiveDate),
    On(NaiveDate),
    Since(NaiveDate),
    /// The UID is within one of these inclusive ranges.
    Uids(Vec<(i64, i64)>),
    ModSeqAtLeast(i64),
    /// The field's kept text contains this string (folded here as
    /// `pochta_mail::header_search::fold` says).
    FieldContains(SearchField, String),
    /// The Date: field's day is before, on, or on or after this one (false without one).
    SentBefore(NaiveDate),
    SentOn(NaiveDate),
    SentSince(NaiveDate),
}

/// The header fields kept for SEARCH (migration 0014).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchField {
    Subject,
    From,
    To,
    Cc,
    Bcc,
}

impl SearchField {
    fn column(self) -> &'static str {
        match self {
            SearchField::Subject => "m.search_subject",
            SearchField::From => "m.search_from",
            SearchField::To => "m.search_to",
            SearchField::Cc => "m.search_cc",
            SearchField::Bcc => "m.search_bcc",
        }
    }
}

impl MessageFilter {
    /// Does evaluating it read the message's kept header fields?
    fn reads_fields(&self) -> bool {
        match self {
            MessageFilter::And(all) => all.iter().any(MessageFilter::reads_fields),
            MessageFilter::Or(a, b) => a.reads_fields() || b.reads_fields(),
            MessageFilter::Not(f) => f.reads_fields(),
            MessageFilter::FieldContains(..)
            | MessageFilter::SentBefore(_)
            | MessageFilter::SentOn(_)
            | MessageFilter::SentSince(_) => true,
            _ => false,
        }
    }
}

/// What a SEARCH found: the messages it matched and those it may match (only their octets
/// can tell), each by UID, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchResult {
    pub matched: Vec<i64>,
    pub undecided: Vec<i64>,
    /// The highest mod-sequence among `matched` (0: none), for CONDSTORE's (MODSEQ n).
    pub highest_modseq: i64,
}

/// What one `Store::backfill_search_fields` batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchFieldsBackfill {
    /// The highest message id looked at, where the next batch starts; None: none was left.
    pub last_id: Option<i64>,
    /// Messages whose fields are kept now.
    pub kept: u64,
    /// Messages whose fields are too long to keep.
    pub passed_over: u64,
}

/// Appends the statement `Store::mailbox_search` runs: one row of the matching UIDs, the
/// undecided ones and the matches' highest mod-sequence.
fn push_search(query: &mut QueryBuilder<Postgres>, mailbox_id: i64, filter: &MessageFilter) {
    if filter.reads_fields() {
        // The filter is NULL where a field it reads was not kept: such messages are
        // returned undecided.
        query.push(
            "SELECT coalesce(array_agg(uid) FILTER (WHERE hit), '{}'),
                        coalesce(array_agg(uid) FILTER (WHERE hit IS NULL), '{}'),
                        coalesce(max(modseq) FILTER (WHERE hit), 0)
                 FROM (SELECT e.imap_uid AS uid, e.modseq, ",
        );
        push_filter(query, filter);
        query
            .push(
                " AS hit FROM maildrop_entries e JOIN messages m ON m.id = e.message_id
                     WHERE e.mailbox_id = ",
            )
            .push_bind(mailbox_id)
            .push(") s WHERE hit IS NOT FALSE");
    } else {
        // Never NULL: every column it reads is NOT NULL.
        query.push(
            "SELECT coalesce(array_agg(e.imap_uid), '{}'), '{}'::bigint[],
                        coalesce(max(e.modseq), 0)",
        );
        push_entries_matching(query, mailbox_id, filter);
    }
}

/// ` FROM` the mailbox's entries that match a filter reading no kept header field.
fn push_entries_matching(
    query: &mut QueryBuilder<Postgres>,
    mailbox_id: i64,
    filter: &MessageFilter,
) {
    query
        .push(" FROM maildrop_entries e WHERE e.mailbox_id = ")
        .push_bind(mailbox_id)
        .push(" AND ");
    push_filter(query, filter);
}

/// `Store::mailbox_counts` without the \Deleted counts: the counters kept on the mailbox's
/// row (migration 18's triggers), one row read whatever the mailbox holds.
const COUNTS: &str = "SELECT messages, unseen, NULL::bigint AS deleted, messages_size AS size,
        NULL::bigint AS deleted_size
    FROM mailboxes WHERE id = $1";

/// `Store::mailbox_counts` with them: one pass over the mailbox's entries.
const COUNTS_WITH_DELETED: &str = "SELECT count(*) AS messages,
        count(*) FILTER (WHERE NOT '\\Seen' = ANY (flags)) AS unseen,
        count(*) FILTER (WHERE '\\Deleted' = ANY (flags)) AS deleted,
        coalesce(sum(pop3_size), 0)::bigint AS size,
        coalesce(sum(pop3_size) FILTER (WHERE '\\Deleted' = ANY (flags)), 0)::bigint
            AS deleted_size
    FROM maildrop_entries WHERE mailbox_id = $1";

/// `Store::mailbox_counts`' statement, with or without the \Deleted counts.
fn counts_statement(deleted: bool) -> &'static str {
    if deleted { COUNTS_WITH_DELETED } else { COUNTS }
}

/// The system flags (RFC 9051 2.3.2) as stored; none holds a quote.
const SYSTEM_FLAGS: [&str; 5] = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"];

/// Appends `filter` as a condition on `e` (a `maildrop_entries` row); every value is bound
/// but the names of system flags.
fn push_filter(query: &mut QueryBuilder<Postgres>, filter: &MessageFilter) {
    match filter {
        MessageFilter::All => {
            query.push("TRUE");
        }
        MessageFilter::And(all) if all.is_empty() => {
            query.push("TRUE");
        }
        MessageFilter::And(all) => {
            query.push("(");
            for (i, f) in all.iter().enumerate() {
                if i > 0 {
                    query.push(" AND ");
                }
                push_filter(query, f);
            }
            query.push(")");
        }
        MessageFilter::Or(a, b) => {
            query.push("(");
            push_filter(query, a);
            query.push(" OR ");
            push_filter(query, b);
            query.push(")");
        }
        MessageFilter::Not(f) => {
            query.push("NOT ");
            push_filter(query, f);
        }
        // A literal, not a bound value: the planner matches it against the predicate of
        // the index of unseen entries (migration 0015), whatever plan the statement keeps.
        MessageFilter::Flag(flag) if SYSTEM_FLAGS.contains(&flag.as_str()) => {
            query.push(format_args!("('{flag}' = ANY (e.flags))"));
        }
        MessageFilter::Flag(flag) if flag.starts_with('\\') => {
            query
                .push("(")
                .push_bind(flag.clone())
                .push(" = ANY (e.flags))");
        }
        MessageFilter::Flag(keyword) => {
            query
                .push("EXISTS (SELECT 1 FROM unnest(e.flags) f WHERE lower(f) = lower(")
                .push_bind(keyword.clone())
                .push("))");
        }
        MessageFilter::Larger(n) => {
            query.push("(e.pop3_size > ").push_bind(*n).push(")");
        }
        MessageFilter::Smaller(n) => {
            query.push("(e.pop3_size < ").push_bind(*n).push(")");
        }
        MessageFilter::Before(day) | MessageFilter::On(day) | MessageFilter::Since(day) => {
            let op = match filter {
                MessageFilter::Before(_) => " < ",
                MessageFilter::On(_) => " = ",
                _ => " >= ",
            };
            query
                .push("((e.delivered_at AT TIME ZONE 'UTC')::date")
                .push(op)
                .push_bind(*day)
                .push(")");
        }
        MessageFilter::Uids(ranges) => {
            let (lo, hi): (Vec<i64>, Vec<i64>) = ranges.iter().copied().unzip();
            query
                .push("EXISTS (SELECT 1 FROM unnest(")
                .push_bind(lo)
                .push("::bigint[], ")
                .push_bind(hi)
                .push("::bigint[]) r(lo, hi) WHERE e.imap_uid BETWEEN r.lo AND r.hi)");
        }
        MessageFilter::ModSeqAtLeast(n) => {
            query.push("(e.modseq >= ").push_bind(*n).push(")");
        }
        // `m` is the entry's `messages` row; NULL (unknown) where its fields were not kept.
        MessageFilter::FieldContains(field, needle) => {
            query
                .push("(CASE WHEN m.search_fields THEN coalesce(strpos(")
                .push(field.column())
                .push(", ")
                .push_bind(pochta_mail::header_search::fold(needle.as_bytes()))
                .push(") > 0, false) END)");
        }
        MessageFilter::SentBefore(day)
        | MessageFilter::SentOn(day)
        | MessageFilter::SentSince(day) => {
            let op = match filter {
                MessageFilter::SentBefore(_) => " < ",
                MessageFilter::SentOn(_) => " = ",
                _ => " >= ",
            };
            query
                .push("(CASE WHEN m.search_fields THEN coalesce(m.search_sent_on")
                .push(op)
                .push_bind(*day)
                .push(", false) END)");
        }
    }
}

/// What STATUS reports about a mailbox (RFC 9051 6.3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct MailboxCounts {
    pub messages: i64,
    pub unseen: i64,
    /// None: not asked for.
    pub deleted: Option<i64>,
    pub size: i64,
    /// Octets an EXPUNGE would free: the \Deleted messages' sizes (None: not asked for).
    pub deleted_size: Option<i64>,
}

/// How STORE changes flags (RFC 9051 6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagChange {
    Add,
    Remove,
    Replace,
}

/// What a flag change did: the messages it changed (with their new flags and mod-sequence),
/// and the UIDs it left alone because they changed after UNCHANGEDSINCE (RFC 7162 3.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlagsStored {
    pub changed: Vec<MailboxMessage>,
    pub modified: Vec<i64>,
}

/// Where an appended or copied message went (RFC 4315 APPENDUID / COPYUID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub uid_validity: i64,
    /// (source UID, new UID) for a copy; (0, new UID) for an append.
    pub uids: Vec<(i64, i64)>,
}

const MAILBOX_COLUMNS: &str = "id, name, special_use, subscribed, uid_validity, uid_next, \
     highest_modseq, messages, messages_size, unseen";
/// Over `maildrop_entries e`.
const MESSAGE_COLUMNS: &str = "e.id AS entry_id, e.imap_uid AS uid, e.flags, e.modseq, \
     e.pop3_size AS size, e.delivered_at AS internal_date";

/// What a process's listening connection heard (`Store::listen_for_mailbox_changes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxChange {
    /// This mailbox changed (a delivery, an expunge, flags, a copy or append into it).
    Changed(i64),
    /// The connection was lost and made again: changes in between were not heard, so every
    /// session must look at its mailbox again.
    Missed,
}

/// One process's LISTEN connection on `MAILBOX_CHANNEL` (not one per session: a process
/// passes what it hears to its own sessions).
pub struct MailboxChanges {
    listener: PgListener,
}

impl MailboxChanges {
    /// Waits for the next change. A notification whose payload is not a mailbox id (none of
    /// ours) is skipped.
    pub async fn next(&mut self) -> Result<MailboxChange> {
        loop {
            let Some(heard) = self.listener.try_recv().await? else {
                return Ok(MailboxChange::Missed);
            };
            if let Ok(id) = heard.payload().parse() {
                return Ok(MailboxChange::Changed(id));
            }
        }
    }
}

impl Store {
    /// Opens the process's listening connection for mailbox changes (its own connection,
    /// beside the pool; made again by `MailboxChanges::next` when lost).
    pub async fn listen_for_mailbox_changes(&self) -> Result<MailboxChanges> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(MAILBOX_CHANNEL).await?;
        Ok(MailboxChanges { listener })
    }

    /// Makes INBOX and each special-use folder the account has none for (at IMAP login; one
    /// the user deleted comes back, as with Dovecot's auto-created folders).
    pub async fn ensure_default_mailboxes(&self, account_id: i64) -> Result<()> {
        let names: Vec<&str> = SPECIAL_MAILBOXES.iter().map(|(n, _)| *n).collect();
        let uses: Vec<&str> = SPECIAL_MAILBOXES.iter().map(|(_, u)| *u).collect();
        sqlx::query(
            "INSERT INTO mailboxes (account_id, name, special_use)
             SELECT $1, name, special_use FROM (
                 SELECT 'INBOX' AS name, NULL AS special_use
                 UNION ALL SELECT * FROM unnest($2::text[], $3::text[])) AS d
             WHERE NOT EXISTS (SELECT 1 FROM mailboxes m WHERE m.account_id = $1
                               AND (m.name = d.name OR m.special_use = d.special_use))
             ON CONFLICT (account_id, name) DO NOTHING",
        )
        .bind(account_id)
        .bind(&names)
        .bind(&uses)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The mailboxes of an account, by name.
    pub async fn list_mailboxes(&self, account_id: i64) -> Result<Vec<MailboxInfo>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = $1 ORDER BY name"
        )))
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One mailbox of an account by its exact name, or None.
    pub async fn mailbox(&self, account_id: i64, name: &str) -> Result<Option<MailboxInfo>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = $1 AND name = $2"
        )))
        .bind(account_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A mailbox as it is now, by id (its UIDNEXT and HIGHESTMODSEQ move), or None if deleted.
    pub async fn mailbox_by_id(&self, mailbox_id: i64) -> Result<Option<MailboxInfo>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = $1"
        )))
        .bind(mailbox_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A mailbox's counts (STATUS); those of \Deleted messages only when asked for: they
    /// read every entry's flags, where the rest are counters on the mailbox's row (migration
    /// 0018).
    pub async fn mailbox_counts(&self, mailbox_id: i64, deleted: bool) -> Result<MailboxCounts> {
        Ok(sqlx::query_as(counts_statement(deleted))
            .bind(mailbox_id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The plan of `mailbox_counts`' statement, for tests that watch which indexes it reads.
    pub async fn explain_mailbox_counts(&self, mailbox_id: i64, deleted: bool) -> Result<String> {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "{}{}",
            crate::EXPLAIN,
            counts_statement(deleted)
        )))
        .bind(mailbox_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(plan.join("\n"))
    }

    /// Every message of a mailbox in UID order: the snapshot SELECT starts from.
    pub async fn mailbox_messages(&self, mailbox_id: i64) -> Result<Vec<MailboxMessage>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM maildrop_entries e WHERE mailbox_id = $1
             ORDER BY imap_uid"
        )))
        .bind(mailbox_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The messages of a mailbox that `filter` matches or, where it reads header fields the
    /// store did not keep, may match.
    pub async fn mailbox_search(
        &self,
        mailbox_id: i64,
        filter: &MessageFilter,
    ) -> Result<SearchResult> {
        // One row of arrays, unordered (sorted here if need be): on a large mailbox, decoding
        // a row per match and PostgreSQL's sort cost more than the search itself, and each
        // array more aggregated costs about as much again (BENCHMARKS.md, IMAP SEARCH).
        let mut query = QueryBuilder::new("");
        push_search(&mut query, mailbox_id, filter);
        let (mut matched, mut undecided, highest_modseq): (Vec<i64>, Vec<i64>, i64) =
            query.build_query_as().fetch_one(&self.pool).await?;
        // A scan in UID order (the usual plan) needs no sorting.
        for uids in [&mut matched, &mut undecided] {
            if !uids.is_sorted() {
                uids.sort_unstable();
            }
        }
        Ok(SearchResult {
            matched,
            undecided,
            highest_modseq,
        })
    }

    /// How many messages of a mailbox match a filter that reads no kept header field, and
    /// their highest mod-sequence (0: none): ESEARCH's COUNT without the UIDs leaving the
    /// store. A filter that reads header fields is refused (`InvalidFilter`): some messages
    /// may be undecided, which only `mailbox_search` can tell.
    pub async fn mailbox_search_count(
        &self,
        mailbox_id: i64,
        filter: &MessageFilter,
    ) -> Result<(i64, i64)> {
        if filter.reads_fields() {
            return Err(StoreError::InvalidFilter(
                "a count cannot decide filters on header fields",
            ));
        }
        let mut query = QueryBuilder::new("SELECT count(*), coalesce(max(e.modseq), 0)");
        push_entries_matching(&mut query, mailbox_id, filter);
        Ok(query.build_query_as().fetch_one(&self.pool).await?)
    }

    /// Keeps the search fields (migration 0014) of up to `limit` messages in mailboxes that
    /// were stored without them (before the migration, or by an older replica), taking those
    /// with ids above `after`. Idempotent, and safe beside the services: a message's fields
    /// come from its content, which never changes. Messages whose fields are too long to
    /// keep are passed over (they are searched in their octets, as before).
    pub async fn backfill_search_fields(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<SearchFieldsBackfill> {
        // Id, size, and the first chunk's codec and octets: a message's header is read
        // whole only when it goes on beyond its first chunk.
        type FirstChunk = (i64, i64, Option<i16>, Option<Vec<u8>>);
        let rows: Vec<FirstChunk> = sqlx::query_as(
            "SELECT m.id, m.size, c.codec, c.data FROM messages m
             LEFT JOIN message_chunks c ON c.message_id = m.id AND c.seq = 0
             WHERE m.id > $1 AND NOT m.search_fields AND m.content_collected_at IS NULL
               AND EXISTS (SELECT 1 FROM maildrop_entries e WHERE e.message_id = m.id)
             ORDER BY m.id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut done = SearchFieldsBackfill {
            last_id: rows.last().map(|r| r.0),
            ..SearchFieldsBackfill::default()
        };
        let mut ids = Vec::new();
        let mut fields = Vec::new();
        for (id, size, codec, data) in rows {
            let mut head = Vec::new();
            if let (Some(codec), Some(data)) = (codec, data) {
                decode_into(&mut head, id, codec, &data)?;
            }
            let complete =
                memchr::memmem::find(&head, b"\r\n\r\n").is_some() || head.len() as i64 >= size;
            if !complete {
                match self.message_content(id).await? {
                    Some(whole) => head = whole,
                    None => continue,
                }
            }
            match SearchFields::of(&head) {
                Some(f) => {
                    ids.push(id);
                    fields.push(f);
                }
                None => done.passed_over += 1,
            }
        }
        let columns = SearchColumns::of(fields.iter().map(Some));
        done.kept = sqlx::query(
            "UPDATE messages m SET search_fields = true, search_subject = u.subject,
                 search_from = u.from_, search_to = u.to_, search_cc = u.cc,
                 search_bcc = u.bcc, search_sent_on = u.sent_on
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::date[]) AS u (id, subject, from_, to_, cc, bcc, sent_on)
             WHERE m.id = u.id AND NOT m.search_fields",
        )
        .bind(&ids)
        .bind(&columns.subject)
        .bind(&columns.from)
        .bind(&columns.to)
        .bind(&columns.cc)
        .bind(&columns.bcc)
        .bind(&columns.sent_on)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done)
    }

    /// The plan of `mailbox_search`'s statement, for tests that watch which index it reads.
    pub async fn explain_mailbox_search(
        &self,
        mailbox_id: i64,
        filter: &MessageFilter,
    ) -> Result<String> {
        let mut query = QueryBuilder::new(crate::EXPLAIN);
        push_search(&mut query, mailbox_id, filter);
        let plan: Vec<String> = query.build_query_scalar().fetch_all(&self.pool).await?;
        Ok(plan.join("\n"))
    }

    /// The UIDs of a mailbox, ascending: all a selecting session keeps.
    pub async fn mailbox_uids(&self, mailbox_id: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT imap_uid FROM maildrop_entries WHERE mailbox_id = $1 ORDER BY imap_uid",
        )
        .bind(mailbox_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The messages of a mailbox with these UIDs (ascending), in UID order (those gone are
    /// left out). A dense set (most of its range, as `1:*` is) is read as one index range and
    /// filtered here: matching thousands of rows against an array costs more than reading
    /// them.
    pub async fn mailbox_messages_by_uid(
        &self,
        mailbox_id: i64,
        uids: &[i64],
    ) -> Result<Vec<MailboxMessage>> {
        let (Some(&first), Some(&last)) = (uids.iter().min(), uids.iter().max()) else {
            return Ok(Vec::new());
        };
        let dense = (uids.len() as i64).saturating_mul(2) > last - first;
        if !dense {
            return Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {MESSAGE_COLUMNS} FROM maildrop_entries e
                 WHERE mailbox_id = $1 AND imap_uid = ANY ($2) ORDER BY imap_uid"
            )))
            .bind(mailbox_id)
            .bind(uids)
            .fetch_all(&self.pool)
            .await?);
        }
        let mut wanted = uids.to_vec();
        wanted.sort_unstable();
        let rows: Vec<MailboxMessage> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM maildrop_entries e
             WHERE mailbox_id = $1 AND imap_uid BETWEEN $2 AND $3 ORDER BY imap_uid"
        )))
        .bind(mailbox_id)
        .bind(first)
        .bind(last)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter(|m| wanted.binary_search(&m.uid).is_ok())
            .collect())
    }

    /// What changed in a mailbox since a session last looked: the messages whose mod-sequence
    /// is above `since_modseq` (new or with new flags), and the UIDs of all messages now there
    /// up to `known_uid_max` (those missing from the session's view were expunged).
    pub async fn mailbox_changes(
        &self,
        mailbox_id: i64,
        since_modseq: i64,
        known_uid_max: i64,
    ) -> Result<(Vec<MailboxMessage>, Vec<i64>)> {
        let changed = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM maildrop_entries e
             WHERE mailbox_id = $1 AND modseq > $2 ORDER BY imap_uid"
        )))
        .bind(mailbox_id)
        .bind(since_modseq)
        .fetch_all(&self.pool)
        .await?;
        let present = sqlx::query_scalar(
            "SELECT imap_uid FROM maildrop_entries WHERE mailbox_id = $1 AND imap_uid <= $2
             ORDER BY imap_uid",
        )
        .bind(mailbox_id)
        .bind(known_uid_max)
        .fetch_all(&self.pool)
        .await?;
        Ok((changed, present))
    }

    /// Makes a mailbox, and the levels above it that do not exist yet (RFC 9051 6.3.4: "a/b"
    /// makes "a" too); `MailboxExists` if the account has one of that name.
    pub async fn create_mailbox(
        &self,
        account_id: i64,
        name: &str,
        special_use: Option<&str>,
    ) -> Result<MailboxInfo> {
        let mut tx = self.pool.begin().await?;
        let limit = self.mailbox_limits.max_mailboxes;
        let made = create_on(&mut tx, account_id, name, special_use, limit).await?;
        tx.commit().await?;
        Ok(made)
    }

    /// Deletes a mailbox and the messages in it. False if there is none of that name. INBOX
    /// is never deleted (RFC 9051 6.3.5; local delivery needs it).
    pub async fn delete_mailbox(&self, account_id: i64, name: &str) -> Result<bool> {
        if name == "INBOX" {
            return Err(StoreError::InboxFixed);
        }
        let done = sqlx::query("DELETE FROM mailboxes WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Renames a mailbox and its children (`from/...` becomes `to/...`), keeping their
    /// messages and UIDVALIDITY. False if `from` does not exist; `MailboxExists` if a new
    /// name is taken. Renaming INBOX makes a new mailbox `to` and moves every message of
    /// INBOX into it, leaving INBOX (and its children) where they are (RFC 9051 6.3.6), in
    /// one transaction. Nothing is renamed to INBOX.
    pub async fn rename_mailbox(&self, account_id: i64, from: &str, to: &str) -> Result<bool> {
        if to == "INBOX" {
            return Err(StoreError::InboxFixed);
        }
        if from == "INBOX" {
            return self.rename_inbox(account_id, to).await;
        }
        let done = sqlx::query(
            "UPDATE mailboxes SET name = $3 || substr(name, length($2) + 1)
             WHERE account_id = $1 AND (name = $2 OR starts_with(name, $2 || '/'))",
        )
        .bind(account_id)
        .bind(from)
        .bind(to)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if StoreError::is_unique_violation(&e) {
                StoreError::MailboxExists(to.to_owned())
            } else {
                StoreError::from(e)
            }
        })?;
        Ok(done.rows_affected() > 0)
    }

    async fn rename_inbox(&self, account_id: i64, to: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let inbox: Option<i64> =
            sqlx::query_scalar("SELECT id FROM mailboxes WHERE account_id = $1 AND name = 'INBOX'")
                .bind(account_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(inbox) = inbox else {
            return Ok(false);
        };
        let limit = self.mailbox_limits.max_mailboxes;
        let made = create_on(&mut tx, account_id, to, None, limit).await?;
        copy_on(&mut tx, inbox, None, made.id, true, None).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// SUBSCRIBE / UNSUBSCRIBE. False if there is no mailbox of that name.
    pub async fn set_subscribed(&self, account_id: i64, name: &str, on: bool) -> Result<bool> {
        let done =
            sqlx::query("UPDATE mailboxes SET subscribed = $3 WHERE account_id = $1 AND name = $2")
                .bind(account_id)
                .bind(name)
                .bind(on)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// STORE: changes the flags of the messages with these UIDs, giving each one it changed
    /// the mailbox's next mod-sequence. With `unchanged_since`, a message whose mod-sequence
    /// is above it is left alone and reported (RFC 7162 3.1.3).
    pub async fn store_flags(
        &self,
        mailbox_id: i64,
        uids: &[i64],
        change: FlagChange,
        flags: &[String],
        unchanged_since: Option<i64>,
    ) -> Result<FlagsStored> {
        self.keywords_fit(mailbox_id, uids, change, flags).await?;
        let mut tx = self.pool.begin().await?;
        let modseq = bump_modseq(&mut tx, mailbox_id).await?;
        let changed: Vec<MailboxMessage> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH target AS (
                 SELECT id, CASE $3
                     WHEN 'add' THEN ARRAY(SELECT DISTINCT f FROM unnest(flags || $4) f ORDER BY f)
                     WHEN 'remove' THEN ARRAY(SELECT f FROM unnest(flags) f
                                              WHERE NOT f = ANY ($4) ORDER BY f)
                     ELSE ARRAY(SELECT DISTINCT f FROM unnest($4::text[]) f ORDER BY f)
                 END AS new_flags
                 FROM maildrop_entries
                 WHERE mailbox_id = $1 AND imap_uid = ANY ($2)
                   AND ($6::int8 IS NULL OR modseq <= $6)
             )
             UPDATE maildrop_entries e SET flags = t.new_flags, modseq = $5
             FROM target t
             WHERE e.id = t.id AND e.flags IS DISTINCT FROM t.new_flags
             RETURNING {MESSAGE_COLUMNS}"
        )))
        .bind(mailbox_id)
        .bind(uids)
        .bind(match change {
            FlagChange::Add => "add",
            FlagChange::Remove => "remove",
            FlagChange::Replace => "replace",
        })
        .bind(flags)
        .bind(modseq)
        .bind(unchanged_since)
        .fetch_all(&mut *tx)
        .await?;
        let modified = match unchanged_since {
            Some(since) => {
                sqlx::query_scalar(
                    "SELECT imap_uid FROM maildrop_entries
                     WHERE mailbox_id = $1 AND imap_uid = ANY ($2) AND modseq > $3 AND modseq <> $4
                     ORDER BY imap_uid",
                )
                .bind(mailbox_id)
                .bind(uids)
                .bind(since)
                .bind(modseq)
                .fetch_all(&mut *tx)
                .await?
            }
            None => Vec::new(),
        };
        if changed.is_empty() {
            // Nothing changed: the mod-sequence taken is given back.
            tx.rollback().await?;
        } else {
            notify(&mut tx, mailbox_id).await?;
            tx.commit().await?;
        }
        let mut changed = changed;
        changed.sort_by_key(|m| m.uid);
        Ok(FlagsStored { changed, modified })
    }

    /// Refuses a flag change that would leave a message with a keyword too long or more
    /// keywords than the limits allow (taking flags away never does). Adding keywords reads
    /// the messages' own; a change that races another may pass the limit by what the two add
    /// together.
    async fn keywords_fit(
        &self,
        mailbox_id: i64,
        uids: &[i64],
        change: FlagChange,
        flags: &[String],
    ) -> Result<()> {
        if change == FlagChange::Remove {
            return Ok(());
        }
        let limits = self.mailbox_limits;
        limits.check_keywords(flags)?;
        let adds_keywords = flags.iter().any(|f| !f.starts_with('\\'));
        if change != FlagChange::Add || !adds_keywords || limits.max_keywords == usize::MAX {
            return Ok(());
        }
        let over: bool = sqlx::query_scalar(
            "SELECT EXISTS (
                 SELECT 1 FROM maildrop_entries
                 WHERE mailbox_id = $1 AND imap_uid = ANY ($2)
                   AND (SELECT count(DISTINCT f) FROM unnest(flags || $3::text[]) f
                        WHERE NOT starts_with(f, '\\')) > $4)",
        )
        .bind(mailbox_id)
        .bind(uids)
        .bind(flags)
        .bind(i64::try_from(limits.max_keywords).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await?;
        match over {
            true => Err(StoreError::TooManyKeywords(limits.max_keywords)),
            false => Ok(()),
        }
    }

    /// EXPUNGE / UID EXPUNGE: removes the messages flagged `\Deleted` (of `uids` only, if
    /// given). Returns the UIDs removed, ascending.
    pub async fn expunge(&self, mailbox_id: i64, uids: Option<&[i64]>) -> Result<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        bump_modseq(&mut tx, mailbox_id).await?;
        let mut gone: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM maildrop_entries
             WHERE mailbox_id = $1 AND '\\Deleted' = ANY (flags)
               AND ($2::int8[] IS NULL OR imap_uid = ANY ($2))
             RETURNING imap_uid",
        )
        .bind(mailbox_id)
        .bind(uids)
        .fetch_all(&mut *tx)
        .await?;
        if gone.is_empty() {
            // Nothing expunged: the mod-sequence taken is given back.
            tx.rollback().await?;
            return Ok(gone);
        }
        notify(&mut tx, mailbox_id).await?;
        tx.commit().await?;
        gone.sort_unstable();
        Ok(gone)
    }

    /// COPY (and with `remove_source`, MOVE, RFC 6851): puts the messages with these UIDs into
    /// another mailbox of the same account, flags kept, content shared. Atomic: all or none.
    /// A copy counts against the account's quota as much as its messages' sizes, though
    /// their content is shared (`OverQuota`): what POP3 STAT and the quota count is per entry.
    pub async fn copy_messages(
        &self,
        from_mailbox: i64,
        uids: &[i64],
        to_mailbox: i64,
        remove_source: bool,
    ) -> Result<Placed> {
        let mut tx = self.pool.begin().await?;
        // A move adds nothing to the account; a copy is held to its quota.
        let room = match remove_source {
            true => None,
            false => room_on(&mut tx, to_mailbox).await?,
        };
        let placed = copy_on(
            &mut tx,
            from_mailbox,
            Some(uids),
            to_mailbox,
            remove_source,
            room,
        )
        .await?;
        tx.commit().await?;
        Ok(placed)
    }

    /// APPEND: stores a new message in a mailbox with these flags and internal date, if it
    /// fits the account's quota (`OverQuota`) and its keywords the limits.
    pub async fn append_message(
        &self,
        mailbox_id: i64,
        content: &[u8],
        flags: &[String],
        internal_date: Option<DateTime<Utc>>,
    ) -> Result<Placed> {
        self.mailbox_limits.check_keywords(flags)?;
        let rows = Rows::of(content, self.compression, true);
        let chunks = Chunks::of(&[(content, &rows)]);
        let search = SearchColumns::of(std::iter::once(rows.search.as_ref()));
        let mut tx = self.pool.begin().await?;
        if let Some(room) = room_on(&mut tx, mailbox_id).await? {
            room.take(content.len() as i64)?;
        }
        let row: Option<(i64, i64)> = sqlx::query_as(
            "WITH box AS (
                 UPDATE mailboxes SET uid_next = uid_next + 1,
                     highest_modseq = highest_modseq + 1
                 WHERE id = $1
                 RETURNING account_id, uid_next - 1 AS uid, highest_modseq, uid_validity
             ), message AS (
                 INSERT INTO messages (size, search_fields, search_subject, search_from,
                     search_to, search_cc, search_bcc, search_sent_on)
                 SELECT $2, f.* FROM box, unnest($8::bool[], $9::text[], $10::text[],
                     $11::text[], $12::text[], $13::text[], $14::date[]) f
                 RETURNING id
             ), chunks AS (
                 INSERT INTO message_chunks (message_id, seq, data, codec)
                 SELECT m.id, c.seq, c.data, c.codec FROM message m,
                     unnest($3::int4[], $4::bytea[], $7::int2[]) AS c (seq, data, codec)
             ), entry AS (
                 INSERT INTO maildrop_entries (account_id, message_id, header_prefix, pop3_size,
                     delivered_at, mailbox_id, imap_uid, flags, modseq)
                 SELECT b.account_id, m.id, ''::bytea, $2, coalesce($6, now()), $1, b.uid,
                     ARRAY(SELECT DISTINCT f FROM unnest($5::text[]) f ORDER BY f),
                     b.highest_modseq
                 FROM box b, message m
             )
             SELECT uid_validity, uid FROM box",
        )
        .bind(mailbox_id)
        .bind(content.len() as i64)
        .bind(&chunks.seqs)
        .bind(&chunks.data)
        .bind(flags)
        .bind(internal_date)
        .bind(&chunks.codecs)
        .bind(&search.kept)
        .bind(&search.subject)
        .bind(&search.from)
        .bind(&search.to)
        .bind(&search.cc)
        .bind(&search.bcc)
        .bind(&search.sent_on)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((uid_validity, uid)) = row else {
            return Err(StoreError::UnknownMailbox(mailbox_id.to_string()));
        };
        notify(&mut tx, mailbox_id).await?;
        tx.commit().await?;
        Ok(Placed {
            uid_validity,
            uids: vec![(0, uid)],
        })
    }
}

/// Locks a mailbox and takes its next mod-sequence.
async fn bump_modseq(conn: &mut PgConnection, mailbox_id: i64) -> Result<i64> {
    sqlx::query_scalar(
        "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1
         RETURNING highest_modseq",
    )
    .bind(mailbox_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::UnknownMailbox(mailbox_id.to_string()))
}

/// Announces a change to a mailbox at commit (`MAILBOX_CHANNEL`).
async fn notify(conn: &mut PgConnection, mailbox_id: i64) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(MAILBOX_CHANNEL)
        .bind(mailbox_id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `Store::create_mailbox` in a transaction: the mailbox and any missing parents.
/// With `max_mailboxes` below `i64::MAX`, the account's turn is taken (creations wait for
/// each other) and `TooManyMailboxes` refuses a mailbox that, with its missing parents, would take
/// the account past it.
async fn create_on(
    tx: &mut PgConnection,
    account_id: i64,
    name: &str,
    special_use: Option<&str>,
    max_mailboxes: i64,
) -> Result<MailboxInfo> {
    let parents: Vec<&str> = name.match_indices('/').map(|(at, _)| &name[..at]).collect();
    if max_mailboxes < i64::MAX {
        sqlx::query(ACCOUNT_TURN)
            .bind(account_id)
            .execute(&mut *tx)
            .await?;
        // After the turn, in a statement of its own: it sees the turns before it.
        let after: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM mailboxes WHERE account_id = $1)
                  + (SELECT count(*) FROM unnest($2::text[]) n
                     WHERE NOT EXISTS (SELECT 1 FROM mailboxes m
                                       WHERE m.account_id = $1 AND m.name = n))",
        )
        .bind(account_id)
        .bind(parents.iter().copied().chain([name]).collect::<Vec<_>>())
        .fetch_one(&mut *tx)
        .await?;
        if after > max_mailboxes {
            return Err(StoreError::TooManyMailboxes(max_mailboxes));
        }
    }
    sqlx::query(
        "INSERT INTO mailboxes (account_id, name) SELECT $1, unnest($2::text[])
         ON CONFLICT (account_id, name) DO NOTHING",
    )
    .bind(account_id)
    .bind(&parents)
    .execute(&mut *tx)
    .await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO mailboxes (account_id, name, special_use) VALUES ($1, $2, $3)
         RETURNING {MAILBOX_COLUMNS}"
    )))
    .bind(account_id)
    .bind(name)
    .bind(special_use)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if StoreError::is_unique_violation(&e) {
            StoreError::MailboxExists(name.to_owned())
        } else {
            e.into()
        }
    })
}

/// `Store::copy_messages` in a transaction; `uids` None: every message of `from_mailbox`;
/// `room`: the account's quota, which the copies must fit (its turn taken already).
async fn copy_on(
    tx: &mut PgConnection,
    from_mailbox: i64,
    uids: Option<&[i64]>,
    to_mailbox: i64,
    remove_source: bool,
    room: Option<Room>,
) -> Result<Placed> {
    // Both rows locked in id order: two copies between the same mailboxes cannot deadlock.
    let locked: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT id, account_id, uid_validity FROM mailboxes
         WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
    )
    .bind(from_mailbox)
    .bind(to_mailbox)
    .fetch_all(&mut *tx)
    .await?;
    // A copy into the mailbox it is made from is allowed (RFC 9051 6.4.7): one row.
    let mailboxes = if from_mailbox == to_mailbox { 1 } else { 2 };
    let target = locked.iter().find(|(id, _, _)| *id == to_mailbox);
    let (Some(&(_, account_id, uid_validity)), true) = (
        target,
        locked
            .iter()
            .all(|(_, a, _)| Some(a) == target.map(|t| &t.1))
            && locked.len() == mailboxes,
    ) else {
        return Err(StoreError::UnknownMailbox(to_mailbox.to_string()));
    };
    // FOR KEY SHARE: a source deleted meanwhile (POP3, another session) is not copied,
    // and the garbage collector cannot free content a committed copy still points at;
    // flag changes are not held up.
    let sources: Vec<i64> = sqlx::query_scalar(
        "SELECT imap_uid FROM maildrop_entries
         WHERE mailbox_id = $1 AND ($2::int8[] IS NULL OR imap_uid = ANY ($2))
         ORDER BY imap_uid FOR KEY SHARE",
    )
    .bind(from_mailbox)
    .bind(uids)
    .fetch_all(&mut *tx)
    .await?;
    if sources.is_empty() {
        return Ok(Placed {
            uid_validity,
            uids: Vec::new(),
        });
    }
    if let Some(room) = room {
        let adding: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(pop3_size), 0)::bigint FROM maildrop_entries
             WHERE mailbox_id = $1 AND imap_uid = ANY ($2)",
        )
        .bind(from_mailbox)
        .bind(&sources)
        .fetch_one(&mut *tx)
        .await?;
        room.take(adding)?;
    }
    let (first_uid, modseq): (i64, i64) = sqlx::query_as(
        "UPDATE mailboxes SET uid_next = uid_next + $2, highest_modseq = highest_modseq + 1
         WHERE id = $1 RETURNING uid_next - $2, highest_modseq",
    )
    .bind(to_mailbox)
    .bind(sources.len() as i64)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO maildrop_entries (account_id, message_id, header_prefix, pop3_size,
             delivered_at, mailbox_id, imap_uid, flags, modseq)
         SELECT $4, message_id, header_prefix, pop3_size, delivered_at, $3,
             $5 - 1 + row_number() OVER (ORDER BY imap_uid), flags, $6
         FROM maildrop_entries WHERE mailbox_id = $1 AND imap_uid = ANY ($2)",
    )
    .bind(from_mailbox)
    .bind(&sources)
    .bind(to_mailbox)
    .bind(account_id)
    .bind(first_uid)
    .bind(modseq)
    .execute(&mut *tx)
    .await?;
    if remove_source {
        sqlx::query("DELETE FROM maildrop_entries WHERE mailbox_id = $1 AND imap_uid = ANY ($2)")
            .bind(from_mailbox)
            .bind(&sources)
            .execute(&mut *tx)
            .await?;
        bump_modseq(tx, from_mailbox).await?;
        notify(tx, from_mailbox).await?;
    }
    notify(tx, to_mailbox).await?;
    let uids = sources.into_iter().zip(first_uid..).collect();
    Ok(Placed { uid_validity, uids })
}
