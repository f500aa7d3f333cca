//! Domains and accounts.

use pochta_mail::Mailbox;

use crate::{
    Account, AccountCredentials, Domain, DomainRole, LocalAccount, RecipientLookup, Result, Store,
    StoreError,
};

/// Inserts a domain row.
pub(crate) async fn insert_domain(
    conn: &mut sqlx::PgConnection,
    name: &str,
    role: DomainRole,
) -> Result<Domain> {
    sqlx::query_as::<_, Domain>(
        "INSERT INTO domains (name, role) VALUES ($1, $2)
         RETURNING name, role, postmaster, catch_all, alias_of, created_at",
    )
    .bind(name)
    .bind(role.as_str())
    .fetch_one(conn)
    .await
    .map_err(|e| {
        if StoreError::is_unique_violation(&e) {
            StoreError::DomainExists(name.to_owned())
        } else {
            e.into()
        }
    })
}

impl Store {
    /// Adds a domain. `name` must already be lowercase ASCII (`is_domain_name`). A local
    /// domain added this way has no postmaster yet (`add_local_domain` gives it one).
    pub async fn add_domain(&self, name: &str, role: DomainRole) -> Result<Domain> {
        let mut conn = self.pool.acquire().await?;
        insert_domain(&mut conn, name, role).await
    }

