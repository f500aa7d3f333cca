use std::collections::HashSet;
use std::time::Duration;

use pochta_store::{
    AttemptOutcome, Claim, Collected, ContentCompression, DomainRole, GcSweep, LocalDelivery,
    MaildropDelivery, RecipientState, Resolved, Store, StoreError,
};
use pochta_testkit::TestDb;

use crate::{CONTENT, addr, enqueue_n, envelope, recipient, report, top_buffers};

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
const PREFIX: &[u8] = b"Return-Path: <sender@example.net>\r\nDelivered-To: user0@example.org\r\n";
const TTL: Duration = Duration::from_secs(60);

async fn with_account(store: &Store) -> i64 {
    store
        .add_domain("example.org", DomainRole::Local)
        .await
        .unwrap();
    store
        .add_account(&addr("user0@example.org"), HASH)
        .await
        .unwrap()
}

/// Enqueues `n` messages to user0 and returns their recipient ids.
async fn queued_recipients(store: &Store, n: usize) -> Vec<i64> {
    for _ in 0..n {
        enqueue_n(store, 1).await;
    }
    store
        .claim_due("w", Claim::Remote, 100, Duration::from_secs(60))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.recipient_id)
        .collect()
}

#[tokio::test]
async fn delivering_the_same_recipient_twice_yields_one_entry() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    let rid = queued_recipients(store, 1).await[0];

    let first = store
        .deliver_to_maildrop("w", rid, account, PREFIX)
        .await
        .unwrap();
    let LocalDelivery::Delivered { entry_id, uid } = first else {
        panic!("first delivery must write: {first:?}")
    };
    assert_eq!(uid.len(), 32);
    assert!(uid.bytes().all(|b| b.is_ascii_hexdigit()));
    let again = store
        .deliver_to_maildrop("other", rid, account, PREFIX)
        .await
        .unwrap();
    assert_eq!(again, LocalDelivery::AlreadyFinal);

    let entries = store.maildrop_entries(account).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, entry_id);
    assert_eq!(entries[0].pop3_size as usize, PREFIX.len() + CONTENT.len());
    let (prefix, content) = store
        .maildrop_entry_content(account, entry_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((prefix.as_slice(), content.as_slice()), (PREFIX, CONTENT));
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.recipients_in(RecipientState::Delivered), 1);
    assert_eq!(counts.maildrop_entries, 1);
}

#[tokio::test]
async fn entries_are_read_in_parts_across_the_prefix_boundary() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    let rid = queued_recipients(store, 1).await[0];
    let LocalDelivery::Delivered { entry_id, .. } = store
        .deliver_to_maildrop("w", rid, account, PREFIX)
        .await
        .unwrap()
    else {
        panic!()
    };
    let whole = [PREFIX, CONTENT].concat();
    for octets in [1, 8000, 8001, 1 << 20] {
        assert_eq!(read_in_parts(store, account, entry_id, octets).await, whole);
    }
    assert!(
        store
            .maildrop_entry_part(account + 1, entry_id, 0, 10)
            .await
            .unwrap()
            .is_none()
    );
}

/// What RETR sends for an entry, read in parts of `octets` stored octets as pop3-access
/// reads it; each part holds no more rows than asked for.
async fn read_in_parts(store: &Store, account: i64, entry: i64, octets: i64) -> Vec<u8> {
    let rows = (octets / 8000).max(1) as usize;
    let (mut read, mut from) = (Vec::new(), 0);
    loop {
        let part = store
            .maildrop_entry_part(account, entry, from, octets)
            .await
            .unwrap()
            .unwrap();
        let prefix = if from == 0 { PREFIX.len() } else { 0 };
        assert!(part.octets.len() <= prefix + rows * 64_000, "{octets}");
        read.extend(part.octets);
        match part.next {
            Some(next) => from = next,
            None => return read,
        }
    }
}

/// A message of three full chunks and a short one, and a small one, delivered to user0:
/// the large message's content and id, and both entries.
async fn large_and_small_delivered(store: &Store, account: i64) -> (Vec<u8>, i64, Vec<i64>) {
    let large: Vec<u8> = (0..3 * 8000 + 17).map(|i| (i * 13 % 256) as u8).collect();
    delivered_beside_a_small_one(store, account, large).await
}

