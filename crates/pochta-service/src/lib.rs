//! What every Pochta service binary does around its own work: read arguments and configuration,
//! start telemetry, connect to the store and check its schema, serve gRPC health, turn
//! SIGTERM/SIGINT into a graceful shutdown, and make the allocator give large blocks back.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     pochta_service::run("pop3-access", env!("CARGO_PKG_VERSION"), |ctx| async move {
//!         let addr = ctx.config.pop3.grpc_listen;
//!         let grace = std::time::Duration::from_secs(ctx.config.pop3.shutdown_grace_secs);
//!         ctx.serve_grpc(addr, tonic::service::Routes::default(), grace).await
//!     })
//! }
//! ```

pub mod cache;
pub mod conn;
pub mod drive;
pub mod limits;
pub mod listen;
pub mod login;
pub mod memory;
pub mod proxy;
pub mod spawn;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use pochta_config::Config;
use pochta_store::{ContentCompression, Store, StoreOptions};
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The arguments every service takes.
#[derive(Debug, Parser)]
pub struct ServiceArgs {
    /// Configuration file (TOML). Without one, built-in defaults and POCHTA_* variables apply.
    #[arg(long, short = 'c', env = "POCHTA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration, secrets redacted, and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// A shutdown signal every task can wait for.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Resolves once shutdown has begun.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    pub fn is_started(&self) -> bool {
        *self.rx.borrow()
    }
}

/// What a service's body gets to work with.
pub struct ServiceContext {
    pub service: &'static str,
    /// The machine's host name (the default for names the config leaves unset).
    pub hostname: String,
    /// `host:pid:random`, unique to this run of this process: what it owns in the store
    /// (leases, locks) is named after it, so a restarted replica never takes a dead one's
    /// claims for its own.
    pub instance: String,
    pub config: Config,
    pub store: Store,
    pub health: Health,
    pub shutdown: Shutdown,
}

impl ServiceContext {
    /// Serves `routes` plus `grpc.health.v1` on `addr` until shutdown, with every request in a
    /// span that continues the caller's trace. After shutdown begins, calls in flight get
    /// `grace` to finish; connections still open then are cut.
    pub async fn serve_grpc(
        &self,
        addr: SocketAddr,
        routes: tonic::service::Routes,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let incoming = tonic::transport::server::TcpIncoming::bind(addr)
            .with_context(|| format!("binding the gRPC listener on {addr}"))?;
        tracing::info!(local = %incoming.local_addr()?, "gRPC listening");
        let health = HealthServer::new(HealthService::from_health_reporter(
            self.health.reporter.clone(),
        ));
        let shutdown = self.shutdown.clone();
        let server = tonic::transport::Server::builder()
            .trace_fn(pochta_telemetry::grpc::server_span)
            .add_routes(routes.add_service(health))
            .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await });
        let deadline = async {
            self.shutdown.wait().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server => result.context("serving gRPC"),
            () = deadline => {
                tracing::warn!("gRPC connections still open after {grace:?}; closing them");
                Ok(())
            }
        }
    }
}

/// Runs a service binary to completion and returns its exit code: 0 after a clean shutdown,
/// 1 when it failed, 2 for a configuration error.
pub fn run<F, Fut>(service: &'static str, version: &'static str, body: F) -> ExitCode
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let returns_large_blocks = memory::return_large_blocks();
    let args = ServiceArgs::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{service}: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{service}: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let telemetry = pochta_telemetry::init(service, version, &config.telemetry)?;
        if !returns_large_blocks {
            tracing::warn!("the allocator refused its threshold; large blocks may stay resident");
        }
        let result = serve(service, config, body).await;
        if let Err(e) = &result {
            tracing::error!("{e:#}");
        }
        telemetry.shutdown();
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{service}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve<F, Fut>(service: &'static str, config: Config, body: F) -> anyhow::Result<()>
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let store = connect_store(service, &config).await?;
    store.check_schema().await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = Shutdown { rx: stop_rx };
    let health = Health::new();
    tokio::spawn(watch_store_health(
        store.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        // A second signal means "now".
        wait_for_signal().await;
        tracing::warn!("second signal: exiting at once");
        std::process::exit(130);
    });

    let hostname = system_hostname();
    let instance = format!(
        "{hostname}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let ctx = ServiceContext {
        service,
        hostname,
        instance,
        config,
        store: store.clone(),
        health: health.clone(),
        shutdown,
    };
    let result = body(ctx).await;
    health.stopping().await;
    store.close().await;
    tracing::info!("stopped");
    result
}

/// How this service compresses the content it stores, as `[store]` says.
pub fn content_compression(store: &pochta_config::StoreConfig) -> Option<ContentCompression> {
    match store.compression {
        pochta_config::ContentCodec::None => None,
        pochta_config::ContentCodec::Zstd => Some(ContentCompression {
            min_size: usize::try_from(store.compression_min_bytes).unwrap_or(usize::MAX),
            level: store.compression_level,
            base64_lines: store.compression_base64_lines,
        }),
    }
}

/// Connects, retrying an unreachable database for `store.connect_retry_secs` (it may still be
/// starting, as in `docker compose up`).
async fn connect_store(service: &str, config: &Config) -> anyhow::Result<Store> {
    let options = StoreOptions {
        max_connections: config.store.max_connections,
        acquire_timeout: Duration::from_secs(config.store.acquire_timeout_secs),
        application_name: service.to_owned(),
        compression: content_compression(&config.store),
    };
    let deadline = Instant::now() + Duration::from_secs(config.store.connect_retry_secs);
    let mut delay = Duration::from_millis(200);
    loop {
        match Store::connect(&config.store.url, &options).await {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "store not reachable yet; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                let url = pochta_config::redact_url_password(&config.store.url);
                return Err(e).with_context(|| format!("connecting to the store at {url}"));
            }
        }
    }
}

/// The service's health as `grpc.health.v1` reports it: SERVING while every condition a part
/// of the service watches holds (the store answers, the delivery loops are alive...).
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// The conditions that do not hold now.
    failing: Arc<std::sync::Mutex<std::collections::BTreeSet<&'static str>>>,
}

impl Health {
    fn new() -> Self {
        Health {
            reporter: HealthReporter::new(),
            failing: Arc::default(),
        }
    }

    /// `condition` holds (`ok`) or not; the reported status follows.
    pub async fn set(&self, condition: &'static str, ok: bool) {
        let (changed, serving) = {
            let mut failing = self.failing.lock().expect("health lock");
            let changed = if ok {
                failing.remove(condition)
            } else {
                failing.insert(condition)
            };
            (changed, failing.is_empty())
        };
        if changed {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::warn!(condition, ok, ?status, "health changed");
            self.reporter.set_service_status("", status).await;
        }
    }

    /// Whether every condition holds now.
    pub fn is_serving(&self) -> bool {
        self.failing.lock().expect("health lock").is_empty()
    }

    /// NOT_SERVING from now on: the service is stopping.
    async fn stopping(&self) {
        self.failing.lock().expect("health lock").insert("stopping");
        self.reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
}

/// Reports NOT_SERVING while the store does not answer, so orchestrators stop routing to us.
async fn watch_store_health(store: Store, health: Health, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let ok = tokio::time::timeout(Duration::from_secs(3), store.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if !shutdown.is_started() {
            health.set("store", ok).await;
        }
    }
}

/// The kernel's host name, or `localhost` if it has none.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
