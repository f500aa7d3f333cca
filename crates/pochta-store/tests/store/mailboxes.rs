//! IMAP mailboxes over the maildrop: UIDs, flags, mod-sequences, copy, move, append, expunge,
//! and how POP3 and local delivery see them.

use std::time::Duration;

use pochta_store::{
    Claim, ClaimedRecipient, ContentCompression, DomainRole, FlagChange, LocalDelivery,
    MailboxLimits, MaildropDelivery, MessageFilter, SPECIAL_MAILBOXES, SearchField,
    SearchFieldsBackfill, SearchResult, Store, StoreError,
};
use pochta_testkit::TestDb;

use crate::{CONTENT, addr, enqueue_n, envelope};

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
const PREFIX: &[u8] = b"Delivered-To: user0@example.org\r\n";

async fn account(store: &Store) -> i64 {
    store
        .add_domain("example.org", DomainRole::Local)
        .await
        .unwrap();
    store
        .add_account(&addr("user0@example.org"), HASH)
        .await
        .unwrap()
}

/// Enqueues `n` new messages to user0 and claims them for local delivery.
async fn claimed_for_user0(store: &Store, n: usize) -> Vec<ClaimedRecipient> {
    for _ in 0..n {
        let local = pochta_testkit::local_recipient("user0@example.org");
        store
            .enqueue(&envelope(vec![local]), CONTENT)
            .await
            .unwrap();
    }
    store
        .claim_due("w", Claim::Local, 1000, Duration::from_secs(60))
        .await
        .unwrap()
}

/// Delivers `n` new messages into user0's INBOX in one batch.
async fn deliver(store: &Store, account_id: i64, n: usize) {
    let claimed = claimed_for_user0(store, n).await;
    let batch: Vec<MaildropDelivery> = claimed
        .iter()
        .map(|c| MaildropDelivery {
            recipient_id: c.recipient_id,
            account_id,
            header_prefix: PREFIX.to_vec(),
        })
        .collect();
    let done = store.deliver_many_to_maildrops("w", &batch).await.unwrap();
    assert!(
        done.iter()
            .all(|d| matches!(d, LocalDelivery::Delivered { .. }))
    );
}

fn flags(list: &[&str]) -> Vec<String> {
    list.iter().map(|f| f.to_string()).collect()
}

#[tokio::test]
async fn delivery_gives_inbox_messages_rising_uids_and_a_new_modseq() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    let before = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    assert_eq!((before.uid_next, before.highest_modseq), (1, 1));

    deliver(store, account, 3).await;
    deliver(store, account, 2).await;

    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    assert_eq!(inbox.uid_validity, before.uid_validity);
    assert_eq!(inbox.uid_next, 6);
    assert_eq!(inbox.highest_modseq, 3, "one new mod-sequence per batch");
    let messages = store.mailbox_messages(inbox.id).await.unwrap();
    let uids: Vec<i64> = messages.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 2, 3, 4, 5]);
    assert!(messages.iter().all(|m| m.flags.is_empty()));
    assert_eq!(messages[4].modseq, 3);
    assert_eq!(
        messages[0].size as usize,
        PREFIX.len() + CONTENT.len(),
        "RFC822.SIZE is what POP3 RETR sends"
    );
    // POP3 lists the same messages, in the same order.
    let pop3: Vec<i64> = store
        .maildrop_entries(account)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let imap: Vec<i64> = messages.iter().map(|m| m.entry_id).collect();
    assert_eq!(pop3, imap);
}

