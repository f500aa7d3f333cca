//! `pochtactl dev`: the whole system on this machine, without Docker.
//!
//! PostgreSQL is `DATABASE_URL` when set; otherwise a private cluster under the data folder,
//! created with the local PostgreSQL binaries on first use and run as a child process (as the
//! `postgres` user when we are root: `initdb` refuses to run as root). Then the schema is
//! migrated, a demo domain and account are created, and the three services start with a
//! generated config. Ctrl-C (or SIGTERM) stops the services, then PostgreSQL.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pochta_mail::Mailbox;
use pochta_store::{Store, StoreError, StoreOptions};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

const DEMO_DOMAIN: &str = "example.test";
const DEMO_USER: &str = "demo@example.test";
const DEMO_PASSWORD: &str = "demo";
const SERVICES: [(&str, &str); 4] = [
    ("delivery-queue", "queue"),
    ("smtp-ingress", "smtp"),
    ("pop3-access", "pop3"),
    ("imap-access", "imap"),
];

/// The mail listeners: SMTP MX, submission, submissions, POP3, POP3S, IMAP, IMAPS.
const MAIL_PORTS: usize = 7;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Folder for the private PostgreSQL cluster and the generated config.
    #[arg(long, default_value = ".pochta-dev")]
    data_dir: PathBuf,
    /// First of the services' gRPC ports (queue, ingress, POP3, IMAP in that order); 0 picks
    /// free ones for everything, the mail ports included. Otherwise SMTP listens on 2525 (MX),
    /// 2587 (submission) and 2465 (submissions), POP3 on 2110 and 2995 (implicit TLS), IMAP on
    /// 2143 and 2993 (implicit TLS).
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// Port of the private PostgreSQL; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pg_port: u16,
    /// Where the service binaries are; by default next to this pochtactl.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("pochtactl has no folder")?
            .to_owned(),
    };
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    let (database_url, mut postgres) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let (url, child) = start_private_postgres(&data_dir, args.pg_port).await?;
            (url, Some(child))
        }
    };
    let result = async {
        prepare_database(&database_url).await?;
        let mut services = Vec::new();
        let (ports, mail) = service_ports(args.base_port)?;
        let tls = dev_certificate(&data_dir)?;
        let token = dev_admin_token(&data_dir)?;
        let config_path = data_dir.join("pochta.toml");
        let config = dev_config(&database_url, &ports, &mail, &tls, &token);
        std::fs::write(&config_path, config)?;
        for ((name, _), port) in SERVICES.iter().zip(&ports) {
            let binary = bin_dir.join(name);
            if !binary.is_file() {
                bail!(
                    "{} is missing: build the workspace first (cargo build)",
                    binary.display()
                );
            }
            let mut command = Command::new(&binary);
            die_with_parent(&mut command, libc::SIGTERM);
            let child = command
                .arg("--config")
                .arg(&config_path)
                .env_remove("DATABASE_URL")
                .stdin(Stdio::null())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {name}"))?;
            services.push((*name, child, SocketAddr::from(([127, 0, 0, 1], *port))));
        }
        for (name, child, addr) in &mut services {
            wait_healthy(name, child, *addr).await?;
        }
        print_banner(&database_url, &services, &mail);
        let outcome = tokio::select! {
            _ = terminate.recv() => Ok(()),
            _ = interrupt.recv() => Ok(()),
            failed = any_exit(&mut services) => Err(failed),
        };
        eprintln!("pochta dev: stopping");
        stop_services(&mut services).await;
        outcome
    }
    .await;
    if let Some(child) = postgres.as_mut() {
        // SIGINT is PostgreSQL's "fast" shutdown: sessions end, data is flushed.
        stop_child(child, libc::SIGINT, Duration::from_secs(30)).await;
    }
    result
}

/// The services' gRPC ports (consecutive from `base`), and the mail ports (`MAIL_PORTS`);
/// with `base` 0, all free and all different.
fn service_ports(base: u16) -> anyhow::Result<(Vec<u16>, [u16; MAIL_PORTS])> {
    if base == 0 {
        let mut free = free_ports(SERVICES.len() + MAIL_PORTS)?;
        let mail = free.split_off(SERVICES.len());
        let mail: [u16; MAIL_PORTS] = mail.try_into().expect("MAIL_PORTS ports");
        return Ok((free, mail));
    }
    let grpc = (0..SERVICES.len() as u16).map(|i| base + i).collect();
    Ok((grpc, [2525, 2587, 2465, 2110, 2995, 2143, 2993]))
}

