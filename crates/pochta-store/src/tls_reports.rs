//! TLS reporting (RFC 8460): the queue counts its outbound TLS sessions here, per reporting
//! period, and one replica takes each ended period's counts to report them.

use chrono::{DateTime, Utc};

use crate::{Result, Store};

/// One counted line of a period's results for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsResultCount {
    /// `sts` or `no-policy-found`.
    pub policy_type: String,
    /// The policy as the report shows it (the MTA-STS policy's lines), empty without one.
    pub policy_string: Vec<String>,
    pub mx_host: String,
    /// `success`, or an RFC 8460 result type (`certificate-host-mismatch`, ...).
    pub result: String,
    pub sessions: i64,
}

/// A domain's results for one ended period, taken for its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsReportPeriod {
    pub domain: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub results: Vec<TlsResultCount>,
}

impl Store {
    /// Counts one TLS session (or one that should have been) with an MX host of `domain`, in
    /// the period of `period_secs` that holds now.
    pub async fn record_tls_result(
        &self,
        domain: &str,
        policy_type: &str,
        policy_string: &[String],
        mx_host: &str,
        result: &str,
        period_secs: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO tls_report_results
                 (period_start, domain, policy_type, policy_string, mx_host, result, sessions)
             VALUES (to_timestamp(floor(extract(epoch FROM now()) / $6) * $6), $1, $2, $3, $4,
                     $5, 1)
             ON CONFLICT (period_start, domain, policy_type, mx_host, result)
             DO UPDATE SET sessions = tls_report_results.sessions + 1,
                           policy_string = EXCLUDED.policy_string",
        )
        .bind(domain.to_ascii_lowercase())
        .bind(policy_type)
        .bind(policy_string)
        .bind(mx_host.to_ascii_lowercase())
        .bind(result)
        .bind(period_secs as f64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes the results of every ended period (of `period_secs`) whose report no replica
    /// has taken yet: each (period, domain) is taken once, and its counts leave the store
    /// with it.
    pub async fn take_tls_reports(&self, period_secs: u64) -> Result<Vec<TlsReportPeriod>> {
        let mut tx = self.pool.begin().await?;
        let taken: Vec<(DateTime<Utc>, String)> = sqlx::query_as(
            "INSERT INTO tls_reports_taken (period_start, domain)
             SELECT DISTINCT period_start, domain FROM tls_report_results
             WHERE period_start + $1 * interval '1 second' <= now()
             ON CONFLICT DO NOTHING
             RETURNING period_start, domain",
        )
        .bind(period_secs as f64)
        .fetch_all(&mut *tx)
        .await?;
        let mut periods = Vec::with_capacity(taken.len());
        for (start, domain) in taken {
            let rows: Vec<(String, Vec<String>, String, String, i64)> = sqlx::query_as(
                "DELETE FROM tls_report_results WHERE period_start = $1 AND domain = $2
                 RETURNING policy_type, policy_string, mx_host, result, sessions",
            )
            .bind(start)
            .bind(&domain)
            .fetch_all(&mut *tx)
            .await?;
            let mut results: Vec<TlsResultCount> = rows
                .into_iter()
                .map(
                    |(policy_type, policy_string, mx_host, result, sessions)| TlsResultCount {
                        policy_type,
                        policy_string,
                        mx_host,
                        result,
                        sessions,
                    },
                )
                .collect();
            results.sort_by(|a, b| (&a.mx_host, &a.result).cmp(&(&b.mx_host, &b.result)));
            periods.push(TlsReportPeriod {
                domain,
                start,
                end: start + chrono::Duration::seconds(period_secs as i64),
                results,
            });
        }
        // Periods are remembered a while so a late replica cannot take them again; a count
        // that landed in a period after it was taken (a clock a little behind) goes then too.
        sqlx::query("DELETE FROM tls_reports_taken WHERE taken_at < now() - interval '7 days'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM tls_report_results WHERE period_start < now() - interval '7 days'",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(periods)
    }
}
