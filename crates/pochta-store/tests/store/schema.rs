use pochta_store::{Store, StoreError};
use pochta_testkit::TestDb;

#[tokio::test]
async fn empty_database_is_outdated_until_migrated() {
    let db = TestDb::empty().await.unwrap();
    let store = db.store();
    assert_eq!(store.schema_version().await.unwrap(), 0);
    match store.check_schema().await {
        Err(StoreError::SchemaOutdated { found: 0, expected }) => {
            assert_eq!(expected, Store::expected_schema_version())
        }
        other => panic!("expected SchemaOutdated, got {other:?}"),
    }
    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    // Migrating again is a no-op.
    store.migrate().await.unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        Store::expected_schema_version()
    );
    store.ping().await.unwrap();
}

/// Migration 4 moves content written as one column (schema 3) into chunk rows: every size,
/// empty and on either side of a chunk boundary, reads back octet for octet.
#[tokio::test]
async fn content_written_before_chunking_reads_back_after_the_migration() {
    let db = TestDb::empty().await.unwrap();
    let store = db.store();
    store.migrate_to(3).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 3);
    let old = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut written = Vec::new();
    for size in [0usize, 1, 7999, 8000, 8001, 16000, 20017] {
        let content: Vec<u8> = (0..size).map(|i| (i * 31 % 256) as u8).collect();
        let id: i64 =
            sqlx::query_scalar("INSERT INTO messages (content, size) VALUES ($1, $2) RETURNING id")
                .bind(&content)
                .bind(size as i64)
                .fetch_one(&old)
                .await
                .unwrap();
        written.push((id, content));
    }
    old.close().await;

    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    for (id, content) in written {
        let read = store.message_content(id).await.unwrap().unwrap();
        assert!(read == content, "message of {} octets", content.len());
    }
}

/// Migration 11 puts every existing maildrop into its account's INBOX: each entry keeps its
/// POP3 UIDL and gets an IMAP UID in delivery order; UIDNEXT follows the last.
#[tokio::test]
async fn maildrops_become_inboxes_keeping_their_pop3_uids() {
    let db = TestDb::empty().await.unwrap();
    let store = db.store();
    store.migrate_to(10).await.unwrap();
    let old = sqlx::PgPool::connect(db.url()).await.unwrap();
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    sqlx::query("INSERT INTO domains (name, role) VALUES ('example.org', 'local')")
        .execute(&old)
        .await
        .unwrap();
    let mut accounts = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO accounts (domain, local_part, password_hash)
             VALUES ('example.org', $1, $2) RETURNING id",
        )
        .bind(name)
        .bind(hash)
        .fetch_one(&old)
        .await
        .unwrap();
        accounts.push(id);
    }
    let message: i64 = sqlx::query_scalar("INSERT INTO messages (size) VALUES (0) RETURNING id")
        .fetch_one(&old)
        .await
        .unwrap();
    // Alice and Bob's entries interleaved; Carol has none.
    let mut uidls = [Vec::new(), Vec::new()];
    for i in 0..5 {
        let owner = i % 2;
        let uidl: String = sqlx::query_scalar(
            "INSERT INTO maildrop_entries (account_id, message_id, header_prefix, pop3_size)
             VALUES ($1, $2, '', 0) RETURNING uid",
        )
        .bind(accounts[owner])
        .bind(message)
        .fetch_one(&old)
        .await
        .unwrap();
        uidls[owner].push(uidl);
    }
    old.close().await;

    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    for (owner, expected) in uidls.iter().enumerate() {
        let pop3: Vec<String> = store
            .maildrop_entries(accounts[owner])
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.uid)
            .collect();
        assert_eq!(&pop3, expected, "POP3 UIDLs kept, in order");
        let inbox = store
            .mailbox(accounts[owner], "INBOX")
            .await
            .unwrap()
            .unwrap();
        let uids: Vec<i64> = store
            .mailbox_messages(inbox.id)
            .await
            .unwrap()
            .iter()
            .map(|m| m.uid)
            .collect();
        assert_eq!(uids, (1..=expected.len() as i64).collect::<Vec<_>>());
        assert_eq!(inbox.uid_next, expected.len() as i64 + 1);
    }
    let carol = store.mailbox(accounts[2], "INBOX").await.unwrap().unwrap();
    assert_eq!(carol.uid_next, 1);
}

