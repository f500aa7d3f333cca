//! Test harness: a fresh database per test on the real PostgreSQL server, free ports, and the
//! real service binaries as child processes whose logs are shown when a test fails.
//!
//! The server is `POCHTA_TEST_DATABASE_URL`, else `DATABASE_URL`, else the local
//! `postgres://postgres@127.0.0.1:5432/postgres`; the URL must name a database the test user
//! may connect to and create databases from.

pub mod cluster;
pub mod dns;
pub mod pg_proxy;
mod service;

pub use service::*;

pub use libc::{SIGINT, SIGKILL, SIGTERM};

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pochta_mail::{Disposition, Mailbox};
use pochta_session::{Output, Session};
use pochta_store::{
    DomainRole, EnvelopeDetail, NewEnvelope, NewRecipient, QueueId, RecipientState, Store,
    StoreOptions,
};
use rand::Rng;

/// Prefix of every database the harness creates; names end in the creating process's pid.
const DB_PREFIX: &str = "pochta_test_";

/// The PostgreSQL server the tests use.
pub fn server_url() -> String {
    std::env::var("POCHTA_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{base}/{database}{query}")
}

/// Where `host:port` is in `url`: after the user (if any), up to the database.
fn host_span(url: &str) -> (usize, usize) {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let path = rest.find('/').unwrap_or(rest.len());
    let start = rest[..path].rfind('@').map_or(0, |at| at + 1);
    (scheme_end + start, scheme_end + path)
}

/// `url` logging in as `role` (no password: the test server trusts local connections).
fn with_user(url: &str, role: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let host_start = rest
        .find('@')
        .filter(|at| rest.find('/').is_none_or(|slash| at < &slash))
        .map_or(0, |at| at + 1);
    format!("{}{role}@{}", &url[..scheme_end], &rest[host_start..])
}

/// The test server's service roles are `pochta_test_ingress` and so on.
pub const TEST_ROLE_PREFIX: &str = "pochta_test";

/// Where each service connects when it runs with its least-privilege role.
#[derive(Debug, Clone)]
pub struct ServiceUrls {
    pub ingress: String,
    pub queue: String,
    pub pop3: String,
    pub imap: String,
}

/// A database of its own for one test, migrated to the current schema, dropped on drop.
pub struct TestDb {
    name: String,
    url: String,
    store: Store,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> anyhow::Result<Self> {
        let db = Self::empty().await?;
        db.store
            .migrate()
            .await
            .context("migrating the test database")?;
        Ok(db)
    }

    /// Creates a fresh database without migrating it.
    pub async fn empty() -> anyhow::Result<Self> {
        let admin_url = server_url();
        let admin = Store::connect(&admin_url, &small_pool())
            .await
            .with_context(|| format!("connecting to the test PostgreSQL at {admin_url}"))?;
        static SWEEP: Once = Once::new();
        let mut sweep = false;
        SWEEP.call_once(|| sweep = true);
        if sweep {
            drop_leftovers(&admin).await;
        }
        let suffix: u32 = rand::rng().random();
        let name = format!("{DB_PREFIX}{suffix:08x}_{}", std::process::id());
        admin
            .create_database(&name)
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await;
        let url = with_database(&admin_url, &name);
        let store = Store::connect(&url, &small_pool()).await?;
        Ok(TestDb { name, url, store })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's `host:port`, as this database's URL names it.
    pub fn server_addr(&self) -> anyhow::Result<SocketAddr> {
        let (start, end) = host_span(&self.url);
        use std::net::ToSocketAddrs as _;
        self.url[start..end]
            .to_socket_addrs()?
            .next()
            .context("the database URL names no address")
    }

    /// This database's URL through `addr` (a proxy in front of the server), without TLS so
    /// the proxy sees the wire protocol.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let (start, end) = host_span(&self.url);
        let joiner = if self.url.contains('?') { '&' } else { '?' };
        format!(
            "{}{addr}{}{joiner}sslmode=disable",
            &self.url[..start],
            &self.url[end..]
        )
    }

