//! Aliases, postmaster, subaddresses, catch-all and domain aliases: how addresses resolve and
//! expand, what the operator's changes refuse, and the expansion of a queued recipient.

use std::time::Duration;

use pochta_mail::{AddressRules, Disposition, Notify};
use pochta_store::{
    AttemptReport, Claim, DomainRole, NewRecipient, Resolved, Store, StoreCounts, StoreError, Via,
};
use pochta_testkit::TestDb;

use crate::{CONTENT, addr, envelope, recipient};

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

/// example.org (local, postmaster admin@) with accounts alice, bob and admin, and
/// relay.example (relay).
async fn domain_with_accounts(store: &Store) {
    store
        .add_local_domain("example.org", &addr("admin@example.org"))
        .await
        .unwrap();
    store
        .add_domain("relay.example", DomainRole::Relay)
        .await
        .unwrap();
    for name in ["alice", "bob", "admin"] {
        store
            .add_account(&addr(&format!("{name}@example.org")), HASH)
            .await
            .unwrap();
    }
}

fn rules() -> AddressRules {
    AddressRules::default()
}

async fn resolved(store: &Store, address: &str) -> Resolved {
    store
        .resolve_recipient(&addr(address), &rules())
        .await
        .unwrap()
        .resolved
}

fn account_of(resolved: Resolved) -> (String, Via) {
    match resolved {
        Resolved::Account { address, via, .. } => (address.to_string(), via),
        other => panic!("expected an account, got {other:?}"),
    }
}

fn forward_of(resolved: Resolved) -> (Vec<String>, Via) {
    match resolved {
        Resolved::Forward { targets, via } => {
            (targets.iter().map(|t| t.to_string()).collect(), via)
        }
        other => panic!("expected a forward, got {other:?}"),
    }
}

#[tokio::test]
async fn addresses_resolve_by_the_first_rule_that_matches() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    domain_with_accounts(store).await;
    let team = [addr("alice@example.org"), addr("bob@example.org")];
    store
        .add_alias(&addr("Team@example.org"), &team, &rules())
        .await
        .unwrap();

    // Exact account, case-insensitively, under its own spelling.
    assert_eq!(
        account_of(resolved(store, "ALICE@example.org").await),
        ("alice@example.org".into(), Via::Exact)
    );
    // An alias, case-insensitively, in the order its targets were added.
    assert_eq!(
        forward_of(resolved(store, "team@example.org").await),
        (
            vec!["alice@example.org".into(), "bob@example.org".into()],
            Via::Exact
        )
    );
    // postmaster@ and abuse@ go to the domain's postmaster.
    for name in ["postmaster", "Abuse"] {
        assert_eq!(
            forward_of(resolved(store, &format!("{name}@example.org")).await),
            (vec!["admin@example.org".into()], Via::Postmaster)
        );
    }
    // Subaddresses of accounts and of aliases (RFC 5233).
    assert_eq!(
        account_of(resolved(store, "alice+lists@example.org").await),
        ("alice@example.org".into(), Via::Subaddress)
    );
    assert_eq!(
        forward_of(resolved(store, "team+x@example.org").await).1,
        Via::Subaddress
    );
    // Nothing else matches: unknown, until a catch-all is set.
    assert_eq!(
        resolved(store, "carol@example.org").await,
        Resolved::Unknown
    );
    assert_eq!(resolved(store, "+x@example.org").await, Resolved::Unknown);
    store
        .set_catch_all("example.org", Some(&addr("bob@example.org")), &rules())
        .await
        .unwrap();
    assert_eq!(
        forward_of(resolved(store, "carol@example.org").await),
        (vec!["bob@example.org".into()], Via::CatchAll)
    );
    // An account named like a subaddress keeps its own mail.
    store
        .add_account(&addr("alice+lists@example.org"), HASH)
        .await
        .unwrap();
    assert_eq!(
        account_of(resolved(store, "alice+lists@example.org").await),
        ("alice+lists@example.org".into(), Via::Exact)
    );
    // Other delimiters, and subaddressing off.
    let dash = AddressRules {
        delimiters: "-+".into(),
        ..rules()
    };
    let found = store
        .resolve_recipient(&addr("bob-x@example.org"), &dash)
        .await
        .unwrap();
    assert_eq!(account_of(found.resolved).1, Via::Subaddress);
    let off = AddressRules {
        delimiters: String::new(),
        ..rules()
    };
    let found = store
        .resolve_recipient(&addr("bob+x@example.org"), &off)
        .await
        .unwrap();
    assert_eq!(forward_of(found.resolved).1, Via::CatchAll);
    // A relay domain's and an unknown domain's addresses are theirs to judge.
    let relay = store
        .resolve_recipient(&addr("anyone@relay.example"), &rules())
        .await
        .unwrap();
    assert_eq!(
        (relay.role, relay.resolved),
        (Some(DomainRole::Relay), Resolved::Unknown)
    );
    let foreign = store
        .resolve_recipient(&addr("x@elsewhere.example"), &rules())
        .await
        .unwrap();
    assert_eq!(foreign.role, None);
}