#[tokio::test]
async fn flags_change_with_a_modseq_and_unchangedsince_guards_them() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    deliver(store, account, 3).await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();

    let seen = store
        .store_flags(
            inbox.id,
            &[1, 2],
            FlagChange::Add,
            &flags(&["\\Seen", "work"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(seen.changed.len(), 2);
    assert_eq!(seen.changed[0].flags, flags(&["\\Seen", "work"]));
    let modseq = seen.changed[0].modseq;
    assert!(modseq > inbox.highest_modseq);

    // Adding flags a message already has changes nothing and takes no mod-sequence.
    let again = store
        .store_flags(inbox.id, &[1], FlagChange::Add, &flags(&["\\Seen"]), None)
        .await
        .unwrap();
    assert!(again.changed.is_empty());
    let now = store.mailbox_by_id(inbox.id).await.unwrap().unwrap();
    assert_eq!(now.highest_modseq, modseq);

    // UNCHANGEDSINCE below message 1's mod-sequence: 1 is refused, 3 is changed.
    let guarded = store
        .store_flags(
            inbox.id,
            &[1, 3],
            FlagChange::Replace,
            &flags(&["\\Flagged"]),
            Some(modseq - 1),
        )
        .await
        .unwrap();
    assert_eq!(guarded.modified, [1]);
    assert_eq!(guarded.changed.len(), 1);
    assert_eq!(guarded.changed[0].uid, 3);
    assert_eq!(guarded.changed[0].flags, flags(&["\\Flagged"]));

    let removed = store
        .store_flags(
            inbox.id,
            &[1, 2],
            FlagChange::Remove,
            &flags(&["work"]),
            None,
        )
        .await
        .unwrap();
    assert!(
        removed
            .changed
            .iter()
            .all(|m| m.flags == flags(&["\\Seen"]))
    );
    let counts = store.mailbox_counts(inbox.id, true).await.unwrap();
    assert_eq!(
        (counts.messages, counts.unseen, counts.deleted),
        (3, 1, Some(0))
    );
    let without = store.mailbox_counts(inbox.id, false).await.unwrap();
    assert_eq!(
        (
            without.messages,
            without.unseen,
            without.size,
            without.deleted
        ),
        (3, 1, counts.size, None)
    );

    // What a session that knew the mailbox at `modseq` is told about.
    let (changed, present) = store.mailbox_changes(inbox.id, modseq, 3).await.unwrap();
    let changed: Vec<i64> = changed.iter().map(|m| m.uid).collect();
    assert_eq!(changed, [1, 2, 3]);
    assert_eq!(present, [1, 2, 3]);
}

#[tokio::test]
async fn expunge_removes_only_deleted_messages_and_pop3_no_longer_lists_them() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    deliver(store, account, 4).await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    store
        .store_flags(
            inbox.id,
            &[2, 3, 4],
            FlagChange::Add,
            &flags(&["\\Deleted"]),
            None,
        )
        .await
        .unwrap();
    // STATUS: SIZE is every message, DELETED-STORAGE the three marked \Deleted.
    let counts = store.mailbox_counts(inbox.id, true).await.unwrap();
    let sizes: Vec<i64> = store
        .maildrop_entries(account)
        .await
        .unwrap()
        .iter()
        .map(|e| e.pop3_size)
        .collect();
    assert_eq!(counts.size, sizes.iter().sum::<i64>());
    let deleted_size = counts.deleted_size.unwrap();
    assert_eq!(deleted_size, sizes[1..].iter().sum::<i64>());
    assert!(deleted_size > 0 && deleted_size < counts.size);

    // UID EXPUNGE of 1:3 leaves 4, deleted but outside the set.
    assert_eq!(
        store.expunge(inbox.id, Some(&[1, 2, 3])).await.unwrap(),
        [2, 3]
    );
    assert_eq!(store.expunge(inbox.id, None).await.unwrap(), [4]);
    assert!(store.expunge(inbox.id, None).await.unwrap().is_empty());
    assert_eq!(store.maildrop_entries(account).await.unwrap().len(), 1);
    let (_, present) = store.mailbox_changes(inbox.id, 0, 4).await.unwrap();
    assert_eq!(present, [1]);
}

#[tokio::test]
async fn a_pop3_deletion_is_an_expunge_with_a_new_modseq() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    deliver(store, account, 2).await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let entries = store.maildrop_entries(account).await.unwrap();
    assert!(
        store
            .lock_maildrop(account, "p", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let deleted = store
        .delete_maildrop_entries_and_unlock(account, "p", &[entries[0].id])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let after = store.mailbox_by_id(inbox.id).await.unwrap().unwrap();
    assert_eq!(after.highest_modseq, inbox.highest_modseq + 1);
    let (_, present) = store.mailbox_changes(inbox.id, 0, 2).await.unwrap();
    assert_eq!(present, [2]);
}

#[tokio::test]
async fn copy_and_move_share_content_and_give_new_uids() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    deliver(store, account, 3).await;
    store.ensure_default_mailboxes(account).await.unwrap();
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let trash = store.mailbox(account, "Trash").await.unwrap().unwrap();
    assert_eq!(trash.special_use.as_deref(), Some("\\Trash"));
    store
        .store_flags(
            inbox.id,
            &[2],
            FlagChange::Add,
            &flags(&["\\Flagged"]),
            None,
        )
        .await
        .unwrap();
    let chunks_before = store.counts().await.unwrap();

    let copied = store
        .copy_messages(inbox.id, &[2, 3, 99], trash.id, false)
        .await
        .unwrap();
    assert_eq!(copied.uid_validity, trash.uid_validity);
    assert_eq!(copied.uids, [(2, 1), (3, 2)], "missing UIDs are skipped");
    let moved = store
        .copy_messages(inbox.id, &[1], trash.id, true)
        .await
        .unwrap();
    assert_eq!(moved.uids, [(1, 3)]);

    let in_trash = store.mailbox_messages(trash.id).await.unwrap();
    assert_eq!(in_trash.len(), 3);
    assert_eq!(
        in_trash[0].flags,
        flags(&["\\Flagged"]),
        "flags travel with a copy"
    );
    let inbox_uids: Vec<i64> = store
        .mailbox_messages(inbox.id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(inbox_uids, [2, 3]);
    // POP3 sees INBOX only.
    assert_eq!(store.maildrop_entries(account).await.unwrap().len(), 2);
    // What a selecting session keeps, and what it asks for by UID.
    assert_eq!(store.mailbox_uids(trash.id).await.unwrap(), [1, 2, 3]);
    let asked = store
        .mailbox_messages_by_uid(inbox.id, &[3, 1, 99])
        .await
        .unwrap();
    let uids: Vec<i64> = asked.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [3], "1 moved away, 99 never was");
    // A dense set is read as a range: the same answer.
    let dense = store
        .mailbox_messages_by_uid(trash.id, &[1, 3])
        .await
        .unwrap();
    let uids: Vec<i64> = dense.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 3]);
    assert!(
        store
            .mailbox_messages_by_uid(trash.id, &[])
            .await
            .unwrap()
            .is_empty()
    );
    // No content was copied; the copy reads the same octets.
    let after = store.counts().await.unwrap();
    assert_eq!(after.messages, chunks_before.messages);
    let whole = store
        .maildrop_entries_whole(account, &[in_trash[2].entry_id])
        .await
        .unwrap();
    assert_eq!(whole[0].1, [PREFIX, CONTENT].concat());
}

#[tokio::test]
async fn append_stores_content_flags_and_date() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    store.ensure_default_mailboxes(account).await.unwrap();
    let sent = store.mailbox(account, "Sent").await.unwrap().unwrap();
    let big: Vec<u8> = (0..20_000u32)
        .map(|i| b"abcdefgh\r\n"[i as usize % 10])
        .collect();
    let date = "2025-03-04T05:06:07Z".parse().unwrap();

    let placed = store
        .append_message(sent.id, &big, &flags(&["\\Seen", "\\Seen"]), Some(date))
        .await
        .unwrap();
    assert_eq!(placed.uids, [(0, 1)]);
    assert_eq!(placed.uid_validity, sent.uid_validity);
    let messages = store.mailbox_messages(sent.id).await.unwrap();
    assert_eq!(messages[0].flags, flags(&["\\Seen"]));
    assert_eq!(messages[0].internal_date, date);
    assert_eq!(messages[0].size, big.len() as i64);
    let whole = store
        .maildrop_entries_whole(account, &[messages[0].entry_id])
        .await
        .unwrap();
    assert_eq!(whole[0].1, big);

    let missing = store.append_message(-1, b"x", &[], None).await;
    assert!(matches!(missing, Err(StoreError::UnknownMailbox(_))));
}

