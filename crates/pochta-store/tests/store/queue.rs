use std::collections::HashSet;
use std::time::Duration;

use pochta_mail::{Disposition, Mailbox, Notify, Ret};
use pochta_store::{AttemptOutcome, Claim, NewEnvelope, RecipientState, StoreError};
use pochta_testkit::TestDb;

use crate::{CONTENT, addr, enqueue_n, envelope, recipient, report, top_buffers};

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn enqueue_stores_everything_given() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let mut held = recipient("bob@backup.example");
    held.disposition = Disposition::Hold;
    held.notify = Some(Notify::NEVER);
    held.orcpt = None;
    let env = envelope(vec![recipient("alice@example.org"), held]);
    store.enqueue(&env, CONTENT).await.unwrap();

    let detail = store
        .envelope_detail(env.queue_id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.reverse_path, "sender@example.net");
    assert_eq!(detail.size, CONTENT.len() as i64);
    assert_eq!(detail.envid.as_deref(), Some("env-1"));
    assert_eq!(detail.ret.as_deref(), Some("HDRS"));
    assert_eq!(detail.client_address.as_deref(), Some("192.0.2.7"));
    assert_eq!(detail.client_helo.as_deref(), Some("client.example.net"));
    assert_eq!(detail.traceparent, env.traceparent);
    let lifetime = detail.expires_at - detail.arrived_at;
    assert_eq!(lifetime.num_seconds(), 5 * 24 * 3600);
    let rcpts: Vec<_> = detail
        .recipients
        .iter()
        .map(|r| {
            (
                r.address.as_str(),
                r.state,
                r.notify.as_deref(),
                r.orcpt.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        rcpts,
        [
            (
                "alice@example.org",
                RecipientState::Queued,
                Some("SUCCESS,FAILURE"),
                Some("rfc822;alice@example.org")
            ),
            (
                "bob@backup.example",
                RecipientState::Held,
                Some("NEVER"),
                None
            ),
        ]
    );
    assert!(store.envelope_detail("NOSUCHID00").await.unwrap().is_none());
    assert_eq!(
        store
            .message_content(detail.message_id)
            .await
            .unwrap()
            .as_deref(),
        Some(CONTENT)
    );
    assert!(
        store
            .message_content(detail.message_id + 1000)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn enqueue_is_atomic() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    // The second recipient breaks a constraint after the message and envelope rows were
    // written within the same statement: nothing at all may remain.
    let mut bad = recipient("x@example.org");
    bad.address = Mailbox {
        local_part: String::new(),
        domain: "example.org".into(),
    };
    let env = envelope(vec![recipient("alice@example.org"), bad]);
    assert!(matches!(
        store.enqueue(&env, CONTENT).await,
        Err(StoreError::Database(_))
    ));
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (counts.messages, counts.envelopes, counts.recipients_total()),
        (0, 0, 0)
    );

    // A duplicate queue id is refused whole as well.
    let ok = enqueue_n(store, 2).await;
    let mut dup = envelope(vec![recipient("carol@example.org")]);
    dup.queue_id = ok.queue_id.clone();
    assert!(store.enqueue(&dup, b"other\r\n").await.is_err());
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (counts.messages, counts.envelopes, counts.recipients_total()),
        (1, 1, 2)
    );

    assert!(matches!(
        store.enqueue(&envelope(vec![]), CONTENT).await,
        Err(StoreError::NoRecipients)
    ));
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_recipient() {
    let db = TestDb::new().await.unwrap();
    for _ in 0..20 {
        enqueue_n(db.store(), 10).await;
    }
    let mut tasks = Vec::new();
    for worker in ["a", "b", "c"] {
        let store = db.connect().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = store
                    .claim_due(worker, Claim::Remote, 7, LEASE)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    break;
                }
                mine.extend(claimed.into_iter().map(|c| c.recipient_id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        per_worker.push(mine.len());
        all.extend(mine);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(
        all.len(),
        200,
        "every recipient claimed once: {per_worker:?}"
    );
    assert_eq!(unique.len(), 200, "no recipient claimed twice");
}

#[tokio::test]
async fn an_envelopes_due_recipients_are_claimed_together() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let a = enqueue_n(store, 5).await;
    let b = enqueue_n(store, 3).await;
    // A limit of 1 still brings all five recipients of the first envelope.
    let first = store
        .claim_due("w1", Claim::Remote, 1, LEASE)
        .await
        .unwrap();
    assert_eq!(first.len(), 5);
    assert!(first.iter().all(|c| c.queue_id == a.queue_id.as_str()));
    let second = store
        .claim_due("w2", Claim::Remote, 1, LEASE)
        .await
        .unwrap();
    assert_eq!(second.len(), 3);
    assert!(second.iter().all(|c| c.queue_id == b.queue_id.as_str()));
}

#[tokio::test]
async fn claim_returns_envelope_fields_and_skips_held_and_leased() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let mut held = recipient("bob@backup.example");
    held.disposition = Disposition::Hold;
    let env = envelope(vec![recipient("alice@example.org"), held]);
    store.enqueue(&env, CONTENT).await.unwrap();

    let claimed = store
        .claim_due("w1", Claim::Remote, 10, LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the held recipient is not due");
    let c = &claimed[0];
    assert_eq!(c.address, addr("alice@example.org"));
    assert_eq!(c.queue_id, env.queue_id.as_str());
    assert_eq!(c.reverse_path, Some(addr("sender@example.net")));
    assert_eq!(
        c.notify.map(|n| n.to_string()).as_deref(),
        Some("SUCCESS,FAILURE")
    );
    assert_eq!(
        c.orcpt.as_ref().map(|o| o.as_str()),
        Some("rfc822;alice@example.org")
    );
    assert_eq!(c.ret, Some(Ret::Hdrs));
    assert_eq!(c.body, None);
    assert_eq!(c.attempts, 0);
    assert!(c.lease_expires_at > chrono::Utc::now() + chrono::Duration::seconds(50));
    assert!(
        store
            .claim_due("w2", Claim::Remote, 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );

    let detail = store
        .envelope_detail(env.queue_id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.recipients[0].lease_owner.as_deref(), Some("w1"));
}

#[tokio::test]
async fn expired_lease_is_claimable_again_and_the_old_owner_loses_it() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    enqueue_n(store, 1).await;
    let first = store
        .claim_due("dead", Claim::Remote, 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        store
            .claim_due("live", Claim::Remote, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;

    let second = store
        .claim_due("live", Claim::Remote, 10, LEASE)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    let id = second[0].recipient_id;
    assert_eq!(id, first[0].recipient_id);
    assert_eq!(store.renew_leases("dead", &[id], LEASE).await.unwrap(), 0);
    assert_eq!(store.renew_leases("live", &[id], LEASE).await.unwrap(), 1);
    let r = report(250, "2.0.0", "ok");
    assert!(matches!(
        store.record_attempt("dead", id, AttemptOutcome::Delivered, &r).await,
        Err(StoreError::LeaseLost(lost)) if lost == id
    ));
    store
        .record_attempt("live", id, AttemptOutcome::Delivered, &r)
        .await
        .unwrap();
    // Final: a further report from anyone is refused.
    assert!(
        store
            .record_attempt("live", id, AttemptOutcome::Failed, &r)
            .await
            .is_err()
    );
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.recipients_in(RecipientState::Delivered), 1);
}

#[tokio::test]
async fn attempts_are_recorded_with_history() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let env = enqueue_n(store, 2).await;
    let claimed = store
        .claim_due("w", Claim::Remote, 10, LEASE)
        .await
        .unwrap();
    let (a, b) = (claimed[0].recipient_id, claimed[1].recipient_id);

    let deferred = AttemptOutcome::Deferred {
        retry_after: Duration::from_secs(600),
    };
    store
        .record_attempt("w", a, deferred, &report(451, "4.7.1", "try later"))
        .await
        .unwrap();
    store
        .record_attempt(
            "w",
            b,
            AttemptOutcome::Failed,
            &report(550, "5.1.1", "no such user"),
        )
        .await
        .unwrap();
    assert!(
        store
            .claim_due("w", Claim::Remote, 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "deferred is not due"
    );

    let detail = store
        .envelope_detail(env.queue_id.as_str())
        .await
        .unwrap()
        .unwrap();
    let ra = detail.recipients.iter().find(|r| r.id == a).unwrap();
    assert_eq!(ra.state, RecipientState::Queued);
    assert_eq!(ra.attempts, 1);
    assert_eq!(ra.last_reply_code, Some(451));
    assert_eq!(ra.last_status.as_deref(), Some("4.7.1"));
    assert!(ra.lease_owner.is_none() && ra.finished_at.is_none());
    let wait = ra.next_attempt_at - chrono::Utc::now();
    assert!(wait > chrono::Duration::seconds(590) && wait <= chrono::Duration::seconds(600));
    assert_eq!(ra.history.len(), 1);
    assert_eq!(ra.history[0].result, RecipientState::Queued);
    assert_eq!(ra.history[0].diagnostic, "try later");

    let rb = detail.recipients.iter().find(|r| r.id == b).unwrap();
    assert_eq!(rb.state, RecipientState::Failed);
    assert!(rb.finished_at.is_some());
    assert_eq!(
        rb.history[0].remote_mta.as_deref(),
        Some("mx.example.org [192.0.2.1]:25")
    );
    assert_eq!(rb.history[0].reply_code, Some(550));
}

#[tokio::test]
async fn etrn_release_makes_held_and_deferred_due() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let held_at = |a: &str| {
        let mut r = recipient(a);
        r.disposition = Disposition::Hold;
        r
    };
    store
        .enqueue(
            &envelope(vec![
                held_at("a@backup.example"),
                held_at("b@mx.backup.example"),
            ]),
            CONTENT,
        )
        .await
        .unwrap();
    store
        .enqueue(&envelope(vec![held_at("c@notbackup.example")]), CONTENT)
        .await
        .unwrap();
    // A deferred recipient of the domain.
    store
        .enqueue(&envelope(vec![recipient("d@backup.example")]), CONTENT)
        .await
        .unwrap();
    let claimed = store
        .claim_due("w", Claim::Remote, 10, LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let deferred = AttemptOutcome::Deferred {
        retry_after: Duration::from_secs(3600),
    };
    store
        .record_attempt(
            "w",
            claimed[0].recipient_id,
            deferred,
            &report(421, "4.4.2", "busy"),
        )
        .await
        .unwrap();

    let exact = store.release_domain("BACKUP.example", false).await.unwrap();
    assert_eq!((exact.recipients, exact.messages), (2, 2));
    let due: Vec<_> = store
        .claim_due("w", Claim::Remote, 10, LEASE)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.address.to_string())
        .collect();
    assert_eq!(due.len(), 2);
    assert!(due.contains(&"a@backup.example".to_owned()));
    assert!(due.contains(&"d@backup.example".to_owned()));

    // `@backup.example`: subdomains too, but not a domain that merely ends in the same letters.
    let subs = store.release_domain("backup.example", true).await.unwrap();
    assert_eq!((subs.recipients, subs.messages), (1, 1));
    let nothing = store.release_domain("backup.example", true).await.unwrap();
    assert_eq!(nothing.recipients, 0);
    let counts = store.counts().await.unwrap();
    assert_eq!(
        counts.recipients_in(RecipientState::Held),
        1,
        "c@notbackup.example stays held"
    );
}

#[tokio::test]
async fn garbage_collection_keeps_live_and_delivered_content() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    enqueue_n(store, 1).await; // stays live
    enqueue_n(store, 1).await; // will finish
    let claimed = store.claim_due("w", Claim::Remote, 1, LEASE).await.unwrap();
    store
        .record_attempt(
            "w",
            claimed[0].recipient_id,
            AttemptOutcome::Failed,
            &report(550, "5.1.1", "no"),
        )
        .await
        .unwrap();

    // Within the retention period the envelope stays, but the finished message's content
    // goes at once: nothing will read it again.
    let kept = store
        .collect_garbage(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!((kept.contents, kept.envelopes, kept.messages), (1, 0, 0));
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.envelopes, counts.message_chunks), (2, 1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let collected = store
        .collect_garbage(Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(
        (collected.contents, collected.envelopes, collected.messages),
        (0, 1, 1)
    );
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (counts.envelopes, counts.messages, counts.recipients_total()),
        (1, 1, 1)
    );
    assert_eq!(
        counts.message_chunks, 1,
        "the live message keeps its content"
    );
}

#[tokio::test]
async fn attempts_and_their_report_commit_together_or_not_at_all() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    enqueue_n(store, 2).await;
    let claimed = store
        .claim_due("w", Claim::Remote, 10, LEASE)
        .await
        .unwrap();
    let (a, b) = (claimed[0].recipient_id, claimed[1].recipient_id);
    let failed = report(550, "5.1.1", "no such user");
    let dsn = envelope(vec![recipient("sender@example.net")]);

    // b is claimed by someone else meanwhile: nothing at all is written.
    let attempts = [
        (a, AttemptOutcome::Failed, failed.clone()),
        (b, AttemptOutcome::Failed, failed.clone()),
    ];
    let other = db.connect().await.unwrap();
    assert!(
        store
            .record_attempt(
                "w",
                b,
                AttemptOutcome::Deferred {
                    retry_after: Duration::ZERO
                },
                &failed
            )
            .await
            .is_ok()
    );
    other
        .claim_due("thief", Claim::Remote, 10, LEASE)
        .await
        .unwrap();
    assert!(matches!(
        store.record_attempts_with_report("w", &attempts, Some((&dsn, b"report\r\n")), false).await,
        Err(StoreError::LeaseLost(id)) if id == b
    ));
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (
            counts.envelopes,
            counts.recipients_in(RecipientState::Failed)
        ),
        (1, 0),
        "rolled back"
    );

    store
        .record_attempts_with_report("w", &attempts[..1], Some((&dsn, b"report\r\n")), false)
        .await
        .unwrap();
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (
            counts.envelopes,
            counts.recipients_in(RecipientState::Failed)
        ),
        (2, 1)
    );
    let report_env = store
        .envelope_detail(dsn.queue_id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report_env.recipients[0].address, "sender@example.net");
}

