//! Pochta's configuration: one TOML file with a section per concern, read through figment.
//!
//! Precedence, lowest first: built-in defaults < `DATABASE_URL` (a fallback for `store.url`) <
//! the TOML file < `POCHTA_*` environment variables (`__` separates sections:
//! `POCHTA_STORE__MAX_CONNECTIONS=8`). Every service loads the whole file, so an unknown key in any
//! section is an error that names it, whichever service reads it first.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

mod validate;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use pochta_mail::{BareLineEndings, TlsPolicy};
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
    pub imap: ImapConfig,
    pub addresses: AddressesConfig,
    pub mail_auth: MailAuthConfig,
}

/// `[mail_auth]`: DKIM signing of submitted mail, and SPF, DKIM, ARC and DMARC checks of
/// mail arriving from other servers (the ingress).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailAuthConfig {
    /// Sign mail from authenticated users and trusted networks whose From: domain has an
    /// active key (`pochtactl dkim generate`).
    pub sign: bool,
    /// Check mail from unauthenticated, untrusted clients and put the results in an
    /// Authentication-Results header (RFC 8601).
    pub check_inbound: bool,
    /// The authserv-id of that header; the SMTP host name if unset. Incoming headers that
    /// claim it are removed first.
    pub authserv_id: Option<String>,
    /// DNS servers for the checks; empty: the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// One DNS query waits at most this long.
    pub dns_timeout_ms: u64,
    /// All checks of one message end within this, and never later than
    /// `smtp.command_timeout_secs` (the client waits for them after DATA); what is
    /// unfinished then is reported as temperror.
    pub check_timeout_ms: u64,
    /// DNS answers are remembered (up to their TTL) for this many names per kind.
    pub dns_cache_entries: u32,
    /// What a DMARC failure does for mail to our domains: `enforce` follows the sender
    /// domain's policy (p=reject: 550 5.7.1 at the end of DATA; p=quarantine: accepted and
    /// marked), `monitor` only records the result in the header.
    pub dmarc: DmarcAction,
    /// `dmarc` for particular recipient domains (e.g. `"lists.example" = "monitor"`). With
    /// recipients in several domains, the strictest applies to the message.
    pub dmarc_domains: std::collections::BTreeMap<String, DmarcAction>,
    /// Signing keys are read from the store again after this many seconds (how soon a
    /// `pochtactl dkim rotate` takes effect).
    pub key_cache_secs: u64,
}

/// How a DMARC failure of incoming mail is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcAction {
    Monitor,
    Enforce,
}

impl MailAuthConfig {
    /// The action for a message with recipients in these domains: the strictest.
    pub fn dmarc_action<'a>(&self, domains: impl IntoIterator<Item = &'a str>) -> DmarcAction {
        domains
            .into_iter()
            .map(|d| {
                let d = d.to_ascii_lowercase();
                self.dmarc_domains.get(&d).copied().unwrap_or(self.dmarc)
            })
            .max()
            .unwrap_or(self.dmarc)
    }
}

impl Default for MailAuthConfig {
    fn default() -> Self {
        MailAuthConfig {
            sign: true,
            check_inbound: true,
            authserv_id: None,
            dns_servers: Vec::new(),
            dns_timeout_ms: 3_000,
            check_timeout_ms: 10_000,
            dns_cache_entries: 10_000,
            dmarc: DmarcAction::Enforce,
            dmarc_domains: Default::default(),
            key_cache_secs: 60,
        }
    }
}

/// `[addresses]`: how a recipient address resolves beyond an exact account (the ingress at
/// RCPT and the queue at delivery ask the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AddressesConfig {
    /// Subaddressing (RFC 5233): each of these characters ends the name part of a local part,
    /// so `user+tag@domain` reaches `user` when nothing is named `user+tag` itself. "" turns
    /// it off.
    pub recipient_delimiter: String,
    /// Aliases of aliases are followed this many levels deep; deeper fails the recipient.
    pub max_alias_depth: u32,
    /// One recipient expands to at most this many final addresses.
    pub max_alias_targets: u32,
    /// A bounce to an SRS address (the rewritten sender of forwarded mail) is taken back this
    /// many days after the mail was forwarded.
    pub srs_max_age_days: u32,
}