/// RENAME INBOX (RFC 9051 6.3.6): a new mailbox takes every message, with new UIDs, its
/// flags and its content; INBOX stays, empty, with its UIDVALIDITY and children, and goes on
/// taking deliveries. A taken name is refused and nothing moves.
#[tokio::test]
async fn renaming_inbox_moves_its_messages_into_a_new_mailbox() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    deliver(store, account, 3).await;
    store.ensure_default_mailboxes(account).await.unwrap();
    store
        .create_mailbox(account, "INBOX/Kept", None)
        .await
        .unwrap();
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let before = store.mailbox_messages(inbox.id).await.unwrap();
    store
        .store_flags(
            inbox.id,
            &[before[1].uid],
            FlagChange::Add,
            &["\\Seen".into()],
            None,
        )
        .await
        .unwrap();
    let ids: Vec<i64> = before.iter().map(|m| m.entry_id).collect();
    let texts = store.maildrop_entries_whole(account, &ids).await.unwrap();

    assert!(matches!(
        store.rename_mailbox(account, "INBOX", "Sent").await,
        Err(StoreError::MailboxExists(_))
    ));
    assert_eq!(store.mailbox_messages(inbox.id).await.unwrap().len(), 3);

    assert!(
        store
            .rename_mailbox(account, "INBOX", "Old/2026")
            .await
            .unwrap()
    );
    assert!(store.mailbox_messages(inbox.id).await.unwrap().is_empty());
    let kept = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    assert_eq!((kept.id, kept.uid_validity), (inbox.id, inbox.uid_validity));
    assert!(
        store
            .mailbox(account, "INBOX/Kept")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store.mailbox(account, "Old").await.unwrap().is_some(),
        "parent made"
    );
    let old = store.mailbox(account, "Old/2026").await.unwrap().unwrap();
    let moved = store.mailbox_messages(old.id).await.unwrap();
    let uids: Vec<i64> = moved.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 2, 3]);
    let seen: Vec<bool> = moved
        .iter()
        .map(|m| m.flags.iter().any(|f| f == "\\Seen"))
        .collect();
    assert_eq!(seen, [false, true, false]);
    let ids: Vec<i64> = moved.iter().map(|m| m.entry_id).collect();
    let moved_texts = store.maildrop_entries_whole(account, &ids).await.unwrap();
    let bodies = |t: Vec<(i64, Vec<u8>)>| t.into_iter().map(|(_, b)| b).collect::<Vec<_>>();
    assert_eq!(bodies(moved_texts), bodies(texts));

    deliver(store, account, 1).await;
    assert_eq!(store.mailbox_messages(inbox.id).await.unwrap().len(), 1);
    assert!(
        !store
            .rename_mailbox(account + 1, "INBOX", "X")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn mailboxes_are_made_renamed_subscribed_and_deleted() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    store.ensure_default_mailboxes(account).await.unwrap();
    store.ensure_default_mailboxes(account).await.unwrap();
    let names: Vec<String> = store
        .list_mailboxes(account)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    let mut expected: Vec<String> = SPECIAL_MAILBOXES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    expected.push("INBOX".into());
    expected.sort();
    assert_eq!(names, expected);

    let work = store.create_mailbox(account, "Work", None).await.unwrap();
    store
        .create_mailbox(account, "Work/2026", None)
        .await
        .unwrap();
    assert!(matches!(
        store.create_mailbox(account, "Work", None).await,
        Err(StoreError::MailboxExists(_))
    ));
    assert!(store.rename_mailbox(account, "Work", "Jobs").await.unwrap());
    let jobs = store.mailbox(account, "Jobs").await.unwrap().unwrap();
    assert_eq!((jobs.id, jobs.uid_validity), (work.id, work.uid_validity));
    assert!(store.mailbox(account, "Jobs/2026").await.unwrap().is_some());
    assert!(matches!(
        store.rename_mailbox(account, "Jobs", "Sent").await,
        Err(StoreError::MailboxExists(_))
    ));
    assert!(!store.rename_mailbox(account, "Nothing", "X").await.unwrap());
    // INBOX stays: local delivery needs it.
    for refused in [
        store.rename_mailbox(account, "Jobs", "INBOX").await,
        store.delete_mailbox(account, "INBOX").await,
    ] {
        assert!(
            matches!(refused, Err(StoreError::InboxFixed)),
            "{refused:?}"
        );
    }

    assert!(store.set_subscribed(account, "Jobs", false).await.unwrap());
    assert!(
        !store
            .mailbox(account, "Jobs")
            .await
            .unwrap()
            .unwrap()
            .subscribed
    );

    // Made again after deletion, a mailbox has a new UIDVALIDITY.
    assert!(store.delete_mailbox(account, "Jobs/2026").await.unwrap());
    let again = store
        .create_mailbox(account, "Jobs/2026", None)
        .await
        .unwrap();
    assert!(again.uid_validity > jobs.uid_validity);
    // Deleting the Trash comes back at the next login.
    assert!(store.delete_mailbox(account, "Trash").await.unwrap());
    store.ensure_default_mailboxes(account).await.unwrap();
    assert!(store.mailbox(account, "Trash").await.unwrap().is_some());
}

#[tokio::test]
async fn concurrent_deliveries_to_one_inbox_never_share_a_uid() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    for _ in 0..40 {
        enqueue_n(store, 1).await;
    }
    let claimed = store
        .claim_due("w", Claim::Remote, 1000, Duration::from_secs(60))
        .await
        .unwrap();
    let tasks = claimed.chunks(5).map(|batch| {
        let store = store.clone();
        let batch: Vec<MaildropDelivery> = batch
            .iter()
            .map(|c| MaildropDelivery {
                recipient_id: c.recipient_id,
                account_id: account,
                header_prefix: PREFIX.to_vec(),
            })
            .collect();
        tokio::spawn(async move { store.deliver_many_to_maildrops("w", &batch).await })
    });
    for task in tasks.collect::<Vec<_>>() {
        task.await.unwrap().unwrap();
    }
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let uids: Vec<i64> = store
        .mailbox_messages(inbox.id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(uids, (1..=40).collect::<Vec<i64>>());
    assert_eq!(inbox.uid_next, 41);
}

/// Every change an IMAP session must hear about is announced with its mailbox's id: a local
/// delivery, a flag change, a copy, an expunge, and a POP3 deletion.
#[tokio::test]
async fn changes_are_announced_to_listeners_with_the_mailbox_id() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    store.ensure_default_mailboxes(account).await.unwrap();
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let trash = store.mailbox(account, "Trash").await.unwrap().unwrap();
    let mut changes = store.listen_for_mailbox_changes().await.unwrap();
    let mut heard = async || {
        let next = tokio::time::timeout(Duration::from_secs(10), changes.next());
        next.await.expect("a change is announced").unwrap()
    };
    use pochta_store::MailboxChange::Changed;

    deliver(store, account, 2).await;
    assert_eq!(heard().await, Changed(inbox.id));
    store
        .store_flags(
            inbox.id,
            &[1],
            FlagChange::Add,
            &flags(&["\\Deleted"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(heard().await, Changed(inbox.id));
    store
        .copy_messages(inbox.id, &[2], trash.id, false)
        .await
        .unwrap();
    assert_eq!(heard().await, Changed(trash.id));
    store.expunge(inbox.id, None).await.unwrap();
    assert_eq!(heard().await, Changed(inbox.id));
    let left = store.maildrop_entries(account).await.unwrap();
    store
        .lock_maildrop(account, "p", Duration::from_secs(60))
        .await
        .unwrap();
    store
        .delete_maildrop_entries_and_unlock(account, "p", &[left[0].id])
        .await
        .unwrap();
    assert_eq!(heard().await, Changed(inbox.id));
}

/// Copies, flag changes, expunges and a POP3 QUIT on the same messages at once: each takes
/// the mailbox rows before the entries, so none of them fails with a deadlock, and a copy
/// either got a message before its deletion or does not have it.
#[tokio::test]
async fn copy_flags_expunge_and_pop3_quit_at_once_never_deadlock() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    store.ensure_default_mailboxes(account).await.unwrap();
    let trash = store.mailbox(account, "Trash").await.unwrap().unwrap().id;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap().id;
    for round in 0..10 {
        deliver(store, account, 8).await;
        let uids: Vec<i64> = store
            .mailbox_messages(inbox)
            .await
            .unwrap()
            .iter()
            .map(|m| m.uid)
            .collect();
        let entries: Vec<i64> = store
            .maildrop_entries(account)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        let owner = format!("p{round}");
        assert!(
            store
                .lock_maildrop(account, &owner, Duration::from_secs(60))
                .await
                .unwrap()
        );
        let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store.clone());
        let (u1, u2, u3) = (uids.clone(), uids.clone(), uids.clone());
        let copy = tokio::spawn(async move { s1.copy_messages(inbox, &u1, trash, false).await });
        let flag = tokio::spawn(async move {
            let deleted = ["\\Deleted".to_string()];
            s2.store_flags(inbox, &u2, FlagChange::Add, &deleted, None)
                .await
        });
        let expunge = tokio::spawn(async move { s3.expunge(inbox, Some(&u3)).await });
        let quit = tokio::spawn(async move {
            s4.delete_maildrop_entries_and_unlock(account, &owner, &entries)
                .await
        });
        copy.await.unwrap().unwrap();
        flag.await.unwrap().unwrap();
        expunge.await.unwrap().unwrap();
        quit.await.unwrap().unwrap();
        assert!(store.mailbox_messages(inbox).await.unwrap().is_empty());
    }
}

