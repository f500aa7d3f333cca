//! The login rules against the real store, above all the verified-credential cache: it must
//! never let an old password or a disabled account in.

use std::net::IpAddr;
use std::time::Duration;

use pochta_mail::Mailbox;
use pochta_service::login::{Authenticator, LoginOutcome};
use pochta_store::DomainRole;
use pochta_testkit::TestDb;

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn authenticator(db: &TestDb, cache: Duration) -> Authenticator {
    Authenticator::new(
        db.store().clone(),
        100,
        Duration::from_secs(60),
        Duration::ZERO,
        cache,
    )
    .unwrap()
}

async fn ok(a: &Authenticator, user: &str, password: &str) -> bool {
    matches!(
        a.login(user, password.to_owned(), CLIENT).await,
        LoginOutcome::Success(_)
    )
}

#[tokio::test]
async fn cached_logins_follow_password_changes_and_disabling() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    store
        .add_domain("example.test", DomainRole::Local)
        .await
        .unwrap();
    let alice = Mailbox::parse("alice@example.test").unwrap();
    store
        .add_account(&alice, &pochta_auth::hash_password("old").unwrap())
        .await
        .unwrap();
    let a = authenticator(&db, Duration::from_secs(300));

    assert!(ok(&a, "alice@example.test", "old").await);
    assert_eq!(a.cached_logins(), 1);
    assert!(
        ok(&a, "Alice@Example.test", "old").await,
        "case of the address"
    );
    assert!(!ok(&a, "alice@example.test", "wrong").await);
    assert!(!ok(&a, "nobody@example.test", "old").await);
    assert_eq!(a.cached_logins(), 1, "only successes are remembered");

    store
        .set_password(&alice, &pochta_auth::hash_password("new").unwrap())
        .await
        .unwrap();
    assert!(
        !ok(&a, "alice@example.test", "old").await,
        "old password, cached"
    );
    assert!(ok(&a, "alice@example.test", "new").await);

    store.set_account_disabled(&alice, true).await.unwrap();
    assert!(
        !ok(&a, "alice@example.test", "new").await,
        "disabled, cached"
    );
    store.set_account_disabled(&alice, false).await.unwrap();
    assert!(ok(&a, "alice@example.test", "new").await);

    let uncached = authenticator(&db, Duration::ZERO);
    assert!(ok(&uncached, "alice@example.test", "new").await);
    assert_eq!(uncached.cached_logins(), 0);
}
