//! Each service's database role can do what the service does and nothing it should not: the
//! store's own calls, made as that role, either work or are refused by PostgreSQL.

use std::time::Duration;

use pochta_store::{
    AttemptOutcome, AttemptReport, Claim, DomainRole, Store, StoreError, StoreOptions,
};
use pochta_testkit::TestDb;

use crate::{CONTENT, addr, envelope, recipient};

fn denied<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
    match result {
        Err(StoreError::Database(sqlx::Error::Database(e)))
            if e.code().as_deref() == Some("42501") => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

async fn connect(url: &str) -> Store {
    Store::connect(url, &StoreOptions::default()).await.unwrap()
}

#[tokio::test]
async fn each_service_role_may_do_its_work_and_nothing_else() {
    let db = TestDb::new().await.unwrap();
    let owner = db.store();
    let alice = db.add_account("alice@example.org", "pw").await.unwrap();
    let urls = db.service_roles().await.unwrap();
    let (ingress, queue, pop3) = (
        connect(&urls.ingress).await,
        connect(&urls.queue).await,
        connect(&urls.pop3).await,
    );
    for store in [&ingress, &queue, &pop3] {
        store.check_schema().await.unwrap();
    }

    // The ingress: looks up recipients, counts, adds mail. Nothing else.
    let mail = envelope(vec![pochta_store::NewRecipient {
        disposition: pochta_mail::Disposition::Local,
        ..recipient("alice@example.org")
    }]);
    ingress
        .lookup_recipient(&addr("alice@example.org"))
        .await
        .unwrap();
    ingress.sender_usage("alice@example.org").await.unwrap();
    ingress.domain_backlog("example.org").await.unwrap();
    ingress.enqueue(&mail, CONTENT).await.unwrap();
    denied(
        "ingress claims",
        ingress
            .claim_due("i", Claim::Local, 1, Duration::from_secs(60))
            .await,
    );
    denied(
        "ingress deletes maildrops",
        ingress
            .delete_maildrop_entries_and_unlock(alice, "i", &[1])
            .await,
    );
    denied(
        "ingress collects garbage",
        ingress.collect_garbage(Duration::ZERO).await,
    );
    denied(
        "ingress adds domains",
        ingress.add_domain("evil.example", DomainRole::Relay).await,
    );

    // The queue: claims, delivers into the maildrop, records, collects garbage.
    let claimed = queue
        .claim_due("q", Claim::Local, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    queue
        .deliver_to_maildrop(
            "q",
            claimed[0].recipient_id,
            alice,
            b"Delivered-To: alice@example.org\r\n",
        )
        .await
        .unwrap();
    let remote = envelope(vec![recipient("bob@elsewhere.example")]);
    owner.enqueue(&remote, CONTENT).await.unwrap();
    let claimed = queue
        .claim_due("q", Claim::Remote, 10, Duration::from_secs(60))
        .await
        .unwrap();
    let report = AttemptReport {
        remote_mta: None,
        reply_code: Some(450),
        status: Some("4.4.1".into()),
        diagnostic: "no answer".into(),
    };
    queue
        .record_attempt(
            "q",
            claimed[0].recipient_id,
            AttemptOutcome::Deferred {
                retry_after: Duration::from_secs(60),
            },
            &report,
        )
        .await
        .unwrap();
    queue
        .collect_garbage(Duration::from_secs(3600))
        .await
        .unwrap();
    denied(
        "queue deletes maildrops",
        queue
            .delete_maildrop_entries_and_unlock(alice, "q", &[1])
            .await,
    );
    denied(
        "queue takes POP3 locks",
        queue
            .lock_maildrop(alice, "q", Duration::from_secs(60))
            .await,
    );
    denied(
        "queue changes accounts",
        queue
            .set_account_disabled(&addr("alice@example.org"), true)
            .await,
    );

    // POP3: locks, lists, reads, deletes its maildrop. Never the queue.
    assert!(
        pop3.lock_maildrop(alice, "p", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let entries = pop3.maildrop_entries(alice).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert!(
        pop3.maildrop_entry_content(alice, entries[0].id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        pop3.delete_maildrop_entries_and_unlock(alice, "p", &[entries[0].id])
            .await
            .unwrap(),
        1
    );
    denied(
        "POP3 reads the queue",
        pop3.envelope_detail(mail.queue_id.as_str()).await,
    );
    denied(
        "POP3 claims",
        pop3.claim_due("p", Claim::Remote, 1, Duration::from_secs(60))
            .await,
    );
    denied(
        "POP3 adds mail",
        pop3.enqueue(&envelope(vec![recipient("x@example.org")]), CONTENT)
            .await,
    );
}
