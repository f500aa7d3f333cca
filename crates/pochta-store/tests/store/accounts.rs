use pochta_store::{DomainRole, Store, StoreError};
use pochta_testkit::TestDb;

use crate::addr;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

/// example.org (local) and backup.example (hold).
async fn local_and_hold_domains(store: &Store) {
    store
        .add_domain("example.org", DomainRole::Local)
        .await
        .unwrap();
    store
        .add_domain("backup.example", DomainRole::Hold)
        .await
        .unwrap();
}

#[tokio::test]
async fn domains_add_list_role_remove() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    local_and_hold_domains(store).await;
    assert!(matches!(
        store.add_domain("example.org", DomainRole::Relay).await,
        Err(StoreError::DomainExists(d)) if d == "example.org"
    ));
    let names: Vec<_> = store
        .list_domains()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.role))
        .collect();
    assert_eq!(
        names,
        [
            ("backup.example".to_owned(), DomainRole::Hold),
            ("example.org".to_owned(), DomainRole::Local)
        ]
    );
    assert_eq!(
        store.domain_role("example.org").await.unwrap(),
        Some(DomainRole::Local)
    );
    assert_eq!(store.domain_role("nowhere.example").await.unwrap(), None);

    store
        .add_account(&addr("alice@example.org"), HASH)
        .await
        .unwrap();
    match store.remove_domain("example.org").await {
        Err(StoreError::DomainInUse { accounts: 1, .. }) => {}
        other => panic!("expected DomainInUse, got {other:?}"),
    }
    store
        .remove_account(&addr("alice@example.org"))
        .await
        .unwrap();
    store.remove_domain("example.org").await.unwrap();
    assert!(matches!(
        store.remove_domain("example.org").await,
        Err(StoreError::UnknownDomain(_))
    ));
}

#[tokio::test]
async fn accounts_lifecycle() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    local_and_hold_domains(store).await;

    let id = store
        .add_account(&addr("Alice@example.org"), HASH)
        .await
        .unwrap();
    // Local parts are unique case-insensitively.
    assert!(matches!(
        store.add_account(&addr("alice@EXAMPLE.org"), HASH).await,
        Err(StoreError::AccountExists(_))
    ));
    assert!(matches!(
        store.add_account(&addr("bob@nowhere.example"), HASH).await,
        Err(StoreError::UnknownDomain(d)) if d == "nowhere.example"
    ));
    assert!(matches!(
        store.add_account(&addr("bob@backup.example"), HASH).await,
        Err(StoreError::DomainNotLocal {
            role: DomainRole::Hold,
            ..
        })
    ));
    // Only argon2id PHC strings are accepted as hashes.
    assert!(matches!(
        store
            .add_account(&addr("carol@example.org"), "plaintext")
            .await,
        Err(StoreError::Database(_))
    ));

    let creds = store
        .account_credentials(&addr("ALICE@example.org"))
        .await
        .unwrap()
        .expect("found case-insensitively");
    assert_eq!((creds.id, creds.local_part.as_str()), (id, "Alice"));
    assert_eq!(creds.password_hash, HASH);
    assert!(!creds.disabled);
    assert!(
        store
            .account_credentials(&addr("nobody@example.org"))
            .await
            .unwrap()
            .is_none()
    );

    let new_hash = HASH.replace("aGFzaGhh", "bmV3bmV3");
    store
        .set_password(&addr("alice@example.org"), &new_hash)
        .await
        .unwrap();
    store
        .set_account_disabled(&addr("alice@example.org"), true)
        .await
        .unwrap();
    let creds = store
        .account_credentials(&addr("alice@example.org"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.password_hash, new_hash);
    assert!(creds.disabled);

    let listed = store.list_accounts(Some("example.org")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].address(), "Alice@example.org");
    assert!(listed[0].disabled);
    assert_eq!((listed[0].messages, listed[0].bytes), (0, 0));
    assert!(
        store
            .list_accounts(Some("backup.example"))
            .await
            .unwrap()
            .is_empty()
    );

    for missing in [
        store.set_password(&addr("nobody@example.org"), HASH).await,
        store
            .set_account_disabled(&addr("nobody@example.org"), true)
            .await,
        store.remove_account(&addr("nobody@example.org")).await,
    ] {
        assert!(
            matches!(missing, Err(StoreError::UnknownAccount(_))),
            "{missing:?}"
        );
    }
    store
        .remove_account(&addr("alice@example.org"))
        .await
        .unwrap();
    assert!(store.list_accounts(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn recipients_are_looked_up_together_in_input_order() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    local_and_hold_domains(store).await;
    let alice = store
        .add_account(&addr("Alice@example.org"), HASH)
        .await
        .unwrap();
    let bob = store
        .add_account(&addr("bob@example.org"), HASH)
        .await
        .unwrap();
    store
        .set_account_disabled(&addr("bob@example.org"), true)
        .await
        .unwrap();
    let asked = [
        "nobody@example.org",
        "ALICE@example.org",
        "x@elsewhere.example",
        "bob@example.org",
        "y@backup.example",
    ]
    .map(addr);
    let found = store.lookup_recipients(&asked).await.unwrap();
    assert_eq!(found.len(), asked.len());
    for (address, lookup) in asked.iter().zip(&found) {
        assert_eq!(lookup, &store.lookup_recipient(address).await.unwrap());
    }
    assert_eq!(found[0].role, Some(DomainRole::Local));
    assert_eq!(found[0].account, None);
    assert_eq!(
        found[1].account.map(|a| (a.id, a.disabled)),
        Some((alice, false))
    );
    assert_eq!(found[2].role, None);
    assert_eq!(
        found[3].account.map(|a| (a.id, a.disabled)),
        Some((bob, true))
    );
    assert_eq!(
        (found[4].role, found[4].account),
        (Some(DomainRole::Hold), None)
    );
}