/// Should an account ever lack its INBOX, local delivery leaves its mail queued rather than
/// marking it delivered with no entry.
#[tokio::test]
async fn without_an_inbox_mail_stays_queued_not_lost() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("DELETE FROM mailboxes WHERE account_id = $1")
        .bind(account)
        .execute(&raw)
        .await
        .unwrap();
    enqueue_n(store, 1).await;
    let claimed = store
        .claim_due("w", Claim::Remote, 10, Duration::from_secs(60))
        .await
        .unwrap();
    let delivery = MaildropDelivery {
        recipient_id: claimed[0].recipient_id,
        account_id: account,
        header_prefix: PREFIX.to_vec(),
    };
    let done = store
        .deliver_many_to_maildrops("w", &[delivery])
        .await
        .unwrap();
    assert_eq!(done, [LocalDelivery::AlreadyFinal]);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.maildrop_entries, 0);
    assert_eq!(
        counts.recipients_in(pochta_store::RecipientState::Queued),
        1
    );
}

/// Header blocks are cut in the database at the first empty line, after the delivery prefix;
/// a header longer than a chunk, and a message without an empty line, come whole.
#[tokio::test]
async fn header_blocks_are_read_without_the_body() {
    let db = TestDb::new().await.unwrap();
    assert_header_blocks(db.store(), false).await;
}

/// The same with every message compressed: the first row is decoded and cut in the store
/// crate, and a header that ends within what it decodes to is cut there too.
#[tokio::test]
async fn compressed_header_blocks_are_read_without_the_body() {
    let db = TestDb::new().await.unwrap();
    let compress_all = ContentCompression {
        min_size: 0,
        level: 1,
        base64_lines: true,
    };
    let store = db.connect().await.unwrap();
    let store = store.with_compression(Some(compress_all));
    assert_header_blocks(&store, true).await;
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    let codecs: Vec<i16> = sqlx::query_scalar(
        "SELECT DISTINCT c.codec FROM message_chunks c JOIN messages m ON m.id = c.message_id
         WHERE m.size > 9000",
    )
    .fetch_all(&raw)
    .await
    .unwrap();
    assert_eq!(
        codecs,
        [1],
        "the two large messages compressed (small ones may not shrink)"
    );
}

