//! The login rules against the real store, above all the verified-credential cache: it must
//! never let an old password or a disabled account in.

use std::net::IpAddr;
use std::time::Duration;

use pochta_mail::Mailbox;
use pochta_service::login::{Authenticator, LoginOutcome, LoginRules};
use pochta_store::DomainRole;
use pochta_testkit::TestDb;

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn rules(cache: Duration) -> LoginRules {
    LoginRules {
        max_failures: 100,
        failure_window: Duration::from_secs(60),
        failure_delay: Duration::ZERO,
        cache_ttl: cache,
        ipv6_prefix: 64,
        max_checks: 4,
        check_wait: Duration::from_secs(10),
    }
}

fn authenticator(db: &TestDb, cache: Duration) -> Authenticator {
    Authenticator::new(db.store().clone(), rules(cache)).unwrap()
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

/// argon2id costs ~19 MiB and a core per check: only `max_checks` run at once, and a login
/// that cannot get its turn in time fails temporarily instead of queueing without end.
#[tokio::test]
async fn password_checks_are_bounded() {
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.test", "pw").await.unwrap();
    let one_at_a_time = LoginRules {
        max_checks: 1,
        check_wait: Duration::from_millis(1),
        ..rules(Duration::ZERO)
    };
    let a = std::sync::Arc::new(Authenticator::new(db.store().clone(), one_at_a_time).unwrap());
    let logins: Vec<_> = (0..6)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.login("alice@example.test", "pw".into(), CLIENT).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for login in logins {
        outcomes.push(login.await.unwrap());
    }
    let ok = outcomes
        .iter()
        .filter(|o| matches!(o, LoginOutcome::Success(_)))
        .count();
    let busy = outcomes
        .iter()
        .filter(|o| matches!(o, LoginOutcome::TemporaryFailure))
        .count();
    assert!(ok >= 1 && busy >= 1, "{outcomes:?}");
    assert_eq!(ok + busy, 6, "{outcomes:?}");
}
