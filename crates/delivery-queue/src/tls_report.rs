//! TLS reports (RFC 8460): the outbound TLS sessions the remote loops counted per recipient
//! domain (`Store::record_tls_result`) are, once their period has ended, sent as one report
//! per domain to the addresses of its `_smtp._tls` TXT record: JSON (4.4), gzipped, mailed
//! to `mailto:` ones in a `multipart/report; report-type="tlsrpt"` message (5.3) and posted
//! to `https:` ones (5.4). One replica takes each period (`Store::take_tls_reports`); a
//! domain without a record gets none.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use hickory_resolver::TokioResolver;
use pochta_mail::{Body, Disposition, Mailbox};
use pochta_service::Shutdown;
use pochta_store::{DomainRole, NewEnvelope, NewRecipient, QueueId, Store, TlsReportPeriod};
use serde_json::json;

use crate::https::Https;

pub struct Reporter {
    pub store: Store,
    pub resolver: TokioResolver,
    /// For `https:` addresses (None: the roots are not loaded, and they are skipped).
    pub https: Option<Https>,
    pub period: Duration,
    /// The submitter's host name (Reporting-MTA of the reports).
    pub hostname: String,
    pub organization: String,
    pub lifetime: Duration,
    /// Signs the reports (RFC 8460 5.3 asks for DKIM), where a domain of ours has keys.
    pub dkim: Option<std::sync::Arc<pochta_dkim::DkimSigning>>,
}

impl Reporter {
    pub async fn run(self, shutdown: Shutdown) {
        // Soon after a period ends, without asking the store more than once a minute or so.
        let every = (self.period / 8).clamp(Duration::from_secs(1), Duration::from_secs(300));
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let periods = match self.store.take_tls_reports(self.period.as_secs()).await {
                Ok(periods) => periods,
                Err(e) => {
                    tracing::warn!("taking the TLS report counts failed (retried): {e}");
                    continue;
                }
            };
            for period in periods {
                self.send(&period).await;
            }
        }
    }

    async fn send(&self, period: &TlsReportPeriod) {
        let domain = &period.domain;
        let Some((addresses, urls)) = self.report_addresses(domain).await else {
            return;
        };
        let report_id = format!(
            "{}.{}@{}",
            period.start.format("%Y%m%dT%H%M%SZ"),
            domain,
            self.hostname
        );
        let json = report_json(period, &self.organization, &self.hostname, &report_id);
        for url in &urls {
            self.post(domain, url, &json).await;
        }
        if addresses.is_empty() {
            return;
        }
        let message = match report_message(period, &self.hostname, &report_id, &json) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(%domain, "building the TLS report failed: {e}");
                return;
            }
        };
        let message = match &self.dkim {
            Some(dkim) => dkim.signed_report(message).await,
            None => message,
        };
        let mut recipients = Vec::new();
        for address in addresses {
            let local = matches!(
                self.store.lookup_recipient(&address).await,
                Ok(found) if found.role == Some(DomainRole::Local)
            );
            recipients.push(NewRecipient {
                address,
                orcpt: None,
                notify: None,
                disposition: if local {
                    Disposition::Local
                } else {
                    Disposition::Remote
                },
            });
        }
        let envelope = NewEnvelope {
            queue_id: QueueId::generate(),
            // No bounce may come back about a report (as for delivery reports).
            reverse_path: None,
            envid: None,
            ret: None,
            body: Some(Body::SevenBit),
            smtputf8: false,
            client_address: None,
            client_helo: None,
            auth_user: None,
            received_by: Some(self.hostname.clone()),
            traceparent: None,
            lifetime: self.lifetime,
            recipients,
            quarantine: None,
            requiretls: false,
        };
        match self.store.enqueue(&envelope, &message).await {
            Ok(_) => tracing::info!(%domain, queue_id = %envelope.queue_id, "TLS report queued"),
            Err(e) => tracing::warn!(%domain, "queueing the TLS report failed: {e}"),
        }
    }

    /// Posts the gzipped report to an `https:` address (RFC 8460 5.4): any 2xx is taken.
    async fn post(&self, domain: &str, url: &HttpsUrl, json: &str) {
        let Some(https) = &self.https else {
            tracing::info!(%domain, "TLS report not posted: no roots loaded (queue.tls_ca_file)");
            return;
        };
        let body = match gzip(json) {
            Ok(body) => body,
            Err(e) => return tracing::warn!(%domain, "compressing the TLS report failed: {e}"),
        };
        let request = http::Request::post(url.path.as_str())
            .header(http::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)));
        let request = match request {
            Ok(request) => request,
            Err(e) => return tracing::warn!(%domain, "TLS report request: {e}"),
        };
        match https.send(&url.host, url.port, request, 64 * 1024).await {
            Ok((status, _)) if status.is_success() => {
                tracing::info!(%domain, host = %url.host, "TLS report posted")
            }
            Ok((status, _)) => {
                tracing::warn!(%domain, host = %url.host, "TLS report refused: {status}")
            }
            Err(e) => tracing::warn!(%domain, "posting the TLS report failed: {e}"),
        }
    }

    /// The `mailto:` and `https:` addresses of the domain's `_smtp._tls` record (RFC 8460
    /// 3), if it has exactly one record.
    async fn report_addresses(&self, domain: &str) -> Option<(Vec<Mailbox>, Vec<HttpsUrl>)> {
        let records: Vec<String> =
            crate::mx::txt_records(&self.resolver, &format!("_smtp._tls.{domain}"))
                .await
                .into_iter()
                .filter(|t| t.trim_start().starts_with("v=TLSRPTv1"))
                .collect();
        let [record] = records.as_slice() else {
            return None;
        };
        let (addresses, urls) = (rua_mailto(record), rua_https(record));
        (!addresses.is_empty() || !urls.is_empty()).then_some((addresses, urls))
    }
}

