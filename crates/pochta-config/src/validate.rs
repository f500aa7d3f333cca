//! What types alone cannot check, one function per section. Errors name the key in full
//! (`smtp.max_errors`).

use crate::{
    AddressesConfig, ConfigError, ImapConfig, MailAuthConfig, Pop3Config, QueueConfig, SmtpConfig,
    StoreConfig, TelemetryConfig, TlsConfig, is_http_url,
};

/// The error for `key`, which must be fully qualified (`smtp.max_errors`).
fn invalid(key: &str, why: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid(format!("{key}: {why}")))
}

/// Each of `values` (fully qualified key, value) must be at least 1.
fn at_least_one(values: &[(&str, u64)]) -> Result<(), ConfigError> {
    match values.iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => invalid(key, "must be at least 1"),
        None => Ok(()),
    }
}

/// `host:port`, the form of routes and the smarthost.
fn is_host_port(target: &str) -> bool {
    target
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}

/// The prefix length IPv6 clients are grouped by for limits: 1 to 128.
fn ipv6_prefix(key: &str, prefix: u8) -> Result<(), ConfigError> {
    if (1..=128).contains(&prefix) {
        Ok(())
    } else {
        invalid(key, "must be from 1 to 128")
    }
}

/// An optional name that, when set, must be a host name.
fn host_name(key: &str, name: &Option<String>) -> Result<(), ConfigError> {
    match name {
        Some(name) if !pochta_mail::is_domain_name(name) => invalid(key, "must be a host name"),
        _ => Ok(()),
    }
}

impl AddressesConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.recipient_delimiter;
        // It is cut out of local parts (RFC 5322 atext: printable, no specials like '@' or '"').
        if d.len() > 16
            || !d
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"@\"\\".contains(&b))
        {
            return invalid(
                "addresses.recipient_delimiter",
                "must be up to 16 printable ASCII characters other than @, \" and \\",
            );
        }
        at_least_one(&[
            ("addresses.max_alias_depth", self.max_alias_depth.into()),
            ("addresses.max_alias_targets", self.max_alias_targets.into()),
            ("addresses.srs_max_age_days", self.srs_max_age_days.into()),
        ])?;
        Ok(())
    }
}

impl MailAuthConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        host_name("mail_auth.authserv_id", &self.authserv_id)?;
        at_least_one(&[
            ("mail_auth.dns_timeout_ms", self.dns_timeout_ms),
            ("mail_auth.check_timeout_ms", self.check_timeout_ms),
            ("mail_auth.dns_cache_entries", self.dns_cache_entries.into()),
            ("mail_auth.key_cache_secs", self.key_cache_secs),
        ])?;
        if let Some(domain) = self
            .dmarc_domains
            .keys()
            .find(|d| !pochta_mail::is_domain_name(d))
        {
            return invalid(
                "mail_auth.dmarc_domains",
                &format!("{domain:?} is not a domain name"),
            );
        }
        Ok(())
    }
}

impl StoreConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return invalid("store.url", "must start with postgres:// or postgresql://");
        }
        if !(1..=19).contains(&self.compression_level) {
            return invalid("store.compression_level", "must be between 1 and 19");
        }
        at_least_one(&[
            ("store.max_connections", u64::from(self.max_connections)),
            ("store.acquire_timeout_secs", self.acquire_timeout_secs),
        ])
    }
}

impl TelemetryConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.otlp_endpoint
            && !is_http_url(endpoint)
        {
            return invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL",
            );
        }
        at_least_one(&[(
            "telemetry.metrics_interval_secs",
            self.metrics_interval_secs,
        )])
    }
}

impl TlsConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.cert_path.is_some() != self.key_path.is_some() {
            return invalid("tls", "cert_path and key_path must be set together");
        }
        Ok(())
    }
}

impl SmtpConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !is_http_url(&self.queue_endpoint) {
            return invalid("smtp.queue_endpoint", "must be an http:// or https:// URL");
        }
        at_least_one(&[
            ("smtp.max_message_size", self.max_message_size),
            ("smtp.max_recipients", u64::from(self.max_recipients)),
            ("smtp.max_errors", u64::from(self.max_errors)),
            ("smtp.max_commands", u64::from(self.max_commands)),
            ("smtp.etrn_per_minute", u64::from(self.etrn_per_minute)),
            (
                "smtp.submission_max_recipients",
                u64::from(self.submission_max_recipients),
            ),
            ("smtp.write_timeout_secs", self.write_timeout_secs),
            ("smtp.max_session_secs", self.max_session_secs),
            ("smtp.max_data_memory_bytes", self.max_data_memory_bytes),
            (
                "smtp.max_password_checks",
                u64::from(self.max_password_checks),
            ),
            ("smtp.command_timeout_secs", self.command_timeout_secs),
            ("smtp.data_timeout_secs", self.data_timeout_secs),
            (
                "smtp.tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs,
            ),
            ("smtp.max_connections", u64::from(self.max_connections)),
            (
                "smtp.max_connections_per_ip",
                u64::from(self.max_connections_per_ip),
            ),
            ("smtp.auth_max_failures", u64::from(self.auth_max_failures)),
            ("smtp.commit_writers", u64::from(self.commit_writers)),
            (
                "smtp.commit_batch_messages",
                u64::from(self.commit_batch_messages),
            ),
            (
                "smtp.proxy_header_timeout_secs",
                self.proxy_header_timeout_secs,
            ),
        ])?;
        if self.max_recipients < 100 {
            return invalid(
                "smtp.max_recipients",
                "must be at least 100 (RFC 5321 4.5.3.1.8)",
            );
        }
        if self.max_message_size > i32::MAX as u64 {
            return invalid("smtp.max_message_size", "must be below 2 GiB");
        }
        ipv6_prefix("smtp.ipv6_limit_prefix", self.ipv6_limit_prefix)?;
        host_name("smtp.hostname", &self.hostname)?;
        match &self.postmaster_domain {
            Some(name) if !pochta_mail::is_domain_name(name) => {
                invalid("smtp.postmaster_domain", "must be a domain name")
            }
            _ => Ok(()),
        }
    }
}

