//! Schema, domains and accounts, straight against the store; health over gRPC.

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::time::Duration;

use crate::dkim::DkimCommand;
use anyhow::{Context, bail};
use clap::Subcommand;
use pochta_config::Config;
use pochta_mail::{Mailbox, is_domain_name};
use pochta_store::{DkimKeyState, DomainRole, Store, StoreOptions};
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Add a domain. A local one needs --postmaster (or is a domain alias, --alias-of).
    Add {
        name: String,
        /// local: maildrops here; hold: backup MX, kept until ETRN; relay: accepted from anyone
        /// and forwarded (we are its MX or gateway).
        #[arg(long, default_value = "local", value_parser = parse_role)]
        role: DomainRole,
        /// Where postmaster@ and abuse@ of the domain go (RFC 5321 4.5.1, RFC 2142); it may
        /// be an account added afterwards.
        #[arg(long, value_name = "ADDRESS")]
        postmaster: Option<String>,
        /// Make it a domain alias: every address at NAME is the same local part at DOMAIN.
        #[arg(long, value_name = "DOMAIN", conflicts_with = "postmaster")]
        alias_of: Option<String>,
    },
    /// List domains.
    List,
    /// Remove a domain that has no accounts.
    Remove { name: String },
    /// Change where postmaster@ and abuse@ of a local domain go.
    Postmaster { name: String, address: String },
    /// Send mail for unknown addresses of a local domain to ADDRESS (applied after exact
    /// names, postmaster and subaddresses); --off refuses them again (the default).
    CatchAll {
        name: String,
        #[arg(required_unless_present = "off")]
        address: Option<String>,
        #[arg(long, conflicts_with = "address")]
        off: bool,
    },
    /// Print the DNS records a local domain should publish: MX, SPF, DKIM (its keys),
    /// DMARC, MTA-STS and TLS reporting, with the MTA-STS policy file.
    Records {
        name: String,
        /// The host that receives the domain's mail; smtp.hostname by default.
        #[arg(long, value_name = "HOST")]
        mx: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Add targets to an alias (creating it): local accounts, other aliases or addresses
    /// elsewhere. Refused if it would lead back to itself, or an account has its name.
    Add {
        alias: String,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove one target of an alias, or the whole alias.
    Remove {
        alias: String,
        target: Option<String>,
    },
    /// List aliases and their targets.
    List {
        /// Only this domain's aliases.
        #[arg(long)]
        domain: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Add an account; the password is read from a prompt, or from stdin with --password-stdin.
    Add {
        address: String,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change an account's password (prompt, or stdin with --password-stdin).
    Passwd {
        address: String,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts with their maildrop sizes.
    List {
        /// Only this domain's accounts.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Remove an account and its maildrop.
    Remove { address: String },
    /// Refuse logins and local delivery for an account.
    Disable { address: String },
    /// Allow a disabled account again.
    Enable { address: String },
    /// Set the most a maildrop may hold, in octets as POP3 STAT counts them (a number, or with
    /// K, M or G for 1024, 1024² or 1024³), or `none`. Past it, RCPT answers 452 4.2.2 and
    /// delivery waits for room until the message expires (5.2.2).
    Quota { address: String, quota: String },
}

/// A quota as given to `account quota`: None for `none`.
fn parse_quota(s: &str) -> anyhow::Result<Option<i64>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => bail!("quota {s:?}: the unit must be K, M or G"),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("quota {s:?}: expected a number of octets or `none`"))?;
    n.checked_mul(1 << shift)
        .filter(|q| *q >= 0)
        .map(Some)
        .ok_or_else(|| anyhow::anyhow!("quota {s:?} is out of range"))
}

fn parse_role(s: &str) -> Result<DomainRole, String> {
    s.parse::<DomainRole>()
        .map_err(|_| "expected one of: local, hold, relay".to_owned())
}

/// A connected admin session.
pub struct Admin {
    store: Store,
    json: bool,
    /// `[addresses]`: loops and depth are checked as delivery will follow them.
    rules: pochta_store::AddressRules,
    /// `smtp.hostname`: the MX host `domain records` names unless told another.
    mx_host: Option<String>,
}

impl Admin {
    pub async fn connect(config_file: Option<&Path>, json: bool) -> anyhow::Result<Self> {
        let config = Config::load(config_file)?;
        let options = StoreOptions {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(config.store.acquire_timeout_secs),
            application_name: "pochtactl".into(),
            // pochtactl stores no message content.
            compression: None,
        };
        let url = pochta_config::redact_url_password(&config.store.url);
        let store = Store::connect(&config.store.url, &options)
            .await
            .with_context(|| format!("connecting to the store at {url}"))?;
        Ok(Admin {
            store,
            json,
            rules: config.addresses.rules(),
            mx_host: config.smtp.hostname.clone(),
        })
    }

    /// Prints a JSON value, or the human text.
    fn say(&self, value: serde_json::Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", human());
        }
    }

    /// Migrates, then grants `roles` their privileges when given.
    pub async fn migrate(&self, roles: Option<pochta_store::ServiceRoles>) -> anyhow::Result<()> {
        let before = self.store.schema_version().await?;
        self.store.migrate().await?;
        let after = self.store.schema_version().await?;
        if let Some(roles) = &roles {
            self.store
                .grant_service_roles(roles)
                .await
                .context("granting the service roles (do they exist?)")?;
        }
        let granted = roles.as_ref().map(|r| r.all());
        self.say(
            json!({"from_version": before, "to_version": after, "granted_roles": granted}),
            || {
                let schema = if before == after {
                    format!("schema is up to date (version {after})")
                } else {
                    format!("migrated schema from version {before} to {after}")
                };
                match granted {
                    Some(roles) => format!("{schema}; privileges granted to {}", roles.join(", ")),
                    None => schema,
                }
            },
        );
        Ok(())
    }

    /// Keeps the IMAP search fields of mail stored before migration 14, `batch` messages a
    /// statement, until none is left. Can be stopped and run again at any time.
    pub async fn backfill_search_fields(&self, batch: i64) -> anyhow::Result<()> {
        self.store.check_schema().await?;
        // Progress on one terminal line, when there is a terminal to see it.
        let progress = !self.json && std::io::stderr().is_terminal();
        let (mut after, mut kept, mut passed_over) = (0, 0, 0);
        loop {
            let done = self
                .store
                .backfill_search_fields(after, batch)
                .await
                .context("keeping search fields")?;
            let Some(last) = done.last_id else { break };
            (after, kept, passed_over) = (last, kept + done.kept, passed_over + done.passed_over);
            if progress {
                eprint!("\rmessages up to id {last}: search fields kept for {kept}");
            }
        }
        if progress && kept + passed_over > 0 {
            eprintln!();
        }
        self.say(json!({"kept": kept, "passed_over": passed_over}), || {
            format!(
                "search fields kept for {kept} messages; {passed_over} passed over \
                 (fields too long to keep: searched in their octets)"
            )
        });
        Ok(())
    }

    pub async fn domain(&self, command: DomainCommand) -> anyhow::Result<()> {
        self.store.check_schema().await?;
        match command {
            DomainCommand::Add {
                name,
                role,
                postmaster,
                alias_of,
            } => {
                let name = domain_name(&name)?;
                match (role, postmaster, alias_of) {
                    (DomainRole::Local, Some(postmaster), None) => {
                        let postmaster = mailbox(&postmaster)?;
                        self.store.add_local_domain(&name, &postmaster).await?;
                    }
                    (DomainRole::Local, None, Some(of)) => {
                        self.store
                            .add_domain_alias(&name, &domain_name(&of)?)
                            .await?
                    }
                    (DomainRole::Local, _, _) => bail!(
                        "a local domain needs --postmaster ADDRESS (where postmaster@{name} and abuse@{name} go), or --alias-of DOMAIN"
                    ),
                    (role, None, None) => {
                        self.store.add_domain(&name, role).await?;
                    }
                    (role, _, _) => {
                        bail!("--postmaster and --alias-of are for local domains, not {role} ones")
                    }
                }
                self.say(json!({"added": name, "role": role}), || {
                    format!("added {role} domain {name}")
                });
            }
            DomainCommand::List => {
                let domains = self.store.list_domains().await?;
                self.say(json!(domains), || {
                    let mut out =
                        format!("{:<32} {:<6} {:<16} DELIVERS", "DOMAIN", "ROLE", "CREATED");
                    for d in &domains {
                        let created = d.created_at.format("%Y-%m-%d %H:%M");
                        let mut notes = Vec::new();
                        if let Some(of) = &d.alias_of {
                            notes.push(format!("alias of {of}"));
                        }
                        if let Some(p) = &d.postmaster {
                            notes.push(format!("postmaster -> {p}"));
                        }
                        if let Some(c) = &d.catch_all {
                            notes.push(format!("catch-all -> {c}"));
                        }
                        out.push_str(&format!(
                            "\n{:<32} {:<6} {created:<16} {}",
                            d.name,
                            d.role,
                            notes.join(", ")
                        ));
                    }
                    out
                });
            }
            DomainCommand::Postmaster { name, address } => {
                let name = domain_name(&name)?;
                let address = mailbox(&address)?;
                self.store
                    .set_postmaster(&name, &address, &self.rules)
                    .await?;
                self.say(
                    json!({"domain": name, "postmaster": address.to_string()}),
                    || format!("postmaster@{name} and abuse@{name} go to {address}"),
                );
            }
            DomainCommand::CatchAll { name, address, .. } => {
                let name = domain_name(&name)?;
                let address = address.as_deref().map(mailbox).transpose()?;
                self.store
                    .set_catch_all(&name, address.as_ref(), &self.rules)
                    .await?;
                let shown = address.as_ref().map(|a| a.to_string());
                self.say(
                    json!({"domain": name, "catch_all": shown}),
                    || match shown {
                        Some(a) => format!("unknown addresses of {name} go to {a}"),
                        None => format!("unknown addresses of {name} are refused"),
                    },
                );
            }
            DomainCommand::Remove { name } => {
                let name = domain_name(&name)?;
                self.store.remove_domain(&name).await?;
                self.say(json!({"removed": name}), || {
                    format!("removed domain {name}")
                });
            }
            DomainCommand::Records { name, mx } => {
                let name = domain_name(&name)?;
                let Some(mx) = mx.or_else(|| self.mx_host.clone()) else {
                    bail!(
                        "give the host that receives {name}'s mail with --mx (or set smtp.hostname)"
                    );
                };
                if !is_domain_name(&mx) {
                    bail!("--mx {mx:?} is not a host name");
                }
                let keys = self.store.list_dkim_keys(Some(&name)).await?;
                let text = crate::dkim::domain_records(&name, &mx, &keys);
                self.say(json!({"domain": name, "zone": text}), || text.clone());
            }
        }
        Ok(())
    }

    pub async fn dkim(&self, command: DkimCommand) -> anyhow::Result<()> {
        self.store.check_schema().await?;
        match command {
            DkimCommand::Generate {
                domain,
                algorithm,
                selector,
                bits,
            } => {
                let domain = domain_name(&domain)?;
                let key = crate::dkim::new_key(&domain, algorithm, selector, bits)?;
                let state = self.store.add_dkim_key(&key).await?;
                let name = crate::dkim::record_name(&domain, &key.selector);
                let text = crate::dkim::record_text(algorithm, &key.public_key);
                self.say(
                    json!({"domain": domain, "selector": key.selector, "algorithm": algorithm,
                           "state": state, "record_name": name, "record": text}),
                    || {
                        let when = match state {
                            DkimKeyState::Active => "it signs mail now: publish this record at once",
                            _ => "publish this record, wait for it to spread, then `pochtactl dkim rotate`",
                        };
                        format!(
                            "{algorithm} key {} for {domain} ({state}; {when})\n{}",
                            key.selector,
                            crate::dkim::zone_txt(&name, &text)
                        )
                    },
                );
            }
            DkimCommand::Rotate { domain, algorithm } => {
                let domain = domain_name(&domain)?;
                let rotation = self.store.rotate_dkim_key(&domain, algorithm).await?;
                self.say(
                    json!({"domain": domain, "active": rotation.active, "retired": rotation.retired}),
                    || match &rotation.retired {
                        Some(old) => format!(
                            "{domain} now signs with {}; keep {old}'s record published a few days, then `pochtactl dkim remove {domain} {old}`",
                            rotation.active
                        ),
                        None => format!("{domain} now signs with {}", rotation.active),
                    },
                );
            }
            DkimCommand::List { domain } => {
                let domain = domain.as_deref().map(domain_name).transpose()?;
                let keys = self.store.list_dkim_keys(domain.as_deref()).await?;
                let shown: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|k| {
                        json!({"domain": k.domain, "selector": k.selector,
                               "algorithm": k.algorithm, "state": k.state,
                               "created_at": k.created_at, "changed_at": k.changed_at,
                               "record_name": crate::dkim::record_name(&k.domain, &k.selector),
                               "record": crate::dkim::record_text(k.algorithm, &k.public_key)})
                    })
                    .collect();
                self.say(json!(shown), || {
                    let mut out = format!(
                        "{:<30} {:<20} {:<8} {:<8} CREATED",
                        "DOMAIN", "SELECTOR", "ALG", "STATE"
                    );
                    for k in &keys {
                        out.push_str(&format!(
                            "\n{:<30} {:<20} {:<8} {:<8} {}\n  {}",
                            k.domain,
                            k.selector,
                            k.algorithm.as_str(),
                            k.state.as_str(),
                            k.created_at.format("%Y-%m-%d %H:%M"),
                            crate::dkim::zone_line(k)
                        ));
                    }
                    out
                });
            }
            DkimCommand::Remove { domain, selector } => {
                let domain = domain_name(&domain)?;
                self.store.remove_dkim_key(&domain, &selector).await?;
                self.say(json!({"domain": domain, "removed": selector}), || {
                    format!("removed key {selector} of {domain}; its record can leave DNS")
                });
            }
        }
        Ok(())
    }

    pub async fn alias(&self, command: AliasCommand) -> anyhow::Result<()> {
        self.store.check_schema().await?;
        match command {
            AliasCommand::Add { alias, targets } => {
                let alias = mailbox(&alias)?;
                let targets = targets
                    .iter()
                    .map(|t| mailbox(t))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                self.store.add_alias(&alias, &targets, &self.rules).await?;
                let shown: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
                self.say(json!({"alias": alias.to_string(), "added": shown}), || {
                    format!("{alias} -> {}", shown.join(", "))
                });
            }
            AliasCommand::Remove { alias, target } => {
                let alias = mailbox(&alias)?;
                let target = target.as_deref().map(mailbox).transpose()?;
                self.store.remove_alias(&alias, target.as_ref()).await?;
                let shown = target.as_ref().map(|t| t.to_string());
                self.say(
                    json!({"alias": alias.to_string(), "removed": shown}),
                    || match shown {
                        Some(t) => format!("{alias} no longer goes to {t}"),
                        None => format!("removed alias {alias}"),
                    },
                );
            }
            AliasCommand::List { domain } => {
                let domain = domain.as_deref().map(domain_name).transpose()?;
                let aliases = self.store.list_aliases(domain.as_deref()).await?;
                self.say(json!(aliases), || {
                    let mut out = format!("{:<40} TARGET", "ALIAS");
                    for a in &aliases {
                        out.push_str(&format!("\n{:<40} {}", a.alias(), a.target));
                    }
                    out
                });
            }
        }
        Ok(())
    }

    pub async fn account(&self, command: AccountCommand) -> anyhow::Result<()> {
        self.store.check_schema().await?;
        match command {
            AccountCommand::Add {
                address,
                password_stdin,
            } => {
                let address = mailbox(&address)?;
                let hash = new_password_hash(password_stdin)?;
                let id = self.store.add_account(&address, &hash).await?;
                self.say(json!({"id": id, "address": address.to_string()}), || {
                    format!("added account {address}")
                });
            }
            AccountCommand::Passwd {
                address,
                password_stdin,
            } => {
                let address = mailbox(&address)?;
                // Fail on an unknown account before asking for a password.
                if self.store.account_credentials(&address).await?.is_none() {
                    bail!("account {address} does not exist");
                }
                let hash = new_password_hash(password_stdin)?;
                self.store.set_password(&address, &hash).await?;
                self.say(json!({"address": address.to_string()}), || {
                    format!("changed the password of {address}")
                });
            }
            AccountCommand::List { domain } => {
                let domain = domain.as_deref().map(domain_name).transpose()?;
                let accounts = self.store.list_accounts(domain.as_deref()).await?;
                self.say(json!(accounts), || {
                    let mut out = format!(
                        "{:<48} {:<8} {:>8} {:>12} {:>12}",
                        "ACCOUNT", "STATUS", "MESSAGES", "BYTES", "QUOTA"
                    );
                    for a in &accounts {
                        let status = if a.disabled { "disabled" } else { "active" };
                        let quota = a.quota_bytes.map_or("none".into(), |q| q.to_string());
                        out.push_str(&format!(
                            "\n{:<48} {status:<8} {:>8} {:>12} {quota:>12}",
                            a.address(),
                            a.messages,
                            a.bytes
                        ));
                    }
                    out
                });
            }
            AccountCommand::Remove { address } => {
                let address = mailbox(&address)?;
                self.store.remove_account(&address).await?;
                self.say(json!({"removed": address.to_string()}), || {
                    format!("removed account {address} and its maildrop")
                });
            }
            AccountCommand::Disable { address } => self.set_disabled(&address, true).await?,
            AccountCommand::Enable { address } => self.set_disabled(&address, false).await?,
            AccountCommand::Quota { address, quota } => {
                let address = mailbox(&address)?;
                let quota = parse_quota(&quota)?;
                self.store.set_quota(&address, quota).await?;
                self.say(
                    json!({"address": address.to_string(), "quota_bytes": quota}),
                    || match quota {
                        Some(q) => format!("the maildrop of {address} may hold {q} octets"),
                        None => format!("the maildrop of {address} has no quota"),
                    },
                );
            }
        }
        Ok(())
    }

    async fn set_disabled(&self, address: &str, disabled: bool) -> anyhow::Result<()> {
        let address = mailbox(address)?;
        self.store.set_account_disabled(&address, disabled).await?;
        let word = if disabled { "disabled" } else { "enabled" };
        self.say(
            json!({"address": address.to_string(), "disabled": disabled}),
            || format!("{word} account {address}"),
        );
        Ok(())
    }
}

/// A domain name as stored: ASCII, lowercase, without a trailing dot.
fn domain_name(name: &str) -> anyhow::Result<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if !is_domain_name(&name) {
        bail!(
            "{name:?} is not a valid domain name (ASCII letters, digits, hyphens and dots; IDNs as xn-- labels)"
        );
    }
    Ok(name)
}

