//! The fault suite: nothing acknowledged is lost and nothing is stored twice while services
//! are killed, PostgreSQL restarts, or the store fails over to a standby, under a sustained
//! load of mixed local and remote mail through two ingresses and two queues, read and deleted
//! over POP3 meanwhile.
//!
//! Every message carries a token. Senders stop at a 250, a 5xx, or an end of data that got no
//! answer (a lost answer: the message may or may not be stored, and is not sent again). At the
//! end, every acknowledged message must be in Alice's maildrop (seen over POP3) exactly once
//! and at the remote sink at least once; nothing refused may appear; a message whose answer
//! was lost may appear at most once. Remote duplicates (a queue killed after the remote's 250,
//! before recording it) are counted, not forbidden: SMTP between servers is at-least-once.
//!
//! Bounded for CI; `FAULT_SUITE_MESSAGES=3000 cargo test -p stack-tests --test faults --
//! --nocapture` runs the long form and prints each scenario's counts.

mod ledger;
mod load;
mod reader;
mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ledger::{Ledger, Report};
use pochta_store::{DomainRole, RecipientState, Store, StoreOptions};
use pochta_testkit::cluster::{Cluster, StopMode};
use pochta_testkit::{
    SIGKILL, ServiceProcess, TestDb, free_addr, grpc_health, until, workspace_binary,
};

/// Messages per scenario: `FAULT_SUITE_MESSAGES`, else `default`.
fn messages(default: u64) -> u64 {
    std::env::var("FAULT_SUITE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// One service process that can be killed and started again on the same ports.
struct Service {
    name: &'static str,
    binary: PathBuf,
    config: String,
    grpc: SocketAddr,
    process: ServiceProcess,
}

impl Service {
    async fn start(name: &'static str, binary: &str, config: String, grpc: SocketAddr) -> Self {
        let binary = workspace_binary(binary).unwrap();
        let process = ServiceProcess::start_healthy(&binary, &config, grpc)
            .await
            .unwrap();
        Service {
            name,
            binary,
            config,
            grpc,
            process,
        }
    }

    /// SIGKILL, then started again at once (as a supervisor would), not waited for.
    async fn kill_and_restart(&mut self) {
        self.process.signal(SIGKILL).unwrap();
        let _ = self.process.wait_exit(Duration::from_secs(10)).await;
        self.process = ServiceProcess::start(&self.binary, &self.config, &[]).unwrap();
    }

    fn output(&self) -> String {
        self.process.output()
    }
}

/// Two ingresses, two queues and a POP3 server on one store.
struct Stack {
    services: Vec<Service>,
    mx: Vec<SocketAddr>,
    pop3: SocketAddr,
}

/// Where each kind of service connects.
struct Urls {
    ingress: String,
    queue: String,
    pop3: String,
}

fn store_section(url: &str) -> String {
    format!(
        "[store]\nurl = \"{url}\"\nmax_connections = 4\nacquire_timeout_secs = 3\nconnect_retry_secs = 60\n\n"
    )
}

/// `lease_secs`: how soon a killed queue's recipients are taken over, and how long a queue
/// keeps trying to record an outcome while the store is away.
async fn stack(urls: &Urls, sink: SocketAddr, lease_secs: u64) -> Stack {
    let mut services = Vec::new();
    let mut queues = Vec::new();
    for name in ["queue-1", "queue-2"] {
        let grpc = free_addr();
        let config = format!(
            "{}[queue]\ngrpc_listen = \"{grpc}\"\nhostname = \"{name}.test\"\nsmarthost = \"{sink}\"\n\
             scan_interval_secs = 1\nretry_delay_secs = 1\nretry_max_delay_secs = 2\nlease_secs = {lease_secs}\n\
             workers = 2\nremote_workers = 2\nbatch_size = 16\nconnection_reuse_secs = 0\n",
            store_section(&urls.queue)
        );
        services.push(Service::start(name, "delivery-queue", config, grpc).await);
        queues.push(grpc);
    }
    let mut mx = Vec::new();
    for (i, name) in ["ingress-1", "ingress-2"].into_iter().enumerate() {
        let (grpc, listen) = (free_addr(), free_addr());
        let config = format!(
            "{}[smtp]\ngrpc_listen = \"{grpc}\"\nqueue_endpoint = \"http://{}\"\nhostname = \"{name}.test\"\n\
             mx_listen = [\"{listen}\"]\nsubmission_listen = []\nsubmissions_listen = []\n\
             max_connections_per_ip = 100\n",
            store_section(&urls.ingress),
            queues[i]
        );
        services.push(Service::start(name, "smtp-ingress", config, grpc).await);
        mx.push(listen);
    }
    let (grpc, pop3) = (free_addr(), free_addr());
    let config = format!(
        "{}[pop3]\ngrpc_listen = \"{grpc}\"\npop3_listen = [\"{pop3}\"]\npop3s_listen = []\n\
         plaintext_auth = \"loopback\"\nlock_ttl_secs = 3\nauth_failure_delay_ms = 0\n\
         auth_max_failures = 1000000\n",
        store_section(&urls.pop3)
    );
    services.push(Service::start("pop3", "pop3-access", config, grpc).await);
    Stack { services, mx, pop3 }
}

/// The domain, Alice (the load's local recipient) and Carol (for probes).
async fn seed(store: &Store) {
    store
        .add_domain("example.org", DomainRole::Local)
        .await
        .unwrap();
    pochta_testkit::add_account(store, load::LOCAL, "alice's password")
        .await
        .unwrap();
    pochta_testkit::add_account(store, "carol@example.org", "pw")
        .await
        .unwrap();
}

/// Where the load goes and how it is watched.
struct Target<'a> {
    mx: Vec<SocketAddr>,
    pop3: SocketAddr,
    /// For watching the queue drain.
    store: &'a Store,
    messages: u64,
}

/// Runs the load (`messages`, eight senders) with the POP3 reader, and `faults` alongside;
/// `sending_done` turns true when the senders are done (`faults` should end then). Then
/// waits for the queue to finish and reads the maildrop empty.
async fn run<T>(
    target: Target<'_>,
    ledger: &Ledger,
    sending_done: Arc<AtomicBool>,
    faults: impl Future<Output = T>,
) -> (Report, T) {
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reading = tokio::spawn(reader::keep_draining(
        target.pop3,
        ledger.clone(),
        stop_reading.clone(),
    ));
    let sending = {
        let (mx, ledger, done) = (target.mx.clone(), ledger.clone(), sending_done.clone());
        let messages = target.messages;
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            load::send(mx, messages, 8, ledger, deadline).await;
            done.store(true, Ordering::SeqCst);
        })
    };
    let outcome = faults.await;
    sending.await.unwrap();
    let store = target.store;
    until(
        "the queue to finish",
        Duration::from_secs(180),
        async || {
            store.counts().await.is_ok_and(|c| {
                c.recipients_in(RecipientState::Queued) + c.recipients_in(RecipientState::Held) == 0
            })
        },
    )
    .await;
    stop_reading.store(true, Ordering::SeqCst);
    reading.await.unwrap();
    until(
        "the maildrop read empty",
        Duration::from_secs(60),
        async || reader::drain_once(target.pop3, ledger).await == Some(0),
    )
    .await;
    (ledger.report(target.messages), outcome)
}

