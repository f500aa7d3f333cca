//! `pochtactl queue`: the delivery queue's admin API over gRPC.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use pochta_mail::Untrusted;
use pochta_proto::queue::v1::queue_admin_client::QueueAdminClient;
use pochta_proto::queue::v1::{
    AdminRequest, DeleteRequest, EntryDetail, Filter, ListEntriesRequest, RecipientState,
    ShowEntryRequest,
};
use serde_json::json;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// delivery-queue's gRPC endpoint; by default `smtp.queue_endpoint` from the config.
    #[arg(long, value_name = "URL")]
    queue: Option<String>,
    /// The file with the admin token; by default `queue.admin_token_file` from the config.
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Queue entries matching a filter, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One entry with its recipients and every delivery attempt.
    Show { queue_id: String },
    /// Make deferred recipients due now.
    Retry(Change),
    /// Stop delivering recipients until they are released.
    Hold(Change),
    /// Queue held recipients again, due now.
    Release(Change),
    /// Remove recipients that are not final yet (no report is sent unless --report).
    Delete {
        #[command(flatten)]
        change: Change,
        /// Fail them instead, with the failure report their NOTIFY asks for to the sender.
        #[arg(long)]
        report: bool,
    },
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// Recipient states: queued, held, delivered, relayed, failed, expired (default: queued and held).
    #[arg(long = "state", value_parser = parse_state)]
    states: Vec<RecipientState>,
    /// Recipient domain.
    #[arg(long)]
    domain: Option<String>,
    /// Sender address; `<>` for the null sender.
    #[arg(long)]
    sender: Option<String>,
    /// Only entries that arrived at least this many seconds ago.
    #[arg(long, value_name = "SECONDS")]
    older_than: Option<u64>,
}

#[derive(Debug, Args)]
struct Change {
    /// One entry by its queue id; otherwise every entry the filter matches.
    queue_id: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// With no queue id and no filter: really everything.
    #[arg(long)]
    all: bool,
    /// Only count what would change.
    #[arg(long)]
    dry_run: bool,
}

fn parse_state(s: &str) -> Result<RecipientState, String> {
    RecipientState::from_str_name(&s.to_ascii_uppercase())
        .filter(|s| *s != RecipientState::Unspecified)
        .ok_or_else(|| "expected queued, held, delivered, relayed, failed or expired".into())
}

fn state_name(n: i32) -> String {
    RecipientState::try_from(n).map_or("unknown".into(), |s| s.as_str_name().to_ascii_lowercase())
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.states.is_empty()
            && self.domain.is_none()
            && self.sender.is_none()
            && self.older_than.is_none()
    }

    fn to_proto(&self, queue_id: Option<String>) -> Filter {
        Filter {
            queue_id: queue_id.unwrap_or_default(),
            states: self.states.iter().map(|s| *s as i32).collect(),
            recipient_domain: self.domain.clone().unwrap_or_default(),
            sender: self.sender.clone().unwrap_or_default(),
            older_than_seconds: self.older_than.unwrap_or(0),
        }
    }
}