    pub async fn list_domains(&self) -> Result<Vec<Domain>> {
        Ok(sqlx::query_as::<_, Domain>(
            "SELECT name, role, postmaster, catch_all, alias_of, created_at FROM domains
                 ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The role of a domain, or None when Pochta does not know it.
    pub async fn domain_role(&self, name: &str) -> Result<Option<DomainRole>> {
        let role: Option<String> = sqlx::query_scalar("SELECT role FROM domains WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(role.map(DomainRole::try_from).transpose()?)
    }

    /// Removes a domain that has no accounts.
    pub async fn remove_domain(&self, name: &str) -> Result<()> {
        let result = sqlx::query("DELETE FROM domains WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await;
        match result {
            Ok(done) if done.rows_affected() == 1 => Ok(()),
            Ok(_) => Err(StoreError::UnknownDomain(name.to_owned())),
            Err(e) if StoreError::is_foreign_key_violation(&e) => {
                let (accounts, aliased_by): (i64, Option<String>) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM accounts WHERE domain = $1),
                            (SELECT min(name) FROM domains WHERE alias_of = $1)",
                )
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
                match aliased_by {
                    Some(by) => Err(StoreError::DomainAliased {
                        domain: name.to_owned(),
                        by,
                    }),
                    _ => Err(StoreError::DomainInUse {
                        domain: name.to_owned(),
                        accounts,
                    }),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Adds an account to a local domain. `password_hash` is an argon2id PHC string.
    pub async fn add_account(&self, address: &Mailbox, password_hash: &str) -> Result<i64> {
        let inserted: Option<i64> = sqlx::query_scalar(
            "WITH account AS (
                 INSERT INTO accounts (domain, local_part, password_hash)
                 SELECT name, $2, $3 FROM domains
                 WHERE name = $1 AND role = 'local' AND alias_of IS NULL
                 RETURNING id
             ), inbox AS (
                 INSERT INTO mailboxes (account_id, name) SELECT id, 'INBOX' FROM account
             )
             SELECT id FROM account",
        )
        .bind(&address.domain)
        .bind(&address.local_part)
        .bind(password_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| {
            if StoreError::is_unique_violation(&e) {
                StoreError::AccountExists(address.to_string())
            } else {
                e.into()
            }
        })?;
        if let Some(id) = inserted {
            return Ok(id);
        }
        match self.domain_role(&address.domain).await? {
            None => Err(StoreError::UnknownDomain(address.domain.clone())),
            Some(DomainRole::Local) => {
                let of: Option<String> =
                    sqlx::query_scalar("SELECT alias_of FROM domains WHERE name = $1")
                        .bind(&address.domain)
                        .fetch_one(&self.pool)
                        .await?;
                Err(StoreError::DomainIsAlias {
                    domain: address.domain.clone(),
                    of: of.unwrap_or_default(),
                })
            }
            Some(role) => Err(StoreError::DomainNotLocal {
                domain: address.domain.clone(),
                role,
            }),
        }
    }

    /// Accounts with their maildrop sizes, of one domain or of all.
    pub async fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<Account>> {
        Ok(sqlx::query_as::<_, Account>(
            "SELECT a.id, a.local_part, a.domain, a.disabled, a.quota_bytes, a.created_at,
                    count(e.id) AS messages, coalesce(sum(e.pop3_size), 0)::bigint AS bytes
             FROM accounts a LEFT JOIN maildrop_entries e ON e.account_id = a.id
             WHERE $1::text IS NULL OR a.domain = $1
             GROUP BY a.id
             ORDER BY a.domain, lower(a.local_part)",
        )
        .bind(domain)
        .fetch_all(&self.pool)
        .await?)
    }

    /// What a login checks. The local part matches case-insensitively.
    pub async fn account_credentials(
        &self,
        address: &Mailbox,
    ) -> Result<Option<AccountCredentials>> {
        Ok(sqlx::query_as::<_, AccountCredentials>(
            "SELECT id, local_part, domain, password_hash, disabled FROM accounts
             WHERE domain = $1 AND lower(local_part) = lower($2)",
        )
        .bind(&address.domain)
        .bind(&address.local_part)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The domain's role and the account of `address`, in one round trip (every RCPT and every
    /// local delivery asks): the one-address case of `lookup_recipients`.
    pub async fn lookup_recipient(&self, address: &Mailbox) -> Result<RecipientLookup> {
        let mut found = self
            .lookup_recipients(std::slice::from_ref(address))
            .await?;
        Ok(found.pop().unwrap_or_default())
    }

    /// The domain's role and the account of each address, in one query; the answers are in
    /// input order.
    pub async fn lookup_recipients(&self, addresses: &[Mailbox]) -> Result<Vec<RecipientLookup>> {
        let domains: Vec<&str> = addresses.iter().map(|a| a.domain.as_str()).collect();
        let locals: Vec<&str> = addresses.iter().map(|a| a.local_part.as_str()).collect();
        type Row = (Option<String>, Option<i64>, Option<bool>, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT d.role, a.id, a.disabled, a.quota_bytes
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q (domain, local_part, n)
             LEFT JOIN domains d ON d.name = q.domain
             LEFT JOIN accounts a ON a.domain = d.name AND lower(a.local_part) = lower(q.local_part)
             ORDER BY q.n",
        )
        .bind(&domains)
        .bind(&locals)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(role, id, disabled, quota_bytes)| {
                Ok(RecipientLookup {
                    role: role.map(DomainRole::try_from).transpose()?,
                    account: id.map(|id| LocalAccount {
                        id,
                        disabled: disabled.unwrap_or(false),
                        has_quota: quota_bytes.is_some(),
                    }),
                })
            })
            .collect()
    }

    pub async fn set_password(&self, address: &Mailbox, password_hash: &str) -> Result<()> {
        self.update_account(address, "password_hash = $3", password_hash)
            .await
    }

    /// Sets or removes (None) the quota of an account's maildrop, in octets as POP3 STAT
    /// counts them. Mail already in the maildrop stays; a maildrop over its new quota takes
    /// nothing more until POP3 deletions bring it under.
    pub async fn set_quota(&self, address: &Mailbox, quota_bytes: Option<i64>) -> Result<()> {
        self.update_account(address, "quota_bytes = $3", quota_bytes)
            .await
    }

    pub async fn set_account_disabled(&self, address: &Mailbox, disabled: bool) -> Result<()> {
        self.update_account(address, "disabled = $3", disabled)
            .await
    }

    /// One operator setting of the account `address` (`set`: `column = $3`), as `value`.
    async fn update_account<'a, T>(
        &self,
        address: &Mailbox,
        set: &'static str,
        value: T,
    ) -> Result<()>
    where
        T: 'a + Send + sqlx::Encode<'a, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        let sql = format!(
            "UPDATE accounts SET {set}, updated_at = now()
             WHERE domain = $1 AND lower(local_part) = lower($2)"
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&address.domain)
            .bind(&address.local_part)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Self::one_account(done.rows_affected(), address)
    }

    /// Removes an account with its maildrop.
    pub async fn remove_account(&self, address: &Mailbox) -> Result<()> {
        let done =
            sqlx::query("DELETE FROM accounts WHERE domain = $1 AND lower(local_part) = lower($2)")
                .bind(&address.domain)
                .bind(&address.local_part)
                .execute(&self.pool)
                .await?;
        Self::one_account(done.rows_affected(), address)
    }

    fn one_account(rows: u64, address: &Mailbox) -> Result<()> {
        if rows == 1 {
            Ok(())
        } else {
            Err(StoreError::UnknownAccount(address.to_string()))
        }
    }
}
