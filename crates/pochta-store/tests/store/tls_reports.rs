//! TLS reporting's counts (RFC 8460) in the store.

use pochta_testkit::TestDb;

/// The reporting period of the test below, in seconds.
const PERIOD: u64 = 4;

/// TLS report counts (RFC 8460) add up per period, domain, MX host and result, and each
/// ended period is taken once, by one of two replicas, with its counts.
#[tokio::test]
async fn tls_report_counts_are_taken_once_per_ended_period() {
    let db = TestDb::new().await.unwrap();
    let (one, two) = (db.store(), db.connect().await.unwrap());
    // Periods start at multiples of their length since the epoch: begin just after a start,
    // so that the counts below all fall in one period even on a loaded machine.
    let since_start = |now: std::time::Duration| now.as_millis() as u64 % (PERIOD * 1000);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let wait = (PERIOD * 1000 - since_start(now)) + 50;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    let sts = vec!["version: STSv1".to_owned(), "mode: enforce".to_owned()];
    for result in ["success", "success", "certificate-expired"] {
        one.record_tls_result(
            "Example.ORG",
            "sts",
            &sts,
            "MX1.example.org",
            result,
            PERIOD,
        )
        .await
        .unwrap();
    }
    two.record_tls_result(
        "other.example",
        "no-policy-found",
        &[],
        "mx.other.example",
        "success",
        PERIOD,
    )
    .await
    .unwrap();
    assert!(
        one.take_tls_reports(PERIOD).await.unwrap().is_empty(),
        "the period has not ended"
    );
    tokio::time::sleep(std::time::Duration::from_millis(PERIOD * 1000)).await;
    let (a, b) = tokio::join!(one.take_tls_reports(PERIOD), two.take_tls_reports(PERIOD));
    let mut taken = [a.unwrap(), b.unwrap()].concat();
    taken.sort_by(|x, y| x.domain.cmp(&y.domain));
    assert_eq!(taken.len(), 2, "each domain's period once: {taken:?}");
    let example = &taken[0];
    assert_eq!(example.domain, "example.org");
    assert_eq!(
        example.end - example.start,
        chrono::Duration::seconds(PERIOD as i64)
    );
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
        one.take_tls_reports(PERIOD).await.unwrap().is_empty(),
        "taken already"
    );
}
