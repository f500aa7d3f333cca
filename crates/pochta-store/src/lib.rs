//! The PostgreSQL message store: the schema (embedded migrations) and every query Pochta runs.
//! No other crate writes SQL.
//!
//! Time comes from the database clock (`now()`) everywhere, so replicas on hosts with skewed
//! clocks agree on leases and due times.

mod accounts;
mod addresses;
mod admin;
mod content;
mod dkim;
mod failover;
mod inspect;
mod mailboxes;
mod maildrop;
mod mta_sts;
mod queue;
mod roles;
mod server;
mod tls_reports;
mod types;
mod usage;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use content::{ContentCompression, PreparedContent, check_round_trip};
pub use dkim::{DkimKeyInfo, DkimRotation, DkimSigningKey, NewDkimKey, is_dkim_selector};
pub use mailboxes::{
    FlagChange, FlagsStored, MAILBOX_CHANNEL, MailboxChange, MailboxChanges, MailboxCounts,
    MailboxInfo, MailboxLimits, MailboxMessage, MessageFilter, Placed, SPECIAL_MAILBOXES,
    SearchField, SearchFieldsBackfill, SearchResult,
};
pub use maildrop::HeaderBlocks;
pub use mta_sts::CachedStsPolicy;
pub use roles::ServiceRoles;
pub use server::{postgres_programs, running_as_root};
pub use tls_reports::{TlsReportPeriod, TlsResultCount};
pub use types::*;

/// What the `explain_*` diagnostics put before a statement: the plan PostgreSQL ran, with
/// the buffers each node touched (tests compare those with the table's size).
pub(crate) const EXPLAIN: &str = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF) ";

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "database schema is at version {found}, this build needs {expected}: run `pochtactl migrate`"
    )]
    SchemaOutdated { found: i64, expected: i64 },
    #[error("database schema is at version {found}, newer than this build knows ({expected})")]
    SchemaNewer { found: i64, expected: i64 },
    #[error("domain {0} already exists")]
    DomainExists(String),
    #[error("domain {0} does not exist")]
    UnknownDomain(String),
    #[error("domain {domain} is a {role} domain; accounts live only in local domains")]
    DomainNotLocal { domain: String, role: DomainRole },
    #[error("domain {domain} still has {accounts} account(s); remove them first")]
    DomainInUse { domain: String, accounts: i64 },
    #[error("domain {by} is an alias of {domain}; remove it first")]
    DomainAliased { domain: String, by: String },
    #[error("domain {domain} is an alias of {of}: its addresses live there")]
    DomainIsAlias { domain: String, of: String },
    #[error("alias {0} does not exist")]
    UnknownAlias(String),
    #[error("refused: {0}")]
    AliasLoop(String),
    #[error("{address} leads through more than {depth} levels of aliases")]
    AliasTooDeep { address: String, depth: usize },
    #[error("{address} expands to more than {max} addresses")]
    AliasTooWide { address: String, max: usize },
    #[error("account {0} already exists")]
    AccountExists(String),
    #[error("account {0} does not exist")]
    UnknownAccount(String),
    #[error("an envelope needs at least one recipient")]
    NoRecipients,
    #[error("recipient {0} is no longer leased by this worker")]
    LeaseLost(i64),
    #[error("mailbox {0} already exists")]
    MailboxExists(String),
    #[error("mailbox {0} does not exist")]
    UnknownMailbox(String),
    #[error("INBOX cannot be deleted or renamed")]
    InboxFixed,
    #[error("the account's quota of {quota} octets holds {used}: {adding} more do not fit")]
    OverQuota { quota: i64, used: i64, adding: i64 },
    #[error("an account may have at most {0} mailboxes")]
    TooManyMailboxes(i64),
    #[error("a message may carry at most {0} keywords")]
    TooManyKeywords(usize),
    #[error("a keyword may be at most {0} octets long")]
    KeywordTooLong(usize),
    #[error("invalid search filter: {0}")]
    InvalidFilter(&'static str),
    #[error("the maildrop lock of account {0} is not held by this session")]
    LockNotHeld(i64),
    #[error("message {message_id}: {found} octets of content read where {expected} were recorded")]
    ContentDamaged {
        message_id: i64,
        expected: usize,
        found: usize,
    },
    #[error("message {message_id}: a content chunk cannot be decoded: {reason}")]
    ChunkUndecodable { message_id: i64, reason: String },
    #[error("{0}")]
    DkimKey(String),
    #[error("stored value is invalid: {0}")]
    InvalidValue(#[from] pochta_mail::InvalidValue),
}

impl StoreError {
    fn is_unique_violation(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
    }

    fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db) if db.is_foreign_key_violation())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How to connect.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// `application_name` the server shows in `pg_stat_activity`.
    pub application_name: String,
    /// How message content this process stores is compressed (None: stored as it is).
    /// Content is read whatever this says: every chunk row names its own codec.
    pub compression: Option<ContentCompression>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            application_name: "pochta".into(),
            compression: None,
        }
    }
}