impl AddressesConfig {
    /// The rules the ingress, the queue and pochtactl resolve addresses by (the SRS key is
    /// the store's: `Store::srs_key`).
    pub fn rules(&self) -> pochta_mail::AddressRules {
        pochta_mail::AddressRules {
            delimiters: self.recipient_delimiter.clone(),
            max_depth: self.max_alias_depth as usize,
            max_targets: self.max_alias_targets as usize,
            srs: None,
            srs_max_age_days: self.srs_max_age_days.into(),
        }
    }
}

impl Default for AddressesConfig {
    fn default() -> Self {
        AddressesConfig {
            recipient_delimiter: "+".into(),
            max_alias_depth: 8,
            max_alias_targets: 1000,
            srs_max_age_days: 21,
        }
    }
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
    /// How message content is compressed on its way into the store (by the process storing
    /// it). Stored content is read whatever this says.
    pub compression: ContentCodec,
    /// zstd's level, 1 (fastest) to 19.
    pub compression_level: i32,
    /// Messages smaller than this many octets are stored as they are.
    pub compression_min_bytes: u64,
    /// With compression on, runs of base64 lines (attachments) are stored as the octets
    /// they encode, and encoded again when read. Every service of a store must be of a
    /// version that reads them (migration 20) before one writes them.
    pub compression_base64_lines: bool,
}

/// How message content is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentCodec {
    /// As it is.
    None,
    /// zstd (RFC 8878), per chunk row; rows that would not shrink are stored as they are.
    Zstd,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/pochta".into(),
            max_connections: 16,
            acquire_timeout_secs: 10,
            connect_retry_secs: 30,
            compression: ContentCodec::Zstd,
            compression_level: 1,
            compression_min_bytes: 16 * 1024,
            compression_base64_lines: true,
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

/// Where passwords may cross an unencrypted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlaintextAuth {
    /// Only over TLS.
    Never,
    /// Also from loopback clients (127.0.0.0/8, ::1).
    Loopback,
    /// Anywhere (testing only).
    Always,
}

