//! Addresses beyond accounts: aliases, a domain's postmaster, catch-all, domain aliases and
//! subaddressing, and how an address resolves through them.
//!
//! An address of a local domain resolves, first rule first: an account of that name; an alias
//! of that name; postmaster@ and abuse@ to the domain's postmaster; `user+tag` to the account or
//! alias `user` (RFC 5233); the domain's catch-all. In a domain alias the same rules apply at
//! the domain it stands for.

use std::collections::HashSet;

use pochta_mail::{Disposition, Mailbox};

use crate::{
    AddressRules, AliasTarget, AttemptOutcome, AttemptReport, DomainRole, Expansion, NewEnvelope,
    Resolution, Resolved, Result, Store, StoreError, Via,
};

/// The one row `resolve_recipient` reads.
#[derive(sqlx::FromRow)]
struct ResolveRow {
    role: String,
    home: Option<String>,
    postmaster: Option<String>,
    catch_all: Option<String>,
    account_id: Option<i64>,
    account_local: Option<String>,
    account_disabled: Option<bool>,
    account_quota: Option<i64>,
    account_full: Option<bool>,
    alias_targets: Option<Vec<String>>,
    base_id: Option<i64>,
    base_local: Option<String>,
    base_disabled: Option<bool>,
    base_quota: Option<i64>,
    base_full: Option<bool>,
    base_targets: Option<Vec<String>>,
}

fn mailboxes(texts: Vec<String>) -> Vec<Mailbox> {
    texts
        .iter()
        .filter_map(|t| Mailbox::from_stored(t))
        .collect()
}

impl ResolveRow {
    fn resolved(self, local_part: &str) -> Resolved {
        let home = self.home.unwrap_or_default();
        let account = |id,
                       local: Option<String>,
                       disabled: Option<bool>,
                       quota: Option<i64>,
                       full: Option<bool>,
                       via| Resolved::Account {
            id,
            address: Mailbox {
                local_part: local.unwrap_or_default(),
                domain: home.clone(),
            },
            disabled: disabled.unwrap_or(false),
            has_quota: quota.is_some(),
            full: full.unwrap_or(false),
            via,
        };
        let forward = |targets: Vec<String>, via| Resolved::Forward {
            targets: mailboxes(targets),
            via,
        };
        if let Some(id) = self.account_id {
            return account(
                id,
                self.account_local,
                self.account_disabled,
                self.account_quota,
                self.account_full,
                Via::Exact,
            );
        }
        if let Some(targets) = self.alias_targets {
            return forward(targets, Via::Exact);
        }
        let lower = local_part.to_ascii_lowercase();
        if let (Some(postmaster), "postmaster" | "abuse") = (self.postmaster, lower.as_str()) {
            return forward(vec![postmaster], Via::Postmaster);
        }
        if let Some(id) = self.base_id {
            return account(
                id,
                self.base_local,
                self.base_disabled,
                self.base_quota,
                self.base_full,
                Via::Subaddress,
            );
        }
        if let Some(targets) = self.base_targets {
            return forward(targets, Via::Subaddress);
        }
        match self.catch_all {
            Some(target) => forward(vec![target], Via::CatchAll),
            None => Resolved::Unknown,
        }
    }
}