#[tokio::test]
async fn enqueue_many_keeps_each_envelope_with_its_own_content_and_recipients() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let envelopes: Vec<_> = (1..=3)
        .map(|n| {
            envelope(
                (0..n)
                    .map(|i| recipient(&format!("env{n}-rcpt{i}@example.org")))
                    .collect(),
            )
        })
        .collect();
    // Several chunk rows each (8,000 octets a row), of different counts and letters, so a
    // chunk stored under another message's id would show.
    let contents: Vec<Vec<u8>> = (1..=3)
        .map(|n| {
            let letter = char::from(b'a' + n as u8).to_string();
            format!(
                "Subject: message {n}\r\n\r\n{}\r\n",
                letter.repeat(n * 9000)
            )
            .into_bytes()
        })
        .collect();
    let batch: Vec<_> = envelopes
        .iter()
        .zip(&contents)
        .map(|(e, c)| (e, c.as_slice()))
        .collect();
    let ids = store.enqueue_many(&batch).await.unwrap();
    assert_eq!(ids.len(), 3);

    for ((env, content), id) in envelopes.iter().zip(&contents).zip(&ids) {
        let detail = store
            .envelope_detail(env.queue_id.as_str())
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(detail.id, id.envelope_id);
        assert_eq!(detail.message_id, id.message_id);
        assert_eq!(
            store
                .message_content(id.message_id)
                .await
                .unwrap()
                .as_deref(),
            Some(content.as_slice())
        );
        let addresses: Vec<String> = detail
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect();
        let expected: Vec<String> = env
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        assert_eq!(addresses, expected);
    }
    let messages: HashSet<i64> = ids.iter().map(|i| i.message_id).collect();
    assert_eq!(messages.len(), 3, "each envelope has its own content row");
}