/// `large` and a small message enqueued and delivered to user0: (large, its message id, the
/// two entries).
async fn delivered_beside_a_small_one(
    store: &Store,
    account: i64,
    large: Vec<u8>,
) -> (Vec<u8>, i64, Vec<i64>) {
    let env = envelope(vec![recipient("user0@example.org")]);
    let stored = store.enqueue(&env, &large).await.unwrap();
    enqueue_n(store, 1).await;
    let mut entries = Vec::new();
    for claimed in store.claim_due("w", Claim::Remote, 10, TTL).await.unwrap() {
        match store
            .deliver_to_maildrop("w", claimed.recipient_id, account, PREFIX)
            .await
            .unwrap()
        {
            LocalDelivery::Delivered { entry_id, .. } => entries.push(entry_id),
            other => panic!("{other:?}"),
        }
    }
    (large, stored.message_id, entries)
}

/// A message of several chunks: whole, in parts of every awkward size (around the chunk
/// size, across the prefix and chunk boundaries), and in a batch beside a small one.
#[tokio::test]
async fn large_content_reads_back_whole_and_in_parts() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    let (large, message_id, entries) = large_and_small_delivered(store, account).await;
    assert_reads_back(store, account, &large, message_id, &entries).await;
}

/// A store that compresses what it stores as the services do by default, and user0's
/// account in it.
async fn compressing_store(db: &TestDb) -> (Store, i64) {
    let store = db.connect().await.unwrap();
    let store = store.with_compression(Some(ContentCompression {
        min_size: 16 * 1024,
        level: 1,
        base64_lines: true,
    }));
    let account = with_account(&store).await;
    (store, account)
}

/// The codecs of a message's chunk rows, in seq order, and the octets they store.
async fn stored_rows(db: &TestDb, message_id: i64) -> (Vec<i16>, i64) {
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query_as(
        "SELECT array_agg(codec ORDER BY seq), sum(octet_length(data)) FROM message_chunks
         WHERE message_id = $1",
    )
    .bind(message_id)
    .fetch_one(&raw)
    .await
    .unwrap()
}

/// The same message stored compressed (by a store that compresses what it stores): fewer
/// stored octets, every row marked, and every reader gives the content back as it was.
#[tokio::test]
async fn compressed_content_reads_back_whole_and_in_parts() {
    let db = TestDb::new().await.unwrap();
    let (store, account) = compressing_store(&db).await;
    let (large, message_id, entries) = large_and_small_delivered(&store, account).await;
    let (codecs, stored) = stored_rows(&db, message_id).await;
    assert!(codecs.iter().all(|&c| c == 1), "{codecs:?}");
    assert!(
        (stored as usize) < large.len() / 4,
        "{stored} octets stored"
    );
    assert_reads_back(&store, account, &large, message_id, &entries).await;
}