/// A self-signed certificate for localhost, made once and kept in the data folder.
fn dev_certificate(data_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.is_file() || !key.is_file() {
        std::fs::create_dir_all(&dir)?;
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certified = rcgen::generate_simple_self_signed(names)?;
        std::fs::write(&cert, certified.cert.pem())?;
        std::fs::write(&key, certified.signing_key.serialize_pem())?;
    }
    Ok((cert, key))
}

/// The admin token file, made on first use from 32 random octets (hex), readable only by us.
fn dev_admin_token(data_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("admin-token");
    if !path.is_file() {
        let mut random = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        std::io::Write::write_all(&mut file, token.as_bytes())?;
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free ports: every listener is held until all are chosen (the kernel may
/// otherwise hand a port just let go to the next bind, and two services would collide).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

fn dev_config(
    database_url: &str,
    ports: &[u16],
    mail: &[u16; MAIL_PORTS],
    (cert, key): &(PathBuf, PathBuf),
    admin_token: &Path,
) -> String {
    let mut config = format!(
        "# Generated by `pochtactl dev`; rewritten on every start.\n\
         [store]\nurl = \"{database_url}\"\nmax_connections = 8\n\n\
         [tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
        cert.display(),
        key.display()
    );
    for ((_, section), port) in SERVICES.iter().zip(ports) {
        config.push_str(&format!(
            "\n[{section}]\ngrpc_listen = \"127.0.0.1:{port}\"\nshutdown_grace_secs = 5\n"
        ));
        if *section == "queue" {
            config.push_str(&format!(
                "admin_token_file = \"{}\"\n",
                admin_token.display()
            ));
        }
        if *section == "smtp" {
            let queue = ports[0];
            config.push_str(&format!(
                "queue_endpoint = \"http://127.0.0.1:{queue}\"\nhostname = \"localhost\"\n\
                 mx_listen = [\"127.0.0.1:{}\"]\nsubmission_listen = [\"127.0.0.1:{}\"]\n\
                 submissions_listen = [\"127.0.0.1:{}\"]\nplaintext_auth = \"loopback\"\n",
                mail[0], mail[1], mail[2]
            ));
        }
        if *section == "pop3" {
            config.push_str(&format!(
                "pop3_listen = [\"127.0.0.1:{}\"]\npop3s_listen = [\"127.0.0.1:{}\"]\n\
                 plaintext_auth = \"loopback\"\n",
                mail[3], mail[4]
            ));
        }
        if *section == "imap" {
            config.push_str(&format!(
                "imap_listen = [\"127.0.0.1:{}\"]\nimaps_listen = [\"127.0.0.1:{}\"]\n\
                 plaintext_auth = \"loopback\"\n",
                mail[5], mail[6]
            ));
        }
    }
    config
}

/// Migrates and creates the demo domain and account if they are missing.
async fn prepare_database(url: &str) -> anyhow::Result<()> {
    let store = Store::connect(url, &StoreOptions::default())
        .await
        .with_context(|| format!("connecting to {}", pochta_config::redact_url_password(url)))?;
    store.migrate().await?;
    let demo = Mailbox::parse(DEMO_USER)?;
    match store.add_local_domain(DEMO_DOMAIN, &demo).await {
        Ok(_) | Err(StoreError::DomainExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let hash = pochta_auth::hash_password(DEMO_PASSWORD)?;
    match store.add_account(&demo, &hash).await {
        Ok(_) | Err(StoreError::AccountExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    store.close().await;
    Ok(())
}

/// The folder holding `initdb` and `postgres`: on PATH, else Debian's newest
/// `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    pochta_store::postgres_programs(&["initdb", "postgres"])
        .context("no PostgreSQL server binaries found (install postgresql, or set DATABASE_URL)")
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root. If pochtactl dies, the
/// program gets SIGINT (PostgreSQL's fast shutdown).
fn postgres_command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        // Changing credentials clears a parent-death signal, so setpriv sets it after.
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .args(["--pdeathsig=INT", "--"])
            .arg(program);
        command
    } else {
        let mut command = Command::new(program);
        die_with_parent(&mut command, libc::SIGINT);
        command
    }
}

/// Has the child receive `signal` when pochtactl exits in any way, even SIGKILL, so a dev stack
/// never outlives its command.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command, signal: i32) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

async fn start_private_postgres(data_dir: &Path, port: u16) -> anyhow::Result<(String, Child)> {
    let bin = postgres_bin_dir()?;
    let cluster = data_dir.join("postgres");
    let as_postgres = pochta_store::running_as_root();
    if !cluster.join("PG_VERSION").is_file() {
        eprintln!(
            "pochta dev: creating a PostgreSQL cluster in {}",
            cluster.display()
        );
        std::fs::create_dir_all(&cluster)?;
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster)
                .status()
                .await?;
            if !status.success() {
                bail!(
                    "chown of {} to postgres failed (is there a postgres user?)",
                    cluster.display()
                );
            }
        }
        let output = postgres_command(&bin.join("initdb"), as_postgres)
            .arg("-D")
            .arg(&cluster)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .output()
            .await
            .context("running initdb")?;
        if !output.status.success() {
            let _ = std::fs::remove_dir_all(&cluster);
            bail!(
                "initdb failed (the folder must be reachable by the postgres user):\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    let port = if port == 0 { free_port()? } else { port };
    let mut child = postgres_command(&bin.join("postgres"), as_postgres)
        .arg("-D")
        .arg(&cluster)
        .args(["-p", &port.to_string()])
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            data_dir.join("postgres.log"),
        )?))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting postgres")?;
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin = loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "postgres exited with {status}; see {}",
                data_dir.join("postgres.log").display()
            );
        }
        match Store::connect(&admin_url, &StoreOptions::default()).await {
            Ok(store) => break store,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e).context("PostgreSQL did not start within 30 s"),
        }
    };
    if !admin.database_exists("pochta").await? {
        admin.create_database("pochta").await?;
    }
    admin.close().await;
    Ok((
        format!("postgres://postgres@127.0.0.1:{port}/pochta"),
        child,
    ))
}