/// The verdict every scenario shares; prints the counts. Remote duplicates are allowed only
/// where a queue may die between a remote server's 250 and recording it.
fn judge(scenario: &str, report: &Report, stack: &Stack, queues_killed: bool) {
    println!("fault suite, {scenario}: {report}");
    let logs = || {
        stack
            .services
            .iter()
            .map(|s| format!("--- {} ---\n{}", s.name, s.output()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        report.acknowledged > 0,
        "nothing was acknowledged\n{}",
        logs()
    );
    assert_eq!(
        report.lost,
        0,
        "{scenario}: acknowledged mail lost: {report}\n{}",
        logs()
    );
    assert_eq!(
        report.duplicates_local,
        0,
        "{scenario}: {report}\n{}",
        logs()
    );
    assert_eq!(
        report.appeared_unacknowledged,
        0,
        "{scenario}: {report}\n{}",
        logs()
    );
    if !queues_killed {
        assert_eq!(
            report.duplicates_remote,
            0,
            "{scenario}: {report}\n{}",
            logs()
        );
    }
}

/// A tiny deterministic generator (xorshift), so a failing schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test]
async fn services_killed_at_random_under_load_lose_and_duplicate_nothing() {
    let db = TestDb::new().await.unwrap();
    seed(db.store()).await;
    let roles = db.service_roles().await.unwrap();
    let urls = Urls {
        ingress: roles.ingress,
        queue: roles.queue,
        pop3: roles.pop3,
    };
    let ledger = Ledger::default();
    let sink = sink::start(ledger.clone()).await;
    // Killed queues' recipients are taken over after 3 s.
    let mut stack = stack(&urls, sink, 3).await;
    let seed = std::env::var("FAULT_SUITE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15u64);
    let target = Target {
        mx: stack.mx.clone(),
        pop3: stack.pop3,
        store: db.store(),
        messages: messages(1500),
    };
    let done = Arc::new(AtomicBool::new(false));
    let services = &mut stack.services;
    let faults = {
        let done = done.clone();
        async move {
            let mut rng = Rng(seed);
            let mut kills = std::collections::BTreeMap::<&str, u32>::new();
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(200 + rng.next(500))).await;
                let victim = &mut services[rng.next(5) as usize];
                victim.kill_and_restart().await;
                *kills.entry(victim.name).or_default() += 1;
            }
            kills
        }
    };
    let (report, kills) = run(target, &ledger, done, faults).await;
    println!("fault suite, SIGKILL: kills {kills:?} (seed {seed})");
    judge("SIGKILL of any service", &report, &stack, true);
}

/// A database `pochta` on `cluster`, migrated and seeded; the URL services use.
async fn private_store(cluster: &Cluster) -> String {
    let admin = Store::connect(&cluster.url("postgres"), &StoreOptions::default())
        .await
        .unwrap();
    admin.create_database("pochta").await.unwrap();
    admin.close().await;
    let url = cluster.url("pochta");
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    seed(&store).await;
    store.close().await;
    url
}

/// While the store is down: RCPT gets 451, a POP3 login `-ERR [SYS/TEMP]`, and every
/// service's health turns NOT_SERVING.
async fn probe_while_down(stack: &Stack) {
    let rcpt = load::probe_rcpt(stack.mx[0], "carol@example.org").await;
    assert!(rcpt.starts_with("451 4.3.0"), "{rcpt}");
    let login = reader::probe_login(stack.pop3).await;
    assert!(login.starts_with("-ERR [SYS/TEMP]"), "{login}");
    for service in &stack.services {
        until(
            &format!("{} to report NOT_SERVING", service.name),
            Duration::from_secs(20),
            async || {
                grpc_health(service.grpc)
                    .await
                    .is_ok_and(|serving| !serving)
            },
        )
        .await;
    }
}

async fn all_serving(stack: &Stack) {
    for service in &stack.services {
        until(
            &format!("{} to serve again", service.name),
            Duration::from_secs(30),
            async || grpc_health(service.grpc).await.unwrap_or(false),
        )
        .await;
    }
}

/// The stack of the store scenarios: every service at `url` (the store is the only fault, so
/// leases are long: outcomes are recorded once the store is back, not delivered again).
struct OnStore {
    ledger: Ledger,
    stack: Stack,
    watcher: Store,
    messages: u64,
}

impl OnStore {
    async fn start(url: &str) -> OnStore {
        let urls = Urls {
            ingress: url.to_owned(),
            queue: url.to_owned(),
            pop3: url.to_owned(),
        };
        let ledger = Ledger::default();
        let sink = sink::start(ledger.clone()).await;
        let stack = stack(&urls, sink, 120).await;
        let watcher = Store::connect(url, &StoreOptions::default()).await.unwrap();
        OnStore {
            ledger,
            stack,
            watcher,
            messages: messages(900),
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            mx: self.stack.mx.clone(),
            pop3: self.stack.pop3,
            store: &self.watcher,
            messages: self.messages,
        }
    }

    /// Waits until `share` of the messages are acknowledged.
    async fn acknowledged(&self, share: f64) {
        let enough = (self.messages as f64 * share) as usize;
        until(
            "a share of the load acknowledged",
            Duration::from_secs(120),
            async || self.ledger.acknowledged_count() >= enough,
        )
        .await;
    }
}

#[tokio::test]
async fn postgresql_restarted_under_load_loses_nothing() {
    let cluster = Cluster::start_new(false).unwrap();
    let on = OnStore::start(&private_store(&cluster).await).await;
    let done = Arc::new(AtomicBool::new(false));
    let faults = async {
        for (mode, share) in [(StopMode::Fast, 0.33), (StopMode::Immediate, 0.66)] {
            on.acknowledged(share).await;
            cluster.stop(mode).unwrap();
            probe_while_down(&on.stack).await;
            cluster.start().unwrap();
            all_serving(&on.stack).await;
        }
    };
    let (report, ()) = run(on.target(), &on.ledger, done, faults).await;
    let scenario = "PostgreSQL restarted (fast, then immediate)";
    judge(scenario, &report, &on.stack, false);
}

#[tokio::test]
async fn the_store_fails_over_to_a_synchronous_standby_under_load() {
    let primary = Cluster::start_new(true).unwrap();
    let standby = Cluster::start_standby(&primary).unwrap();
    private_store(&primary).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/pochta?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let on = OnStore::start(&url).await;
    let done = Arc::new(AtomicBool::new(false));
    let faults = async {
        on.acknowledged(0.5).await;
        primary.stop(StopMode::Immediate).unwrap();
        standby.promote().unwrap();
        all_serving(&on.stack).await;
    };
    let (report, ()) = run(on.target(), &on.ledger, done, faults).await;
    let scenario = "the primary killed, the standby promoted";
    judge(scenario, &report, &on.stack, false);
}
