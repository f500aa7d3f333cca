//! DKIM keys: the first of an algorithm signs, later ones wait for a rotation, an active key
//! cannot be removed, and only local domains have keys.

use pochta_store::{DkimAlgorithm, DkimKeyState, DomainRole, NewDkimKey, StoreError};
use pochta_testkit::TestDb;

fn key(domain: &str, selector: &str, algorithm: DkimAlgorithm) -> NewDkimKey {
    NewDkimKey {
        domain: domain.into(),
        selector: selector.into(),
        algorithm,
        private_key: format!("private {selector}").into_bytes(),
        public_key: format!("public {selector}").into_bytes(),
    }
}

/// (selector, state) of the domain's keys.
async fn states(db: &TestDb, domain: &str) -> Vec<(String, DkimKeyState)> {
    db.store()
        .list_dkim_keys(Some(domain))
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.selector, k.state))
        .collect()
}

async fn signing(db: &TestDb, domain: &str) -> Vec<String> {
    db.store()
        .dkim_signing_keys(domain)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.selector)
        .collect()
}

#[tokio::test]
async fn keys_go_from_pending_to_active_to_retired() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    store
        .add_domain("example.org", DomainRole::Local)
        .await
        .unwrap();
    use DkimAlgorithm::{Ed25519, Rsa};
    use DkimKeyState::{Active, Pending, Retired};

    assert_eq!(
        store
            .add_dkim_key(&key("example.org", "r1", Rsa))
            .await
            .unwrap(),
        Active
    );
    assert_eq!(
        store
            .add_dkim_key(&key("Example.ORG", "e1", Ed25519))
            .await
            .unwrap(),
        Active
    );
    assert_eq!(
        store
            .add_dkim_key(&key("example.org", "r2", Rsa))
            .await
            .unwrap(),
        Pending
    );
    // One pending key per algorithm; selectors are unique per domain and must be DNS labels.
    for (bad, why) in [
        (
            key("example.org", "r3", Rsa),
            "already has a pending rsa key (selector r2)",
        ),
        (
            key("example.org", "r1", Ed25519),
            "already has a key with selector r1",
        ),
        (
            key("example.org", "bad_selector", Ed25519),
            "is not a selector",
        ),
        (key("example.org", "-x", Ed25519), "is not a selector"),
    ] {
        let err = store.add_dkim_key(&bad).await.unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(signing(&db, "EXAMPLE.org").await, ["e1", "r1"]);

    let signer = &store.dkim_signing_keys("example.org").await.unwrap()[1];
    assert_eq!(signer.private_key, b"private r1");
    assert_eq!(signer.algorithm, Rsa);

    let rotation = store.rotate_dkim_key("example.org", Rsa).await.unwrap();
    assert_eq!(
        (rotation.active.as_str(), rotation.retired.as_deref()),
        ("r2", Some("r1"))
    );
    assert_eq!(signing(&db, "example.org").await, ["e1", "r2"]);
    assert_eq!(
        states(&db, "example.org").await,
        [
            ("e1".into(), Active),
            ("r1".into(), Retired),
            ("r2".into(), Active),
        ]
    );
    // Nothing pending: the rotation is refused and nothing changes.
    let err = store.rotate_dkim_key("example.org", Rsa).await.unwrap_err();
    assert!(err.to_string().contains("has no pending rsa key"), "{err}");
    assert_eq!(signing(&db, "example.org").await, ["e1", "r2"]);

    // The active key stays; retired and unknown ones are answered as such.
    let err = store
        .remove_dkim_key("example.org", "r2")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("rotate to another key first"),
        "{err}"
    );
    store.remove_dkim_key("example.org", "r1").await.unwrap();
    let err = store
        .remove_dkim_key("example.org", "r1")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("has no key with selector r1"),
        "{err}"
    );
    assert_eq!(
        states(&db, "example.org").await,
        [("e1".into(), Active), ("r2".into(), Active)]
    );
    assert!(store.list_dkim_keys(None).await.unwrap().len() == 2);
}

#[tokio::test]
async fn only_local_domains_have_keys_and_they_go_with_their_domain() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    store
        .add_domain("hold.example", DomainRole::Hold)
        .await
        .unwrap();
    store
        .add_domain("gone.example", DomainRole::Local)
        .await
        .unwrap();
    assert!(matches!(
        store
            .add_dkim_key(&key("hold.example", "s", DkimAlgorithm::Rsa))
            .await,
        Err(StoreError::DomainNotLocal { .. })
    ));
    assert!(matches!(
        store
            .add_dkim_key(&key("nowhere.example", "s", DkimAlgorithm::Rsa))
            .await,
        Err(StoreError::UnknownDomain(_))
    ));
    store
        .add_dkim_key(&key("gone.example", "s", DkimAlgorithm::Rsa))
        .await
        .unwrap();
    store.remove_domain("gone.example").await.unwrap();
    assert!(store.list_dkim_keys(None).await.unwrap().is_empty());
    assert!(signing(&db, "gone.example").await.is_empty());
}