/// An `https:` report address: host, port (443 unless given) and path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpsUrl {
    host: String,
    port: u16,
    path: String,
}

/// The `https:` URIs of a TLSRPT record's `rua=`.
fn rua_https(record: &str) -> Vec<HttpsUrl> {
    rua(record)
        .filter_map(|uri| uri.strip_prefix("https://"))
        .filter_map(|rest| {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, port.parse().ok()?),
                None => (authority, 443),
            };
            pochta_mail::is_domain_name(host).then(|| HttpsUrl {
                host: host.to_ascii_lowercase(),
                port,
                path: format!("/{path}"),
            })
        })
        .collect()
}

/// The URIs of a TLSRPT record's `rua=` (RFC 8460 3: comma-separated).
fn rua(record: &str) -> impl Iterator<Item = &str> {
    record
        .split(';')
        .filter_map(|field| field.trim().strip_prefix("rua="))
        .flat_map(|uris| uris.split(','))
        .map(str::trim)
}

fn gzip(json: &str) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json.as_bytes())?;
    gz.finish()
}

/// The mailboxes of a TLSRPT record's `rua=` (RFC 8460 3: comma-separated URIs).
fn rua_mailto(record: &str) -> Vec<Mailbox> {
    rua(record)
        .filter_map(|uri| uri.strip_prefix("mailto:"))
        .filter_map(|address| Mailbox::parse(address.split('?').next()?).ok())
        .collect()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The report (RFC 8460 4.4): one policy entry per policy seen, with its successful and
/// failed session counts and the failures by result type and MX host.
fn report_json(
    period: &TlsReportPeriod,
    organization: &str,
    hostname: &str,
    report_id: &str,
) -> String {
    let mut policies: Vec<(String, Vec<String>)> = Vec::new();
    for r in &period.results {
        let key = (r.policy_type.clone(), r.policy_string.clone());
        if !policies.contains(&key) {
            policies.push(key);
        }
    }
    let entries: Vec<serde_json::Value> = policies
        .iter()
        .map(|(policy_type, policy_string)| {
            let results: Vec<_> = period
                .results
                .iter()
                .filter(|r| &r.policy_type == policy_type && &r.policy_string == policy_string)
                .collect();
            let successes: i64 = results
                .iter()
                .filter(|r| r.result == "success")
                .map(|r| r.sessions)
                .sum();
            let failures: Vec<serde_json::Value> = results
                .iter()
                .filter(|r| r.result != "success")
                .map(|r| {
                    json!({
                        "result-type": r.result,
                        "receiving-mx-hostname": r.mx_host,
                        "failed-session-count": r.sessions,
                    })
                })
                .collect();
            let failed: i64 = results
                .iter()
                .filter(|r| r.result != "success")
                .map(|r| r.sessions)
                .sum();
            let mut policy = json!({
                "policy-type": policy_type,
                "policy-domain": period.domain,
            });
            // The policy itself: the MTA-STS policy's lines, or the host's TLSA records.
            if policy_type != "no-policy-found" {
                policy["policy-string"] = json!(policy_string);
            }
            if policy_type == "sts" {
                let mx: Vec<&str> = policy_string
                    .iter()
                    .filter_map(|l| l.strip_prefix("mx: "))
                    .collect();
                policy["mx-host"] = json!(mx);
            }
            json!({
                "policy": policy,
                "summary": {
                    "total-successful-session-count": successes,
                    "total-failure-session-count": failed,
                },
                "failure-details": failures,
            })
        })
        .collect();
    json!({
        "organization-name": organization,
        "date-range": {
            "start-datetime": rfc3339(period.start),
            "end-datetime": rfc3339(period.end - chrono::Duration::seconds(1)),
        },
        "contact-info": format!("postmaster@{hostname}"),
        "report-id": report_id,
        "policies": entries,
    })
    .to_string()
}

/// The report mail (RFC 8460 5.3): a human-readable part and the gzipped JSON as
/// `application/tlsrpt+gzip`, named `submitter!domain!start!end!id.json.gz`.
fn report_message(
    period: &TlsReportPeriod,
    hostname: &str,
    report_id: &str,
    json: &str,
) -> std::io::Result<Vec<u8>> {
    let compressed = gzip(json)?;
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(compressed);
    let mut lines = String::new();
    for chunk in encoded.as_bytes().chunks(76) {
        lines.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        lines.push_str("\r\n");
    }
    let domain = &period.domain;
    let boundary = format!("tlsrpt-{}", QueueId::generate());
    let file = format!(
        "{hostname}!{domain}!{}!{}!{}.json.gz",
        period.start.timestamp(),
        period.end.timestamp(),
        QueueId::generate()
    );
    let message = format!(
        "From: TLS reports <postmaster@{hostname}>\r\n\
         Date: {date}\r\n\
         Subject: Report Domain: {domain} Submitter: {hostname} Report-ID: <{report_id}>\r\n\
         Message-ID: <{report_id}>\r\n\
         TLS-Report-Domain: {domain}\r\n\
         TLS-Report-Submitter: {hostname}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         The TLS report of {hostname} for {domain}, {start} to {end} (RFC 8460).\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: application/tlsrpt+gzip; name=\"{file}\"\r\n\
         Content-Disposition: attachment; filename=\"{file}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         \r\n\
         {lines}\r\n\
         --{boundary}--\r\n",
        date = Utc::now().to_rfc2822(),
        start = rfc3339(period.start),
        end = rfc3339(period.end),
    );
    Ok(message.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pochta_store::TlsResultCount;

    #[test]
    fn rua_gives_mailto_addresses_and_https_urls_apart() {
        let found = rua_mailto(
            "v=TLSRPTv1; rua=mailto:a@example.org,https://r.example/x, mailto:b@example.net?subject=x",
        );
        let found: Vec<String> = found.iter().map(|m| m.to_string()).collect();
        assert_eq!(found, ["a@example.org", "b@example.net"]);
        assert!(rua_mailto("v=TLSRPTv1; rua=https://r.example/x").is_empty());
        let urls = rua_https(
            "v=TLSRPTv1;rua=mailto:a@b.example,https://R.example/x/y, https://r.example:8443",
        );
        assert_eq!(
            urls,
            [
                HttpsUrl {
                    host: "r.example".into(),
                    port: 443,
                    path: "/x/y".into()
                },
                HttpsUrl {
                    host: "r.example".into(),
                    port: 8443,
                    path: "/".into()
                },
            ]
        );
        assert!(rua_https("v=TLSRPTv1; rua=https://bad host/").is_empty());
    }

    #[test]
    fn the_report_counts_sessions_per_policy_and_failures_per_result() {
        let count = |policy_type: &str, result: &str, mx: &str, sessions| TlsResultCount {
            policy_type: policy_type.into(),
            policy_string: if policy_type == "sts" {
                vec![
                    "version: STSv1".into(),
                    "mode: enforce".into(),
                    "mx: *.example.org".into(),
                ]
            } else {
                vec![]
            },
            mx_host: mx.into(),
            result: result.into(),
            sessions,
        };
        let start = DateTime::parse_from_rfc3339("2026-12-05T00:00:00Z")
            .unwrap()
            .to_utc();
        let period = TlsReportPeriod {
            domain: "example.org".into(),
            start,
            end: start + chrono::Duration::days(1),
            results: vec![
                count("sts", "success", "mx1.example.org", 7),
                count("sts", "certificate-expired", "mx2.example.org", 2),
                count(
                    "no-policy-found",
                    "starttls-not-supported",
                    "mx3.example.org",
                    1,
                ),
            ],
        };
        let report: serde_json::Value =
            serde_json::from_str(&report_json(&period, "Example", "mx.test", "id-1")).unwrap();
        assert_eq!(
            report["date-range"]["start-datetime"],
            "2026-12-05T00:00:00Z"
        );
        assert_eq!(report["date-range"]["end-datetime"], "2026-12-05T23:59:59Z");
        assert_eq!(report["report-id"], "id-1");
        let sts = &report["policies"][0];
        assert_eq!(sts["policy"]["policy-type"], "sts");
        assert_eq!(sts["policy"]["mx-host"][0], "*.example.org");
        assert_eq!(sts["summary"]["total-successful-session-count"], 7);
        assert_eq!(sts["summary"]["total-failure-session-count"], 2);
        assert_eq!(
            sts["failure-details"][0]["result-type"],
            "certificate-expired"
        );
        assert_eq!(
            sts["failure-details"][0]["receiving-mx-hostname"],
            "mx2.example.org"
        );
        let none = &report["policies"][1];
        assert_eq!(none["policy"]["policy-type"], "no-policy-found");
        assert_eq!(none["summary"]["total-failure-session-count"], 1);
        let message = report_message(&period, "mx.test", "id-1", "{}").unwrap();
        let text = String::from_utf8(message).unwrap();
        assert!(text.contains("TLS-Report-Domain: example.org\r\n"));
        assert!(text.contains("report-type=\"tlsrpt\""));
        assert!(text.contains("application/tlsrpt+gzip; name=\"mx.test!example.org!"));
    }
}