/// An attachment's base64 lines stored as the octets they encode (migration 20 lets the
/// rows in): fewer octets than its characters, and every reader gives it back as it was,
/// the text around it and the short last line included.
#[tokio::test]
async fn base64_lines_read_back_whole_and_in_parts() {
    let db = TestDb::new().await.unwrap();
    let (store, account) = compressing_store(&db).await;
    let mut message = b"Subject: photo\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
                        --b\r\n\r\nSee attached.\r\n--b\r\n\
                        Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    // base64 of random octets (xorshift), as a photo's is.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let photo: Vec<u8> = (0..1000 * 57)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    for line in base64_simd::STANDARD
        .encode_to_string(photo)
        .as_bytes()
        .chunks(76)
    {
        message.extend_from_slice(line);
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(b"QUI=\r\n--b--\r\n");
    let (large, message_id, entries) = delivered_beside_a_small_one(&store, account, message).await;
    let (codecs, stored) = stored_rows(&db, message_id).await;
    assert_eq!(codecs.iter().filter(|&&c| c == 2).count(), 8, "{codecs:?}");
    assert!(
        (stored as usize) * 100 < large.len() * 75,
        "{stored} octets stored of {}",
        large.len()
    );
    assert_reads_back(&store, account, &large, message_id, &entries).await;
}

/// The store reads chunk rows without ORDER BY (it orders them itself): with a message's
/// first chunk rewritten, so it lies after the others in the table, and index scans off, so
/// rows come in table order, every reader still returns the content in order.
#[tokio::test]
async fn content_reads_back_in_order_whatever_order_rows_come_in() {
    let db = TestDb::new().await.unwrap();
    let account = with_account(db.store()).await;
    let (large, message_id, entries) = large_and_small_delivered(db.store(), account).await;
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("UPDATE message_chunks SET data = data WHERE message_id = $1 AND seq = 0")
        .bind(message_id)
        .execute(&raw)
        .await
        .unwrap();
    sqlx::raw_sql(
        "DO $$ DECLARE s text; BEGIN
             FOREACH s IN ARRAY ARRAY['enable_indexscan', 'enable_indexonlyscan',
                 'enable_bitmapscan'] LOOP
                 EXECUTE format('ALTER DATABASE %I SET %s = off', current_database(), s);
             END LOOP;
         END $$",
    )
    .execute(&raw)
    .await
    .unwrap();
    // New connections take the settings; the table order is what they will see.
    let store = db.connect().await.unwrap();
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    let seqs: Vec<i32> = sqlx::query_scalar("SELECT seq FROM message_chunks WHERE message_id = $1")
        .bind(message_id)
        .fetch_all(&raw)
        .await
        .unwrap();
    assert!(
        seqs.len() == 4 && !seqs.is_sorted(),
        "the rows come out of seq order: {seqs:?}"
    );
    assert_reads_back(&store, account, &large, message_id, &entries).await;
}

/// Every way of reading the large message of `large_and_small_delivered` gives it back:
/// whole, in pieces, and in a read-ahead batch.
async fn assert_reads_back(
    store: &Store,
    account: i64,
    large: &[u8],
    message_id: i64,
    entries: &[i64],
) {
    let content = store.message_content(message_id).await.unwrap().unwrap();
    assert!(content == large, "message_content");
    let entry = store.maildrop_entries(account).await.unwrap();
    let large_entry = entry
        .iter()
        .find(|e| e.pop3_size as usize == PREFIX.len() + large.len());
    let large_entry = large_entry.expect("the large entry").id;
    let (prefix, content) = store
        .maildrop_entry_content(account, large_entry)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((prefix.as_slice(), content == large), (PREFIX, true));

    let whole = [PREFIX, large].concat();
    for octets in [1000, 8000, 16_000, 16_001, 1 << 20] {
        let read = read_in_parts(store, account, large_entry, octets).await;
        assert!(read == whole, "parts of {octets}");
    }

    let batch = store
        .maildrop_entries_whole(account, entries)
        .await
        .unwrap();
    let mut expected: Vec<(i64, Vec<u8>)> = Vec::new();
    for id in entries {
        let (p, c) = store
            .maildrop_entry_content(account, *id)
            .await
            .unwrap()
            .unwrap();
        expected.push((*id, [p, c].concat()));
    }
    expected.sort();
    assert_eq!(batch.len(), 2);
    assert!(
        batch == expected,
        "the batch holds each entry whole, in entry order"
    );
    assert!(batch.iter().any(|(_, text)| *text == whole));
}

#[tokio::test]
async fn concurrent_deliveries_of_one_recipient_write_once() {
    let db = TestDb::new().await.unwrap();
    let account = with_account(db.store()).await;
    let rids = queued_recipients(db.store(), 5).await;
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let store = db.connect().await.unwrap();
        let rids = rids.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            for rid in rids {
                let name = format!("w{worker}");
                if let LocalDelivery::Delivered { .. } = store
                    .deliver_to_maildrop(&name, rid, account, PREFIX)
                    .await
                    .unwrap()
                {
                    written += 1;
                }
            }
            written
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await.unwrap();
    }
    assert_eq!(written, 5);
    let entries = db.store().maildrop_entries(account).await.unwrap();
    assert_eq!(entries.len(), 5);
    let uids: HashSet<_> = entries.iter().map(|e| &e.uid).collect();
    assert_eq!(uids.len(), 5, "uids are unique");
}