    /// This database's URL logging in as `role`.
    pub fn url_as(&self, role: &str) -> String {
        with_user(&self.url, role)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Adds an account with an argon2id hash of `password` (and its domain, as a local one,
    /// if it is not there yet); returns its id.
    pub async fn add_account(&self, address: &str, password: &str) -> anyhow::Result<i64> {
        add_account(&self.store, address, password).await
    }

    /// Sets (or with None, clears) the quota of the account at `address`, in octets.
    pub async fn set_quota(&self, address: &str, quota: Option<i64>) -> anyhow::Result<()> {
        Ok(self
            .store
            .set_quota(&Mailbox::parse(address)?, quota)
            .await?)
    }

    /// The services' least-privilege roles (created on the server when missing, shared by
    /// every test) granted on this database, and the URLs that log in as them.
    pub async fn service_roles(&self) -> anyhow::Result<ServiceUrls> {
        let roles = pochta_store::ServiceRoles::with_prefix(TEST_ROLE_PREFIX);
        for role in roles.all() {
            self.store.ensure_login_role(role).await?;
        }
        self.store.grant_service_roles(&roles).await?;
        Ok(ServiceUrls {
            ingress: self.url_as(&roles.ingress),
            queue: self.url_as(&roles.queue),
            pop3: self.url_as(&roles.pop3),
            imap: self.url_as(&roles.imap),
        })
    }

    /// A second, independent pool on the same database (another "replica").
    pub async fn connect(&self) -> anyhow::Result<Store> {
        Ok(Store::connect(&self.url, &small_pool()).await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs outside any runtime guarantee, so use a thread with a runtime of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for dropping the test database");
            rt.block_on(async {
                if let Ok(admin) = Store::connect(&server_url(), &small_pool()).await {
                    let _ = admin.drop_database(&name).await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Adds an account to `store` with an argon2id hash of `password`, and its domain as a local
/// domain if the store does not know it yet; returns the account's id.
pub async fn add_account(store: &Store, address: &str, password: &str) -> anyhow::Result<i64> {
    let address = Mailbox::parse(address)?;
    if store.domain_role(&address.domain).await?.is_none() {
        store.add_domain(&address.domain, DomainRole::Local).await?;
    }
    let hash = pochta_auth::hash_password(password)?;
    Ok(store.add_account(&address, &hash).await?)
}

/// A recipient as an ingress enqueues it without DSN parameters: due now, for the remote
/// delivery loops (`local_recipient` for a local domain's).
pub fn recipient(address: &str) -> NewRecipient {
    NewRecipient {
        address: Mailbox::parse(address).expect("a valid test address"),
        orcpt: None,
        notify: None,
        disposition: Disposition::Remote,
    }
}

/// Gives the local `domain` an active Ed25519 DKIM key under `selector`; returns its DNS
/// record (`v=DKIM1; k=ed25519; p=...`), to publish at `<selector>._domainkey.<domain>`.
pub async fn add_dkim_key(store: &Store, domain: &str, selector: &str) -> anyhow::Result<String> {
    use base64::Engine;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("no Ed25519 key made"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("the Ed25519 key does not read back"))?;
    let public = pair.public_key().as_ref().to_vec();
    store
        .add_dkim_key(&pochta_store::NewDkimKey {
            domain: domain.into(),
            selector: selector.into(),
            algorithm: pochta_store::DkimAlgorithm::Ed25519,
            private_key: pkcs8.as_ref().to_vec(),
            public_key: public.clone(),
        })
        .await?;
    let public = base64::engine::general_purpose::STANDARD.encode(public);
    Ok(format!("v=DKIM1; k=ed25519; p={public}"))
}

/// A local domain's recipient without DSN parameters: due now, for the local delivery loops.
pub fn local_recipient(address: &str) -> NewRecipient {
    NewRecipient {
        disposition: Disposition::Local,
        ..recipient(address)
    }
}

/// An envelope from `sender` (`""` for `<>`) to `recipients`, without ESMTP parameters or
/// client details, living an hour. Tests set what they need with struct update syntax.
pub fn envelope(sender: &str, recipients: Vec<NewRecipient>) -> NewEnvelope {
    NewEnvelope {
        quarantine: None,
        requiretls: false,
        queue_id: QueueId::generate(),
        reverse_path: (!sender.is_empty())
            .then(|| Mailbox::parse(sender).expect("a valid test address")),
        envid: None,
        ret: None,
        body: None,
        smtputf8: false,
        client_address: None,
        client_helo: None,
        auth_user: None,
        received_by: None,
        traceparent: None,
        lifetime: Duration::from_secs(3600),
        recipients,
    }
}

/// Polls `done` every 50 ms until it holds; fails the test after `timeout`.
pub async fn until<F: AsyncFnMut() -> bool>(what: &str, timeout: Duration, mut done: F) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 15 s) until no recipient of envelope `queue_id` is queued any more, and
/// returns the envelope as it is then.
pub async fn until_attempted(store: &Store, queue_id: &QueueId) -> EnvelopeDetail {
    let detail = async || {
        store
            .envelope_detail(queue_id.as_str())
            .await
            .expect("reading the envelope")
            .expect("the envelope exists")
    };
    until(
        "every recipient attempted",
        Duration::from_secs(15),
        async || {
            detail()
                .await
                .recipients
                .iter()
                .all(|r| r.state != RecipientState::Queued)
        },
    )
    .await;
    detail().await
}

/// Drops test databases left by test processes that no longer run (killed before cleanup).
async fn drop_leftovers(admin: &Store) {
    let Ok(names) = admin.database_names_like(&format!("{DB_PREFIX}%")).await else {
        return;
    };
    for name in names {
        let pid = name.rsplit('_').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = admin.drop_database(&name).await;
        }
    }
}

fn small_pool() -> StoreOptions {
    StoreOptions {
        max_connections: 4,
        application_name: "pochta-test".into(),
        ..StoreOptions::default()
    }
}

/// A TCP port on 127.0.0.1 for a server a test starts: free when handed out, never handed out
/// twice in this process, and outside the kernel's ephemeral range, so no outgoing connection
/// can take it as its source port before the server binds it. (Binding port 0 and passing the
/// number on would race with both.) Each process starts at its own place in the range.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let (low, high) = test_port_range();
    let span = u32::from(high - low);
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7919) % span));
    for _ in 0..span {
        let port = low + (next.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {high}");
}

/// The ports below the kernel's ephemeral range (`ip_local_port_range`), or above it if that
/// leaves more room.
fn test_port_range() -> (u16, u16) {
    let (start, end) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut numbers = text.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((numbers.next()??, numbers.next()??))
        })
        .unwrap_or((32768, 60999));
    let below = (1024, start.max(1025));
    let above = (end.saturating_add(1).min(65534), 65535);
    if below.1 - below.0 >= above.1 - above.0 {
        below
    } else {
        above
    }
}

/// A loopback address on a free port.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Waits (up to 15 s) for `n` entries in `account`'s maildrop and returns the full text of
/// each (the delivery's header prefix and the content), in delivery order.
pub async fn maildrop(store: &Store, account: i64, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let entries = store.maildrop_entries(account).await.unwrap();
        if entries.len() >= n {
            let mut all = Vec::new();
            for e in entries {
                let (prefix, content) = store
                    .maildrop_entry_content(account, e.id)
                    .await
                    .unwrap()
                    .unwrap();
                all.push([prefix, content].concat());
            }
            return all;
        }
        assert!(Instant::now() < deadline, "{n} messages did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sans-IO session driven the way the connection driver (`pochta_service::drive`) drives
/// it, with no socket: input goes in whole, replies collect as text, and everything else the
/// session asks for comes back to the test to answer.
pub struct Script<S: Session> {
    pub session: S,
    sent: String,
}

impl<S: Session> Script<S>
where
    S::Action: std::fmt::Debug,
{
    pub fn new(session: S) -> Self {
        Script {
            session,
            sent: String::new(),
        }
    }

    /// Polls until the session needs input or asks for something other than sending bytes
    /// (TLS, closing, an action), which it returns.
    pub fn drain(&mut self) -> Option<Output<S::Action>> {
        while let Some(output) = self.session.poll() {
            match output {
                Output::Send(bytes) => self.sent.push_str(&String::from_utf8_lossy(&bytes)),
                other => return Some(other),
            }
        }
        None
    }

    /// Feeds `input` and drains.
    pub fn send(&mut self, input: &str) -> Option<Output<S::Action>> {
        self.send_bytes(input.as_bytes())
    }

    pub fn send_bytes(&mut self, input: &[u8]) -> Option<Output<S::Action>> {
        self.session.feed(input);
        self.drain()
    }

    /// What the session sent since the last `take`.
    pub fn take(&mut self) -> String {
        std::mem::take(&mut self.sent)
    }

    /// Sends a command line that needs no action and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        let output = self.send(&format!("{line}\r\n"));
        assert!(output.is_none(), "{line}: unexpected {output:?}");
        self.take()
    }
}

/// A test certificate authority and a server certificate it signed for `localhost` and
/// 127.0.0.1, as PEM files in a temporary folder.
pub struct TestCerts {
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCerts {
    /// A CA and a certificate it signed for `localhost` and `127.0.0.1`.
    pub fn generate() -> anyhow::Result<Self> {
        Self::generate_for(&["localhost", "127.0.0.1"])
    }

    /// A CA and a certificate it signed for `names`.
    pub fn generate_for(names: &[&str]) -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Pochta test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf_key = KeyPair::generate()?;
        let leaf_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
        let dir = tempfile::tempdir()?;
        let write = |name: &str, pem: String| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, pem)?;
            Ok(path)
        };
        Ok(TestCerts {
            ca_path: write("ca.pem", ca.pem())?,
            cert_path: write("cert.pem", leaf.pem())?,
            key_path: write("key.pem", leaf_key.serialize_pem())?,
            _dir: dir,
        })
    }

    /// The `[tls]` section for a service config.
    pub fn tls_section(&self) -> String {
        format!(
            "[tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
            self.cert_path.display(),
            self.key_path.display()
        )
    }
}

/// Runs a Python 3 script (a third-party client such as smtplib or poplib) with arguments and
/// returns its stdout; fails with its stderr when it exits non-zero.
pub async fn python(script: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .await
        .context("running python3")?;
    if !output.status.success() {
        bail!(
            "python exited with {}:\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_unique_and_outside_the_ephemeral_range() {
        let (low, high) = test_port_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let unique: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), ports.len(), "no port handed out twice");
        assert!(ports.iter().all(|p| (low..high).contains(p)), "{ports:?}");
        // The kernel never picks these for outgoing connections.
        let outgoing = std::net::TcpStream::connect(
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap(),
        )
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
        assert!(
            !(low..high).contains(&outgoing),
            "{outgoing} in {low}..{high}"
        );
    }

    #[test]
    fn replaces_database_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