/// An IP network in CIDR notation, e.g. `192.0.2.0/24` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
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
    /// The name in the greeting, EHLO and Received headers; the machine's host name if unset.
    pub hostname: Option<String>,
    /// MX listeners (RFC 5321): mail for our domains from anyone. Empty disables.
    pub mx_listen: Vec<SocketAddr>,
    /// Submission listeners (RFC 6409): STARTTLS, then AUTH before MAIL.
    pub submission_listen: Vec<SocketAddr>,
    /// Submissions listeners (RFC 8314): implicit TLS, AUTH before MAIL.
    pub submissions_listen: Vec<SocketAddr>,
    /// SIZE: the largest message accepted, in octets.
    pub max_message_size: u64,
    /// Recipients per transaction (RFC 5321 4.5.3.1.8 asks for at least 100).
    pub max_recipients: u32,
    /// More Received headers than this is a loop (554 5.4.6).
    pub max_received_headers: u32,
    /// Error replies (4xx or 5xx) before the session is closed with 421.
    pub max_errors: u32,
    /// Commands before the session is closed with 421 (a client repeating NOOP, RSET or ETRN
    /// without end).
    pub max_commands: u32,
    pub bare_line_endings: BareLineEndings,
    /// Waiting for a command (RFC 5321 4.5.3.2.7: at least 5 minutes).
    pub command_timeout_secs: u64,
    /// Waiting for more message text (RFC 5321 4.5.3.2.5).
    pub data_timeout_secs: u64,
    /// TLS handshake, after connect or STARTTLS.
    pub tls_handshake_timeout_secs: u64,
    /// How long a write to a client may make no progress (a client that does not read).
    pub write_timeout_secs: u64,
    /// The longest a session may last; it is then closed with 421 at its next command.
    pub max_session_secs: u64,
    /// Message text held in memory by all sessions of this process together; beyond it,
    /// sessions receiving DATA are not read from until others finish (back-pressure).
    pub max_data_memory_bytes: u64,
    pub max_connections: u32,
    /// Per client address; IPv6 clients are counted per network (see `ipv6_limit_prefix`).
    pub max_connections_per_ip: u32,
    /// IPv6 clients count as one for every per-address limit when they share this many
    /// leading bits (64: a /64 is one subscriber's network).
    pub ipv6_limit_prefix: u8,
    /// Password checks (argon2id, ~19 MiB each) running at once in this process; more wait
    /// (up to 10 s, then a temporary failure).
    pub max_password_checks: u32,
    /// Load balancers whose connections start with a PROXY protocol v2 header naming the
    /// real client (which limits, relay decisions and Received then use). Only these: from
    /// anyone else a header would let the client pick its own address. Empty: none.
    pub proxy_protocol_from: Vec<Cidr>,
    /// How long such a peer may take to send the header.
    pub proxy_header_timeout_secs: u64,
    /// Clients that may relay to any domain without AUTH.
    pub trusted_networks: Vec<Cidr>,
    pub plaintext_auth: PlaintextAuth,
    /// How long a failed AUTH waits before its 535.
    pub auth_failure_delay_ms: u64,
    /// Failed AUTHs from one address within the window before it is refused (421).
    pub auth_max_failures: u32,
    pub auth_failure_window_secs: u64,
    /// How long a successful password check is remembered, so repeated logins skip argon2id
    /// (a password change takes effect at once). 0 disables.
    pub auth_cache_secs: u64,
    /// How long an accepted recipient (an enabled local account, a hold or relay domain) is
    /// remembered, so RCPT needs no store query. Only acceptances are kept: a new account is
    /// accepted at once; a removed or disabled one may still be accepted this long, and its
    /// mail then fails at delivery with a report (5.1.1 / 5.2.1). 0 disables.
    pub recipient_cache_secs: u64,
    /// At most one Notify of new mail to the queue per this interval (the first after a quiet
    /// spell goes at once; the rest wait and go together). 0: one per round trip.
    pub notify_interval_ms: u64,
    /// Group commit: messages whose DATA ends while a commit is in flight are stored together
    /// in the next one. At most this many commits run at once per process; all but the first
    /// only while `commit_parallel_bytes` of content wait (large messages) ...
    pub commit_writers: u32,
    pub commit_parallel_bytes: u64,
    /// ... each with at most this many messages and (beyond the first) this many octets.
    pub commit_batch_messages: u32,
    pub commit_batch_bytes: u64,
    /// ETRN requests per client address (IPv6: per network) a minute; more get 458 without
    /// asking the queue.
    pub etrn_per_minute: u32,
    /// An authenticated user may send only as its own address.
    pub enforce_sender_ownership: bool,
    /// An authenticated user may use the null reverse-path `<>` (it could then send mail no
    /// bounce would come back to); refused by default, like any address it does not own.
    pub submission_null_sender: bool,
    /// Recipients per message for an authenticated user (a compromised account's reach).
    pub submission_max_recipients: u32,
    /// Messages an authenticated user may submit an hour and a day, counted in the store
    /// across every ingress replica; beyond them MAIL gets 450 4.7.1. 0: no limit.
    pub sender_messages_per_hour: u32,
    pub sender_messages_per_day: u32,
    /// Mail that may wait (queued or held) for one hold or relay domain; beyond either, its
    /// recipients get 452 4.3.1 until the backlog drains. 0: no limit.
    pub domain_backlog_messages: u64,
    pub domain_backlog_bytes: u64,
    /// `RCPT TO:<postmaster>` (no domain) goes to postmaster at this domain.
    pub postmaster_domain: Option<String>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        let any = |port| vec![SocketAddr::from(([0, 0, 0, 0], port))];
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            queue_endpoint: "http://127.0.0.1:7100".into(),
            shutdown_grace_secs: 30,
            hostname: None,
            mx_listen: any(25),
            submission_listen: any(587),
            submissions_listen: any(465),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_received_headers: 50,
            max_errors: 20,
            max_commands: 10_000,
            bare_line_endings: BareLineEndings::Reject,
            command_timeout_secs: 300,
            data_timeout_secs: 300,
            tls_handshake_timeout_secs: 30,
            write_timeout_secs: 120,
            max_session_secs: 3600,
            max_data_memory_bytes: 512 * 1024 * 1024,
            max_connections: 1000,
            max_connections_per_ip: 20,
            ipv6_limit_prefix: 64,
            max_password_checks: 4,
            proxy_protocol_from: Vec::new(),
            proxy_header_timeout_secs: 10,
            trusted_networks: vec![
                "127.0.0.0/8".parse().expect("valid"),
                "::1/128".parse().expect("valid"),
            ],
            plaintext_auth: PlaintextAuth::Never,
            auth_failure_delay_ms: 1000,
            auth_max_failures: 5,
            auth_failure_window_secs: 300,
            auth_cache_secs: 300,
            recipient_cache_secs: 30,
            notify_interval_ms: 20,
            commit_writers: 2,
            commit_parallel_bytes: 256 * 1024,
            commit_batch_messages: 64,
            commit_batch_bytes: 16 * 1024 * 1024,
            etrn_per_minute: 10,
            enforce_sender_ownership: true,
            submission_null_sender: false,
            submission_max_recipients: 100,
            sender_messages_per_hour: 300,
            sender_messages_per_day: 2000,
            domain_backlog_messages: 10_000,
            domain_backlog_bytes: 2 * 1024 * 1024 * 1024,
            postmaster_domain: None,
        }
    }
}