#[tokio::test]
async fn maildrop_lock_excludes_and_expires() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    let other = db.connect().await.unwrap();

    assert!(
        store
            .lock_maildrop(account, "s1", Duration::from_millis(400))
            .await
            .unwrap()
    );
    assert!(
        !other.lock_maildrop(account, "s2", TTL).await.unwrap(),
        "held by s1"
    );
    assert!(
        store
            .renew_maildrop_lock(account, "s1", Duration::from_millis(400))
            .await
            .unwrap()
    );
    assert!(!other.renew_maildrop_lock(account, "s2", TTL).await.unwrap());
    assert!(!other.unlock_maildrop(account, "s2").await.unwrap());

    // s1 dies without unlocking: once its lock expires, s2 gets in and s1 cannot renew.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(other.lock_maildrop(account, "s2", TTL).await.unwrap());
    assert!(!store.renew_maildrop_lock(account, "s1", TTL).await.unwrap());
    assert!(!store.lock_maildrop(account, "s1", TTL).await.unwrap());
    assert!(other.unlock_maildrop(account, "s2").await.unwrap());
    assert!(
        store.lock_maildrop(account, "s1", TTL).await.unwrap(),
        "free again"
    );
}

#[tokio::test]
async fn quit_deletes_marked_entries_only_under_the_lock() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    for rid in queued_recipients(store, 3).await {
        store
            .deliver_to_maildrop("w", rid, account, PREFIX)
            .await
            .unwrap();
    }
    let entries = store.maildrop_entries(account).await.unwrap();
    let marked = [entries[0].id, entries[2].id];

    // Without the lock nothing is deleted.
    assert!(matches!(
        store.delete_maildrop_entries_and_unlock(account, "s1", &marked).await,
        Err(StoreError::LockNotHeld(a)) if a == account
    ));
    assert_eq!(store.maildrop_entries(account).await.unwrap().len(), 3);

    assert!(store.lock_maildrop(account, "s1", TTL).await.unwrap());
    assert!(matches!(
        store
            .delete_maildrop_entries_and_unlock(account, "s2", &marked)
            .await,
        Err(StoreError::LockNotHeld(_))
    ));
    let deleted = store
        .delete_maildrop_entries_and_unlock(account, "s1", &marked)
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    let left = store.maildrop_entries(account).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].id, &left[0].uid),
        (entries[1].id, &entries[1].uid),
        "uid is stable"
    );
    // The lock went with the deletion.
    assert!(store.lock_maildrop(account, "s3", TTL).await.unwrap());
    // An entry of another maildrop is never read.
    assert!(
        store
            .maildrop_entry_content(account + 1, left[0].id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn removed_account_takes_its_maildrop_and_content_is_collected() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    let rid = queued_recipients(store, 1).await[0];
    store
        .deliver_to_maildrop("w", rid, account, PREFIX)
        .await
        .unwrap();
    let listed = store.list_accounts(None).await.unwrap();
    assert_eq!(
        (listed[0].messages, listed[0].bytes),
        (1, (PREFIX.len() + CONTENT.len()) as i64)
    );

    // The envelope is finished and past retention, but the maildrop still holds the content.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let gc = store
        .collect_garbage(Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!((gc.contents, gc.envelopes, gc.messages), (0, 1, 0));
    assert_eq!(store.maildrop_entries(account).await.unwrap().len(), 1);

    store
        .remove_account(&addr("user0@example.org"))
        .await
        .unwrap();
    let gc = store
        .collect_garbage(Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!((gc.contents, gc.messages), (1, 1));
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.messages, counts.message_chunks), (0, 0));
}

/// Content goes as soon as nothing can read it (every recipient finished, no maildrop entry),
/// long before the envelope's retention ends; the envelope stays for `queue show`.
#[tokio::test]
async fn content_is_freed_once_finished_and_deleted_while_the_envelope_stays() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    let env = enqueue_n(store, 2).await;
    let claimed = store.claim_due("w", Claim::Remote, 10, TTL).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let retention = Duration::from_secs(3600);
    let collect = || store.collect_garbage(retention);

    // One recipient in the maildrop, the other still in flight: nothing goes.
    store
        .deliver_to_maildrop("w", claimed[0].recipient_id, account, PREFIX)
        .await
        .unwrap();
    assert_eq!(collect().await.unwrap(), Collected::default());

    // Both finished, but the maildrop still holds it.
    let relayed = report(250, "2.0.0", "ok");
    store
        .record_attempt(
            "w",
            claimed[1].recipient_id,
            AttemptOutcome::Relayed,
            &relayed,
        )
        .await
        .unwrap();
    assert_eq!(collect().await.unwrap(), Collected::default());
    let entries = store.maildrop_entries(account).await.unwrap();
    let (_, content) = store
        .maildrop_entry_content(account, entries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(content, CONTENT);

    // The reader deletes it: the content goes at the next collection, the envelope stays.
    assert!(store.lock_maildrop(account, "s1", TTL).await.unwrap());
    let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
    store
        .delete_maildrop_entries_and_unlock(account, "s1", &ids)
        .await
        .unwrap();
    let gc = collect().await.unwrap();
    assert_eq!((gc.contents, gc.envelopes, gc.messages), (1, 0, 0));
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (counts.envelopes, counts.messages, counts.message_chunks),
        (1, 1, 0)
    );
    let detail = store
        .envelope_detail(env.queue_id.as_str())
        .await
        .unwrap()
        .expect("the envelope stays for its retention");
    assert_eq!(detail.size as usize, CONTENT.len(), "the size is kept");
    assert_eq!(detail.recipients.len(), 2);
    assert_eq!(
        store.message_content(detail.message_id).await.unwrap(),
        None
    );
    // Idempotent: nothing more to free.
    assert_eq!(collect().await.unwrap(), Collected::default());
}

