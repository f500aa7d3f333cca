//! The real pochtactl binary against a fresh database per test.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use pochta_mail::Mailbox;
use pochta_testkit::TestDb;

const POCHTACTL: &str = env!("CARGO_BIN_EXE_pochtactl");

/// Runs `pochtactl args` (words separated by single spaces) against `db` with `stdin` as its
/// input.
fn ctl(db: &TestDb, args: &str, stdin: &str) -> Output {
    let mut child = Command::new(POCHTACTL)
        .args(args.split(' '))
        .env("DATABASE_URL", db.url())
        .env_remove("POCHTA_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(db: &TestDb, args: &str, stdin: &str) -> String {
    let out = ctl(db, args, stdin);
    assert!(
        out.status.success(),
        "pochtactl {args:?} failed: {}",
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts exit code 1 and an error that mentions `expected`.
fn fails(db: &TestDb, args: &str, stdin: &str, expected: &str) {
    let out = ctl(db, args, stdin);
    assert_eq!(
        out.status.code(),
        Some(1),
        "pochtactl {args:?}: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(expected),
        "pochtactl {args:?}: wanted {expected:?} in {stderr}"
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn migrate_then_up_to_date() {
    let db = TestDb::empty().await.unwrap();
    fails(&db, "domain list", "", "pochtactl migrate");
    fails(&db, "search-fields", "", "pochtactl migrate");
    let latest = pochta_store::Store::expected_schema_version();
    let out = ok(&db, "migrate", "");
    assert!(
        out.contains(&format!("migrated schema from version 0 to {latest}")),
        "{out}"
    );
    let out = ok(&db, "--json migrate", "");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["from_version"].as_i64(), v["to_version"].as_i64()),
        (Some(latest), Some(latest))
    );
    db.store().check_schema().await.unwrap();
}

/// `migrate --grant-roles`: the services' roles get their privileges; roles that do not exist
/// are an error that says so.
#[tokio::test]
async fn migrate_grants_the_service_roles() {
    let db = TestDb::empty().await.unwrap();
    let prefix = pochta_testkit::TEST_ROLE_PREFIX;
    let roles = pochta_store::ServiceRoles::with_prefix(prefix);
    for role in [&roles.ingress, &roles.queue, &roles.pop3] {
        db.store().ensure_login_role(role).await.unwrap();
    }
    fails(
        &db,
        "migrate --grant-roles --role-prefix no_such_roles",
        "",
        "do they exist?",
    );
    let out = ok(
        &db,
        &format!("migrate --grant-roles --role-prefix {prefix}"),
        "",
    );
    assert!(
        out.contains(&format!("privileges granted to {}", roles.ingress)),
        "{out}"
    );
    let url = db
        .url()
        .replacen("postgres@", &format!("{}@", roles.pop3), 1);
    let pop3 = pochta_store::Store::connect(&url, &Default::default())
        .await
        .unwrap();
    pop3.maildrop_entries(1).await.unwrap();
    assert!(pop3.counts().await.is_err(), "POP3 may not read the queue");
}

#[tokio::test]
async fn domains() {
    let db = TestDb::new().await.unwrap();
    fails(&db, "domain add example.org", "", "needs --postmaster");
    ok(
        &db,
        "domain add Example.ORG. --postmaster admin@example.org",
        "",
    );
    ok(&db, "domain add backup.example --role hold", "");
    fails(
        &db,
        "domain add relay.example --role relay --postmaster a@relay.example",
        "",
        "for local domains",
    );
    fails(
        &db,
        "domain add example.org --postmaster admin@example.org",
        "",
        "already exists",
    );
    fails(&db, "domain add bad_domain!", "", "not a valid domain name");
    let out = ctl(&db, "domain add x.example --role mirror", "");
    assert_eq!(out.status.code(), Some(2), "usage error: {}", text(&out));

    let listed = ok(&db, "domain list", "");
    assert!(
        listed.contains("example.org")
            && listed.contains("hold")
            && listed.contains("postmaster -> admin@example.org"),
        "{listed}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&db, "--json domain list", "")).unwrap();
    let names: Vec<_> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("backup.example".into(), "hold".into()),
            ("example.org".into(), "local".into())
        ]
    );

    ok(&db, "domain remove backup.example", "");
    fails(&db, "domain remove backup.example", "", "does not exist");
}

#[tokio::test]
async fn aliases_catch_all_postmaster_and_domain_aliases() {
    let db = TestDb::new().await.unwrap();
    ok(
        &db,
        "domain add example.org --postmaster admin@example.org",
        "",
    );
    for name in ["alice", "bob", "admin"] {
        ok(
            &db,
            &format!("account add {name}@example.org --password-stdin"),
            "pw\n",
        );
    }
    ok(
        &db,
        "alias add team@example.org alice@example.org bob@example.org",
        "",
    );
    ok(
        &db,
        "alias add all@example.org team@example.org friend@elsewhere.example",
        "",
    );
    // Loops, an account's name, a bad address and an unknown domain are refused clearly.
    fails(
        &db,
        "alias add team@example.org all@example.org",
        "",
        "reach itself again",
    );
    fails(
        &db,
        "alias add alice@example.org bob@example.org",
        "",
        "account alice@example.org already exists",
    );
    fails(
        &db,
        "alias add x@example.org not-an-address",
        "",
        "not a valid address",
    );
    fails(
        &db,
        "alias add x@nowhere.example alice@example.org",
        "",
        "does not exist",
    );
    let out = ctl(&db, "alias add lonely@example.org", "");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a target is required: {}",
        text(&out)
    );

    let listed = ok(&db, "alias list --domain example.org", "");
    for line in [
        "team@example.org",
        "alice@example.org",
        "friend@elsewhere.example",
    ] {
        assert!(listed.contains(line), "{line}: {listed}");
    }
    let json: serde_json::Value = serde_json::from_str(&ok(&db, "--json alias list", "")).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 4);
    ok(
        &db,
        "alias remove all@example.org friend@elsewhere.example",
        "",
    );
    ok(&db, "alias remove team@example.org", "");
    fails(&db, "alias remove team@example.org", "", "does not exist");

    // The postmaster can change but not point at itself; the catch-all needs a real target.
    ok(&db, "domain postmaster example.org bob@example.org", "");
    fails(
        &db,
        "domain postmaster example.org abuse@example.org",
        "",
        "postmaster itself",
    );
    fails(
        &db,
        "domain catch-all example.org ghost@example.org",
        "",
        "neither",
    );
    ok(&db, "domain catch-all example.org bob@example.org", "");
    let listed = ok(&db, "domain list", "");
    assert!(
        listed.contains("postmaster -> bob@example.org")
            && listed.contains("catch-all -> bob@example.org"),
        "{listed}"
    );
    ok(&db, "domain catch-all example.org --off", "");
    assert!(!ok(&db, "domain list", "").contains("catch-all"));

    // A domain alias: no accounts of its own.
    ok(&db, "domain add example.net --alias-of example.org", "");
    assert!(ok(&db, "domain list", "").contains("alias of example.org"));
    fails(
        &db,
        "domain remove example.org",
        "",
        "example.net is an alias of example.org",
    );
    fails(
        &db,
        "account add carol@example.net --password-stdin",
        "pw\n",
        "alias of example.org",
    );
}

