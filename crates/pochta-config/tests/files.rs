//! Configuration files: the shipped example, unknown keys, bad values.

use pochta_config::{Config, ConfigError, LogFormat};

#[test]
fn shipped_example_is_valid_and_documents_the_defaults() {
    let example = include_str!("../../../deploy/pochta.toml");
    let parsed = Config::from_toml_str(example).unwrap();
    let mut expected = Config::default();
    // The example points at the compose stack's database, listens on all interfaces and
    // takes PROXY headers from the stack's haproxy; the admin token is compose's secret.
    expected.store.url = "postgres://pochta@postgres:5432/pochta".into();
    expected.smtp.grpc_listen = "0.0.0.0:7101".parse().unwrap();
    expected.smtp.queue_endpoint = "http://delivery-queue:7100".into();
    expected.smtp.proxy_protocol_from = vec!["172.28.0.10/32".parse().unwrap()];
    expected.queue.grpc_listen = "0.0.0.0:7100".parse().unwrap();
    expected.queue.admin_token_file = Some("/run/secrets/admin_token".into());
    expected.pop3.grpc_listen = "0.0.0.0:7102".parse().unwrap();
    expected.imap.grpc_listen = "0.0.0.0:7103".parse().unwrap();
    expected.tls.cert_path = Some("/etc/pochta/tls/cert.pem".into());
    expected.tls.key_path = Some("/etc/pochta/tls/key.pem".into());
    assert_eq!(parsed, expected);
}

#[test]
fn values_override_defaults() {
    let c = Config::from_toml_str(
        "[telemetry]\nlog_format = \"json\"\notlp_endpoint = \"http://collector:4317\"\n",
    )
    .unwrap();
    assert_eq!(c.telemetry.log_format, LogFormat::Json);
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://collector:4317")
    );
    assert_eq!(c.store, Config::default().store);
}

fn invalid(text: &str) -> String {
    match Config::from_toml_str(text) {
        Err(ConfigError::Invalid(message)) => message,
        other => panic!("expected an error for {text:?}, got {other:?}"),
    }
}

#[test]
fn errors_name_the_key() {
    assert!(invalid("[store]\nurll = \"x\"\n").contains("urll"));
    assert!(invalid("[nonsense]\na = 1\n").contains("nonsense"));
    assert!(invalid("[pop3]\ngrpc_listen = \"not an address\"\n").contains("grpc_listen"));
    assert!(invalid("[store]\nurl = \"mysql://x\"\n").contains("store.url"));
    for level in ["0", "20", "-5"] {
        let text = format!("[store]\ncompression_level = {level}\n");
        assert!(
            invalid(&text).contains("store.compression_level"),
            "{level}"
        );
    }
    assert!(invalid("[store]\ncompression = \"gzip\"\n").contains("compression"));
    for hold in ["86401", "9223372036854775807"] {
        let text = format!("[queue]\nunreachable_hold_secs = {hold}\n");
        assert!(
            invalid(&text).contains("queue.unreachable_hold_secs"),
            "{hold}"
        );
    }
    for hold in ["-1", "18446744073709551615", "\"60\""] {
        let text = format!("[queue]\nunreachable_hold_secs = {hold}\n");
        assert!(invalid(&text).contains("unreachable_hold_secs"), "{hold}");
    }
    for hold in ["0", "86400"] {
        let text = format!("[queue]\nunreachable_hold_secs = {hold}\n");
        assert!(Config::from_toml_str(&text).is_ok(), "{hold}");
    }
    let off = Config::from_toml_str("[store]\ncompression = \"none\"\n").unwrap();
    assert_eq!(off.store.compression, pochta_config::ContentCodec::None);
    assert!(invalid("[tls]\ncert_path = \"/c.pem\"\n").contains("tls"));
    assert!(
        invalid("[telemetry]\notlp_endpoint = \"collector:4317\"\n")
            .contains("telemetry.otlp_endpoint")
    );
    assert!(invalid("[smtp]\nqueue_endpoint = \"\"\n").contains("smtp.queue_endpoint"));
}

#[test]
fn a_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    assert!(
        matches!(Config::load(Some(&missing)), Err(ConfigError::MissingFile(p)) if p == missing)
    );
}