#[tokio::test]
async fn enqueue_many_stores_all_or_nothing() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let good = envelope(vec![recipient("a@example.org")]);
    let other = envelope(vec![recipient("b@example.org")]);
    let mut clash = envelope(vec![recipient("c@example.org")]);
    clash.queue_id = other.queue_id.clone();
    let batch = [(&good, CONTENT), (&other, CONTENT), (&clash, CONTENT)];
    assert!(store.enqueue_many(&batch).await.is_err());
    for env in [&good, &other] {
        assert!(
            store
                .envelope_detail(env.queue_id.as_str())
                .await
                .unwrap()
                .is_none(),
            "a failed batch stores nothing"
        );
    }
    let empty = envelope(vec![]);
    assert!(matches!(
        store
            .enqueue_many(&[(&good, CONTENT), (&empty, CONTENT)])
            .await,
        Err(StoreError::NoRecipients)
    ));
}

/// What the ingress's sending limits read: a sender's recent envelopes (kept by garbage
/// collection for a day whatever the retention) and the live mail per domain.
#[tokio::test]
async fn sender_usage_and_domain_backlog() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    for recipients in [
        vec!["a@backup.example"],
        vec!["b@backup.example", "c@elsewhere.example"],
    ] {
        let env = NewEnvelope {
            quarantine: None,
            requiretls: false,
            auth_user: Some("alice@example.org".into()),
            ..envelope(recipients.iter().map(|r| recipient(r)).collect())
        };
        store.enqueue(&env, CONTENT).await.unwrap();
    }
    let usage = store.sender_usage("alice@example.org").await.unwrap();
    assert_eq!((usage.last_hour, usage.last_day), (2, 2));
    assert_eq!(
        store
            .sender_usage("bob@example.org")
            .await
            .unwrap()
            .last_day,
        0
    );
    let backlog = store.domain_backlog("backup.example").await.unwrap();
    assert_eq!(
        (backlog.messages, backlog.bytes),
        (2, 2 * CONTENT.len() as u64)
    );
    assert_eq!(
        store
            .domain_backlog("elsewhere.example")
            .await
            .unwrap()
            .messages,
        1
    );

    // Finished, past a short retention: the mail leaves the backlog but still counts for
    // its sender.
    let claimed = store
        .claim_due("w", Claim::Remote, 10, LEASE)
        .await
        .unwrap();
    for r in &claimed {
        store
            .record_attempt(
                "w",
                r.recipient_id,
                AttemptOutcome::Delivered,
                &report(250, "2.0.0", "ok"),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        store.domain_backlog("backup.example").await.unwrap(),
        Default::default()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let collected = store
        .collect_garbage(Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(collected.envelopes, 0);
    assert_eq!(
        store
            .sender_usage("alice@example.org")
            .await
            .unwrap()
            .last_day,
        2
    );
}

/// Several attempts recorded in one statement keep each its own outcome, delay, reply and
/// history row.
#[tokio::test]
async fn attempts_recorded_together_keep_their_own_outcomes() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let sent = enqueue_n(store, 3).await;
    let claimed = store
        .claim_due("w", Claim::Remote, 10, LEASE)
        .await
        .unwrap();
    let ids: Vec<i64> = claimed.iter().map(|r| r.recipient_id).collect();
    let soon = AttemptOutcome::Deferred {
        retry_after: Duration::from_secs(60),
    };
    let later = AttemptOutcome::Deferred {
        retry_after: Duration::from_secs(3600),
    };
    let attempts = [
        (ids[0], soon, report(451, "4.4.1", "refused")),
        (ids[1], later, report(452, "4.2.2", "full")),
        (
            ids[2],
            AttemptOutcome::Delivered,
            report(250, "2.0.0", "ok"),
        ),
    ];
    let before = chrono::Utc::now();
    store
        .record_attempts_with_report("w", &attempts, None, false)
        .await
        .unwrap();
    let detail = store
        .envelope_detail(sent.queue_id.as_str())
        .await
        .unwrap()
        .unwrap();
    let by_id = |id: i64| detail.recipients.iter().find(|r| r.id == id).unwrap();
    let (a, b, c) = (by_id(ids[0]), by_id(ids[1]), by_id(ids[2]));
    assert_eq!(
        (a.state, b.state),
        (RecipientState::Queued, RecipientState::Queued)
    );
    assert_eq!(c.state, RecipientState::Delivered);
    assert!(c.finished_at.is_some() && a.finished_at.is_none());
    let waits = [a, b].map(|r| (r.next_attempt_at - before).num_seconds());
    assert!((55..=65).contains(&waits[0]), "{waits:?}");
    assert!((3595..=3605).contains(&waits[1]), "{waits:?}");
    assert_eq!(
        [a, b, c].map(|r| (r.attempts, r.last_reply_code, r.last_diagnostic.as_deref())),
        [
            (1, Some(451), Some("refused")),
            (1, Some(452), Some("full")),
            (1, Some(250), Some("ok"))
        ]
    );
    assert!([a, b, c].iter().all(|r| r.lease_owner.is_none()));
    for (r, result, status) in [
        (a, RecipientState::Queued, "4.4.1"),
        (b, RecipientState::Queued, "4.2.2"),
        (c, RecipientState::Delivered, "2.0.0"),
    ] {
        assert_eq!(r.history.len(), 1, "{r:?}");
        assert_eq!(r.history[0].result, result);
        assert_eq!(r.history[0].status.as_deref(), Some(status));
        assert_eq!(r.history[0].worker, "w");
    }
}

/// Issue 24: 100,000 deferred recipients cost nothing per claim of due mail. The claim finds
/// due mail through the partial due index, whose range ends at now(): a backlog due later is
/// never read. Checked on the plan PostgreSQL runs (its buffers), once the dead row versions
/// of the deferrals are vacuumed (as autovacuum does), with the column statistics of an empty
/// queue (a backlog that grew since the last ANALYZE) and then with fresh ones.
#[tokio::test]
async fn a_deferred_backlog_costs_nothing_per_claim() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("ANALYZE").execute(&pool).await.unwrap();
    // 10,000 messages of 10 local recipients each, in batches, then all deferred an hour.
    for batch in 0..10 {
        let envelopes: Vec<NewEnvelope> = (0..1000)
            .map(|m| {
                envelope(
                    (0..10)
                        .map(|r| pochta_store::NewRecipient {
                            disposition: Disposition::Local,
                            ..recipient(&format!("u{batch}x{m}x{r}@example.org"))
                        })
                        .collect(),
                )
            })
            .collect();
        let batch: Vec<(&NewEnvelope, &[u8])> = envelopes.iter().map(|e| (e, CONTENT)).collect();
        store.enqueue_many(&batch).await.unwrap();
    }
    sqlx::query("UPDATE recipients SET next_attempt_at = now() + interval '1 hour', attempts = 3")
        .execute(&pool)
        .await
        .unwrap();
    // Stale statistics first (as after a burst), then fresh ones; and a few due messages.
    for analyze in [false, true] {
        let vacuum = if analyze {
            "VACUUM ANALYZE recipients"
        } else {
            "VACUUM recipients"
        };
        sqlx::query(vacuum).execute(&pool).await.unwrap();
        enqueue_local(store, 5).await;
        let plan = store.explain_claim(Claim::Local, 64).await.unwrap();
        let buffers = top_buffers(&plan);
        let pages: i64 = sqlx::query_scalar("SELECT pg_relation_size('recipients') / 8192")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(pages > 1000, "the backlog is large: {pages} pages");
        assert!(
            buffers < 500,
            "a claim read {buffers} buffers (table: {pages} pages), analyzed: {analyze}:\n{plan}"
        );
        assert!(plan.contains("recipients_due_local_idx"), "{plan}");
        let claimed = store.claim_due("w", Claim::Local, 64, LEASE).await.unwrap();
        assert_eq!(claimed.len(), 5, "the due ones, and only they");
        let ids: Vec<i64> = claimed.iter().map(|r| r.recipient_id).collect();
        sqlx::query("DELETE FROM recipients WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&pool)
            .await
            .unwrap();
    }
}

/// `n` messages with one due local recipient each.
async fn enqueue_local(store: &pochta_store::Store, n: usize) {
    for i in 0..n {
        let due = pochta_store::NewRecipient {
            disposition: Disposition::Local,
            ..recipient(&format!("due{i}@example.org"))
        };
        store.enqueue(&envelope(vec![due]), CONTENT).await.unwrap();
    }
}

/// Recording an attempt finds its recipient by the primary key however many recipients wait
/// and however old the statistics are. With statistics taken while the queue was empty (so
/// the partial due and live-domain indexes looked empty) and then a backlog of one domain,
/// plain lease and state conditions made PostgreSQL scan the whole backlog for every attempt
/// it recorded (bench/scale, 100,000 recipients deferred for a dead destination).
#[tokio::test]
async fn recording_an_attempt_costs_nothing_per_waiting_recipient() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    // Statistics of a table of finished recipients only.
    enqueue_n(store, 2000).await;
    sqlx::query("UPDATE recipients SET state = 'delivered', finished_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
    for batch in 0..20 {
        let envelopes: Vec<NewEnvelope> = (0..1000)
            .map(|m| envelope(vec![recipient(&format!("u{batch}x{m}@dead.example"))]))
            .collect();
        let batch: Vec<(&NewEnvelope, &[u8])> = envelopes.iter().map(|e| (e, CONTENT)).collect();
        store.enqueue_many(&batch).await.unwrap();
    }
    let claimed = store
        .claim_due("w", Claim::Remote, 1, Duration::from_secs(60))
        .await
        .unwrap();
    let id = claimed[0].recipient_id;
    let plan = store.explain_record_attempt("w", id).await.unwrap();
    let buffers = top_buffers(&plan);
    assert!(plan.contains("recipients_pkey"), "{plan}");
    assert!(buffers < 100, "recording read {buffers} buffers:\n{plan}");
    // The statement explained is the one that records: it still does.
    store
        .record_attempt(
            "w",
            id,
            AttemptOutcome::Deferred {
                retry_after: Duration::from_secs(60),
            },
            &report(451, "4.4.1", "refused"),
        )
        .await
        .unwrap();
    let again = store
        .record_attempt(
            "w",
            id,
            AttemptOutcome::Delivered,
            &report(250, "2.0.0", "ok"),
        )
        .await;
    assert!(matches!(again, Err(StoreError::LeaseLost(lost)) if lost == id));
}

/// Header fields are kept for IMAP SEARCH only for mail bound for a mailbox here: relayed
/// and held mail never meets a search (migration 0014). Each way of enqueueing decides so.
#[tokio::test]
async fn search_fields_are_kept_only_for_mail_with_a_local_recipient() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let local = pochta_testkit::local_recipient;
    let held = pochta_store::NewRecipient {
        disposition: pochta_mail::Disposition::Hold,
        ..recipient("later@example.org")
    };
    let mixed = envelope(vec![
        recipient("far@example.org"),
        local("near@example.com"),
    ]);
    let relayed = envelope(vec![recipient("far@example.org"), held]);
    let kept = |id: i64| {
        let url = db.url().to_string();
        async move {
            let raw = sqlx::PgPool::connect(&url).await.unwrap();
            let row: (bool, Option<String>) =
                sqlx::query_as("SELECT search_fields, search_subject FROM messages WHERE id = $1")
                    .bind(id)
                    .fetch_one(&raw)
                    .await
                    .unwrap();
            row
        }
    };
    let with = (true, Some(" hi".to_string()));
    let without = (false, None);
    let one = store.enqueue(&mixed, CONTENT).await.unwrap();
    assert_eq!(kept(one.message_id).await, with);
    let one = store.enqueue(&relayed, CONTENT).await.unwrap();
    assert_eq!(kept(one.message_id).await, without);
    let (mixed, relayed) = (envelope(mixed.recipients), envelope(relayed.recipients));
    let many = store
        .enqueue_many(&[(&relayed, CONTENT), (&mixed, CONTENT)])
        .await
        .unwrap();
    assert_eq!(kept(many[0].message_id).await, without);
    assert_eq!(kept(many[1].message_id).await, with);
    let (mixed, relayed) = (envelope(mixed.recipients), envelope(relayed.recipients));
    let prepared = [
        store.prepare(&mixed, CONTENT.to_vec()),
        store.prepare(&relayed, CONTENT.to_vec()),
    ];
    let ids = store
        .enqueue_prepared(&[(&mixed, &prepared[0]), (&relayed, &prepared[1])])
        .await
        .unwrap();
    assert_eq!(kept(ids[0].message_id).await, with);
    assert_eq!(kept(ids[1].message_id).await, without);
}

