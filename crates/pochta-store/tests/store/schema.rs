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