impl QueueConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        at_least_one(&[
            ("queue.message_lifetime_secs", self.message_lifetime_secs),
            ("queue.workers", u64::from(self.workers)),
            ("queue.batch_size", u64::from(self.batch_size)),
            ("queue.scan_interval_secs", self.scan_interval_secs),
            ("queue.gc_interval_secs", self.gc_interval_secs),
            (
                "queue.gc_window_messages",
                u64::from(self.gc_window_messages),
            ),
            ("queue.depth_interval_secs", self.depth_interval_secs),
            ("queue.retry_delay_secs", self.retry_delay_secs),
            ("queue.remote_workers", u64::from(self.remote_workers)),
            ("queue.connect_timeout_secs", self.connect_timeout_secs),
            ("queue.mta_sts_timeout_secs", self.mta_sts_timeout_secs),
            ("queue.mta_sts_port", u64::from(self.mta_sts_port)),
            ("queue.tls_report_period_secs", self.tls_report_period_secs),
            ("queue.reply_timeout_secs", self.reply_timeout_secs),
            ("queue.write_timeout_secs", self.write_timeout_secs),
            (
                "queue.transaction_timeout_secs",
                self.transaction_timeout_secs,
            ),
            ("queue.slot_wait_secs", self.slot_wait_secs),
            (
                "queue.max_connections_per_destination",
                u64::from(self.max_connections_per_destination),
            ),
        ])?;
        // Leases are renewed every third of their lifetime.
        if self.lease_secs < 3 {
            return invalid("queue.lease_secs", "must be at least 3");
        }
        // A hold is a moment, not an outage: longer would also overflow the clock's sums.
        if self.unreachable_hold_secs > 86_400 {
            return invalid(
                "queue.unreachable_hold_secs",
                "must be at most 86400 (a day)",
            );
        }
        if self.retry_max_delay_secs < self.retry_delay_secs {
            return invalid(
                "queue.retry_max_delay_secs",
                "must be at least queue.retry_delay_secs",
            );
        }
        for (domain, target) in &self.routes {
            if !pochta_mail::is_domain_name(domain) || !is_host_port(target) {
                return invalid("queue.routes", "entries are \"domain\" = \"host:port\"");
            }
        }
        if let Some(target) = &self.smarthost
            && !is_host_port(target)
        {
            return invalid("queue.smarthost", "must be host:port");
        }
        host_name("queue.hostname", &self.hostname)
    }
}

impl Pop3Config {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        at_least_one(&[
            (
                "pop3.tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs,
            ),
            ("pop3.max_connections", u64::from(self.max_connections)),
            (
                "pop3.max_connections_per_ip",
                u64::from(self.max_connections_per_ip),
            ),
            ("pop3.max_errors", u64::from(self.max_errors)),
            ("pop3.max_commands", u64::from(self.max_commands)),
            ("pop3.write_timeout_secs", self.write_timeout_secs),
            ("pop3.max_session_secs", self.max_session_secs),
            (
                "pop3.max_password_checks",
                u64::from(self.max_password_checks),
            ),
            ("pop3.auth_max_failures", u64::from(self.auth_max_failures)),
            (
                "pop3.proxy_header_timeout_secs",
                self.proxy_header_timeout_secs,
            ),
            (
                "pop3.retrieve_chunk_bytes",
                u64::from(self.retrieve_chunk_bytes),
            ),
        ])?;
        if self.timeout_secs < 600 {
            return invalid("pop3.timeout_secs", "must be at least 600 (RFC 1939 3)");
        }
        if self.lock_ttl_secs < 3 {
            return invalid("pop3.lock_ttl_secs", "must be at least 3");
        }
        ipv6_prefix("pop3.ipv6_limit_prefix", self.ipv6_limit_prefix)
    }
}

impl ImapConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        at_least_one(&[
            (
                "imap.tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs,
            ),
            ("imap.max_connections", u64::from(self.max_connections)),
            (
                "imap.max_connections_per_ip",
                u64::from(self.max_connections_per_ip),
            ),
            (
                "imap.max_sessions_per_account",
                u64::from(self.max_sessions_per_account),
            ),
            ("imap.max_errors", u64::from(self.max_errors)),
            ("imap.write_timeout_secs", self.write_timeout_secs),
            ("imap.max_session_secs", self.max_session_secs),
            (
                "imap.max_password_checks",
                u64::from(self.max_password_checks),
            ),
            ("imap.auth_max_failures", u64::from(self.auth_max_failures)),
            (
                "imap.proxy_header_timeout_secs",
                self.proxy_header_timeout_secs,
            ),
            ("imap.max_literal_bytes", u64::from(self.max_literal_bytes)),
            ("imap.max_input_memory_bytes", self.max_input_memory_bytes),
            ("imap.read_batch_bytes", u64::from(self.read_batch_bytes)),
            ("imap.change_check_ms", self.change_check_ms),
            ("imap.max_mailboxes", u64::from(self.max_mailboxes)),
            ("imap.max_keywords", u64::from(self.max_keywords)),
            (
                "imap.max_keyword_length",
                u64::from(self.max_keyword_length),
            ),
        ])?;
        if self.timeout_secs < 1800 {
            return invalid("imap.timeout_secs", "must be at least 1800 (RFC 9051 5.4)");
        }
        ipv6_prefix("imap.ipv6_limit_prefix", self.ipv6_limit_prefix)
    }
}