#[tokio::test]
async fn batched_deliveries_write_each_recipient_once() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    let rids = queued_recipients(store, 3).await;
    let delivery = |rid: i64, n: usize| MaildropDelivery {
        recipient_id: rid,
        account_id: account,
        header_prefix: format!("Delivered-To: copy{n}\r\n").into_bytes(),
    };

    let first = store
        .deliver_many_to_maildrops("w", &[delivery(rids[0], 0), delivery(rids[1], 1)])
        .await
        .unwrap();
    assert!(matches!(
        first[..],
        [
            LocalDelivery::Delivered { .. },
            LocalDelivery::Delivered { .. }
        ]
    ));
    // Again with a third: only the third is new; the results keep the input order.
    let second = store
        .deliver_many_to_maildrops(
            "other",
            &[
                delivery(rids[0], 0),
                delivery(rids[2], 2),
                delivery(rids[1], 1),
            ],
        )
        .await
        .unwrap();
    assert_eq!(second[0], LocalDelivery::AlreadyFinal);
    assert!(matches!(second[1], LocalDelivery::Delivered { .. }));
    assert_eq!(second[2], LocalDelivery::AlreadyFinal);

    let counts = store.counts().await.unwrap();
    assert_eq!(counts.recipients_in(RecipientState::Delivered), 3);
    assert_eq!(counts.maildrop_entries, 3);
    let entry_ids = [&first[0], &first[1], &second[1]].map(|d| match d {
        LocalDelivery::Delivered { entry_id, .. } => *entry_id,
        other => panic!("delivered expected: {other:?}"),
    });
    for (n, entry_id) in entry_ids.into_iter().enumerate() {
        let (prefix, content) = store
            .maildrop_entry_content(account, entry_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(prefix, format!("Delivered-To: copy{n}\r\n").into_bytes());
        assert_eq!(content, CONTENT);
    }
}

/// Octets a maildrop holds as POP3 STAT counts them, and whether RCPT would find it full.
async fn usage(store: &Store, account: i64) -> (i64, bool) {
    let stat = store.maildrop_entries(account).await.unwrap();
    let found = store
        .resolve_recipient(&addr("user0@example.org"), &Default::default())
        .await
        .unwrap();
    let Resolved::Account { full, .. } = found.resolved else {
        panic!("an account: {found:?}");
    };
    (stat.iter().map(|e| e.pop3_size).sum(), full)
}