#[tokio::test]
async fn a_domain_alias_resolves_at_its_domain_and_holds_nothing_itself() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    domain_with_accounts(store).await;
    store
        .add_domain_alias("example.net", "example.org")
        .await
        .unwrap();
    assert_eq!(
        account_of(resolved(store, "alice@example.net").await),
        ("alice@example.org".into(), Via::Exact)
    );
    assert_eq!(
        forward_of(resolved(store, "postmaster@example.net").await).0,
        ["admin@example.org"]
    );
    assert_eq!(
        resolved(store, "nobody@example.net").await,
        Resolved::Unknown
    );
    assert!(matches!(
        store.add_account(&addr("carol@example.net"), HASH).await,
        Err(StoreError::DomainIsAlias { of, .. }) if of == "example.org"
    ));
    assert!(matches!(
        store
            .add_alias(
                &addr("x@example.net"),
                &[addr("alice@example.org")],
                &rules()
            )
            .await,
        Err(StoreError::DomainIsAlias { .. })
    ));
    assert!(matches!(
        store.add_domain_alias("example.com", "relay.example").await,
        Err(StoreError::DomainNotLocal { .. })
    ));
}

#[tokio::test]
async fn nested_aliases_expand_once_each_and_loops_are_refused() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    domain_with_accounts(store).await;
    let r = rules();
    let (team, all) = (addr("team@example.org"), addr("all@example.org"));
    store
        .add_alias(
            &team,
            &[addr("alice@example.org"), addr("bob@example.org")],
            &r,
        )
        .await
        .unwrap();
    // all -> team (-> alice, bob), alice again, a remote address, an unknown local one.
    let targets = [
        team.clone(),
        addr("Alice@example.org"),
        addr("friend@elsewhere.example"),
        addr("ghost@example.org"),
    ];
    store.add_alias(&all, &targets, &r).await.unwrap();
    let expansion = store.expand(&all, targets.to_vec(), &r).await.unwrap();
    let got: Vec<(String, Disposition)> = expansion
        .targets
        .iter()
        .map(|(t, d)| (t.to_string().to_lowercase(), *d))
        .collect();
    assert_eq!(
        got,
        [
            ("alice@example.org".into(), Disposition::Local),
            ("friend@elsewhere.example".into(), Disposition::Remote),
            ("ghost@example.org".into(), Disposition::Local),
            ("bob@example.org".into(), Disposition::Local),
        ]
    );

    // team -> all would make a loop, directly or through a subaddress or the postmaster.
    for target in ["all@example.org", "all+x@example.org"] {
        assert!(
            matches!(
                store.add_alias(&team, &[addr(target)], &r).await,
                Err(StoreError::AliasLoop(_))
            ),
            "{target}"
        );
    }
    store
        .add_alias(
            &addr("admins@example.org"),
            &[addr("postmaster@example.org")],
            &r,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .set_postmaster("example.org", &addr("admins@example.org"), &r)
            .await,
        Err(StoreError::AliasLoop(_))
    ));
    assert!(matches!(
        store
            .set_postmaster("example.org", &addr("abuse@example.org"), &r)
            .await,
        Err(StoreError::AliasLoop(_))
    ));
    // An account's name cannot become an alias; a catch-all must be something.
    assert!(matches!(
        store
            .add_alias(&addr("bob@example.org"), std::slice::from_ref(&team), &r)
            .await,
        Err(StoreError::AccountExists(_))
    ));
    assert!(matches!(
        store
            .set_catch_all("example.org", Some(&addr("ghost@example.org")), &r)
            .await,
        Err(StoreError::AliasLoop(_))
    ));

    // Depth and width limits.
    let shallow = AddressRules {
        max_depth: 1,
        ..rules()
    };
    assert!(matches!(
        store.expand(&all, targets.to_vec(), &shallow).await,
        Err(StoreError::AliasTooDeep { depth: 1, .. })
    ));
    let narrow = AddressRules {
        max_targets: 2,
        ..rules()
    };
    assert!(matches!(
        store.expand(&all, targets.to_vec(), &narrow).await,
        Err(StoreError::AliasTooWide { max: 2, .. })
    ));

    // Listing and removing.
    let listed: Vec<(String, String)> = store
        .list_aliases(Some("example.org"))
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.alias(), a.target))
        .collect();
    assert_eq!(listed.len(), 7, "{listed:?}");
    store
        .remove_alias(&team, Some(&addr("BOB@example.org")))
        .await
        .unwrap();
    assert_eq!(
        forward_of(resolved(store, "team@example.org").await).0,
        ["alice@example.org"]
    );
    store.remove_alias(&team, None).await.unwrap();
    assert!(matches!(
        store.remove_alias(&team, None).await,
        Err(StoreError::UnknownAlias(_))
    ));
}

