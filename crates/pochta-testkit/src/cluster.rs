//! PostgreSQL clusters of a test's own, made with the machine's server binaries, for what the
//! shared test server must not suffer: being stopped and restarted, killed, or replaced by a
//! promoted standby. Run as the `postgres` user when the tests run as root (initdb refuses
//! root). Each listens on loopback only, with trust authentication, and is stopped
//! (immediately) and deleted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::free_port;

/// How `stop` shuts the server down (`pg_ctl stop -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnects clients, checkpoints, exits.
    Fast,
    /// Exits at once, as a crash would; the next start recovers from WAL.
    Immediate,
}

pub struct Cluster {
    pub port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    /// Settings given at every start (`-c name=value`).
    settings: Vec<String>,
}

impl Cluster {
    /// A new, running cluster. `synchronous`: commits wait for a standby (start one before
    /// writing).
    pub fn start_new(synchronous: bool) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::empty()?;
        cluster.run(
            "initdb",
            &[
                "-D",
                path(&cluster.data)?,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )?;
        if synchronous {
            cluster.settings.push("synchronous_standby_names=*".into());
        }
        cluster.start()?;
        Ok(cluster)
    }

    /// A streaming standby of `primary`, running: a base backup, then recovery from the
    /// primary (`standby.signal`). Once promoted it waits for no standby of its own.
    pub fn start_standby(primary: &Cluster) -> anyhow::Result<Cluster> {
        let mut standby = Cluster::empty()?;
        let port = primary.port.to_string();
        standby.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                path(&standby.data)?,
                "-X",
                "stream",
                "-R",
            ],
        )?;
        standby.settings.push("synchronous_standby_names=".into());
        standby.start()?;
        Ok(standby)
    }

    fn empty() -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let as_postgres = pochta_store::running_as_root();
        // The postgres user must reach the folder.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&data)
                .status()?;
            if !status.success() {
                bail!("chown of {} to postgres failed", data.display());
            }
        }
        Ok(Cluster {
            port: free_port(),
            data,
            _dir: dir,
            bin: bin_dir()?,
            as_postgres,
            settings: Vec::new(),
        })
    }

    /// The cluster's data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `postgres://postgres@127.0.0.1:port/database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories=",
            self.port
        );
        for setting in &self.settings {
            options.push_str(&format!(" -c {setting}"));
        }
        let log = self.data.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                path(&self.data)?,
                "-l",
                path(&log)?,
                "-o",
                &options,
            ],
        )
    }

    /// Stops the server and waits for it to be gone.
    pub fn stop(&self, mode: StopMode) -> anyhow::Result<()> {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        self.run(
            "pg_ctl",
            &["stop", "-w", "-m", mode, "-D", path(&self.data)?],
        )
    }

    /// Promotes a standby to primary and waits until it takes writes.
    pub fn promote(&self) -> anyhow::Result<()> {
        self.run("pg_ctl", &["promote", "-w", "-D", path(&self.data)?])
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command
            .args(args)
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default();
            bail!(
                "{} {args:?} failed: {}{}\n{log}",
                program.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop(StopMode::Immediate);
    }
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("a non-UTF-8 path")
}

/// The newest PostgreSQL server binaries: on the PATH, else under /usr/lib/postgresql.
fn bin_dir() -> anyhow::Result<PathBuf> {
    pochta_store::postgres_programs(&["initdb", "pg_ctl", "pg_basebackup", "postgres"])
        .context("no PostgreSQL server binaries (Debian: postgresql)")
}