/// One delivery the way the queue makes it for an account with a quota.
async fn deliver_checked(store: &Store, recipient: i64, account: i64) -> LocalDelivery {
    store
        .deliver_to_maildrop_with_report("w", recipient, account, PREFIX, true, None)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_quota_stops_delivery_at_the_octet_and_deletions_free_it() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    let entry = (PREFIX.len() + CONTENT.len()) as i64;
    // Room for two entries and a bit: the third does not fit.
    store
        .set_quota(&addr("user0@example.org"), Some(2 * entry + 10))
        .await
        .unwrap();
    let rids = queued_recipients(store, 3).await;
    for &rid in &rids[..2] {
        assert!(matches!(
            deliver_checked(store, rid, account).await,
            LocalDelivery::Delivered { .. }
        ));
    }
    assert_eq!(
        deliver_checked(store, rids[2], account).await,
        LocalDelivery::OverQuota {
            used: 2 * entry,
            quota: 2 * entry + 10,
            size: entry
        }
    );
    assert_eq!(usage(store, account).await, (2 * entry, false));
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.recipients_in(RecipientState::Delivered), 2);
    assert_eq!(
        counts.recipients_in(RecipientState::Queued),
        1,
        "over quota: nothing written, still live"
    );

    // With the quota at exactly three entries it fits, and the maildrop is then full for RCPT.
    store
        .set_quota(&addr("user0@example.org"), Some(3 * entry))
        .await
        .unwrap();
    assert!(matches!(
        deliver_checked(store, rids[2], account).await,
        LocalDelivery::Delivered { .. }
    ));
    assert_eq!(usage(store, account).await, (3 * entry, true));
    assert_eq!(store.quota_usage().await.unwrap(), (3 * entry, 1));

    // POP3 deletes one at QUIT: its octets are free at once.
    let entries = store.maildrop_entries(account).await.unwrap();
    assert!(store.lock_maildrop(account, "p", TTL).await.unwrap());
    let first = [entries[0].id];
    let deleted = store.delete_maildrop_entries_and_unlock(account, "p", &first);
    assert_eq!(deleted.await.unwrap(), 1);
    assert_eq!(usage(store, account).await, (2 * entry, false));
    assert_eq!(store.quota_usage().await.unwrap(), (2 * entry, 0));

    // Without a quota nothing is refused and nothing is counted.
    store
        .set_quota(&addr("user0@example.org"), None)
        .await
        .unwrap();
    let more = queued_recipients(store, 1).await[0];
    assert!(matches!(
        deliver_checked(store, more, account).await,
        LocalDelivery::Delivered { .. }
    ));
    assert_eq!(usage(store, account).await, (3 * entry, false));
    assert_eq!(store.quota_usage().await.unwrap(), (0, 0));
    let unknown = store.set_quota(&addr("nobody@example.org"), Some(1)).await;
    assert!(unknown.is_err(), "no such account");
}

/// Issue 24 on a grown store: one account's entries lie scattered through the heap among
/// everyone else's, and POP3's listing at login must still not read the heap page by page,
/// nor the quota check's size sum the entries at all. Ten maildrops of 3,000 entries,
/// inserted in turn (so each has an entry on nearly every heap page) and in falling UID
/// order; vacuumed, as autovacuum leaves them. Before migration 13 both plans read every
/// heap page (a bitmap heap scan), and the listing sorted; the sum then read the account's
/// index entries, and now reads its mailboxes' counters (migration 18).
#[tokio::test]
async fn a_scattered_maildrop_is_listed_and_summed_from_its_indexes_alone() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    for i in 1..10 {
        store
            .add_account(&addr(&format!("user{i}@example.org")), HASH)
            .await
            .unwrap();
    }
    let rids = queued_recipients(store, 2).await;
    let LocalDelivery::Delivered {
        entry_id: first, ..
    } = store
        .deliver_to_maildrop("w", rids[0], account, PREFIX)
        .await
        .unwrap()
    else {
        panic!("delivered")
    };
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query(
        "INSERT INTO maildrop_entries
             (account_id, message_id, header_prefix, pop3_size, mailbox_id, imap_uid)
         SELECT m.account_id, f.message_id, f.header_prefix, 1000 + i % 7, m.id, 3001 - i / 10
         FROM generate_series(0, 29999) i
         JOIN mailboxes m ON m.name = 'INBOX'
             AND m.account_id = (SELECT id FROM accounts ORDER BY id OFFSET i % 10 LIMIT 1)
         CROSS JOIN (SELECT message_id, header_prefix FROM maildrop_entries WHERE id = $1) f
         ORDER BY i",
    )
    .bind(first)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE maildrop_entries")
        .execute(&pool)
        .await
        .unwrap();
    let pages: i64 = sqlx::query_scalar("SELECT pg_relation_size('maildrop_entries') / 8192")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(pages > 300, "the heap is large: {pages} pages");

    // The listing: the delivered entry (UID 1) first, then the others in UID order (they were
    // inserted in falling UID order, so their ids fall), with their sizes.
    let entries = store.maildrop_entries(account).await.unwrap();
    assert_eq!(entries.len(), 3001);
    assert_eq!(entries[0].id, first);
    assert!(entries[1..].windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(entries[1].pop3_size, 1000 + 29990 % 7);
    store
        .set_quota(&addr("user0@example.org"), Some(1 << 30))
        .await
        .unwrap();
    let (listing, usage) = store
        .explain_maildrop_reads(account, rids[1])
        .await
        .unwrap();
    let buffers = top_buffers(&listing);
    assert!(
        listing.contains("Index Only Scan using maildrop_entries_mailbox_uid_key"),
        "{listing}"
    );
    assert!(listing.contains("Heap Fetches: 0"), "{listing}");
    assert!(
        buffers < pages as u64 / 4,
        "{buffers} buffers ({pages} heap pages):\n{listing}"
    );
    assert!(!listing.contains("Sort"), "{listing}");
    // The quota's sum reads the account's mailbox rows (their counters), not its entries.
    assert!(!usage.contains("maildrop_entries"), "{usage}");
    assert!(usage.contains("on mailboxes"), "{usage}");
    assert!(top_buffers(&usage) < 20, "{usage}");
}