async fn assert_header_blocks(store: &Store, compressed: bool) {
    let account = account(store).await;
    deliver(store, account, 1).await;
    store.ensure_default_mailboxes(account).await.unwrap();
    let drafts = store.mailbox(account, "Drafts").await.unwrap().unwrap();
    let long_header = format!("X-Long: {}\r\nSubject: s\r\n\r\nbody\r\n", "a".repeat(9000));
    let no_blank_line = b"Subject: only a header\r\n".to_vec();
    let big_body = [b"Subject: big\r\n\r\n".as_slice(), &vec![b'x'; 30_000]].concat();
    for content in [long_header.as_bytes(), &no_blank_line, &big_body] {
        store
            .append_message(drafts.id, content, &[], None)
            .await
            .unwrap();
    }
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let mut ids: Vec<i64> = Vec::new();
    for mailbox in [inbox.id, drafts.id] {
        let messages = store.mailbox_messages(mailbox).await.unwrap();
        ids.extend(messages.iter().map(|m| m.entry_id));
    }
    let blocks = store.maildrop_entries_headers(account, &ids).await.unwrap();
    // Those whose header block does not end in their first row are named, with their
    // size, to be read whole (a message all header but short ends in its first row).
    let mut longer = blocks.longer.clone();
    longer.sort();
    if compressed {
        assert_eq!(longer, []);
    } else {
        assert_eq!(longer, [(ids[1], long_header.len() as i64)]);
    }
    let mut whole = store
        .maildrop_entries_whole(account, &longer.iter().map(|l| l.0).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut headers = blocks.found;
    headers.append(&mut whole);
    headers.sort();
    let texts: Vec<Vec<u8>> = headers.into_iter().map(|(_, h)| h).collect();
    let delivered = [PREFIX, CONTENT].concat();
    let delivered_header =
        &delivered[..delivered.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4];
    assert_eq!(texts[0], delivered_header, "prefix and header, no body");
    let long_header_block = &long_header[..long_header.find("\r\n\r\n").unwrap() + 4];
    if compressed {
        assert_eq!(
            texts[1],
            long_header_block.as_bytes(),
            "within the first row"
        );
    } else {
        assert_eq!(
            texts[1],
            long_header.as_bytes(),
            "longer than a chunk: whole"
        );
    }
    assert_eq!(texts[2], no_blank_line, "no empty line: whole");
    assert_eq!(
        texts[3], b"Subject: big\r\n\r\n",
        "30 KB of body left in the store"
    );
    // Another account's entries are not read.
    let other = store
        .maildrop_entries_headers(account + 1, &ids)
        .await
        .unwrap();
    assert!(other.found.is_empty() && other.longer.is_empty());
}

/// SEARCH keys about flags, sizes, dates, UIDs and mod-sequences, evaluated in PostgreSQL:
/// each filter, nested, over five messages.
#[tokio::test]
async fn searches_of_flags_sizes_dates_and_uids_run_in_the_store() {
    use MessageFilter::*;
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    deliver(store, account, 5).await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let set = |uids: &[i64], f: &[&str]| {
        let uids = uids.to_vec();
        let f = flags(f);
        async move {
            store
                .store_flags(inbox.id, &uids, FlagChange::Add, &f, None)
                .await
                .unwrap()
        }
    };
    set(&[1, 2], &["\\Seen"]).await;
    set(&[2], &["\\Flagged", "$Work"]).await;
    let stored = set(&[5], &["\\Deleted"]).await;
    let modseq_of_5 = stored.changed[0].modseq;
    let uids = |found: SearchResult| {
        assert!(found.undecided.is_empty(), "{found:?}");
        found.matched
    };
    // Every search here is counted too (ESEARCH's COUNT alone), and must agree.
    let search = |filter: MessageFilter| async move {
        let found = store.mailbox_search(inbox.id, &filter).await.unwrap();
        let counted = store.mailbox_search_count(inbox.id, &filter).await.unwrap();
        assert_eq!(
            counted,
            (found.matched.len() as i64, found.highest_modseq),
            "{filter:?}"
        );
        uids(found)
    };
    let not = |f: MessageFilter| Not(Box::new(f));
    let flag = |f: &str| Flag(f.to_string());
    assert_eq!(search(All).await, [1, 2, 3, 4, 5]);
    assert_eq!(search(not(flag("\\Seen"))).await, [3, 4, 5]);
    // Keywords match in any case (RFC 9051 2.3.2).
    assert_eq!(search(flag("$work")).await, [2]);
    assert_eq!(
        search(Or(Box::new(flag("\\Flagged")), Box::new(flag("\\Deleted")))).await,
        [2, 5]
    );
    assert_eq!(
        search(And(vec![flag("\\Seen"), not(flag("\\Flagged"))])).await,
        [1]
    );
    assert_eq!(search(And(vec![])).await, [1, 2, 3, 4, 5]);
    assert_eq!(search(Uids(vec![(2, 3), (5, 9)])).await, [2, 3, 5]);
    assert_eq!(search(Uids(vec![])).await, Vec::<i64>::new());
    assert_eq!(search(ModSeqAtLeast(modseq_of_5)).await, [5]);
    // A count cannot tell the messages whose header field was not kept: refused.
    let by_subject = FieldContains(SearchField::Subject, "x".into());
    let refused = store.mailbox_search_count(inbox.id, &by_subject).await;
    assert!(
        matches!(refused, Err(StoreError::InvalidFilter(_))),
        "{refused:?}"
    );
    // Sizes and the internal date's day (UTC).
    let size = store.maildrop_entries(account).await.unwrap()[0].pop3_size;
    assert_eq!(search(Larger(size - 1)).await, [1, 2, 3, 4, 5]);
    assert!(search(Larger(size)).await.is_empty());
    assert!(search(Smaller(size)).await.is_empty());
    let today = chrono::Utc::now().date_naive();
    assert_eq!(search(On(today)).await, [1, 2, 3, 4, 5]);
    assert_eq!(search(Since(today)).await, [1, 2, 3, 4, 5]);
    assert!(search(Before(today)).await.is_empty());
    assert_eq!(
        search(Before(today.succ_opt().unwrap())).await,
        [1, 2, 3, 4, 5]
    );
    // The highest mod-sequence among the matches comes back too (CONDSTORE's MODSEQ).
    let found = |filter| async move { store.mailbox_search(inbox.id, &filter).await.unwrap() };
    assert_eq!(
        found(flag("\\Deleted")).await,
        SearchResult {
            matched: vec![5],
            undecided: vec![],
            highest_modseq: modseq_of_5
        }
    );
    let seen = found(flag("\\Seen")).await;
    assert_eq!(seen.matched, [1, 2]);
    assert!(seen.highest_modseq > 0 && seen.highest_modseq < modseq_of_5);
    assert_eq!(
        found(flag("$none")).await,
        SearchResult {
            matched: vec![],
            undecided: vec![],
            highest_modseq: 0
        }
    );
}

/// SEARCH keys about the header fields kept with each message (migration 0014) run in the
/// store as well, for delivered and appended mail; a message stored without them comes back
/// undecided wherever its fields could change the answer, and decided where they cannot.
#[tokio::test]
async fn searches_of_kept_header_fields_run_in_the_store_and_leave_the_rest_undecided() {
    use MessageFilter::*;
    use SearchField::*;
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    // UID 1 delivered through the queue ("Subject: hi", no Date:); 2 to 4 appended.
    deliver(store, account, 1).await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let rich = "From: =?UTF-8?Q?J=C3=B6rg?= <jorg@example.net>\r\nTo: a@example.net\r\n\
Cc: B@Example.NET\r\nSubject: Quarterly\r\n report\r\n\
Date: Mon, 7 Dec 2026 23:30:00 -0800\r\n\r\nQuarterly body\r\n";
    // UID 4 has a NUL in a header (SMTP passes it through): kept as a space.
    let old = b"Subject: Quarterly old\r\n\r\n";
    for content in [rich.as_bytes(), old, b"Subject: a\0b\r\n\r\n"] {
        store
            .append_message(inbox.id, content, &[], None)
            .await
            .unwrap();
    }
    // UID 3 as a message stored before the fields were kept.
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query(
        "UPDATE messages SET search_fields = false, search_subject = NULL
         WHERE id = (SELECT message_id FROM maildrop_entries WHERE imap_uid = 3
                     AND mailbox_id = $1)",
    )
    .bind(inbox.id)
    .execute(&raw)
    .await
    .unwrap();
    let kept: Vec<(bool, Option<String>, Option<chrono::NaiveDate>)> = sqlx::query_as(
        "SELECT m.search_fields, m.search_cc, m.search_sent_on FROM maildrop_entries e
         JOIN messages m ON m.id = e.message_id WHERE e.mailbox_id = $1 ORDER BY e.imap_uid",
    )
    .bind(inbox.id)
    .fetch_all(&raw)
    .await
    .unwrap();
    let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
    assert_eq!(
        kept,
        [
            (true, None, None),
            (true, Some(" b@example.net".into()), Some(day(7))),
            (false, None, None),
            (true, None, None),
        ]
    );
    // (UID, decided) of each message returned.
    let search = |filter: MessageFilter| async move {
        let found = store.mailbox_search(inbox.id, &filter).await.unwrap();
        let mut both: Vec<(i64, bool)> = (found.matched.iter().map(|&u| (u, true)))
            .chain(found.undecided.iter().map(|&u| (u, false)))
            .collect();
        both.sort_unstable();
        both
    };
    let field = |f, s: &str| FieldContains(f, s.to_string());
    let not = |f: MessageFilter| Not(Box::new(f));
    // Case-folded, across the fold, decoded; absent fields match nothing, "" any present.
    let subject = field(Subject, "QUARTERLY REPORT");
    assert_eq!(search(subject.clone()).await, [(2, true), (3, false)]);
    assert_eq!(search(field(From, "jörg")).await, [(2, true), (3, false)]);
    assert_eq!(search(field(Cc, "")).await, [(2, true), (3, false)]);
    assert_eq!(
        search(field(Subject, "")).await,
        [(1, true), (2, true), (3, false), (4, true)]
    );
    assert_eq!(
        search(field(Subject, "A\0B")).await,
        [(3, false), (4, true)]
    );
    assert_eq!(search(field(Bcc, "")).await, [(3, false)]);
    assert_eq!(search(field(To, "b@example")).await, [(3, false)]);
    // The logic of unknowns: NOT of unknown is unknown; AND with false and OR with true are
    // decided without the fields.
    assert_eq!(
        search(not(subject.clone())).await,
        [(1, true), (3, false), (4, true)]
    );
    let seen = Flag("\\Seen".into());
    assert_eq!(search(And(vec![seen, subject.clone()])).await, []);
    let uid3 = Uids(vec![(3, 3)]);
    assert_eq!(
        search(Or(Box::new(uid3), Box::new(subject))).await,
        [(2, true), (3, true)]
    );
    // The Date: field's own day; no Date: field is before, on or after nothing.
    assert_eq!(search(SentOn(day(7))).await, [(2, true), (3, false)]);
    assert_eq!(search(SentBefore(day(8))).await, [(2, true), (3, false)]);
    assert_eq!(search(SentSince(day(8))).await, [(3, false)]);
    // Keys about flags alone never read the fields: nothing is undecided.
    assert_eq!(
        search(not(Flag("\\Seen".into()))).await,
        [(1, true), (2, true), (3, true), (4, true)]
    );
    // The highest mod-sequence is of the decided matches only (UID 2 here, not 3).
    let modseq = |filter| async move {
        let found = store.mailbox_search(inbox.id, &filter).await.unwrap();
        found.highest_modseq
    };
    assert_eq!(
        modseq(field(Subject, "quarterly report")).await,
        modseq(Uids(vec![(2, 2)])).await
    );
    assert!(modseq(Uids(vec![(2, 2)])).await < modseq(Uids(vec![(3, 3)])).await);
}

/// Mail stored before migration 0014 gets its search fields kept by the backfill, batch by
/// batch: the same fields ingest would have kept, a header longer than a chunk read whole,
/// fields too long to keep passed over, mail in no mailbox left alone.
#[tokio::test]
async fn backfill_keeps_the_search_fields_ingest_would_have_kept() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    deliver(store, account, 2).await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let long_header = format!(
        "X-Filler: {}\r\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= late\r\nDate: 3 Dec 2026 10:00 +0000\r\n\r\nbody\r\n",
        "x".repeat(20_000)
    );
    let too_long = format!(
        "To: {}\r\nSubject: crowded\r\n\r\nbody\r\n",
        "a@b.example, ".repeat(2000)
    );
    for content in [long_header.as_bytes(), too_long.as_bytes()] {
        store
            .append_message(inbox.id, content, &[], None)
            .await
            .unwrap();
    }
    // Relayed mail, in no mailbox.
    let relayed = store
        .enqueue(
            &crate::envelope(vec![crate::recipient("far@example.net")]),
            CONTENT,
        )
        .await
        .unwrap();
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    type Kept = (
        i64,
        bool,
        Option<String>,
        Option<String>,
        Option<chrono::NaiveDate>,
    );
    let kept = || async {
        let rows: Vec<Kept> = sqlx::query_as(
            "SELECT id, search_fields, search_subject, search_to, search_sent_on FROM messages
             ORDER BY id",
        )
        .fetch_all(&raw)
        .await
        .unwrap();
        rows
    };
    let at_ingest = kept().await;
    assert_eq!(at_ingest.len(), 5);
    assert_eq!(
        at_ingest.iter().map(|k| k.1).collect::<Vec<_>>(),
        [true, true, true, false, false],
        "kept at ingest: delivered and appended, not the crowded one nor relayed mail"
    );
    assert!(at_ingest[2].2.as_ref().unwrap().contains("grüße late"));
    // As before the migration.
    sqlx::query(
        "UPDATE messages SET search_fields = false, search_subject = NULL, search_from = NULL,
             search_to = NULL, search_cc = NULL, search_bcc = NULL, search_sent_on = NULL",
    )
    .execute(&raw)
    .await
    .unwrap();
    let subject = MessageFilter::FieldContains(SearchField::Subject, "GRÜßE Late".into());
    let before = store.mailbox_search(inbox.id, &subject).await.unwrap();
    assert_eq!(before.undecided, [1, 2, 3, 4]);
    let (mut after, mut total) = (0, SearchFieldsBackfill::default());
    let mut batches = 0;
    while let Some(last) = {
        let done = store.backfill_search_fields(after, 2).await.unwrap();
        total.kept += done.kept;
        total.passed_over += done.passed_over;
        done.last_id
    } {
        assert!(last > after);
        after = last;
        batches += 1;
    }
    assert_eq!(batches, 2, "four messages in mailboxes, two a batch");
    assert_eq!((total.kept, total.passed_over), (3, 1));
    let backfilled = kept().await;
    let relayed_row = |rows: &[Kept]| rows.iter().find(|k| k.0 == relayed.message_id).cloned();
    assert!(
        !relayed_row(&backfilled).unwrap().1,
        "relayed mail left alone"
    );
    let in_mailboxes = |rows: Vec<Kept>| -> Vec<Kept> {
        rows.into_iter()
            .filter(|k| k.0 != relayed.message_id)
            .collect()
    };
    assert_eq!(in_mailboxes(backfilled), in_mailboxes(at_ingest));
    // Decided in the store again, except the crowded one.
    let found = store.mailbox_search(inbox.id, &subject).await.unwrap();
    assert_eq!((found.matched, found.undecided), (vec![3], vec![4]));
    // Nothing is left: running again keeps nothing.
    let again = store.backfill_search_fields(0, 100).await.unwrap();
    assert_eq!((again.kept, again.passed_over), (0, 1));
}