async fn wait_healthy(name: &str, child: &mut Child, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited with {status} while starting");
        }
        if crate::admin::health_status(addr).await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} was not healthy on {addr} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_banner(
    database_url: &str,
    services: &[(&str, Child, SocketAddr)],
    mail: &[u16; MAIL_PORTS],
) {
    let mut banner = String::from("pochta dev: the stack is up\n");
    let names = [
        "SMTP MX",
        "SMTP submission",
        "SMTP submissions",
        "POP3",
        "POP3S",
        "IMAP",
        "IMAPS",
    ];
    for (name, port) in names.iter().zip(mail) {
        banner.push_str(&format!("  {name:<16} 127.0.0.1:{port}\n"));
    }
    banner.push_str(&format!(
        "  {:<16} {}\n",
        "store",
        pochta_config::redact_url_password(database_url)
    ));
    for (name, _, addr) in services {
        banner.push_str(&format!("  {name:<16} gRPC {addr}\n"));
    }
    banner.push_str(&format!(
        "  {:<16} {DEMO_USER} (password: {DEMO_PASSWORD})\n",
        "demo account"
    ));
    banner.push_str("Press Ctrl-C to stop.");
    println!("{banner}");
}

/// Resolves when any service exits on its own, with an error naming it.
async fn any_exit(services: &mut [(&str, Child, SocketAddr)]) -> anyhow::Error {
    loop {
        for (name, child, _) in services.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return anyhow::anyhow!("{name} exited unexpectedly with {status}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stop_services(services: &mut [(&str, Child, SocketAddr)]) {
    for (_, child, _) in services.iter() {
        signal_child(child, libc::SIGTERM);
    }
    for (name, child, _) in services.iter_mut() {
        if !wait_exit(child, Duration::from_secs(10)).await {
            eprintln!("pochta dev: {name} did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}

async fn stop_child(child: &mut Child, signal: i32, grace: Duration) {
    signal_child(child, signal);
    if !wait_exit(child, grace).await {
        let _ = child.kill().await;
    }
}

fn signal_child(child: &Child, signal: i32) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status();
    }
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, child.wait()).await.is_ok()
}