/// Puts the admin token on every call.
#[derive(Clone)]
struct BearerToken(MetadataValue<Ascii>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type AdminClient = QueueAdminClient<InterceptedService<Channel, BearerToken>>;

/// The admin client: the endpoint and token file from the arguments, else from the config.
async fn connect(
    queue: Option<String>,
    token_file: Option<std::path::PathBuf>,
    config_file: Option<&std::path::Path>,
) -> anyhow::Result<AdminClient> {
    let (endpoint, token_file) = match (queue, token_file) {
        (Some(endpoint), Some(token_file)) => (endpoint, token_file),
        (endpoint, token_file) => {
            let config = pochta_config::Config::load(config_file)?;
            let token_file = match token_file {
                Some(path) => path,
                None => config
                    .queue
                    .admin_token_file
                    .context("no admin token: pass --token-file or set queue.admin_token_file")?,
            };
            (endpoint.unwrap_or(config.smtp.queue_endpoint), token_file)
        }
    };
    let token = pochta_config::read_admin_token(&token_file)?;
    let bearer = BearerToken(
        format!("Bearer {token}")
            .parse()
            .context("the admin token is not a valid header value")?,
    );
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .with_context(|| format!("{endpoint:?} is not a valid URL"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to delivery-queue at {endpoint}"))?;
    Ok(QueueAdminClient::with_interceptor(channel, bearer))
}

pub async fn run(
    args: QueueArgs,
    config_file: Option<&std::path::Path>,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut client = connect(args.queue, args.token_file, config_file).await?;
    let status = |e: tonic::Status| anyhow::anyhow!("{}", e.message());
    match args.command {
        QueueCommand::List { filter, limit } => {
            let reply = client
                .list_entries(ListEntriesRequest {
                    filter: Some(filter.to_proto(None)),
                    limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            if as_json {
                let entries: Vec<_> = reply
                    .entries
                    .iter()
                    .map(|e| {
                        json!({
                            "queue_id": e.queue_id, "sender": e.sender, "size": e.size, "arrived_at": time(&e.arrived_at),
                            "recipients": e.recipients.iter().map(|r| json!({
                                "address": r.address, "state": state_name(r.state), "attempts": r.attempts,
                                "next_attempt_at": time(&r.next_attempt_at), "last_status": r.last_status,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"entries": entries, "truncated": reply.truncated})
                );
            } else {
                println!("{:<22} {:<19} {:>9}  SENDER", "QUEUE ID", "ARRIVED", "SIZE");
                for e in &reply.entries {
                    println!(
                        "{:<22} {:<19} {:>9}  {}",
                        Untrusted(&e.queue_id).to_string(),
                        time(&e.arrived_at),
                        e.size,
                        Untrusted(&e.sender)
                    );
                    for r in &e.recipients {
                        println!(
                            "    {:<40} {:<9} tries {:<3} next {}  {}",
                            Untrusted(&r.address).to_string(),
                            state_name(r.state),
                            r.attempts,
                            time(&r.next_attempt_at),
                            Untrusted(&r.last_status)
                        );
                    }
                }
                if reply.truncated {
                    println!("(more entries match; use --limit)");
                }
            }
        }
        QueueCommand::Show { queue_id } => {
            let reply = client
                .show_entry(ShowEntryRequest { queue_id })
                .await
                .map_err(status)?
                .into_inner();
            let entry = reply.entry.context("empty reply")?;
            show(&entry, as_json);
        }
        QueueCommand::Retry(change) => {
            change_entries(&mut client, change, "retry", false, as_json).await?
        }
        QueueCommand::Hold(change) => {
            change_entries(&mut client, change, "hold", false, as_json).await?
        }
        QueueCommand::Release(change) => {
            change_entries(&mut client, change, "release", false, as_json).await?
        }
        QueueCommand::Delete { change, report } => {
            change_entries(&mut client, change, "delete", report, as_json).await?
        }
    }
    Ok(())
}

async fn change_entries(
    client: &mut AdminClient,
    change: Change,
    verb: &str,
    report: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    if change.queue_id.is_none() && change.filter.is_empty() && !change.all {
        bail!(
            "name a queue id or a filter (--state, --domain, --sender, --older-than), or say --all"
        );
    }
    let filter = Some(change.filter.to_proto(change.queue_id));
    let request = AdminRequest {
        filter: filter.clone(),
        dry_run: change.dry_run,
    };
    let reply = match verb {
        "retry" => client.retry_now(request).await,
        "hold" => client.hold(request).await,
        "release" => client.release(request).await,
        _ => {
            client
                .delete(DeleteRequest {
                    filter,
                    dry_run: change.dry_run,
                    send_report: report,
                })
                .await
        }
    }
    .map_err(|e| anyhow::anyhow!("{}", e.message()))?
    .into_inner();
    if as_json {
        println!(
            "{}",
            json!({"action": verb, "dry_run": change.dry_run, "recipients": reply.recipients, "messages": reply.messages})
        );
    } else {
        let would = if change.dry_run { "would " } else { "" };
        println!(
            "{verb}: {would}change {} recipient(s) of {} message(s)",
            reply.recipients, reply.messages
        );
    }
    Ok(())
}

fn show(e: &EntryDetail, as_json: bool) {
    if as_json {
        let recipients: Vec<_> = e
            .recipients
            .iter()
            .map(|r| {
                json!({
                    "address": r.address, "orcpt": r.orcpt, "notify": r.notify, "state": state_name(r.state),
                    "attempts": r.attempts, "next_attempt_at": time(&r.next_attempt_at),
                    "history": r.history.iter().map(|a| json!({
                        "at": time(&a.at), "remote_mta": a.remote_mta, "reply_code": a.reply_code,
                        "status": a.status, "diagnostic": a.diagnostic, "result": state_name(a.result),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "queue_id": e.queue_id, "sender": e.sender, "size": e.size, "arrived_at": time(&e.arrived_at),
                "expires_at": time(&e.expires_at), "envid": e.envid, "ret": e.ret, "body": e.body,
                "smtputf8": e.smtputf8, "client_address": e.client_address, "client_helo": e.client_helo,
                "authenticated_user": e.authenticated_user, "traceparent": e.traceparent, "recipients": recipients,
            })
        );
        return;
    }
    // Everything below came from clients, remote servers or DNS: shown escaped.
    let u = Untrusted;
    println!("queue id     {}", u(&e.queue_id));
    println!("sender       {}", u(&e.sender));
    println!("size         {} octets", e.size);
    println!(
        "arrived      {}   expires {}",
        time(&e.arrived_at),
        time(&e.expires_at)
    );
    println!(
        "client       {} (HELO {}){}",
        u(&e.client_address),
        u(&e.client_helo),
        if e.authenticated_user.is_empty() {
            String::new()
        } else {
            format!(", user {}", u(&e.authenticated_user))
        }
    );
    println!(
        "dsn          ENVID {:?} RET {:?} BODY {:?} SMTPUTF8 {}",
        e.envid, e.ret, e.body, e.smtputf8
    );
    println!("trace        {}", u(&e.traceparent));
    for r in &e.recipients {
        println!(
            "\n  {}  {}  (attempts {}, next {})",
            u(&r.address),
            state_name(r.state),
            r.attempts,
            time(&r.next_attempt_at)
        );
        if !r.orcpt.is_empty() || !r.notify.is_empty() {
            println!("    ORCPT {:?} NOTIFY {:?}", r.orcpt, r.notify);
        }
        for a in &r.history {
            let code = if a.reply_code == 0 {
                String::new()
            } else {
                format!("{} ", a.reply_code)
            };
            println!(
                "    {}  {:<9} {}{} {}  {}",
                time(&a.at),
                state_name(a.result),
                code,
                u(&a.status),
                u(&a.diagnostic),
                u(&a.remote_mta)
            );
        }
    }
}