/// `[queue]`: delivery-queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// gRPC endpoint: the queue service and health.
    pub grpc_listen: SocketAddr,
    /// The file holding the bearer token every admin call (`pochtactl queue`) must carry; the
    /// same file is where pochtactl reads it. Unset: the admin API answers nobody.
    pub admin_token_file: Option<PathBuf>,
    /// How long in-flight deliveries get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// How long a message may stay queued before it expires (set when it is accepted).
    pub message_lifetime_secs: u64,
    /// Local delivery loops in this process (recipients of local domains); each claims its
    /// own batches.
    pub workers: u32,
    /// Remote delivery loops (every other recipient), apart from the local ones so that a
    /// slow remote server never holds up local delivery.
    pub remote_workers: u32,
    /// Recipients claimed at once by one worker.
    pub batch_size: u32,
    /// After a wake-up, a loop waits this long before claiming, so that mail arriving
    /// meanwhile is delivered in the same batch (one statement, one commit): a few
    /// milliseconds of latency for far less work per message under load. 0 claims at once.
    pub claim_delay_ms: u64,
    /// How long a claim is held before another replica may take the recipient over.
    pub lease_secs: u64,
    /// How often the store is scanned for due work when no Notify arrives.
    pub scan_interval_secs: u64,
    /// The first retry of a deferred recipient waits this long; each further one twice as long
    /// (with jitter), up to `retry_max_delay_secs`.
    pub retry_delay_secs: u64,
    pub retry_max_delay_secs: u64,
    /// A recipient with NOTIFY=DELAY still undelivered this long after arrival gets one delay
    /// report.
    pub delay_report_after_secs: u64,
    /// Finished envelopes stay this long (for `pochtactl queue show`), without their content:
    /// that goes at the first collection after nothing can read it.
    pub retention_secs: u64,
    /// How often garbage collection runs (and so how long unreadable content may stay).
    pub gc_interval_secs: u64,
    /// Older messages each collection looks at besides the new ones and those whose last
    /// maildrop entry went: the whole store is gone over once every (messages / this)
    /// collections, which catches the rest (mail deferred for days, then finished).
    pub gc_window_messages: u32,
    /// How often the queue depth metric is read from the store.
    pub depth_interval_secs: u64,
    /// The name delivery status reports give as Reporting-MTA; the machine's host name if unset.
    pub hostname: Option<String>,
    /// Failure reports return the whole message (RET=FULL, or no RET) up to this size;
    /// larger ones return only the header.
    pub dsn_max_full_bytes: u64,
    /// Static routes: recipient domain → `host:port` of the server to hand its mail to.
    pub routes: std::collections::BTreeMap<String, String>,
    /// `host:port` for every other remote domain (a smarthost); unset: DNS MX lookup.
    pub smarthost: Option<String>,
    /// DNS servers for MX lookups; empty: the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// The port of MX hosts (25; another only for tests).
    pub mx_port: u16,
    /// Addresses found through DNS (MX hosts and their A/AAAA records) in these networks are
    /// never connected to: an MX pointing at loopback or a private network must not make the
    /// queue talk to the host's own or internal services. Static routes and the smarthost are
    /// exempt (the operator named them). Default: loopback, private, link-local, unique-local,
    /// shared, multicast, reserved and unspecified ranges.
    pub denied_networks: Vec<Cidr>,
    /// STARTTLS towards remote servers: opportunistic (when offered), required, verify
    /// (required, with a certificate that verifies against `tls_ca_file`), or never.
    pub outbound_tls: TlsPolicy,
    /// The roots `verify` trusts (PEM): the system's bundle unless set.
    pub tls_ca_file: std::path::PathBuf,
    /// MTA-STS (RFC 8461): a recipient domain's published policy is fetched over HTTPS,
    /// kept in the store for its max_age and followed: `enforce` sends only to the MX hosts
    /// it lists, over TLS whose certificate verifies against `tls_ca_file`, else defers;
    /// `testing` is logged and delivers as before. Static routes and the smarthost are exempt.
    pub mta_sts: bool,
    /// The HTTPS port policies are fetched from (443; another only for tests).
    pub mta_sts_port: u16,
    /// One policy fetch (connection, TLS, request and answer) ends within this.
    pub mta_sts_timeout_secs: u64,
    /// DANE (RFC 7672): DNS answers are validated with DNSSEC in this process, bogus ones
    /// refused, and an MX host whose TLSA records validate is sent to only over TLS whose
    /// certificate matches them (before MTA-STS, RFC 8461 2). Off by default: every lookup
    /// then asks for signatures and chains of keys, and a path to the DNS that strips them
    /// (some forwarders do) would make every remote domain's answers bogus.
    pub dane: bool,
    /// DNSKEY records (zone-file lines) trusted as DNSSEC anchors; unset: the IANA root keys.
    pub dnssec_trust_anchor: Option<std::path::PathBuf>,
    /// TLS reporting (RFC 8460): outbound TLS sessions with MX hosts are counted per
    /// recipient domain, and each period's counts are sent to the addresses a domain's
    /// `_smtp._tls` record names (mailed to mailto:, posted to https:).
    pub tls_reports: bool,
    /// The reporting period: a day (86400), as RFC 8460 asks; shorter only for tests.
    pub tls_report_period_secs: u64,
    /// The organization the reports name as their submitter; the host name if unset.
    pub tls_report_organization: Option<String>,
    /// `outbound_tls` for particular recipient domains; a key `.example.com` covers the
    /// subdomains of example.com (e.g. `"partner.example" = "required"`).
    pub outbound_tls_domains: std::collections::BTreeMap<String, TlsPolicy>,
    /// A connection that delivered a message stays open this long for the next message to the
    /// same server; 0 closes it at once.
    pub connection_reuse_secs: u64,
    /// Messages one outbound connection carries at most before it is closed.
    pub connection_reuse_max_messages: u32,
    pub connect_timeout_secs: u64,
    /// A server a connection to failed (refused, timed out) is not dialled again for this
    /// long: its mail is deferred at once with that failure (never longer than half of
    /// `retry_delay_secs`, so a deferred message's next attempt really tries); 0 turns it off;
    /// at most 86400.
    pub unreachable_hold_secs: u64,
    /// Connections this process keeps open at once to one destination (a route, a smarthost,
    /// or one domain's MX hosts), so one slow destination cannot occupy every worker.
    pub max_connections_per_destination: u32,
    /// Waiting for any one reply of a remote server (RFC 5321 4.5.3.2: minutes).
    pub reply_timeout_secs: u64,
    /// How long a write to a remote server may make no progress (RFC 5321 4.5.3.2.5: 3
    /// minutes per data block).
    pub write_timeout_secs: u64,
    /// The whole of one delivery to a remote server, from the connection (or taking an idle
    /// one) to the last recipient's outcome: past it the recipients are deferred, so a server
    /// that answers one byte at a time holds a connection slot no longer than this.
    pub transaction_timeout_secs: u64,
    /// How long a delivery waits for one of `max_connections_per_destination` slots before it
    /// is deferred (4.4.5): a stuck destination costs its own slots, never the others'.
    pub slot_wait_secs: u64,
}

