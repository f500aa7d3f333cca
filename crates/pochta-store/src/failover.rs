//! Several PostgreSQL servers, one primary: a URL naming more than one host, libpq style
//! (`postgres://user@primary:5432,standby:5432/pochta?target_session_attrs=read-write`), makes
//! the store connect only to the one that accepts writes, and follow it when a standby is
//! promoted. Connections are refused unless `pg_is_in_recovery()` is false; a watcher checks
//! once a second and, when the current server is gone or read-only, points the pool at the
//! first writable one. Connections to a dead server fail their next query (an error every
//! caller already treats as temporary) and leave the pool.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, PgPool};

use crate::{Result, StoreError};

/// How often the watcher checks that the pool's server still takes writes.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long one check or probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The single-host URLs a libpq-style multi-host URL stands for, in order; one URL for an
/// ordinary URL. `target_session_attrs` is dropped: with several hosts the store always wants
/// the writable one.
pub(crate) fn host_urls(url: &str) -> Vec<String> {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let hosts_start = rest[..authority_end].rfind('@').map_or(0, |at| at + 1);
    let (prefix, hosts, suffix) = (
        &url[..scheme_end + hosts_start],
        &rest[hosts_start..authority_end],
        &rest[authority_end..],
    );
    let suffix = without_param(suffix, "target_session_attrs");
    hosts
        .split(',')
        .map(|host| format!("{prefix}{host}{suffix}"))
        .collect()
}

/// `path?query` without the parameter `name`.
fn without_param(suffix: &str, name: &str) -> String {
    let Some((path, query)) = suffix.split_once('?') else {
        return suffix.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| p.split('=').next() != Some(name))
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Whether the server behind `conn` takes writes.
pub(crate) async fn is_writable(conn: &mut PgConnection) -> Result<bool> {
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await?;
    Ok(!in_recovery)
}

/// The first of `candidates` that answers and takes writes.
pub(crate) async fn writable(candidates: &[PgConnectOptions]) -> Result<PgConnectOptions> {
    let mut last = None;
    for options in candidates {
        let probe = async {
            let mut conn = PgConnection::connect_with(options).await?;
            let writable = is_writable(&mut conn).await;
            let _ = conn.close().await;
            writable
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(true)) => return Ok(options.clone()),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => last = Some(e),
            Err(_) => {}
        }
    }
    Err(last.unwrap_or_else(|| {
        StoreError::Database(sqlx::Error::Protocol(
            "no server of the store URL accepts writes".into(),
        ))
    }))
}

/// Stops the watcher when the last handle on the store goes.
#[derive(Debug)]
pub(crate) struct Watcher(tokio::task::JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps `pool` pointed at a writable server among `candidates`.
pub(crate) fn watch(pool: PgPool, candidates: Vec<PgConnectOptions>) -> Watcher {
    Watcher(tokio::spawn(async move {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            if pool.is_closed() {
                return;
            }
            let fine = async {
                let mut conn = pool.acquire().await?;
                is_writable(&mut conn).await
            };
            if let Ok(Ok(true)) = tokio::time::timeout(PROBE_TIMEOUT, fine).await {
                continue;
            }
            match writable(&candidates).await {
                Ok(options) => {
                    let current = pool.connect_options();
                    if (options.get_host(), options.get_port())
                        != (current.get_host(), current.get_port())
                    {
                        tracing::warn!(
                            host = options.get_host(),
                            port = options.get_port(),
                            "the store's writable server changed; connecting there"
                        );
                        pool.set_connect_options(options);
                    }
                }
                Err(e) => tracing::warn!("no writable store server yet: {e}"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_urls_split_into_one_per_host() {
        assert_eq!(
            host_urls(
                "postgres://u:p@a:5432,b:5433/db?target_session_attrs=read-write&sslmode=disable"
            ),
            [
                "postgres://u:p@a:5432/db?sslmode=disable",
                "postgres://u:p@b:5433/db?sslmode=disable"
            ]
        );
        assert_eq!(
            host_urls("postgres://a,b/db?target_session_attrs=read-write"),
            ["postgres://a/db", "postgres://b/db"]
        );
        assert_eq!(
            host_urls("postgres://u@h:5432/db"),
            ["postgres://u@h:5432/db"]
        );
    }

    /// A configured URL is operator input: odd ones split without panicking, a password with
    /// `@` or `,` stays whole, and empty hosts come out as URLs that fail to parse (an error
    /// at start-up, not a connection somewhere unintended).
    #[test]
    fn odd_urls_split_safely() {
        assert_eq!(
            host_urls("postgres://u:p@s,s@a,b/db"),
            ["postgres://u:p@s,s@a/db", "postgres://u:p@s,s@b/db"]
        );
        for odd in [
            "",
            "postgres://",
            "postgres://,",
            "x",
            "postgres://u@a,,b/db?",
            "?,@/",
        ] {
            for url in host_urls(odd) {
                let _ = url.parse::<PgConnectOptions>();
            }
        }
        let empty = host_urls("postgres://u@a,/db");
        assert_eq!(empty, ["postgres://u@a/db", "postgres://u@/db"]);
        assert!(empty[1].parse::<PgConnectOptions>().is_err());
    }
}