/// SEARCH UNSEEN in a large mailbox of mostly read mail reads the index of unseen entries
/// (migration 0015), not every entry of the mailbox; its answer is the same.
#[tokio::test]
async fn unseen_searches_read_the_index_of_unseen_entries() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    deliver(store, account, 1).await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    // 20,000 more entries over the same content; every hundredth unseen.
    sqlx::query(
        "INSERT INTO maildrop_entries
             (account_id, message_id, header_prefix, pop3_size, mailbox_id, imap_uid, flags)
         SELECT f.account_id, f.message_id, f.header_prefix, f.pop3_size, f.mailbox_id, i,
                CASE WHEN i % 100 = 0 THEN '{}'::text[] ELSE ARRAY['\\Seen'] END
         FROM generate_series(2, 20001) i
         CROSS JOIN (SELECT * FROM maildrop_entries WHERE mailbox_id = $1) f",
    )
    .bind(inbox.id)
    .execute(&raw)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE maildrop_entries")
        .execute(&raw)
        .await
        .unwrap();
    let unseen = MessageFilter::And(vec![MessageFilter::Not(Box::new(MessageFilter::Flag(
        "\\Seen".into(),
    )))]);
    let plan = store
        .explain_mailbox_search(inbox.id, &unseen)
        .await
        .unwrap();
    // The UIDs and mod-sequences come from the index alone (migration 16), not the rows.
    assert!(
        plan.contains("Index Only Scan using maildrop_entries_unseen"),
        "{plan}"
    );
    // The same many times over: a plan kept for the statement reads the index too.
    for _ in 0..8 {
        let found = store.mailbox_search(inbox.id, &unseen).await.unwrap();
        let expected: Vec<i64> = std::iter::once(1)
            .chain((100..=20_000).step_by(100))
            .collect();
        assert_eq!(found.matched, expected);
    }
    // STATUS's usual counts are the mailbox row's counters (migration 18), kept by triggers
    // through the 20,000 entries written above: no entry is read, and they agree with a
    // count of the entries (the \Deleted counts below).
    let plan = store.explain_mailbox_counts(inbox.id, false).await.unwrap();
    assert!(
        plan.contains("mailboxes") && !plan.contains("maildrop_entries"),
        "{plan}"
    );
    let counts = store.mailbox_counts(inbox.id, false).await.unwrap();
    assert_eq!((counts.messages, counts.unseen), (20_001, 201));
    let with_deleted = store.mailbox_counts(inbox.id, true).await.unwrap();
    assert_eq!(
        (
            with_deleted.messages,
            with_deleted.unseen,
            with_deleted.size
        ),
        (counts.messages, counts.unseen, counts.size)
    );
    // A search of seen mail has no such index and reads the mailbox's entries.
    let seen = MessageFilter::Flag("\\Seen".into());
    let plan = store.explain_mailbox_search(inbox.id, &seen).await.unwrap();
    assert!(!plan.contains("maildrop_entries_unseen"), "{plan}");
}

