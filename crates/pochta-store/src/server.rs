//! Server-level statements for tooling (test harness, `pochtactl dev`): databases, not mail.

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
