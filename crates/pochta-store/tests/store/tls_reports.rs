//! TLS reporting's counts (RFC 8460) in the store.

use pochta_testkit::TestDb;

/// TLS report counts (RFC 8460) add up per period, domain, MX host and result, and each
/// ended period is taken once, by one of two replicas, with its counts.
#[tokio::test]
async fn tls_report_counts_are_taken_once_per_ended_period() {
    let db = TestDb::new().await.unwrap();
    let (one, two) = (db.store(), db.connect().await.unwrap());
    let sts = vec!["version: STSv1".to_owned(), "mode: enforce".to_owned()];
    for result in ["success", "success", "certificate-expired"] {
        one.record_tls_result("Example.ORG", "sts", &sts, "MX1.example.org", result, 2)
            .await
            .unwrap();
    }
    two.record_tls_result(
        "other.example",
        "no-policy-found",
        &[],
        "mx.other.example",
        "success",
        2,
    )
    .await
    .unwrap();
    assert!(
        one.take_tls_reports(2).await.unwrap().is_empty(),
        "the period has not ended"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (a, b) = tokio::join!(one.take_tls_reports(2), two.take_tls_reports(2));
    let mut taken = [a.unwrap(), b.unwrap()].concat();
    taken.sort_by(|x, y| x.domain.cmp(&y.domain));
    assert_eq!(taken.len(), 2, "each domain's period once: {taken:?}");
    let example = &taken[0];
    assert_eq!(example.domain, "example.org");
    assert_eq!(example.end - example.start, chrono::Duration::seconds(2));
    let counts: Vec<(&str, &str, i64)> = example
        .results
        .iter()
        .map(|r| (r.mx_host.as_str(), r.result.as_str(), r.sessions))
        .collect();
    assert_eq!(
        counts,
        [
            ("mx1.example.org", "certificate-expired", 1),
            ("mx1.example.org", "success", 2)
        ]
    );
    assert_eq!(example.results[0].policy_string, sts);
    assert_eq!(taken[1].results[0].policy_type, "no-policy-found");
    assert!(
        one.take_tls_reports(2).await.unwrap().is_empty(),
        "taken already"
    );
}