/// Every mailbox's kept counters (migration 18) against a count of its entries.
async fn counters_agree(store: &Store, account_id: i64, step: &str) -> Vec<(String, i64, i64)> {
    let mut seen = Vec::new();
    for mailbox in store.list_mailboxes(account_id).await.unwrap() {
        let kept = store.mailbox_counts(mailbox.id, false).await.unwrap();
        let counted = store.mailbox_counts(mailbox.id, true).await.unwrap();
        assert_eq!(
            (kept.messages, kept.unseen, kept.size),
            (counted.messages, counted.unseen, counted.size),
            "{step}: {}",
            mailbox.name
        );
        seen.push((mailbox.name, kept.messages, kept.unseen));
    }
    seen
}

#[tokio::test]
async fn mailbox_counters_follow_every_change_to_its_entries() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    store.ensure_default_mailboxes(account).await.unwrap();
    deliver(store, account, 5).await;
    counters_agree(store, account, "delivery").await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let sent = store.mailbox(account, "Sent").await.unwrap().unwrap();
    store
        .append_message(
            sent.id,
            b"Subject: s\r\n\r\nsent\r\n",
            &flags(&["\\Seen"]),
            None,
        )
        .await
        .unwrap();
    store
        .append_message(sent.id, b"Subject: d\r\n\r\ndraft\r\n", &[], None)
        .await
        .unwrap();
    counters_agree(store, account, "append").await;
    for (change, list) in [
        (FlagChange::Add, &["\\Seen"][..]),
        (FlagChange::Remove, &["\\Seen"]),
        (FlagChange::Replace, &["\\Seen", "\\Flagged"]),
        (FlagChange::Add, &["\\Deleted"]),
    ] {
        store
            .store_flags(inbox.id, &[1, 2, 3], change, &flags(list), None)
            .await
            .unwrap();
        counters_agree(store, account, &format!("{change:?} {list:?}")).await;
    }
    // A change that changes nothing, and flags that leave \Seen alone.
    store
        .store_flags(inbox.id, &[1], FlagChange::Add, &flags(&["\\Seen"]), None)
        .await
        .unwrap();
    store
        .store_flags(inbox.id, &[4], FlagChange::Add, &flags(&["$Work"]), None)
        .await
        .unwrap();
    counters_agree(store, account, "no \\Seen change").await;
    let trash = store.mailbox(account, "Trash").await.unwrap().unwrap();
    store
        .copy_messages(inbox.id, &[1, 4], trash.id, false)
        .await
        .unwrap();
    counters_agree(store, account, "copy").await;
    store
        .copy_messages(inbox.id, &[2, 5], trash.id, true)
        .await
        .unwrap();
    counters_agree(store, account, "move").await;
    store.expunge(inbox.id, None).await.unwrap();
    counters_agree(store, account, "expunge").await;
    // POP3's deletions at QUIT.
    deliver(store, account, 3).await;
    assert!(
        store
            .lock_maildrop(account, "pop", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let entries = store.maildrop_entries(account).await.unwrap();
    let ids: Vec<i64> = entries.iter().take(2).map(|e| e.id).collect();
    store
        .delete_maildrop_entries_and_unlock(account, "pop", &ids)
        .await
        .unwrap();
    counters_agree(store, account, "POP3 QUIT").await;
    store.rename_mailbox(account, "INBOX", "Old").await.unwrap();
    let after_rename = counters_agree(store, account, "RENAME INBOX").await;
    let old = after_rename
        .iter()
        .find(|(name, ..)| name == "Old")
        .unwrap();
    let inbox_now = after_rename
        .iter()
        .find(|(name, ..)| name == "INBOX")
        .unwrap();
    assert_eq!((old.1, inbox_now.1), (2, 0), "{after_rename:?}");
    assert!(store.delete_mailbox(account, "Trash").await.unwrap());
    let last = counters_agree(store, account, "DELETE").await;
    // What STATUS now says of each, as counted.
    let sent_now = last.iter().find(|(name, ..)| name == "Sent").unwrap();
    assert_eq!((sent_now.1, sent_now.2), (2, 1));
}

/// What the account's mailboxes hold, from their counters.
async fn usage(store: &Store, account_id: i64) -> i64 {
    let mailboxes = store.list_mailboxes(account_id).await.unwrap();
    mailboxes.iter().map(|m| m.messages_size).sum()
}

/// APPEND and COPY count against the account's quota as deliveries do; a move adds nothing
/// and is never refused; what is refused leaves nothing behind.
#[tokio::test]
async fn append_and_copy_are_held_to_the_quota_and_move_is_not() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    store.ensure_default_mailboxes(account).await.unwrap();
    deliver(store, account, 3).await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let trash = store.mailbox(account, "Trash").await.unwrap().unwrap();
    let one = inbox.messages_size / 3;
    let used = usage(store, account).await;
    assert_eq!(used, 3 * one);
    // Room for one more message of the size delivered, and 10 octets.
    store
        .set_quota(&addr("user0@example.org"), Some(used + one + 10))
        .await
        .unwrap();

    let too_big = vec![b'x'; (one + 11) as usize];
    let refused = store.append_message(trash.id, &too_big, &[], None).await;
    assert!(
        matches!(refused, Err(StoreError::OverQuota { quota, used: u, adding })
            if quota == used + one + 10 && u == used && adding == one + 11),
        "{refused:?}"
    );
    assert!(store.mailbox_messages(trash.id).await.unwrap().is_empty());
    // Two messages do not fit; nothing of the copy is made.
    let refused = store
        .copy_messages(inbox.id, &[1, 2], trash.id, false)
        .await;
    assert!(
        matches!(refused, Err(StoreError::OverQuota { .. })),
        "{refused:?}"
    );
    assert!(store.mailbox_messages(trash.id).await.unwrap().is_empty());
    // One does.
    store
        .copy_messages(inbox.id, &[1], trash.id, false)
        .await
        .unwrap();
    assert_eq!(usage(store, account).await, used + one);
    // Full now (10 octets left): a move adds nothing, so it goes through.
    let refused = store
        .append_message(trash.id, b"0123456789ab", &[], None)
        .await;
    assert!(
        matches!(refused, Err(StoreError::OverQuota { .. })),
        "{refused:?}"
    );
    store
        .copy_messages(inbox.id, &[2, 3], trash.id, true)
        .await
        .unwrap();
    assert_eq!(usage(store, account).await, used + one);
    store
        .append_message(trash.id, b"0123456789", &[], None)
        .await
        .unwrap();
    // An expunge frees its space at once.
    let trash_uids: Vec<i64> = store
        .mailbox_messages(trash.id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    store
        .store_flags(
            trash.id,
            &trash_uids,
            FlagChange::Add,
            &flags(&["\\Deleted"]),
            None,
        )
        .await
        .unwrap();
    store.expunge(trash.id, None).await.unwrap();
    store
        .append_message(trash.id, &too_big[..one as usize], &[], None)
        .await
        .unwrap();
    counters_agree(store, account, "after the quota's refusals").await;
}

/// A delivery's quota check waits for the account's turn, then reads what the turn before it
/// committed: a check that read the usage in the statement that waited would see the
/// maildrop as it was before the wait and let both messages in.
#[tokio::test]
async fn a_quota_check_that_waited_for_the_account_sees_what_was_committed_meanwhile() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    store.ensure_default_mailboxes(account).await.unwrap();
    store
        .set_quota(&addr("user0@example.org"), Some(1_000_000))
        .await
        .unwrap();
    let recipient = claimed_for_user0(store, 1).await[0].recipient_id;

    // Another turn holds the account and fills the quota, then commits.
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut turn = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT pg_advisory_xact_lock('accounts'::regclass::oid::int4, ($1 % 2147483647)::int4)",
    )
    .bind(account)
    .execute(&mut *turn)
    .await
    .unwrap();
    let delivery = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .deliver_to_maildrop_with_report("w", recipient, account, PREFIX, true, None)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !delivery.is_finished(),
        "the delivery waits for the account's row"
    );
    sqlx::query(
        "UPDATE mailboxes SET messages_size = 1000000 WHERE account_id = $1 AND name = 'Trash'",
    )
    .bind(account)
    .execute(&mut *turn)
    .await
    .unwrap();
    turn.commit().await.unwrap();
    let done = delivery.await.unwrap().unwrap();
    assert!(
        matches!(
            done,
            LocalDelivery::OverQuota {
                used: 1_000_000,
                ..
            }
        ),
        "{done:?}"
    );
}