/// alice@example.org, written straight into a database at an earlier schema version.
async fn alice_at_an_earlier_version(old: &sqlx::PgPool) -> i64 {
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    sqlx::query("INSERT INTO domains (name, role) VALUES ('example.org', 'local')")
        .execute(old)
        .await
        .unwrap();
    sqlx::query_scalar(
        "INSERT INTO accounts (domain, local_part, password_hash)
         VALUES ('example.org', 'alice', $1) RETURNING id",
    )
    .bind(hash)
    .fetch_one(old)
    .await
    .unwrap()
}

/// Migration 17 decodes the mailbox names IMAP4rev1 clients stored in modified UTF-7; what is
/// not modified UTF-7, or would collide with another name, stays as it was.
#[tokio::test]
async fn mailbox_names_written_in_modified_utf7_are_stored_in_utf8() {
    let db = TestDb::empty().await.unwrap();
    let store = db.store();
    store.migrate_to(16).await.unwrap();
    let old = sqlx::PgPool::connect(db.url()).await.unwrap();
    let account = alice_at_an_earlier_version(&old).await;
    let names = [
        ("&BBIERQQ+BDQETwRJBDgENQ-", "Входящие"),
        ("&BBIERQQ+BDQETwRJBDgENQ-/A&-B", "Входящие/A&B"),
        ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),
        ("&2D3c7A- mail", "📬 mail"),
        ("Plain", "Plain"),
        // Not modified UTF-7: kept.
        ("Tom & Jerry", "Tom & Jerry"),
        ("&AGE-", "&AGE-"),
        ("&2D0-", "&2D0-"),
        ("Ünïcode", "Ünïcode"),
        // Decodes to a name the account has: kept.
        ("&AOk-t&AOk-", "&AOk-t&AOk-"),
        ("été", "été"),
    ];
    for (stored, _) in names {
        sqlx::query("INSERT INTO mailboxes (account_id, name) VALUES ($1, $2)")
            .bind(account)
            .bind(stored)
            .execute(&old)
            .await
            .unwrap();
    }
    old.close().await;

    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    for (stored, now) in names {
        assert!(
            store.mailbox(account, now).await.unwrap().is_some(),
            "{stored} should now be {now}"
        );
    }
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM mailboxes WHERE account_id = $1")
        .bind(account)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, names.len() as i64);
}

/// Migration 18 counts what each mailbox already holds into its new counters.
#[tokio::test]
async fn mailbox_counters_start_from_what_the_mailboxes_hold() {
    let db = TestDb::empty().await.unwrap();
    let store = db.store();
    store.migrate_to(17).await.unwrap();
    let old = sqlx::PgPool::connect(db.url()).await.unwrap();
    let account = alice_at_an_earlier_version(&old).await;
    let message: i64 = sqlx::query_scalar("INSERT INTO messages (size) VALUES (10) RETURNING id")
        .fetch_one(&old)
        .await
        .unwrap();
    let mut boxes = Vec::new();
    for name in ["INBOX", "Work", "Empty"] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO mailboxes (account_id, name) VALUES ($1, $2) RETURNING id",
        )
        .bind(account)
        .bind(name)
        .fetch_one(&old)
        .await
        .unwrap();
        boxes.push(id);
    }
    // INBOX: five, two of them seen; Work: one, unseen.
    for (mailbox, uid, seen) in [
        (boxes[0], 1, true),
        (boxes[0], 2, false),
        (boxes[0], 3, true),
        (boxes[0], 4, false),
        (boxes[0], 5, false),
        (boxes[1], 1, false),
    ] {
        sqlx::query(
            "INSERT INTO maildrop_entries (account_id, message_id, header_prefix, pop3_size,
                 mailbox_id, imap_uid, flags)
             VALUES ($1, $2, '', 10 + $4, $3, $4, $5)",
        )
        .bind(account)
        .bind(message)
        .bind(mailbox)
        .bind(uid)
        .bind(if seen { vec!["\\Seen"] } else { vec![] })
        .execute(&old)
        .await
        .unwrap();
    }
    old.close().await;

    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    let counts = |id| async move {
        let c = store.mailbox_counts(id, false).await.unwrap();
        (c.messages, c.unseen, c.size)
    };
    assert_eq!(counts(boxes[0]).await, (5, 3, 65));
    assert_eq!(counts(boxes[1]).await, (1, 1, 11));
    assert_eq!(counts(boxes[2]).await, (0, 0, 0));
}