/// A handle on the store: a connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    compression: Option<ContentCompression>,
    /// What IMAP's changes to an account's mailboxes may take (`with_mailbox_limits`).
    mailbox_limits: MailboxLimits,
    /// With several servers in the URL: keeps the pool on the writable one (`failover`).
    _watcher: Option<std::sync::Arc<failover::Watcher>>,
}

impl Store {
    /// Connects a pool (at least one connection is opened, so a wrong URL fails here). A URL
    /// naming several hosts (libpq style) connects to the one that takes writes and follows
    /// it after a failover.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let candidates = failover::host_urls(url)
            .iter()
            .map(|url| {
                Ok(url
                    .parse::<PgConnectOptions>()?
                    .application_name(&options.application_name)
                    // Every statement here is a short OLTP one. JIT compiling only ever costs,
                    // most on a misestimate such as chunk rows before their first ANALYZE
                    // (bench/history.md, "JIT").
                    .options([("jit", "off")]))
            })
            .collect::<Result<Vec<_>>>()?;
        // No ping before each use: it doubled the round trips of every query. A connection the
        // server dropped fails its next query (an error the caller already handles) and leaves
        // the pool.
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false);
        if let [single] = candidates.as_slice() {
            let pool = pool.connect_with(single.clone()).await?;
            return Ok(Store {
                pool,
                compression: options.compression,
                mailbox_limits: MailboxLimits::default(),
                _watcher: None,
            });
        }
        let primary = failover::writable(&candidates).await?;
        let pool = pool
            .after_connect(|conn, _| {
                Box::pin(async move {
                    match failover::is_writable(conn).await {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(sqlx::Error::Protocol(
                            "the server is read-only (a standby)".into(),
                        )),
                        Err(StoreError::Database(e)) => Err(e),
                        Err(e) => Err(sqlx::Error::Protocol(e.to_string())),
                    }
                })
            })
            .connect_with(primary)
            .await?;
        let watcher = failover::watch(pool.clone(), candidates);
        Ok(Store {
            pool,
            compression: options.compression,
            mailbox_limits: MailboxLimits::default(),
            _watcher: Some(std::sync::Arc::new(watcher)),
        })
    }

    /// The same store, compressing the content it stores as `compression` says.
    pub fn with_compression(mut self, compression: Option<ContentCompression>) -> Self {
        self.compression = compression;
        self
    }

    /// The same store, holding IMAP's changes to mailboxes to these limits.
    pub fn with_mailbox_limits(mut self, limits: MailboxLimits) -> Self {
        self.mailbox_limits = limits;
        self
    }

    /// Applies the embedded migrations not yet applied. Safe to run from several processes at
    /// once: sqlx serialises them with an advisory lock.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Applies the embedded migrations up to and including `version` only (upgrade tests; a
    /// staged upgrade).
    pub async fn migrate_to(&self, version: i64) -> Result<()> {
        MIGRATOR.run_to(version, &self.pool).await?;
        Ok(())
    }

    /// The newest schema version this build knows.
    pub fn expected_schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The newest version applied in the database, or 0 for an empty database.
    pub async fn schema_version(&self) -> Result<i64> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(0);
        }
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(version.unwrap_or(0))
    }

    /// Fails unless the database schema is exactly the one this build expects. Services call this
    /// at startup instead of migrating, so an upgrade is one deliberate step (`pochtactl migrate`).
    pub async fn check_schema(&self) -> Result<()> {
        let found = self.schema_version().await?;
        let expected = Self::expected_schema_version();
        match found.cmp(&expected) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less => Err(StoreError::SchemaOutdated { found, expected }),
            std::cmp::Ordering::Greater => Err(StoreError::SchemaNewer { found, expected }),
        }
    }

    /// A trivial round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Seconds as the `double precision` the queries multiply `interval '1 second'` by.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
