//! Server-level statements for tooling (test harness, `pochtactl dev`): databases, not mail;
//! and where this machine keeps the PostgreSQL programs those tools start servers with.

use std::path::PathBuf;

use sqlx::AssertSqlSafe;

use pochta_mail::InvalidValue;

use crate::{Result, Store, StoreError};

/// Database and role names these helpers accept: they are spliced into SQL, so only
/// `[a-z0-9_]`. `what` names the kind in the error.
pub(crate) fn checked_name<'a>(what: &'static str, name: &'a str) -> Result<&'a str> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(StoreError::InvalidValue(InvalidValue::new(what, name)))
    }
}

/// The folder holding every one of the PostgreSQL programs `tools` (`initdb`, `postgres`, ...):
/// the first on the PATH, else Debian's newest `/usr/lib/postgresql/<version>/bin`.
pub fn postgres_programs(tools: &[&str]) -> Option<PathBuf> {
    let complete = |dir: &PathBuf| tools.iter().all(|tool| dir.join(tool).is_file());
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|dir| complete(dir)));
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// Whether this process runs as root (PostgreSQL's programs then run as `postgres`: they
/// refuse root).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

impl Store {
    /// `CREATE DATABASE name`.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        let sql = format!("CREATE DATABASE {}", checked_name("database name", name)?);
        sqlx::query(AssertSqlSafe(sql)).execute(&self.pool).await?;
        Ok(())
    }

    /// `DROP DATABASE IF EXISTS name WITH (FORCE)`: ends its sessions first.
    pub async fn drop_database(&self, name: &str) -> Result<()> {
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            checked_name("database name", name)?
        );
        sqlx::query(AssertSqlSafe(sql)).execute(&self.pool).await?;
        Ok(())
    }

    /// Whether a database of that name exists.
    pub async fn database_exists(&self, name: &str) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Names of databases matching a LIKE pattern.
    pub async fn database_names_like(&self, pattern: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE $1")
                .bind(pattern)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