/// A destination whose mail hosts are all unreachable has its waiting mail deferred in one
/// statement: each plain recipient of the domain due within the window, once, with the
/// queue's backoff and a line of history; every recipient a worker must decide on (leased,
/// cancelled, expiring, owed a delay report, requiring TLS, held, local) is left alone.
#[tokio::test]
async fn a_dead_destinations_waiting_mail_is_deferred_together() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    let plain = |address: &str| pochta_store::NewRecipient {
        notify: None,
        ..recipient(address)
    };
    let one = |address: &str| envelope(vec![plain(address)]);
    // Leased by a worker before the rest arrive.
    store
        .enqueue(&one("leased@dead.example"), CONTENT)
        .await
        .unwrap();
    let leased = store
        .claim_due("w", Claim::Remote, 10, LEASE)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    for address in [
        "due@dead.example",
        "again@dead.example",
        "soon@dead.example",
        "later@dead.example",
        "cancelled@dead.example",
        "delay@dead.example",
        "delay-sent@dead.example",
        "other@alive.example",
    ] {
        store.enqueue(&one(address), CONTENT).await.unwrap();
    }
    let expiring = NewEnvelope {
        lifetime: Duration::from_secs(10),
        ..one("expiring@dead.example")
    };
    let tls = NewEnvelope {
        requiretls: true,
        ..one("tls@dead.example")
    };
    let held = envelope(vec![pochta_store::NewRecipient {
        disposition: Disposition::Hold,
        ..plain("held@dead.example")
    }]);
    let local = envelope(vec![pochta_store::NewRecipient {
        disposition: Disposition::Local,
        ..plain("local@dead.example")
    }]);
    for env in [expiring, tls, held, local] {
        store.enqueue(&env, CONTENT).await.unwrap();
    }
    for change in [
        "UPDATE recipients SET attempts = 3 WHERE address = 'again@dead.example'",
        "UPDATE recipients SET next_attempt_at = now() + interval '10 seconds'
         WHERE address = 'soon@dead.example'",
        "UPDATE recipients SET next_attempt_at = now() + interval '10 minutes'
         WHERE address = 'later@dead.example'",
        "UPDATE recipients SET cancelled = true WHERE address = 'cancelled@dead.example'",
        "UPDATE recipients SET notify = 'FAILURE,DELAY'
         WHERE address IN ('delay@dead.example', 'delay-sent@dead.example')",
        "UPDATE recipients SET delay_reported = true WHERE address = 'delay-sent@dead.example'",
        "UPDATE envelopes e SET arrived_at = now() - interval '2 hours' FROM recipients r
         WHERE r.envelope_id = e.id AND r.address LIKE 'delay%'",
    ] {
        sqlx::query(change).execute(&raw).await.unwrap();
    }

    fn deferral(
        retry_after: &mut (dyn FnMut(i32, i64) -> Duration + Send),
    ) -> pochta_store::DestinationDeferral<'_> {
        pochta_store::DestinationDeferral {
            domain: "Dead.Example",
            within: Duration::from_secs(30),
            worker: "w-bulk",
            status: "4.4.1",
            diagnostic: "connecting to mx.dead.example: Connection refused",
            retry_after,
            delay_report_after: Duration::from_secs(3600),
        }
    }
    let mut retry = backoff;
    assert_eq!(
        store.defer_destination(deferral(&mut retry)).await.unwrap(),
        4
    );
    // address, attempts, seconds until the next attempt, last status, history lines.
    let rows: Vec<(String, i32, f64, Option<String>, i64)> = sqlx::query_as(
        "SELECT r.address, r.attempts,
                extract(epoch FROM r.next_attempt_at - now())::float8, r.last_status,
                (SELECT count(*) FROM delivery_attempts a
                 WHERE a.recipient_id = r.id AND a.worker = 'w-bulk' AND a.result = 'queued'
                   AND a.diagnostic LIKE 'connecting to mx.dead.example%')
         FROM recipients r ORDER BY r.address",
    )
    .fetch_all(&raw)
    .await
    .unwrap();
    for (address, attempts, wait, status, history) in rows {
        let deferred = match address.as_str() {
            // The first delay, jittered to [0.5, 1] of it.
            "due@dead.example" | "soon@dead.example" | "delay-sent@dead.example" => {
                assert_eq!(attempts, 1, "{address}");
                assert!((295.0..=600.0).contains(&wait), "{address}: {wait}");
                true
            }
            // The fourth retry: 600 s doubled three times, capped at 4,000, jittered.
            "again@dead.example" => {
                assert_eq!(attempts, 4);
                assert!((1995.0..=4000.0).contains(&wait), "{address}: {wait}");
                true
            }
            _ => {
                assert_eq!(attempts, 0, "{address} left alone");
                false
            }
        };
        assert_eq!(status.as_deref() == Some("4.4.1"), deferred, "{address}");
        assert_eq!(history, i64::from(deferred), "{address}");
    }
    // Nothing of it is due again: a second pass finds nothing.
    assert_eq!(
        store.defer_destination(deferral(&mut retry)).await.unwrap(),
        0
    );
}