#[test]
fn redacted_toml_round_trips_without_the_secret() {
    let mut c = Config::default();
    c.store.url = "postgres://pochta:topsecret@db/pochta".into();
    let printed = c.to_redacted_toml();
    assert!(!printed.contains("topsecret"));
    let back = Config::from_toml_str(&printed).unwrap();
    assert_eq!(back.store.url, "postgres://pochta:********@db/pochta");
    assert_eq!(back.telemetry, c.telemetry);
}

/// Values that would make a service spin (a zero interval), panic (a zero renewal period) or
/// do nothing at all are refused by name.
#[test]
fn values_that_would_spin_or_panic_are_refused() {
    for (section, key) in [
        ("queue", "lease_secs"),
        ("queue", "batch_size"),
        ("queue", "gc_interval_secs"),
        ("queue", "gc_window_messages"),
        ("queue", "scan_interval_secs"),
        ("queue", "depth_interval_secs"),
        ("queue", "retry_delay_secs"),
        ("queue", "workers"),
        ("queue", "remote_workers"),
        ("queue", "transaction_timeout_secs"),
        ("queue", "slot_wait_secs"),
        ("queue", "write_timeout_secs"),
        ("queue", "max_connections_per_destination"),
        ("smtp", "max_commands"),
        ("smtp", "write_timeout_secs"),
        ("smtp", "max_session_secs"),
        ("smtp", "max_data_memory_bytes"),
        ("smtp", "max_password_checks"),
        ("pop3", "max_commands"),
        ("pop3", "write_timeout_secs"),
        ("pop3", "max_session_secs"),
        ("pop3", "max_password_checks"),
        ("imap", "max_connections"),
        ("imap", "max_errors"),
        ("imap", "write_timeout_secs"),
        ("imap", "max_session_secs"),
        ("imap", "max_literal_bytes"),
        ("imap", "max_input_memory_bytes"),
        ("imap", "read_batch_bytes"),
        ("imap", "change_check_ms"),
        ("imap", "max_mailboxes"),
        ("imap", "max_keywords"),
        ("imap", "max_keyword_length"),
    ] {
        let message = invalid(&format!("[{section}]\n{key} = 0\n"));
        assert!(
            message.contains(&format!("{section}.{key}")),
            "{key}: {message}"
        );
    }
    assert!(invalid("[queue]\nlease_secs = 2\n").contains("queue.lease_secs"));
    assert!(invalid("[smtp]\nipv6_limit_prefix = 0\n").contains("smtp.ipv6_limit_prefix"));
    assert!(invalid("[pop3]\nipv6_limit_prefix = 129\n").contains("pop3.ipv6_limit_prefix"));
    // RFC 9051 5.4: an autologout timer of at least 30 minutes.
    assert!(invalid("[imap]\ntimeout_secs = 60\n").contains("imap.timeout_secs"));
    assert!(invalid("[imap]\nipv6_limit_prefix = 200\n").contains("imap.ipv6_limit_prefix"));
}

/// The checks' limits are at least 1; per-domain DMARC handling names domains; the strictest
/// recipient domain decides.
#[test]
fn mail_auth_limits_and_per_domain_dmarc() {
    assert!(invalid("[mail_auth]\ndns_timeout_ms = 0\n").contains("mail_auth.dns_timeout_ms"));
    assert!(
        invalid("[mail_auth]\ndmarc_domains = { \"not a domain\" = \"monitor\" }\n")
            .contains("mail_auth.dmarc_domains")
    );
    assert!(invalid("[mail_auth]\ndmarc = \"ignore\"\n").contains("dmarc"));
    let c = Config::from_toml_str(
        "[mail_auth]\ndmarc_domains = { \"lists.example.org\" = \"monitor\" }\n",
    )
    .unwrap();
    c.validate().unwrap();
    use pochta_config::DmarcAction::{Enforce, Monitor};
    assert_eq!(c.mail_auth.dmarc_action(["Lists.Example.ORG"]), Monitor);
    assert_eq!(
        c.mail_auth
            .dmarc_action(["lists.example.org", "example.org"]),
        Enforce
    );
    assert_eq!(c.mail_auth.dmarc_action([]), Enforce);
}