/// IMAP's mailboxes and keywords are held to the limits the store is given; what is refused
/// changes nothing.
#[tokio::test]
async fn mailboxes_and_keywords_are_held_to_the_limits() {
    let db = TestDb::new().await.unwrap();
    let store = db.store().clone().with_mailbox_limits(MailboxLimits {
        max_mailboxes: 8,
        max_keywords: 3,
        max_keyword_length: 10,
    });
    let account = account(&store).await;
    // INBOX and four special-use folders: five.
    store.ensure_default_mailboxes(account).await.unwrap();
    // Two parents and the mailbox would make eight; three levels more would not fit.
    let refused = store.create_mailbox(account, "a/b/c/d", None).await;
    assert!(
        matches!(refused, Err(StoreError::TooManyMailboxes(8))),
        "{refused:?}"
    );
    assert_eq!(store.list_mailboxes(account).await.unwrap().len(), 5);
    store.create_mailbox(account, "a/b/c", None).await.unwrap();
    assert_eq!(store.list_mailboxes(account).await.unwrap().len(), 8);
    let refused = store.create_mailbox(account, "x", None).await;
    assert!(
        matches!(refused, Err(StoreError::TooManyMailboxes(8))),
        "{refused:?}"
    );
    // A taken name is told as such, not as the limit.
    let taken = store.create_mailbox(account, "a/b", None).await;
    assert!(
        matches!(taken, Err(StoreError::MailboxExists(_))),
        "{taken:?}"
    );
    // RENAME INBOX makes a mailbox too.
    let refused = store.rename_mailbox(account, "INBOX", "Old").await;
    assert!(
        matches!(refused, Err(StoreError::TooManyMailboxes(8))),
        "{refused:?}"
    );
    // A rename of others makes none.
    store.rename_mailbox(account, "a", "z").await.unwrap();

    deliver(&store, account, 2).await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let change = |change, list: &[&str]| {
        let (store, list) = (store.clone(), flags(list));
        async move {
            store
                .store_flags(inbox.id, &[1, 2], change, &list, None)
                .await
        }
    };
    change(FlagChange::Add, &["\\Seen", "one", "two"])
        .await
        .unwrap();
    // System flags are not keywords; a keyword already there is not counted twice.
    change(
        FlagChange::Add,
        &["\\Flagged", "\\Answered", "two", "three"],
    )
    .await
    .unwrap();
    let refused = change(FlagChange::Add, &["four"]).await;
    assert!(
        matches!(refused, Err(StoreError::TooManyKeywords(3))),
        "{refused:?}"
    );
    let refused = change(FlagChange::Replace, &["a", "b", "c", "d"]).await;
    assert!(
        matches!(refused, Err(StoreError::TooManyKeywords(3))),
        "{refused:?}"
    );
    let refused = change(FlagChange::Add, &["elevenoctet"]).await;
    assert!(
        matches!(refused, Err(StoreError::KeywordTooLong(10))),
        "{refused:?}"
    );
    let messages = store.mailbox_messages(inbox.id).await.unwrap();
    assert_eq!(
        messages[0].flags,
        flags(&["\\Answered", "\\Flagged", "\\Seen", "one", "three", "two"])
    );
    // Taking keywords away is never refused; then there is room again.
    change(FlagChange::Remove, &["one", "elevenoctet"])
        .await
        .unwrap();
    change(FlagChange::Add, &["four"]).await.unwrap();
    change(FlagChange::Replace, &["p", "q", "r", "\\Seen"])
        .await
        .unwrap();

    let refused = store
        .append_message(inbox.id, b"x", &flags(&["a", "b", "c", "d"]), None)
        .await;
    assert!(
        matches!(refused, Err(StoreError::TooManyKeywords(3))),
        "{refused:?}"
    );
    let refused = store
        .append_message(inbox.id, b"x", &flags(&["elevenoctet"]), None)
        .await;
    assert!(
        matches!(refused, Err(StoreError::KeywordTooLong(10))),
        "{refused:?}"
    );
    assert_eq!(store.mailbox_messages(inbox.id).await.unwrap().len(), 2);
}

/// COPY into the mailbox the messages are in (RFC 9051 6.4.7 does not forbid it) makes
/// copies with new UIDs; it was refused as "no such mailbox" when the two mailbox rows it
/// locks were one.
#[tokio::test]
async fn a_copy_into_its_own_mailbox_makes_copies() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = account(store).await;
    deliver(store, account, 2).await;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let placed = store
        .copy_messages(inbox.id, &[1, 2], inbox.id, false)
        .await
        .unwrap();
    assert_eq!(placed.uids, [(1, 3), (2, 4)]);
    let messages = store.mailbox_messages(inbox.id).await.unwrap();
    let uids: Vec<i64> = messages.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 2, 3, 4]);
    let ids: Vec<i64> = messages.iter().map(|m| m.entry_id).collect();
    let whole = store.maildrop_entries_whole(account, &ids).await.unwrap();
    assert_eq!(whole[0].1, whole[2].1);
    // A move into its own mailbox gives new UIDs.
    let placed = store
        .copy_messages(inbox.id, &[1], inbox.id, true)
        .await
        .unwrap();
    assert_eq!(placed.uids, [(1, 5)]);
    let uids: Vec<i64> = store
        .mailbox_messages(inbox.id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(uids, [2, 3, 4, 5]);
    counters_agree(store, account, "after copies into INBOX").await;
}
