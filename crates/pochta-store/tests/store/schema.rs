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
