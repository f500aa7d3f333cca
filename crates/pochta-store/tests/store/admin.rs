use std::time::Duration;

use pochta_store::{
    AttemptOutcome, AttemptReport, Claim, QueueAction, QueueFilter, RecipientState, Store,
};
use pochta_testkit::TestDb;

use crate::{CONTENT, envelope, recipient};

#[tokio::test]
async fn list_filters_and_truncates() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let a = envelope(vec![recipient("x@one.example"), recipient("y@two.example")]);
    store.enqueue(&a, CONTENT).await.unwrap();
    let mut b = envelope(vec![recipient("z@two.example")]);
    b.reverse_path = None;
    store.enqueue(&b, CONTENT).await.unwrap();

    let all = QueueFilter::default();
    let (list, truncated) = store.list_envelopes(&all, 10).await.unwrap();
    assert!(!truncated);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].queue_id, b.queue_id.as_str(), "newest first");
    assert_eq!(
        list[1].recipients.len(),
        2,
        "all recipients of a matching envelope"
    );
    assert_eq!(list[1].size, CONTENT.len() as i64);

    let (one, truncated) = store.list_envelopes(&all, 1).await.unwrap();
    assert!(truncated && one.len() == 1);

    let by_domain = QueueFilter {
        recipient_domain: Some("ONE.example".into()),
        ..Default::default()
    };
    assert_eq!(
        store.list_envelopes(&by_domain, 10).await.unwrap().0.len(),
        1
    );
    let null_sender = QueueFilter {
        sender: Some("<>".into()),
        ..Default::default()
    };
    let (list, _) = store.list_envelopes(&null_sender, 10).await.unwrap();
    assert_eq!(
        list.iter().map(|e| e.queue_id.as_str()).collect::<Vec<_>>(),
        [b.queue_id.as_str()]
    );
    let by_sender = QueueFilter {
        sender: Some("<SENDER@example.net>".into()),
        ..Default::default()
    };
    assert_eq!(
        store.list_envelopes(&by_sender, 10).await.unwrap().0[0].queue_id,
        a.queue_id.as_str()
    );
    let old = QueueFilter {
        older_than: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    assert!(store.list_envelopes(&old, 10).await.unwrap().0.is_empty());
    let delivered = QueueFilter {
        states: vec![RecipientState::Delivered],
        ..Default::default()
    };
    assert!(
        store
            .list_envelopes(&delivered, 10)
            .await
            .unwrap()
            .0
            .is_empty()
    );
}

/// Recipients of `domain`.
fn in_domain(domain: &str) -> QueueFilter {
    QueueFilter {
        recipient_domain: Some(domain.into()),
        ..Default::default()
    }
}

/// How many recipients `action` touches (or would, with `dry_run`).
async fn touched(store: &Store, filter: &QueueFilter, action: QueueAction, dry_run: bool) -> u64 {
    store
        .admin_queue(filter, action, dry_run)
        .await
        .unwrap()
        .recipients
}

async fn claimable(store: &Store) -> usize {
    let claimed = store
        .claim_due("w", Claim::Remote, 10, Duration::from_secs(60))
        .await;
    claimed.unwrap().len()
}

#[tokio::test]
async fn hold_release_retry_delete_with_dry_runs() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let env = envelope(vec![
        recipient("a@one.example"),
        recipient("b@one.example"),
        recipient("c@two.example"),
    ]);
    store.enqueue(&env, CONTENT).await.unwrap();
    let one = in_domain("one.example");

    let dry = store
        .admin_queue(&one, QueueAction::Hold, true)
        .await
        .unwrap();
    assert_eq!((dry.recipients, dry.messages), (2, 1));
    let held = store
        .counts()
        .await
        .unwrap()
        .recipients_in(RecipientState::Held);
    assert_eq!(held, 0, "dry run changes nothing");
    assert_eq!(touched(store, &one, QueueAction::Hold, false).await, 2);
    assert_eq!(claimable(store).await, 1, "held ones are not due");
    let again = touched(store, &one, QueueAction::Hold, false).await;
    assert_eq!(again, 0, "already held");

    assert_eq!(touched(store, &one, QueueAction::Release, false).await, 2);
    let claimed = store
        .claim_due("w", Claim::Remote, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let deferred = AttemptOutcome::Deferred {
        retry_after: Duration::from_secs(3600),
    };
    let report = AttemptReport {
        diagnostic: "later".into(),
        ..Default::default()
    };
    for c in &claimed {
        store
            .record_attempt("w", c.recipient_id, deferred, &report)
            .await
            .unwrap();
    }
    // RetryNow touches only recipients waiting for a later attempt.
    let everything = QueueFilter {
        queue_id: Some(env.queue_id.to_string()),
        ..Default::default()
    };
    assert_eq!(
        touched(store, &everything, QueueAction::RetryNow, true).await,
        2
    );
    assert_eq!(
        touched(store, &everything, QueueAction::RetryNow, false).await,
        2
    );
    assert_eq!(claimable(store).await, 2);

    let deleted = store
        .admin_queue(&in_domain("two.example"), QueueAction::Delete, false)
        .await
        .unwrap();
    assert_eq!((deleted.recipients, deleted.messages), (1, 1));
    let detail = store
        .envelope_detail(env.queue_id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.recipients.len(), 2);
    assert!(
        detail
            .recipients
            .iter()
            .all(|r| r.address.ends_with("@one.example"))
    );
}

#[tokio::test]
async fn delete_with_report_cancels_and_depth_counts_the_waits() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let env = envelope(vec![
        recipient("a@one.example"),
        recipient("b@one.example"),
        recipient("c@two.example"),
    ]);
    store.enqueue(&env, CONTENT).await.unwrap();
    let depth = store.queue_depth().await.unwrap();
    assert_eq!((depth.due, depth.deferred, depth.held), (3, 0, 0));

    let claimed = store
        .claim_due("w", Claim::Remote, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(claimed.iter().all(|c| !c.cancelled));
    store
        .admin_queue(
            &QueueFilter {
                recipient_domain: Some("two.example".into()),
                ..Default::default()
            },
            QueueAction::Hold,
            false,
        )
        .await
        .unwrap();
    // The one.example attempts in flight defer; c was held meanwhile.
    let deferred = AttemptOutcome::Deferred {
        retry_after: Duration::from_secs(3600),
    };
    for c in claimed.iter().filter(|c| c.address.domain == "one.example") {
        store
            .record_attempt("w", c.recipient_id, deferred, &AttemptReport::default())
            .await
            .unwrap();
    }
    let depth = store.queue_depth().await.unwrap();
    assert_eq!((depth.due, depth.deferred, depth.held), (0, 2, 1));

    let everything = QueueFilter {
        queue_id: Some(env.queue_id.to_string()),
        ..Default::default()
    };
    let cancelled = store
        .admin_queue(&everything, QueueAction::DeleteWithReport, false)
        .await
        .unwrap();
    assert_eq!((cancelled.recipients, cancelled.messages), (3, 1));
    let claimed = store
        .claim_due("w", Claim::Remote, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3, "held and deferred alike are due at once");
    assert!(claimed.iter().all(|c| c.cancelled));

    // An attempt that was in flight and defers leaves a cancelled recipient due.
    let a = claimed
        .iter()
        .find(|c| c.address.to_string() == "a@one.example")
        .unwrap();
    store
        .record_attempt("w", a.recipient_id, deferred, &AttemptReport::default())
        .await
        .unwrap();
    let again = store
        .claim_due("w2", Claim::Remote, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].recipient_id, a.recipient_id);
}