/// Networks no MX answer may lead to (RFC 6890's special-purpose ranges that are not
/// globally reachable, documentation ranges included).
pub const INTERNAL_NETWORKS: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7100)),
            shutdown_grace_secs: 30,
            message_lifetime_secs: 5 * 24 * 3600,
            workers: 8,
            remote_workers: 8,
            batch_size: 32,
            claim_delay_ms: 50,
            lease_secs: 300,
            scan_interval_secs: 5,
            retry_delay_secs: 300,
            retry_max_delay_secs: 4 * 3600,
            delay_report_after_secs: 4 * 3600,
            retention_secs: 7 * 24 * 3600,
            gc_interval_secs: 600,
            gc_window_messages: 100_000,
            depth_interval_secs: 15,
            hostname: None,
            dsn_max_full_bytes: 1024 * 1024,
            admin_token_file: None,
            routes: Default::default(),
            smarthost: None,
            dns_servers: Vec::new(),
            mx_port: 25,
            denied_networks: INTERNAL_NETWORKS
                .iter()
                .map(|n| n.parse().expect("a valid network"))
                .collect(),
            outbound_tls: TlsPolicy::Opportunistic,
            tls_ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
            mta_sts: true,
            mta_sts_port: 443,
            mta_sts_timeout_secs: 10,
            dane: false,
            dnssec_trust_anchor: None,
            tls_reports: true,
            tls_report_period_secs: 86_400,
            tls_report_organization: None,
            outbound_tls_domains: Default::default(),
            connection_reuse_secs: 2,
            connection_reuse_max_messages: 100,
            connect_timeout_secs: 30,
            unreachable_hold_secs: 60,
            max_connections_per_destination: 2,
            reply_timeout_secs: 300,
            write_timeout_secs: 180,
            transaction_timeout_secs: 600,
            slot_wait_secs: 60,
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
    /// POP3 listeners (RFC 1939), with STLS when TLS is configured. Empty disables.
    pub pop3_listen: Vec<SocketAddr>,
    /// POP3S listeners (RFC 8314): implicit TLS.
    pub pop3s_listen: Vec<SocketAddr>,
    /// Inactivity timeout (RFC 1939 3: at least 10 minutes).
    pub timeout_secs: u64,
    pub tls_handshake_timeout_secs: u64,
    /// How long a write to a client may make no progress (a client that does not read).
    pub write_timeout_secs: u64,
    /// The longest a session may last; it is then closed at its next command (nothing is
    /// deleted: that happens only at QUIT).
    pub max_session_secs: u64,
    pub max_connections: u32,
    /// Per client address; IPv6 clients are counted per network (`ipv6_limit_prefix`).
    pub max_connections_per_ip: u32,
    /// As in `[smtp]`: IPv6 clients sharing this many leading bits count as one.
    pub ipv6_limit_prefix: u8,
    /// As in `[smtp]`: argon2id checks at once in this process.
    pub max_password_checks: u32,
    /// Load balancers whose connections start with a PROXY protocol v2 header (as in
    /// `[smtp]`). Empty: none.
    pub proxy_protocol_from: Vec<Cidr>,
    pub proxy_header_timeout_secs: u64,
    /// Error replies before the session is closed.
    pub max_errors: u32,
    /// Commands before the session is closed (a maildrop of 50,000 messages retrieved and
    /// deleted takes about 100,000).
    pub max_commands: u32,
    pub plaintext_auth: PlaintextAuth,
    pub auth_failure_delay_ms: u64,
    pub auth_max_failures: u32,
    pub auth_failure_window_secs: u64,
    /// How long a successful password check is remembered, so repeated logins skip argon2id
    /// (a password change takes effect at once). 0 disables.
    pub auth_cache_secs: u64,
    /// The maildrop lock's lifetime; a live session renews it every third of this.
    pub lock_ttl_secs: u64,
    /// RETR reads messages from the store in pieces of this many stored octets (compressed
    /// content decodes to more).
    pub retrieve_chunk_bytes: u32,
    /// RETR of a message smaller than a chunk also reads the following ones (up to this many
    /// octets in all) in the same query, as clients fetch in order; the two batches after it
    /// are read in the background meanwhile, so a session holds up to three times this.
    /// 0 disables.
    pub read_ahead_bytes: u32,
}