impl Store {
    /// What `address` stands for, one level deep, in one query (the ingress asks at RCPT).
    pub async fn resolve_recipient(
        &self,
        address: &Mailbox,
        rules: &AddressRules,
    ) -> Result<Resolution> {
        let base = rules.subaddress_base(&address.local_part);
        let row: Option<ResolveRow> = sqlx::query_as(
            "SELECT d.role, h.name AS home, h.postmaster, h.catch_all,
                    a.id AS account_id, a.local_part AS account_local,
                    a.disabled AS account_disabled, a.quota_bytes AS account_quota,
                    -- Only an account with a quota has its mailboxes' counters summed (CASE is lazy).
                    CASE WHEN a.quota_bytes IS NOT NULL THEN
                        (SELECT coalesce(sum(x.messages_size), 0) FROM mailboxes x
                         WHERE x.account_id = a.id) >= a.quota_bytes
                    END AS account_full,
                    (SELECT array_agg(t.target ORDER BY t.id) FROM aliases t
                     WHERE t.domain = h.name AND lower(t.local_part) = lower($2)) AS alias_targets,
                    b.id AS base_id, b.local_part AS base_local, b.disabled AS base_disabled,
                    b.quota_bytes AS base_quota,
                    CASE WHEN b.quota_bytes IS NOT NULL THEN
                        (SELECT coalesce(sum(x.messages_size), 0) FROM mailboxes x
                         WHERE x.account_id = b.id) >= b.quota_bytes
                    END AS base_full,
                    (SELECT array_agg(t.target ORDER BY t.id) FROM aliases t
                     WHERE t.domain = h.name AND lower(t.local_part) = lower($3)) AS base_targets
             FROM domains d
             LEFT JOIN domains h ON h.name = coalesce(d.alias_of, d.name) AND d.role = 'local'
             LEFT JOIN accounts a ON a.domain = h.name AND lower(a.local_part) = lower($2)
             LEFT JOIN accounts b ON b.domain = h.name AND lower(b.local_part) = lower($3)
             WHERE d.name = $1",
        )
        .bind(&address.domain)
        .bind(&address.local_part)
        .bind(base)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Resolution {
                role: None,
                resolved: Resolved::Unknown,
            });
        };
        let role = DomainRole::try_from(row.role.clone())?;
        let mut resolved = match role {
            DomainRole::Local => row.resolved(&address.local_part),
            _ => Resolved::Unknown,
        };
        // A bounce to the rewritten sender of mail forwarded from here goes to the original
        // sender; a forged or expired one is unknown, whatever the catch-all says.
        if let Some(key) = &rules.srs
            && role == DomainRole::Local
            && pochta_mail::srs::is_srs(&address.local_part)
            && matches!(
                resolved,
                Resolved::Unknown
                    | Resolved::Forward {
                        via: Via::CatchAll,
                        ..
                    }
            )
        {
            let today = pochta_mail::srs::day(chrono::Utc::now().timestamp());
            resolved = match key.reverse(address, today, rules.srs_max_age_days) {
                Ok(sender) => Resolved::Forward {
                    targets: vec![sender],
                    via: Via::Srs,
                },
                Err(_) => Resolved::Unknown,
            };
        }
        Ok(Resolution {
            role: Some(role),
            resolved,
        })
    }

    /// Follows `targets` (what `start` stands for) through every alias to the addresses mail
    /// finally goes to: accounts here, addresses elsewhere, and local addresses that match
    /// nothing (their delivery fails and is reported). Breadth first, each address once.
    pub async fn expand(
        &self,
        start: &Mailbox,
        targets: Vec<Mailbox>,
        rules: &AddressRules,
    ) -> Result<Expansion> {
        self.expand_from(vec![key(start)], start, targets, rules)
            .await
    }

    async fn expand_from(
        &self,
        visited: Vec<String>,
        start: &Mailbox,
        targets: Vec<Mailbox>,
        rules: &AddressRules,
    ) -> Result<Expansion> {
        let mut expansion = Expansion {
            targets: Vec::new(),
            visited,
            looped: false,
        };
        let mut seen: HashSet<String> = expansion.visited.iter().cloned().collect();
        let mut level = targets;
        let mut depth = 0;
        while !level.is_empty() {
            depth += 1;
            if depth > rules.max_depth {
                return Err(StoreError::AliasTooDeep {
                    address: start.to_string(),
                    depth: rules.max_depth,
                });
            }
            let mut next = Vec::new();
            for address in level {
                if !seen.insert(key(&address)) {
                    expansion.looped = true;
                    continue;
                }
                expansion.visited.push(key(&address));
                let found = self.resolve_recipient(&address, rules).await?;
                let target = match (found.role, found.resolved) {
                    (Some(DomainRole::Local), Resolved::Forward { targets, .. }) => {
                        next.extend(targets);
                        continue;
                    }
                    // An account by its own name is written as the account spells it.
                    (
                        Some(DomainRole::Local),
                        Resolved::Account {
                            address,
                            via: Via::Exact,
                            ..
                        },
                    ) => (address, Disposition::Local),
                    (Some(DomainRole::Local), _) => (address, Disposition::Local),
                    (Some(DomainRole::Hold), _) => (address, Disposition::Hold),
                    _ => (address, Disposition::Remote),
                };
                expansion.targets.push(target);
                if expansion.targets.len() > rules.max_targets {
                    return Err(StoreError::AliasTooWide {
                        address: start.to_string(),
                        max: rules.max_targets,
                    });
                }
            }
            level = next;
        }
        Ok(expansion)
    }

    /// The key of SRS addresses, made once by the schema and shared by every service.
    pub async fn srs_key(&self) -> Result<pochta_mail::SrsKey> {
        let secret: String =
            sqlx::query_scalar("SELECT value FROM settings WHERE name = 'srs_secret'")
                .fetch_one(&self.pool)
                .await?;
        Ok(pochta_mail::SrsKey::new(secret.as_bytes()))
    }

    /// Adds targets to an alias (creating it). Refused when an account has the alias's
    /// address, when the domain is not local or is a domain alias, and when a target leads
    /// back to the alias (a loop).
    pub async fn add_alias(
        &self,
        alias: &Mailbox,
        targets: &[Mailbox],
        rules: &AddressRules,
    ) -> Result<()> {
        self.check_local_home(&alias.domain).await?;
        let found = self.resolve_recipient(alias, rules).await?;
        if let Resolved::Account {
            via: Via::Exact, ..
        } = found.resolved
        {
            return Err(StoreError::AccountExists(alias.to_string()));
        }
        self.refuse_loop(alias, targets.to_vec(), rules).await?;
        let texts: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        sqlx::query(
            "INSERT INTO aliases (domain, local_part, target)
             SELECT $1, $2, t FROM unnest($3::text[]) AS t
             ON CONFLICT DO NOTHING",
        )
        .bind(&alias.domain)
        .bind(&alias.local_part)
        .bind(&texts)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes one target of an alias, or with None the whole alias.
    pub async fn remove_alias(&self, alias: &Mailbox, target: Option<&Mailbox>) -> Result<()> {
        let done = sqlx::query(
            "DELETE FROM aliases
             WHERE domain = $1 AND lower(local_part) = lower($2)
               AND ($3::text IS NULL OR lower(target) = lower($3))",
        )
        .bind(&alias.domain)
        .bind(&alias.local_part)
        .bind(target.map(|t| t.to_string()))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::UnknownAlias(match target {
                Some(t) => format!("{alias} -> {t}"),
                None => alias.to_string(),
            }));
        }
        Ok(())
    }

    /// Every alias target, of one domain or of all.
    pub async fn list_aliases(&self, domain: Option<&str>) -> Result<Vec<AliasTarget>> {
        Ok(sqlx::query_as(
            "SELECT local_part, domain, target FROM aliases
             WHERE $1::text IS NULL OR domain = $1
             ORDER BY domain, lower(local_part), id",
        )
        .bind(domain)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Adds a local domain with the address its postmaster@ and abuse@ go to.
    pub async fn add_local_domain(&self, name: &str, postmaster: &Mailbox) -> Result<()> {
        refuse_postmaster_of_itself(name, postmaster)?;
        let mut tx = self.pool.begin().await?;
        crate::accounts::insert_domain(&mut tx, name, DomainRole::Local).await?;
        sqlx::query("UPDATE domains SET postmaster = $2 WHERE name = $1")
            .bind(name)
            .bind(postmaster.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Where postmaster@ and abuse@ of a local domain go. It cannot be unset: RFC 5321 4.5.1
    /// requires postmaster at every domain.
    pub async fn set_postmaster(
        &self,
        domain: &str,
        postmaster: &Mailbox,
        rules: &AddressRules,
    ) -> Result<()> {
        self.check_local_home(domain).await?;
        refuse_postmaster_of_itself(domain, postmaster)?;
        let start = Mailbox {
            local_part: "postmaster".into(),
            domain: domain.into(),
        };
        self.refuse_loop(&start, vec![postmaster.clone()], rules)
            .await?;
        sqlx::query("UPDATE domains SET postmaster = $2 WHERE name = $1")
            .bind(domain)
            .bind(postmaster.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Where addresses of a local domain that match nothing else go; None turns it off. A
    /// target in the domain itself must be an account or alias (else it would catch itself).
    pub async fn set_catch_all(
        &self,
        domain: &str,
        target: Option<&Mailbox>,
        rules: &AddressRules,
    ) -> Result<()> {
        self.check_local_home(domain).await?;
        if let Some(target) = target.filter(|t| t.domain == domain) {
            let found = self.resolve_recipient(target, rules).await?;
            if matches!(
                found.resolved,
                Resolved::Unknown
                    | Resolved::Forward {
                        via: Via::CatchAll,
                        ..
                    }
            ) {
                return Err(StoreError::AliasLoop(format!(
                    "the catch-all of {domain} must be an account or alias, and {target} is neither"
                )));
            }
        }
        sqlx::query("UPDATE domains SET catch_all = $2 WHERE name = $1")
            .bind(domain)
            .bind(target.map(|t| t.to_string()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Adds `name` as a domain alias of the local domain `of`: every address at `name` is the
    /// same local part at `of`.
    pub async fn add_domain_alias(&self, name: &str, of: &str) -> Result<()> {
        self.check_local_home(of).await?;
        let mut tx = self.pool.begin().await?;
        crate::accounts::insert_domain(&mut tx, name, DomainRole::Local).await?;
        sqlx::query("UPDATE domains SET alias_of = $2 WHERE name = $1")
            .bind(name)
            .bind(of)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces a queued alias recipient `owner` holds by a recipient for each final address,
    /// and records it as expanded (and the `expanded` report, if one is owed), in one
    /// transaction: the targets are queued exactly once, and an address the message already
    /// has a recipient for is not added again. The new recipients keep the parent's
    /// ORCPT (or get its address as one, RFC 3461 6.2.7.3) and get `notify`.
    pub async fn expand_recipient(
        &self,
        owner: &str,
        parent_id: i64,
        targets: &[(Mailbox, Disposition)],
        notify: Option<pochta_mail::Notify>,
        attempt: &AttemptReport,
        report: Option<(&NewEnvelope, &[u8])>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        crate::queue::record_attempt_on(
            &mut tx,
            owner,
            parent_id,
            AttemptOutcome::Expanded,
            attempt,
        )
        .await?;
        let addresses: Vec<String> = targets.iter().map(|(t, _)| t.to_string()).collect();
        let domains: Vec<&str> = targets.iter().map(|(t, _)| t.domain.as_str()).collect();
        let states: Vec<&str> = targets
            .iter()
            .map(|(_, d)| {
                if *d == Disposition::Hold {
                    "held"
                } else {
                    "queued"
                }
            })
            .collect();
        let local: Vec<bool> = targets
            .iter()
            .map(|(_, d)| *d == Disposition::Local)
            .collect();
        sqlx::query(
            "INSERT INTO recipients (envelope_id, address, domain, orcpt, notify, state, local,
                 original_address)
             SELECT p.envelope_id, t.address, t.domain,
                    coalesce(p.orcpt, 'rfc822;' || p.address), $6, t.state, t.local,
                    coalesce(p.original_address, p.address)
             FROM recipients p,
                  unnest($2::text[], $3::text[], $4::text[], $5::bool[])
                      AS t (address, domain, state, local)
             WHERE p.id = $1
               -- A message reaches an address once, however many of its recipients lead there.
               AND NOT EXISTS (
                   SELECT 1 FROM recipients x
                   WHERE x.envelope_id = p.envelope_id AND x.state <> 'expanded'
                     AND lower(x.address) = lower(t.address))",
        )
        .bind(parent_id)
        .bind(&addresses)
        .bind(&domains)
        .bind(&states)
        .bind(&local)
        .bind(notify.map(|n| n.to_string()))
        .execute(&mut *tx)
        .await?;
        if let Some((envelope, content)) = report {
            crate::queue::enqueue_on(&mut tx, envelope, content, self.compression).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Refuses `targets` for `start` when following them leads back to `start`.
    async fn refuse_loop(
        &self,
        start: &Mailbox,
        targets: Vec<Mailbox>,
        rules: &AddressRules,
    ) -> Result<()> {
        let probe = self.expand_from(Vec::new(), start, targets, rules).await?;
        if probe.visited.contains(&key(start)) {
            return Err(StoreError::AliasLoop(format!(
                "{start} would reach itself again"
            )));
        }
        Ok(())
    }

    /// Aliases and settings live at a local domain that is not itself a domain alias.
    async fn check_local_home(&self, domain: &str) -> Result<()> {
        let found: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT role, alias_of FROM domains WHERE name = $1")
                .bind(domain)
                .fetch_optional(&self.pool)
                .await?;
        match found {
            None => Err(StoreError::UnknownDomain(domain.into())),
            Some((_, Some(of))) => Err(StoreError::DomainIsAlias {
                domain: domain.into(),
                of,
            }),
            Some((role, None)) => match DomainRole::try_from(role)? {
                DomainRole::Local => Ok(()),
                role => Err(StoreError::DomainNotLocal {
                    domain: domain.into(),
                    role,
                }),
            },
        }
    }
}

/// How addresses compare: case-insensitively.
fn key(address: &Mailbox) -> String {
    address.to_string().to_ascii_lowercase()
}

/// postmaster@ and abuse@ resolve to the postmaster address: it cannot be one of them.
fn refuse_postmaster_of_itself(domain: &str, postmaster: &Mailbox) -> Result<()> {
    let local = postmaster.local_part.to_ascii_lowercase();
    if postmaster.domain == domain && (local == "postmaster" || local == "abuse") {
        return Err(StoreError::AliasLoop(format!(
            "the postmaster of {domain} cannot be {postmaster}: that is the postmaster itself"
        )));
    }
    Ok(())
}