#[tokio::test]
async fn accounts() {
    let db = TestDb::new().await.unwrap();
    ok(
        &db,
        "domain add example.org --postmaster alice@example.org",
        "",
    );
    ok(&db, "domain add backup.example --role hold", "");

    ok(
        &db,
        "account add alice@example.org --password-stdin",
        "s3cret pass\n",
    );
    let alice = Mailbox::parse("alice@example.org").unwrap();
    let creds = db
        .store()
        .account_credentials(&alice)
        .await
        .unwrap()
        .unwrap();
    assert!(creds.password_hash.starts_with("$argon2id$"));
    assert!(pochta_auth::verify_password("s3cret pass", &creds.password_hash).unwrap());
    assert!(!pochta_auth::verify_password("s3cret pass\n", &creds.password_hash).unwrap());

    // Bad input gets a clear error and exit code 1.
    fails(
        &db,
        "account add ALICE@example.org --password-stdin",
        "x\n",
        "already exists",
    );
    fails(
        &db,
        "account add bob@nowhere.example --password-stdin",
        "x\n",
        "domain nowhere.example does not exist",
    );
    fails(
        &db,
        "account add bob@backup.example --password-stdin",
        "x\n",
        "hold domain",
    );
    fails(
        &db,
        "account add bob@example.org --password-stdin",
        "\n",
        "empty",
    );
    fails(
        &db,
        "account add not-an-address --password-stdin",
        "x\n",
        "not a valid address",
    );
    // Without a terminal, no prompt: the password must come on stdin, never on argv.
    fails(
        &db,
        "account add bob@example.org",
        "x\n",
        "--password-stdin",
    );
    fails(
        &db,
        "account passwd nobody@example.org --password-stdin",
        "x\n",
        "does not exist",
    );
    assert_eq!(db.store().list_accounts(None).await.unwrap().len(), 1);

    ok(
        &db,
        "account passwd alice@example.org --password-stdin",
        "n3w\n",
    );
    let creds = db
        .store()
        .account_credentials(&alice)
        .await
        .unwrap()
        .unwrap();
    assert!(pochta_auth::verify_password("n3w", &creds.password_hash).unwrap());

    ok(&db, "account disable alice@example.org", "");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&db, "--json account list --domain example.org", "")).unwrap();
    assert_eq!(list[0]["local_part"], "alice");
    assert_eq!(list[0]["disabled"], true);
    assert_eq!(list[0]["messages"], 0);
    ok(&db, "account enable alice@example.org", "");
    assert!(
        !db.store()
            .account_credentials(&alice)
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    let human = ok(&db, "account list", "");
    assert!(
        human.contains("alice@example.org") && human.contains("active"),
        "{human}"
    );

    ok(&db, "account remove alice@example.org", "");
    fails(
        &db,
        "account remove alice@example.org",
        "",
        "does not exist",
    );
}