impl Default for Pop3Config {
    fn default() -> Self {
        let any = |port| vec![SocketAddr::from(([0, 0, 0, 0], port))];
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7102)),
            shutdown_grace_secs: 30,
            pop3_listen: any(110),
            pop3s_listen: any(995),
            timeout_secs: 600,
            tls_handshake_timeout_secs: 30,
            write_timeout_secs: 120,
            max_session_secs: 4 * 3600,
            max_connections: 1000,
            max_connections_per_ip: 20,
            ipv6_limit_prefix: 64,
            max_password_checks: 4,
            proxy_protocol_from: Vec::new(),
            proxy_header_timeout_secs: 10,
            max_errors: 20,
            max_commands: 200_000,
            plaintext_auth: PlaintextAuth::Never,
            auth_failure_delay_ms: 1000,
            auth_max_failures: 5,
            auth_failure_window_secs: 300,
            auth_cache_secs: 300,
            lock_ttl_secs: 120,
            retrieve_chunk_bytes: 256 * 1024,
            read_ahead_bytes: 1024 * 1024,
        }
    }
}

/// `[imap]`: imap-access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImapConfig {
    /// gRPC health endpoint.
    pub grpc_listen: SocketAddr,
    /// How long in-flight sessions get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// IMAP listeners (RFC 9051), with STARTTLS when TLS is configured. Empty disables.
    pub imap_listen: Vec<SocketAddr>,
    /// IMAPS listeners (RFC 8314): implicit TLS.
    pub imaps_listen: Vec<SocketAddr>,
    /// Inactivity timeout, IDLE included (RFC 9051 5.4: at least 30 minutes).
    pub timeout_secs: u64,
    pub tls_handshake_timeout_secs: u64,
    /// How long a write to a client may make no progress (a client that does not read).
    pub write_timeout_secs: u64,
    /// The longest a session may last.
    pub max_session_secs: u64,
    pub max_connections: u32,
    /// Per client address; IPv6 clients are counted per network (`ipv6_limit_prefix`).
    pub max_connections_per_ip: u32,
    /// Sessions logged in to one account at once in this process; a login past it is
    /// refused (`NO [LIMIT]`), so one account cannot take every session whatever its
    /// addresses.
    pub max_sessions_per_account: u32,
    /// As in `[smtp]`: IPv6 clients sharing this many leading bits count as one.
    pub ipv6_limit_prefix: u8,
    /// As in `[smtp]`: argon2id checks at once in this process.
    pub max_password_checks: u32,
    /// Load balancers whose connections start with a PROXY protocol v2 header (as in
    /// `[smtp]`). Empty: none.
    pub proxy_protocol_from: Vec<Cidr>,
    pub proxy_header_timeout_secs: u64,
    /// Bad commands before the session is closed.
    pub max_errors: u32,
    pub plaintext_auth: PlaintextAuth,
    pub auth_failure_delay_ms: u64,
    pub auth_max_failures: u32,
    pub auth_failure_window_secs: u64,
    /// As in `[pop3]`: how long a successful password check is remembered. 0 disables.
    pub auth_cache_secs: u64,
    /// Largest literal a client may send (APPEND's message included), in octets.
    pub max_literal_bytes: u32,
    /// Client input held in memory by all sessions together (commands being received, APPEND
    /// literals above all); beyond it, only the session that began first reads on.
    pub max_input_memory_bytes: u64,
    /// FETCH and SEARCH read message octets from the store in batches of about this many; a
    /// larger message's BODY[] is sent in pieces of this many.
    pub read_batch_bytes: u32,
    /// How often a session in IDLE looks whether its mailbox changed (it asks the store only
    /// after a change was announced, so an idle session costs a timer between changes).
    pub change_check_ms: u64,
    /// Mailboxes one account may have (INBOX and the special-use folders included); a
    /// CREATE past it gets `NO [LIMIT]`.
    pub max_mailboxes: u32,
    /// Keywords one message may carry; a STORE or APPEND past it gets `NO [LIMIT]`.
    pub max_keywords: u32,
    /// Octets of one keyword; a longer one gets `NO [LIMIT]`.
    pub max_keyword_length: u32,
}