/// Deferring a destination in bulk while workers claim and record the same domain's mail:
/// no statement fails (a deadlock would fail one) and every recipient is attempted exactly
/// once, by a worker or by the bulk deferral.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bulk_deferral_and_busy_workers_never_deadlock_or_share_a_recipient() {
    const MESSAGES: usize = 6000;
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let envelopes: Vec<NewEnvelope> = (0..MESSAGES)
        .map(|i| envelope(vec![recipient(&format!("r{i}@dead.example"))]))
        .collect();
    for batch in envelopes.chunks(500) {
        let batch: Vec<_> = batch.iter().map(|e| (e, CONTENT)).collect();
        store.enqueue_many(&batch).await.unwrap();
    }
    let worker = |n: usize| {
        let store = store.clone();
        tokio::spawn(async move {
            let owner = format!("w{n}");
            let mut recorded = 0;
            loop {
                let claimed = store
                    .claim_due(&owner, Claim::Remote, 40, LEASE)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    return recorded;
                }
                let deferred = AttemptOutcome::Deferred {
                    retry_after: Duration::from_secs(600),
                };
                let attempts: Vec<_> = claimed
                    .iter()
                    .map(|c| (c.recipient_id, deferred, report(421, "4.4.1", "refused")))
                    .collect();
                store
                    .record_attempts_with_report(&owner, &attempts, None, false)
                    .await
                    .unwrap();
                recorded += attempts.len();
            }
        })
    };
    let workers: Vec<_> = (0..8).map(worker).collect();
    // The workers at it first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (mut bulk, mut retry) = (0, backoff);
    for _ in 0..3 {
        let deferral = pochta_store::DestinationDeferral {
            domain: "dead.example",
            within: Duration::from_secs(30),
            worker: "bulk",
            status: "4.4.1",
            diagnostic: "refused; deferred together",
            retry_after: &mut retry,
            delay_report_after: Duration::from_secs(3600),
        };
        bulk += store.defer_destination(deferral).await.unwrap();
    }
    let mut by_workers = 0;
    for w in workers {
        by_workers += w.await.unwrap();
    }
    assert_eq!(
        bulk as usize + by_workers,
        MESSAGES,
        "{bulk} + {by_workers}"
    );
    assert!(bulk > 0, "the bulk deferral took some");
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    let (once, history): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE attempts = 1),
                (SELECT count(*) FROM delivery_attempts)
         FROM recipients",
    )
    .fetch_one(&raw)
    .await
    .unwrap();
    assert_eq!((once, history), (MESSAGES as i64, MESSAGES as i64));
}

/// A queue's backoff as the bulk deferral is given it: 600 s after the first attempt,
/// doubled per attempt since, at most 4,000 s (no jitter, so the waits are known).
fn backoff(attempts: i32, _envelope: i64) -> Duration {
    Duration::from_secs(600 << attempts.clamp(0, 3)).min(Duration::from_secs(4000))
}
