//! The service binaries as child processes: started with a configuration, their output kept
//! and shown when a test fails, health asked over gRPC, killed or signalled at will.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{TestDb, free_addr};

/// A built binary of this workspace, next to the running test's own directory
/// (`target/<profile>/`). Only `cargo test --workspace` guarantees that other packages' binaries
/// are built; for one's own package prefer `env!("CARGO_BIN_EXE_<name>")`.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test executable has no target directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run the tests with `cargo test --workspace`",
            path.display()
        );
    }
    Ok(path)
}

/// A service binary running as a child process, with its output captured in a file. Killed on
/// drop; if the test is panicking then, its log is printed so the failure can be understood.
pub struct ServiceProcess {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServiceProcess {
    /// Starts `binary --config <file with config_toml>` with extra environment variables.
    pub fn start(binary: &Path, config_toml: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_with_args(binary, config_toml, env, &[])
    }

    pub fn start_with_args(
        binary: &Path,
        config_toml: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("pochta.toml");
        std::fs::write(&config_path, config_toml)?;
        let log_path = dir.path().join("output.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env_remove("DATABASE_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "info");
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(ServiceProcess {
            name: binary
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            child: Some(child),
            log_path,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The process's resident memory in KiB (VmRSS), for tests that bound it.
    pub fn resident_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the process's status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("a VmRSS line");
        let kib = line.split_whitespace().nth(1).expect("a VmRSS value");
        kib.parse().expect("VmRSS in KiB")
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {} failed", self.pid());
        }
        Ok(())
    }

    /// Waits for the process to exit, up to `timeout`, without blocking the async runtime (a
    /// blocked runtime would stall the test's own client connections).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("process already reaped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts `binary` as `start` does (no extra environment) and waits up to 20 s for its
    /// gRPC health at `grpc` to report SERVING.
    pub async fn start_healthy(
        binary: &Path,
        config_toml: &str,
        grpc: SocketAddr,
    ) -> anyhow::Result<Self> {
        let mut process = Self::start(binary, config_toml, &[])?;
        process.wait_healthy(grpc, Duration::from_secs(20)).await?;
        Ok(process)
    }

    /// Polls gRPC health at `addr` until it reports SERVING, failing early if the process exits.
    pub async fn wait_healthy(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited with {status} before it was healthy:\n{}",
                    self.name,
                    self.output()
                );
            }
            if grpc_health(addr).await.ok() == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not healthy within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "----- output of {} -----\n{}",
                self.name,
                self.output()
            );
        }
    }
}

/// Asks `grpc.health.v1.Health/Check` (whole server) at `addr`: true when SERVING.
pub async fn grpc_health(addr: SocketAddr) -> anyhow::Result<bool> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(reply.into_inner().status == ServingStatus::Serving as i32)
}

/// The admin token every queue `service_config` starts is configured with.
pub const ADMIN_TOKEN: &str = "pochta-test-admin-token-0123456789abcdef";

/// A file holding `ADMIN_TOKEN` (written once, atomically, so concurrent test processes
/// never read it half-written).
pub fn admin_token_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir();
        let path = dir.join("pochta-test-admin-token");
        let partial = dir.join(format!("pochta-test-admin-token.{}", std::process::id()));
        std::fs::write(&partial, ADMIN_TOKEN).expect("writing the admin token file");
        std::fs::rename(&partial, &path).expect("placing the admin token file");
        path
    })
}

/// A minimal configuration for one service against `db`, its gRPC endpoint on `grpc`.
/// `section` is the service's config section (`smtp`, `queue` or `pop3`); for `smtp` the MX
/// listener is on a free port and the TLS-only listeners are off; likewise for `pop3`; for
/// `queue` remote mail goes to an unused port (deferred, whatever this machine's DNS does) and
/// admin calls need `ADMIN_TOKEN`.
pub fn service_config(db_url: &str, section: &str, grpc: SocketAddr) -> String {
    let mut config = format!(
        "[store]\nurl = \"{db_url}\"\nmax_connections = 4\nconnect_retry_secs = 0\n\n\
         [{section}]\ngrpc_listen = \"{grpc}\"\n"
    );
    if section == "queue" {
        // Remote mail goes to a port nobody listens on: a fast, deterministic deferral that
        // never depends on this machine's DNS.
        config.push_str(&format!(
            "smarthost = \"{}\"\nadmin_token_file = \"{}\"\n",
            free_addr(),
            admin_token_file().display()
        ));
    }
    if section == "pop3" {
        config.push_str(&format!(
            "pop3_listen = [\"{}\"]\npop3s_listen = []\n",
            free_addr()
        ));
    }
    if section == "smtp" {
        config.push_str(&format!(
            "mx_listen = [\"{}\"]\nsubmission_listen = []\nsubmissions_listen = []\n",
            free_addr()
        ));
    }
    config
}

/// The frame every service shares, checked on one binary: it starts against a fresh database,
/// reports SERVING over gRPC health, and exits 0 promptly on `signal`.
pub async fn check_service_lifecycle(
    binary: &Path,
    section: &str,
    signal: i32,
) -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let grpc = free_addr();
    let mut service = ServiceProcess::start(binary, &service_config(db.url(), section, grpc), &[])?;
    service.wait_healthy(grpc, Duration::from_secs(20)).await?;
    service.signal(signal)?;
    let status = service.wait_exit(Duration::from_secs(15)).await?;
    if !status.success() {
        bail!(
            "exit status {status} after signal {signal}:\n{}",
            service.output()
        );
    }
    if grpc_health(grpc).await.is_ok() {
        bail!("still answering health after exit");
    }
    Ok(())
}
