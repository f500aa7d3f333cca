//! pochtactl: administration of a Pochta installation.
//!
//! Talks to the store directly for schema, domains and accounts, and to the services over gRPC
//! for health. `pochtactl dev` runs a whole local stack without Docker.

mod admin;
mod dev;
mod dkim;
mod queue;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "pochtactl", version, about = "Administer a Pochta mail system")]
struct Cli {
    /// Configuration file (TOML); the store URL comes from it, DATABASE_URL or POCHTA_STORE__URL.
    #[arg(
        long,
        short = 'c',
        env = "POCHTA_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the store's schema migrations (safe to run again, and from several hosts).
    Migrate {
        /// Then give the services' database roles (PREFIX_ingress, PREFIX_queue, PREFIX_pop3,
        /// PREFIX_imap, which must exist) exactly the privileges each needs, and nothing more.
        #[arg(long)]
        grant_roles: bool,
        #[arg(long, value_name = "PREFIX", default_value = "pochta")]
        role_prefix: String,
    },
    /// Keep the header fields IMAP SEARCH reads for mail stored before schema version 14
    /// (such mail is searched in its octets until then). Safe while the services run; can be
    /// stopped and run again.
    SearchFields {
        /// Messages read and updated per statement.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        batch: i64,
    },
    /// Domains Pochta receives mail for.
    #[command(subcommand)]
    Domain(admin::DomainCommand),
    /// Mail accounts of local domains.
    #[command(subcommand)]
    Account(admin::AccountCommand),
    /// DKIM signing keys of local domains: generate, rotate, list, remove.
    #[command(subcommand)]
    Dkim(dkim::DkimCommand),
    /// Aliases: addresses that stand for other addresses, here or elsewhere.
    #[command(subcommand)]
    Alias(admin::AliasCommand),
    /// The delivery queue: list, show, retry, hold, release, delete (over gRPC).
    Queue(queue::QueueArgs),
    /// Ask a service's gRPC health endpoint; exit 0 only when it is SERVING.
    Health {
        /// host:port of the service's gRPC endpoint.
        address: String,
    },
    /// Run the whole system locally without Docker: PostgreSQL (DATABASE_URL, or a private
    /// cluster), migrations, a demo domain and account, and all services. Ctrl-C stops it all.
    Dev(dev::DevArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pochtactl: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (config, json) = (cli.config.as_deref(), cli.json);
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Health { address } => admin::health(&address, json).await,
            Command::Queue(args) => queue::run(args, config, json).await,
            Command::Migrate {
                grant_roles,
                role_prefix,
            } => {
                let roles =
                    grant_roles.then(|| pochta_store::ServiceRoles::with_prefix(&role_prefix));
                admin::Admin::connect(config, json)
                    .await?
                    .migrate(roles)
                    .await
            }
            Command::SearchFields { batch } => {
                admin::Admin::connect(config, json)
                    .await?
                    .backfill_search_fields(batch)
                    .await
            }
            Command::Domain(command) => {
                admin::Admin::connect(config, json)
                    .await?
                    .domain(command)
                    .await
            }
            Command::Account(command) => {
                admin::Admin::connect(config, json)
                    .await?
                    .account(command)
                    .await
            }
            Command::Dkim(command) => {
                admin::Admin::connect(config, json)
                    .await?
                    .dkim(command)
                    .await
            }
            Command::Alias(command) => {
                admin::Admin::connect(config, json)
                    .await?
                    .alias(command)
                    .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pochtactl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