#[tokio::test]
async fn health_reports_serving_and_unreachable() {
    let db = TestDb::new().await.unwrap();
    let grpc = pochta_testkit::free_addr();
    let binary = pochta_testkit::workspace_binary("pop3-access").unwrap();
    let service = pochta_testkit::ServiceProcess::start_healthy(
        &binary,
        &pochta_testkit::service_config(db.url(), "pop3", grpc),
        grpc,
    )
    .await
    .unwrap();
    let out = ok(&db, &format!("health {grpc}"), "");
    assert!(out.contains("SERVING"), "{out}");
    drop(service);
    fails(&db, &format!("health {grpc}"), "", "asking");
}

/// `dkim generate` prints the record to publish; `domain records` prints every record a
/// domain needs, its DKIM keys among them; the errors say what to do.
#[tokio::test]
async fn dkim_keys_and_the_records_a_domain_publishes() {
    let db = TestDb::new().await.unwrap();
    ok(&db, "migrate", "");
    ok(
        &db,
        "domain add example.org --postmaster pm@example.org",
        "",
    );
    let made = ok(
        &db,
        "dkim generate example.org --algorithm ed25519 --selector s1",
        "",
    );
    assert!(
        made.starts_with("ed25519 key s1 for example.org (active; it signs mail now"),
        "{made}"
    );
    let record_line = made.lines().nth(1).unwrap();
    assert!(
        record_line.starts_with("s1._domainkey.example.org. IN TXT \"v=DKIM1; k=ed25519; p="),
        "{made}"
    );
    let made = ok(&db, "dkim generate example.org --selector r1", "");
    let rsa_line = made.lines().nth(1).unwrap();
    // A 2048-bit key's record is longer than one DNS string holds: it is split.
    assert!(rsa_line.contains("\" \""), "{rsa_line}");
    let pending = ok(&db, "dkim generate example.org --selector r2", "");
    assert!(
        pending.contains("(pending; publish this record"),
        "{pending}"
    );
    fails(
        &db,
        "dkim generate example.org --selector r3",
        "",
        "already has a pending rsa key",
    );
    let small = ctl(&db, "dkim generate example.org --bits 1024", "");
    assert_eq!(small.status.code(), Some(2), "a usage error");
    assert!(text(&small).contains("1024 is not in 2048..=4096"));
    fails(
        &db,
        "dkim generate nowhere.example",
        "",
        "domain nowhere.example does not exist",
    );
    fails(
        &db,
        "dkim remove example.org s1",
        "",
        "rotate to another key first",
    );

    let records = ok(&db, "domain records example.org --mx mx.example.org", "");
    for expected in [
        "example.org. IN MX 10 mx.example.org.",
        "example.org. IN TXT \"v=spf1 mx -all\"",
        record_line,
        rsa_line,
        "; rsa key, pending",
        "_dmarc.example.org. IN TXT \"v=DMARC1; p=none; rua=mailto:postmaster@example.org\"",
        "_mta-sts.example.org. IN TXT \"v=STSv1; id=",
        "_smtp._tls.example.org. IN TXT \"v=TLSRPTv1; rua=mailto:postmaster@example.org\"",
        ";   mx: mx.example.org",
    ] {
        assert!(records.contains(expected), "{expected:?} in\n{records}");
    }
    fails(&db, "domain records example.org", "", "--mx");
    let list = ok(&db, "dkim list", "");
    assert_eq!(
        list.lines()
            .filter(|l| l.starts_with("example.org "))
            .count(),
        3,
        "{list}"
    );
}

/// `search-fields`: mail stored before schema version 14 gets the header fields IMAP SEARCH
/// reads; a message whose fields are too long to keep is passed over; a second run finds
/// nothing more to keep.
#[tokio::test]
async fn search_fields_are_kept_for_old_mail() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    store
        .add_domain("example.org", pochta_store::DomainRole::Local)
        .await
        .unwrap();
    let account = store
        .add_account(
            &Mailbox::parse("user@example.org").unwrap(),
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        )
        .await
        .unwrap();
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    let crowded = format!("To: {}\r\n\r\nbody\r\n", "a@b.example, ".repeat(2000));
    for content in [
        b"Subject: Old news\r\n\r\nbody\r\n".as_slice(),
        crowded.as_bytes(),
    ] {
        store
            .append_message(inbox.id, content, &[], None)
            .await
            .unwrap();
    }
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("UPDATE messages SET search_fields = false, search_subject = NULL")
        .execute(&raw)
        .await
        .unwrap();
    let out = ok(&db, "search-fields --batch 1", "");
    assert!(
        out.contains("search fields kept for 1 messages; 1 passed over"),
        "{out}"
    );
    let subject: Option<String> =
        sqlx::query_scalar("SELECT search_subject FROM messages WHERE search_fields")
            .fetch_one(&raw)
            .await
            .unwrap();
    assert_eq!(subject.as_deref(), Some(" old news"));
    let out = ok(&db, "--json search-fields", "");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["kept"].as_u64(), v["passed_over"].as_u64()),
        (Some(0), Some(1))
    );
    // A usage error (clap's exit code 2).
    let out = ctl(&db, "search-fields --batch 0", "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--batch"), "{}", text(&out));
}
