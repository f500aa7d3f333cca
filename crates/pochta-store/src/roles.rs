//! Least privilege in the database: each service connects as its own role holding only what
//! its queries need. The ingress adds mail and reads accounts, never changes or deletes
//! anything; the queue works the queue and adds maildrop entries but cannot delete them or
//! touch POP3 locks; POP3 reads and deletes maildrop entries and keeps its locks but cannot
//! see the queue; IMAP works the mailboxes and their entries, and adds content only by APPEND.
//! Only the owner (`pochtactl migrate`) changes the schema or manages accounts.

use sqlx::AssertSqlSafe;

use crate::server::checked_name;
use crate::{Result, Store};

/// The database roles of the four services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoles {
    pub ingress: String,
    pub queue: String,
    pub pop3: String,
    pub imap: String,
}

impl ServiceRoles {
    /// `{prefix}_ingress`, `{prefix}_queue`, `{prefix}_pop3`, `{prefix}_imap`.
    pub fn with_prefix(prefix: &str) -> Self {
        ServiceRoles {
            ingress: format!("{prefix}_ingress"),
            queue: format!("{prefix}_queue"),
            pop3: format!("{prefix}_pop3"),
            imap: format!("{prefix}_imap"),
        }
    }

    /// Every role, for creating and checking them.
    pub fn all(&self) -> [&str; 4] {
        [&self.ingress, &self.queue, &self.pop3, &self.imap]
    }
}

impl Default for ServiceRoles {
    /// `pochta_ingress`, `pochta_queue`, `pochta_pop3`, `pochta_imap`.
    fn default() -> Self {
        Self::with_prefix("pochta")
    }
}

/// Every table each service may use, with its privileges on it (`SEQUENCE`: the identity
/// sequences whose ids it takes ahead of its inserts).
type Grants = &'static [(&'static str, &'static str)];

const INGRESS: Grants = &[
    (
        "SELECT",
        "_sqlx_migrations, domains, accounts, aliases, settings, dkim_keys",
    ),
    // RCPT asks whether an account is at its quota: its mailboxes' sizes, nothing else.
    ("SELECT (account_id, messages_size)", "mailboxes"),
    (
        "SELECT, INSERT",
        "messages, message_chunks, envelopes, recipients",
    ),
    (
        "USAGE",
        "SEQUENCE messages_id_seq, envelopes_id_seq, recipients_id_seq",
    ),
];

const QUEUE: Grants = &[
    (
        "SELECT",
        "_sqlx_migrations, domains, accounts, aliases, settings",
    ),
    (
        "SELECT, INSERT, UPDATE, DELETE",
        "messages, message_chunks, envelopes, recipients, delivery_attempts",
    ),
    ("SELECT, INSERT", "maildrop_entries"),
    // Garbage collection takes the messages whose entries went (migration 19).
    ("SELECT, DELETE", "gc_candidates"),
    // Local delivery takes UIDs from the INBOX row (uid_next, highest_modseq).
    ("SELECT, UPDATE", "mailboxes"),
    ("SELECT, INSERT, UPDATE", "mta_sts_policies"),
    (
        "SELECT, INSERT, UPDATE, DELETE",
        "tls_report_results, tls_reports_taken",
    ),
    (
        "USAGE",
        "SEQUENCE messages_id_seq, envelopes_id_seq, recipients_id_seq",
    ),
];

const POP3: Grants = &[
    (
        "SELECT",
        "_sqlx_migrations, domains, accounts, messages, message_chunks",
    ),
    ("SELECT, DELETE", "maildrop_entries"),
    // What its deletions free is recorded for garbage collection (migration 19's trigger).
    ("INSERT", "gc_candidates"),
    // A POP3 deletion is an expunge for IMAP: it raises the INBOX's highest_modseq.
    ("SELECT, UPDATE", "mailboxes"),
    ("SELECT, INSERT, UPDATE, DELETE", "maildrop_locks"),
];

const IMAP: Grants = &[
    (
        "SELECT",
        "_sqlx_migrations, domains, accounts, messages, message_chunks",
    ),
    // APPEND makes a message: its row and chunks.
    ("INSERT", "messages, message_chunks"),
    (
        "USAGE",
        "SEQUENCE messages_id_seq, mailbox_uid_validity_seq",
    ),
    (
        "SELECT, INSERT, UPDATE, DELETE",
        "mailboxes, maildrop_entries",
    ),
    // What its expunges free is recorded for garbage collection (migration 19's trigger).
    ("INSERT", "gc_candidates"),
];

impl Store {
    /// Gives each service role exactly its privileges on the current schema, first taking
    /// away whatever it had, in one transaction. Run after every migration (new tables start
    /// with no privileges). The roles must exist; this connection must own the schema.
    pub async fn grant_service_roles(&self, roles: &ServiceRoles) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (role, grants) in [
            (&roles.ingress, INGRESS),
            (&roles.queue, QUEUE),
            (&roles.pop3, POP3),
            (&roles.imap, IMAP),
        ] {
            let role = checked_name("role name", role)?;
            let mut statements = vec![
                format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}"),
                format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}"),
                format!("GRANT USAGE ON SCHEMA public TO {role}"),
            ];
            for (privileges, tables) in grants {
                statements.push(format!("GRANT {privileges} ON {tables} TO {role}"));
            }
            for sql in statements {
                sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// `CREATE ROLE name LOGIN` unless it exists (test harness, local set-ups; a deployment
    /// creates its roles with passwords). Roles belong to the server, not one database.
    pub async fn ensure_login_role(&self, name: &str) -> Result<()> {
        let sql = format!(
            "DO $$ BEGIN CREATE ROLE {} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
            checked_name("role name", name)?
        );
        match sqlx::query(AssertSqlSafe(sql)).execute(&self.pool).await {
            Ok(_) => Ok(()),
            // Two processes creating it at once: the loser sees a unique violation.
            Err(e) if crate::StoreError::is_unique_violation(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
