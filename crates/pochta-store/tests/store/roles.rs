//! Each service's database role can do what the service does and nothing it should not: the
//! store's own calls, made as that role, either work or are refused by PostgreSQL.

use std::time::Duration;

use pochta_mail::Disposition;
use pochta_store::{
    AttemptOutcome, AttemptReport, Claim, DkimAlgorithm, DomainRole, LocalDelivery, MailboxLimits,
    NewRecipient, Store, StoreError, StoreOptions,
};
use pochta_testkit::TestDb;

use crate::{CONTENT, addr, envelope, recipient};

const LEASE: Duration = Duration::from_secs(60);

fn denied<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
    match result {
        Err(StoreError::Database(sqlx::Error::Database(e)))
            if e.code().as_deref() == Some("42501") => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

/// A database with Alice's account, the roles granted on it; the owner's store, Alice's
/// account id, and a store logged in as each role (ingress, queue, POP3).
struct Roles {
    db: TestDb,
    alice: i64,
    ingress: Store,
    queue: Store,
    pop3: Store,
    imap: Store,
}

async fn roles() -> Roles {
    let db = TestDb::new().await.unwrap();
    let alice = db.add_account("alice@example.org", "pw").await.unwrap();
    // A quota, so that every path that checks one runs as its role.
    db.store()
        .set_quota(&addr("alice@example.org"), Some(1 << 30))
        .await
        .unwrap();
    let urls = db.service_roles().await.unwrap();
    let connect = async |url: &str| Store::connect(url, &StoreOptions::default()).await.unwrap();
    let r = Roles {
        ingress: connect(&urls.ingress).await,
        queue: connect(&urls.queue).await,
        pop3: connect(&urls.pop3).await,
        imap: connect(&urls.imap)
            .await
            .with_mailbox_limits(MailboxLimits {
                max_mailboxes: 100,
                ..MailboxLimits::default()
            }),
        db,
        alice,
    };
    for store in [&r.ingress, &r.queue, &r.pop3, &r.imap] {
        store.check_schema().await.unwrap();
    }
    r
}

/// A message for Alice, as the ingress stores it.
fn for_alice() -> pochta_store::NewEnvelope {
    envelope(vec![NewRecipient {
        disposition: Disposition::Local,
        ..recipient("alice@example.org")
    }])
}

/// The ingress looks up recipients, counts, adds mail; it changes and deletes nothing.
#[tokio::test]
async fn the_ingress_role_adds_mail_and_nothing_else() {
    let Roles { ingress, alice, .. } = &roles().await;
    ingress
        .lookup_recipient(&addr("alice@example.org"))
        .await
        .unwrap();
    // RCPT's quota check reads the mailboxes' sizes.
    let (alice_address, rules) = (addr("alice@example.org"), Default::default());
    let resolved = ingress.resolve_recipient(&alice_address, &rules);
    resolved.await.unwrap();
    ingress.sender_usage("alice@example.org").await.unwrap();
    ingress.domain_backlog("example.org").await.unwrap();
    let mail = for_alice();
    ingress.enqueue(&mail, CONTENT).await.unwrap();
    let stored = ingress.stored_queue_ids(&[mail.queue_id.as_str()]).await;
    assert_eq!(stored.unwrap().len(), 1);
    denied(
        "claims",
        ingress.claim_due("i", Claim::Local, 1, LEASE).await,
    );
    let deletes = ingress.delete_maildrop_entries_and_unlock(*alice, "i", &[1]);
    denied("deletes maildrops", deletes.await);
    denied(
        "collects garbage",
        ingress.collect_garbage(Duration::ZERO).await,
    );
    let domain = ingress.add_domain("evil.example", DomainRole::Relay);
    denied("adds domains", domain.await);
    // It reads the signing keys it signs with, and cannot make or rotate them.
    ingress.dkim_signing_keys("example.org").await.unwrap();
    let rotation = ingress.rotate_dkim_key("example.org", DkimAlgorithm::Rsa);
    denied("rotates keys", rotation.await);
}

/// The queue claims, delivers into maildrops, records, collects garbage; it cannot delete
/// maildrop entries, take POP3 locks or change accounts.
#[tokio::test]
async fn the_queue_role_works_the_queue_and_nothing_else() {
    let Roles {
        db, queue, alice, ..
    } = &roles().await;
    db.store().enqueue(&for_alice(), CONTENT).await.unwrap();
    let claimed = queue.claim_due("q", Claim::Local, 10, LEASE).await.unwrap();
    let prefix = b"Delivered-To: alice@example.org\r\n";
    queue
        .deliver_to_maildrop("q", claimed[0].recipient_id, *alice, prefix)
        .await
        .unwrap();
    // An account with a quota is delivered to in its turn, its usage read.
    db.store().enqueue(&for_alice(), CONTENT).await.unwrap();
    let claimed = queue.claim_due("q", Claim::Local, 10, LEASE).await.unwrap();
    let delivered = queue
        .deliver_to_maildrop_with_report("q", claimed[0].recipient_id, *alice, prefix, true, None)
        .await
        .unwrap();
    assert!(
        matches!(delivered, LocalDelivery::Delivered { .. }),
        "{delivered:?}"
    );
    let remote = envelope(vec![recipient("bob@elsewhere.example")]);
    db.store().enqueue(&remote, CONTENT).await.unwrap();
    let claimed = queue
        .claim_due("q", Claim::Remote, 10, LEASE)
        .await
        .unwrap();
    let report = AttemptReport {
        remote_mta: None,
        reply_code: Some(450),
        status: Some("4.4.1".into()),
        diagnostic: "no answer".into(),
    };
    let deferred = AttemptOutcome::Deferred {
        retry_after: Duration::from_secs(60),
    };
    let recorded = queue.record_attempt("q", claimed[0].recipient_id, deferred, &report);
    recorded.await.unwrap();
    queue
        .collect_garbage(Duration::from_secs(3600))
        .await
        .unwrap();
    let deletes = queue.delete_maildrop_entries_and_unlock(*alice, "q", &[1]);
    denied("deletes maildrops", deletes.await);
    denied(
        "takes POP3 locks",
        queue.lock_maildrop(*alice, "q", LEASE).await,
    );
    let alice_address = addr("alice@example.org");
    let disable = queue.set_account_disabled(&alice_address, true);
    denied("changes accounts", disable.await);
    denied(
        "reads signing keys",
        queue.dkim_signing_keys("example.org").await,
    );
}

/// POP3 locks, lists, reads and deletes its maildrop; it never sees the queue.
#[tokio::test]
async fn the_pop3_role_serves_maildrops_and_nothing_else() {
    let Roles {
        db, pop3, alice, ..
    } = &roles().await;
    let store = db.store();
    let mail = for_alice();
    store.enqueue(&mail, CONTENT).await.unwrap();
    let claimed = store.claim_due("q", Claim::Local, 1, LEASE).await.unwrap();
    store
        .deliver_to_maildrop("q", claimed[0].recipient_id, *alice, b"")
        .await
        .unwrap();
    assert!(pop3.lock_maildrop(*alice, "p", LEASE).await.unwrap());
    let entries = pop3.maildrop_entries(*alice).await.unwrap();
    assert_eq!(entries.len(), 1);
    let content = pop3.maildrop_entry_content(*alice, entries[0].id).await;
    assert!(content.unwrap().is_some());
    let ids = [entries[0].id];
    let deleted = pop3.delete_maildrop_entries_and_unlock(*alice, "p", &ids);
    assert_eq!(deleted.await.unwrap(), 1);
    denied(
        "reads the queue",
        pop3.envelope_detail(mail.queue_id.as_str()).await,
    );
    denied("claims", pop3.claim_due("p", Claim::Remote, 1, LEASE).await);
    denied(
        "reads signing keys",
        pop3.dkim_signing_keys("example.org").await,
    );
    let other = envelope(vec![recipient("x@example.org")]);
    denied("adds mail", pop3.enqueue(&other, CONTENT).await);
}

/// IMAP works the account's mailboxes: makes them, appends, copies, flags, expunges; it never
/// sees the queue and cannot take POP3's lock.
#[tokio::test]
async fn the_imap_role_works_mailboxes_and_nothing_else() {
    let Roles {
        db, imap, alice, ..
    } = &roles().await;
    let store = db.store();
    let mail = for_alice();
    store.enqueue(&mail, CONTENT).await.unwrap();
    let claimed = store.claim_due("q", Claim::Local, 1, LEASE).await.unwrap();
    store
        .deliver_to_maildrop("q", claimed[0].recipient_id, *alice, b"")
        .await
        .unwrap();
    imap.ensure_default_mailboxes(*alice).await.unwrap();
    let inbox = imap.mailbox(*alice, "INBOX").await.unwrap().unwrap();
    let work = imap.create_mailbox(*alice, "Work", None).await.unwrap();
    let seen = ["\\Seen".to_string()];
    let flagged = imap.store_flags(inbox.id, &[1], pochta_store::FlagChange::Add, &seen, None);
    assert_eq!(flagged.await.unwrap().changed.len(), 1);
    // A copy is held to the quota; the move after it is not.
    imap.copy_messages(inbox.id, &[1], work.id, false)
        .await
        .unwrap();
    imap.copy_messages(inbox.id, &[1], work.id, true)
        .await
        .unwrap();
    imap.append_message(work.id, CONTENT, &[], None)
        .await
        .unwrap();
    let entries = imap.mailbox_messages(work.id).await.unwrap();
    let ids: Vec<i64> = entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(
        imap.maildrop_entries_whole(*alice, &ids)
            .await
            .unwrap()
            .len(),
        3
    );
    imap.store_flags(
        work.id,
        &[1, 2, 3],
        pochta_store::FlagChange::Add,
        &["\\Deleted".into()],
        None,
    )
    .await
    .unwrap();
    assert_eq!(imap.expunge(work.id, None).await.unwrap(), [1, 2, 3]);
    assert!(imap.delete_mailbox(*alice, "Work").await.unwrap());
    denied(
        "reads the queue",
        imap.envelope_detail(mail.queue_id.as_str()).await,
    );
    denied("claims", imap.claim_due("i", Claim::Remote, 1, LEASE).await);
    denied(
        "takes POP3 locks",
        imap.lock_maildrop(*alice, "i", LEASE).await,
    );
    let other = envelope(vec![recipient("x@example.org")]);
    denied("adds queued mail", imap.enqueue(&other, CONTENT).await);
}