impl Default for ImapConfig {
    fn default() -> Self {
        let any = |port| vec![SocketAddr::from(([0, 0, 0, 0], port))];
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7103)),
            shutdown_grace_secs: 30,
            imap_listen: any(143),
            imaps_listen: any(993),
            timeout_secs: 1800,
            tls_handshake_timeout_secs: 30,
            write_timeout_secs: 120,
            max_session_secs: 24 * 3600,
            max_connections: 10_000,
            max_connections_per_ip: 50,
            max_sessions_per_account: 50,
            ipv6_limit_prefix: 64,
            max_password_checks: 4,
            proxy_protocol_from: Vec::new(),
            proxy_header_timeout_secs: 10,
            max_errors: 20,
            plaintext_auth: PlaintextAuth::Never,
            auth_failure_delay_ms: 1000,
            auth_max_failures: 5,
            auth_failure_window_secs: 300,
            auth_cache_secs: 300,
            max_literal_bytes: 50 * 1024 * 1024,
            max_input_memory_bytes: 256 * 1024 * 1024,
            read_batch_bytes: 1024 * 1024,
            change_check_ms: 250,
            max_mailboxes: 1000,
            max_keywords: 100,
            max_keyword_length: 128,
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
        // POCHTA_CONFIG names the file (`--config`); it is no key of the configuration.
        let env = Env::prefixed("POCHTA_").split("__").ignore(&["config"]);
        extract(figment.merge(env))
    }

    /// Parses TOML text over the defaults, without looking at the environment.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        extract(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
    }

    /// Checks what types alone cannot, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store.validate()?;
        self.telemetry.validate()?;
        self.tls.validate()?;
        self.smtp.validate()?;
        self.queue.validate()?;
        self.pop3.validate()?;
        self.imap.validate()?;
        self.addresses.validate()?;
        self.mail_auth.validate()
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

/// The admin bearer token from `path`: one line of at least 32 visible ASCII characters (it
/// travels in a gRPC header), surrounding whitespace ignored.
pub fn read_admin_token(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("admin token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Invalid(format!(
            "admin token file {}: the token must be at least 32 visible ASCII characters \
             (e.g. `openssl rand -hex 32`)",
            path.display()
        )));
    }
    Ok(token.to_owned())
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
    fn cidr_contains() {
        let net: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(net.contains("192.0.2.200".parse().unwrap()));
        assert!(!net.contains("192.0.3.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:192.0.2.1".parse().unwrap()),
            "v4-mapped v6"
        );
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let host: Cidr = "::1".parse().unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!(!host.contains("::2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert_eq!(net.to_string(), "192.0.2.0/24");
    }

    #[test]
    fn the_recipient_delimiter_is_a_short_printable_string_without_at() {
        let with = |d: &str| AddressesConfig {
            recipient_delimiter: d.into(),
            ..AddressesConfig::default()
        };
        for good in ["+", "-", "", "++"] {
            assert!(with(good).validate().is_ok(), "{good:?}");
        }
        for bad in ["@", " ", "\r", "+@", "\"", "12345678901234567"] {
            assert!(with(bad).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }
}