/// Delivers `n` new messages into the account's maildrop; returns their entries' ids.
async fn delivered(store: &Store, account: i64, n: usize) -> Vec<i64> {
    let mut entries = Vec::new();
    for rid in queued_recipients(store, n).await {
        let LocalDelivery::Delivered { entry_id, .. } = deliver_checked(store, rid, account).await
        else {
            panic!("delivered")
        };
        entries.push(entry_id);
    }
    entries
}

/// POP3 deletes these entries (at QUIT, under its lock).
async fn pop3_deletes(store: &Store, account: i64, entries: &[i64]) {
    assert!(store.lock_maildrop(account, "p", TTL).await.unwrap());
    let deleted = store
        .delete_maildrop_entries_and_unlock(account, "p", entries)
        .await
        .unwrap();
    assert_eq!(deleted, entries.len() as u64);
}

/// Issue 24, flat over time: a pass of incremental collection looks at the messages whose
/// entries went since the last pass (recorded by migration 19's trigger), the new ones and a
/// window of the others, not at every message of the store; the window comes round to what
/// the record missed.
#[tokio::test]
async fn incremental_collection_frees_what_was_deleted_and_its_window_catches_the_rest() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    let account = with_account(store).await;
    let retention = Duration::from_secs(3600);
    let mut sweep = GcSweep::default();
    let entries = delivered(store, account, 6).await;
    // The first two passes look at every message (nothing is freeable: the maildrop holds
    // them all); after them these messages are neither new nor, but for one, in the window.
    for _ in 0..2 {
        let gc = store
            .collect_garbage_step(retention, &mut sweep, 1)
            .await
            .unwrap();
        assert_eq!(gc, Collected::default());
    }
    // All six deleted: the record names them, where the window would reach one.
    pop3_deletes(store, account, &entries).await;
    let gc = store
        .collect_garbage_step(retention, &mut sweep, 1)
        .await
        .unwrap();
    assert_eq!(gc.contents, 6, "{gc:?}");
    assert_eq!(store.counts().await.unwrap().message_chunks, 0);

    // Three more, no longer new after two passes; deleted, and their record lost.
    let entries = delivered(store, account, 3).await;
    for _ in 0..2 {
        let gc = store
            .collect_garbage_step(retention, &mut sweep, 1)
            .await
            .unwrap();
        assert_eq!(gc.contents, 0, "{gc:?}");
    }
    pop3_deletes(store, account, &entries).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let recorded = sqlx::query("DELETE FROM gc_candidates")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(recorded.rows_affected(), 3);
    // A window of one message frees at most one a pass, and comes round to all three.
    let mut freed = 0;
    for _ in 0..12 {
        let gc = store
            .collect_garbage_step(retention, &mut sweep, 1)
            .await
            .unwrap();
        assert!(gc.contents <= 1, "{gc:?}");
        freed += gc.contents;
    }
    assert_eq!(freed, 3);
    assert_eq!(store.counts().await.unwrap().message_chunks, 0);
}