#[tokio::test]
async fn a_loop_made_behind_the_checks_ends_the_expansion() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    domain_with_accounts(store).await;
    // a -> b is fine; b -> a would be refused, so it is written as a catch-all path instead:
    // b is unknown and the catch-all of another domain sends it back to a.
    store
        .add_local_domain("example.com", &addr("admin@example.org"))
        .await
        .unwrap();
    let r = rules();
    store
        .add_alias(&addr("a@example.org"), &[addr("b@example.com")], &r)
        .await
        .unwrap();
    store
        .set_catch_all("example.com", Some(&addr("a@example.org")), &r)
        .await
        .unwrap();
    let expansion = store
        .expand(&addr("a@example.org"), vec![addr("b@example.com")], &r)
        .await
        .unwrap();
    assert!(expansion.targets.is_empty());
    assert!(expansion.looped);
}

#[tokio::test]
async fn an_expanded_recipient_becomes_one_queued_recipient_per_target_exactly_once() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    domain_with_accounts(store).await;
    store
        .enqueue(
            &envelope(vec![NewRecipient {
                disposition: Disposition::Local,
                ..recipient("team@example.org")
            }]),
            CONTENT,
        )
        .await
        .unwrap();
    let lease = Duration::from_secs(60);
    let claimed = store
        .claim_due("w1", Claim::Local, 10, lease)
        .await
        .unwrap();
    let parent = &claimed[0];
    let targets = [
        (addr("alice@example.org"), Disposition::Local),
        (addr("friend@elsewhere.example"), Disposition::Remote),
    ];
    let rest = Notify {
        success: false,
        failure: true,
        delay: false,
    };
    let attempt = AttemptReport {
        status: Some("2.0.0".into()),
        diagnostic: "expanded".into(),
        ..AttemptReport::default()
    };
    store
        .expand_recipient(
            "w1",
            parent.recipient_id,
            &targets,
            Some(rest),
            &attempt,
            None,
        )
        .await
        .unwrap();
    // A second worker that lost the lease changes nothing.
    assert!(matches!(
        store
            .expand_recipient(
                "w2",
                parent.recipient_id,
                &targets,
                Some(rest),
                &attempt,
                None
            )
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    let local = store
        .claim_due("w1", Claim::Local, 10, lease)
        .await
        .unwrap();
    let remote = store
        .claim_due("w1", Claim::Remote, 10, lease)
        .await
        .unwrap();
    assert_eq!(local.len(), 1);
    assert_eq!(remote.len(), 1);
    for (child, to) in [
        (&local[0], "alice@example.org"),
        (&remote[0], "friend@elsewhere.example"),
    ] {
        assert_eq!(child.address, addr(to));
        assert_eq!(child.notify, Some(rest));
        // The parent's ORCPT travels on; the original address is kept for X-Original-To.
        assert_eq!(child.orcpt, parent.orcpt);
        assert_eq!(child.original_address, Some(addr("team@example.org")));
    }
    let counts: StoreCounts = store.counts().await.unwrap();
    assert_eq!(
        counts.recipients_in(pochta_store::RecipientState::Expanded),
        1
    );
}
