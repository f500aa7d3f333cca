//! Pochta's configuration: one TOML file with a section per concern, read through figment.
//!
//! Precedence, lowest first: built-in defaults < `DATABASE_URL` (a fallback for `store.url`) <
//! the TOML file < `POCHTA_*` environment variables (`__` separates sections:
//! `POCHTA_STORE__MAX_CONNECTIONS=8`). Every service loads the whole file, so an unknown key in any
//! section is an error that names it, whichever service reads it first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration. Each service uses the sections it needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub telemetry: TelemetryConfig,
    pub tls: TlsConfig,
    pub smtp: SmtpConfig,
    pub queue: QueueConfig,
    pub pop3: Pop3Config,
}

/// `[store]`: the PostgreSQL message store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/database`. A secret: `--print-config` redacts its password.
    pub url: String,
    /// Connections in each process's pool.
    pub max_connections: u32,
    /// How long a query waits for a free pooled connection before it fails.
    pub acquire_timeout_secs: u64,
    /// At startup, how long to keep retrying an unreachable database before giving up.
    pub connect_retry_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/pochta".into(),
            max_connections: 16,
            acquire_timeout_secs: 10,
            connect_retry_secs: 30,
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, multi-line.
    Pretty,
    /// One line per event, human-readable.
    Compact,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[telemetry]`: logs, traces and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// An `EnvFilter` directive such as `info,pochta_store=debug`. `RUST_LOG`, when set, wins.
    pub log_filter: String,
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`. When unset, the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is used; when neither is set nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// How often metrics are exported.
    pub metrics_interval_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Compact,
            log_filter: "info".into(),
            otlp_endpoint: None,
            metrics_interval_secs: 30,
        }
    }
}

/// `[tls]`: the certificate the SMTP and POP3 listeners present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_path: Option<PathBuf>,
    /// PEM private key.
    pub key_path: Option<PathBuf>,
}

/// `[smtp]`: smtp-ingress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// gRPC health endpoint.
    pub grpc_listen: SocketAddr,
    /// Where delivery-queue's gRPC service is reached (Notify, ETRN).
    pub queue_endpoint: String,
    /// How long in-flight sessions get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            queue_endpoint: "http://127.0.0.1:7100".into(),
            shutdown_grace_secs: 30,
        }
    }
}

/// `[queue]`: delivery-queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// gRPC endpoint: the queue service and health.
    pub grpc_listen: SocketAddr,
    /// How long in-flight deliveries get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7100)),
            shutdown_grace_secs: 30,
        }
    }
}

/// `[pop3]`: pop3-access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pop3Config {
    /// gRPC health endpoint.
    pub grpc_listen: SocketAddr,
    /// How long in-flight sessions get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7102)),
            shutdown_grace_secs: 30,
        }
    }
}

/// Why a configuration could not be loaded. The message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults < `DATABASE_URL` < `file` < `POCHTA_*` environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default())).merge(
            Env::raw()
                .only(&["DATABASE_URL"])
                .map(|_| "store.url".into()),
        );
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        extract(figment.merge(Env::prefixed("POCHTA_").split("__")))
    }

    /// Parses TOML text over the defaults, without looking at the environment.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        extract(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        let url = &self.store.url;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return invalid("store.url", "must start with postgres:// or postgresql://");
        }
        if self.store.max_connections == 0 {
            return invalid("store.max_connections", "must be at least 1");
        }
        if self.store.acquire_timeout_secs == 0 {
            return invalid("store.acquire_timeout_secs", "must be at least 1");
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !is_http_url(endpoint)
        {
            return invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL",
            );
        }
        if self.telemetry.metrics_interval_secs == 0 {
            return invalid("telemetry.metrics_interval_secs", "must be at least 1");
        }
        if self.tls.cert_path.is_some() != self.tls.key_path.is_some() {
            return invalid("tls", "cert_path and key_path must be set together");
        }
        if !is_http_url(&self.smtp.queue_endpoint) {
            return invalid("smtp.queue_endpoint", "must be an http:// or https:// URL");
        }
        Ok(())
    }

    /// The configuration with its secrets replaced, fit to print or log.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        copy.store.url = redact_url_password(&self.store.url);
        copy
    }

    /// The redacted configuration as TOML, for `--print-config`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(&self.redacted()).expect("the config always serializes to TOML")
    }
}

/// Extracts and validates, with every error of every key in one message.
fn extract(figment: Figment) -> Result<Config, ConfigError> {
    let config: Config = figment.extract().map_err(|e| {
        let messages: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        ConfigError::Invalid(messages.join("; "))
    })?;
    config.validate()?;
    Ok(config)
}

fn is_http_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len()
}

/// Replaces the password in `scheme://user:password@host/...` and in a `password=` query
/// parameter with `********`.
pub fn redact_url_password(url: &str) -> String {
    const MASK: &str = "********";
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                out.replace_range(start..rest_start + at, MASK);
            }
        }
    }
    if let Some(query_start) = out.find('?') {
        let (head, query) = out.split_at(query_start + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={MASK}"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_password() {
        assert_eq!(
            redact_url_password("postgres://pochta:s3cr@t@db:5432/pochta"),
            "postgres://pochta:********@db:5432/pochta"
        );
        assert_eq!(
            redact_url_password("postgres://postgres@127.0.0.1/pochta"),
            "postgres://postgres@127.0.0.1/pochta"
        );
    }

    #[test]
    fn redacts_query_password() {
        assert_eq!(
            redact_url_password("postgres://db/pochta?user=a&password=b&sslmode=require"),
            "postgres://db/pochta?user=a&password=********&sslmode=require"
        );
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }
}