fn mailbox(address: &str) -> anyhow::Result<Mailbox> {
    Mailbox::parse(address)
        .map_err(|_| anyhow::anyhow!("{address:?} is not a valid address (local-part@domain)"))
}

/// Reads a new password (never from argv) and hashes it with argon2id.
fn new_password_hash(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New password: ")?;
        let second = rpassword::prompt_password("Repeat it: ")?;
        if first != second {
            bail!("the passwords differ");
        }
        first
    } else {
        bail!("no terminal to prompt for the password on; pass it on stdin with --password-stdin");
    };
    Ok(pochta_auth::hash_password(&password)?)
}

/// `pochtactl health ADDR`: succeeds only when the service reports SERVING.
pub async fn health(address: &str, json: bool) -> anyhow::Result<()> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let status = check_health(uri)
        .await
        .with_context(|| format!("asking {address} for its health"))?;
    if json {
        println!(
            "{}",
            json!({"address": address, "status": status.as_str_name()})
        );
    } else {
        println!("{address}: {}", status.as_str_name());
    }
    if status != ServingStatus::Serving {
        bail!("{address} is not serving");
    }
    Ok(())
}

/// True when the gRPC endpoint at `addr` reports SERVING.
pub async fn health_status(addr: std::net::SocketAddr) -> anyhow::Result<bool> {
    Ok(check_health(format!("http://{addr}")).await? == ServingStatus::Serving)
}

/// `grpc.health.v1.Health/Check` for the whole server.
async fn check_health(uri: String) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown))
}

#[cfg(test)]
mod tests {
    use super::parse_quota;

    #[test]
    fn quotas_are_octets_with_binary_units() {
        assert_eq!(parse_quota("none").unwrap(), None);
        assert_eq!(parse_quota("NONE").unwrap(), None);
        assert_eq!(parse_quota("1000").unwrap(), Some(1000));
        assert_eq!(parse_quota("0").unwrap(), Some(0));
        assert_eq!(parse_quota("2k").unwrap(), Some(2048));
        assert_eq!(parse_quota("5M").unwrap(), Some(5 << 20));
        assert_eq!(parse_quota("1G").unwrap(), Some(1 << 30));
        for bad in ["", "G", "-1", "1.5M", "12T", "ten", "99999999999G"] {
            assert!(parse_quota(bad).is_err(), "{bad:?}");
        }
    }
}
