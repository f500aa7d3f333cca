//! delivery-queue: delivers accepted mail.
//!
//! Workers claim due recipients with leases (any number of replicas may run) and deliver local
//! recipients into maildrops exactly once. They wake on Notify from smtp-ingress and on ETRN,
//! and scan the store periodically, so mail committed while the queue was down is delivered.
//! Failures and expiry produce delivery status notifications; finished mail is garbage
//! collected after its retention. Remote recipients go over SMTP to a static route, the
//! smarthost or their domain's MX hosts.

mod admin;
mod depth;
mod gc;
mod grpc;
mod https;
mod local;
mod mta_sts;
mod mx;
mod remote;
mod report;
mod route;
mod tls_report;
mod unreachable;
mod watchdog;
mod worker;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use pochta_config::QueueConfig;
use pochta_mail::TlsPolicy;
use pochta_proto::queue::v1::queue_admin_server::QueueAdminServer;
use pochta_proto::queue::v1::queue_server::QueueServer;
use pochta_service::ServiceContext;

fn main() -> ExitCode {
    pochta_service::run(
        "delivery-queue",
        env!("CARGO_PKG_VERSION"),
        |ctx| async move {
            let queue = ctx.config.queue.clone();
            let token = match &queue.admin_token_file {
                Some(path) => admin::AdminToken::new(Some(pochta_config::read_admin_token(path)?)),
                None => {
                    tracing::warn!("no queue.admin_token_file: the admin API is disabled");
                    admin::AdminToken::new(None)
                }
            };
            let srs = ctx.store.srs_key().await?;
            let settings = settings(&queue, &ctx, srs)?;
            let pool = settings.dialer.pool.clone();
            let wakes = worker::Wakes::new();
            let metrics = Arc::new(worker::Metrics::new());
            let start: watchdog::Start = {
                let (store, settings, wakes) = (ctx.store.clone(), settings.clone(), wakes.clone());
                let shutdown = ctx.shutdown.clone();
                Box::new(move |class, index| {
                    let worker = worker::Worker::new(
                        store.clone(),
                        class,
                        settings.clone(),
                        metrics.clone(),
                        wakes.clone(),
                        index,
                    );
                    let state = worker.state.clone();
                    (state, tokio::spawn(worker.run(shutdown.clone())))
                })
            };
            // A batch past its deadline, and a margin for the store calls around it.
            let stuck_after = worker::Worker::batch_deadline(&settings) + Duration::from_secs(30);
            let loops =
                watchdog::Watchdog::start(queue.workers, queue.remote_workers, stuck_after, start);
            let loops = tokio::spawn(loops.run(ctx.health.clone(), ctx.shutdown.clone()));
            tracing::info!(local = queue.workers, remote = queue.remote_workers, owner = %settings.owner, "delivery loops started");
            let gc = tokio::spawn(gc::run(
                ctx.store.clone(),
                Duration::from_secs(queue.gc_interval_secs),
                Duration::from_secs(queue.retention_secs),
                i64::from(queue.gc_window_messages),
                ctx.shutdown.clone(),
            ));
            let depth = tokio::spawn(depth::run(
                ctx.store.clone(),
                Duration::from_secs(queue.depth_interval_secs.max(1)),
                ctx.shutdown.clone(),
            ));
            let tls_reports = queue.tls_reports.then(|| {
                tokio::spawn(
                    tls_report::Reporter {
                        store: ctx.store.clone(),
                        resolver: settings.router.resolver.clone(),
                        https: settings.https.clone(),
                        period: Duration::from_secs(queue.tls_report_period_secs),
                        hostname: settings.hostname.clone(),
                        organization: queue
                            .tls_report_organization
                            .clone()
                            .unwrap_or_else(|| settings.hostname.clone()),
                        lifetime: settings.lifetime,
                        dkim: settings.dkim.clone(),
                    }
                    .run(ctx.shutdown.clone()),
                )
            });
            let grace = Duration::from_secs(queue.shutdown_grace_secs);
            let service = grpc::QueueService::new(ctx.store.clone(), wakes.clone());
            let admin = QueueAdminServer::with_interceptor(
                admin::AdminService::new(ctx.store.clone(), wakes),
                token,
            );
            let routes = tonic::service::Routes::new(QueueServer::new(service)).add_service(admin);
            let served = ctx.serve_grpc(queue.grpc_listen, routes, grace).await;
            let finished = async {
                let _ = gc.await;
                let _ = depth.await;
                if let Some(reports) = tls_reports {
                    let _ = reports.await;
                }
                for w in loops.await.unwrap_or_default() {
                    let _ = w.await;
                }
            };
            if tokio::time::timeout(grace, finished).await.is_err() {
                tracing::warn!(
                    "delivery workers still busy after {grace:?}; their leases will expire"
                );
            }
            pool.close_all().await;
            served
        },
    )
}

/// The delivery loops' settings from the `[queue]` section.
fn settings(
    queue: &QueueConfig,
    ctx: &ServiceContext,
    srs: pochta_mail::SrsKey,
) -> anyhow::Result<Arc<worker::Settings>> {
    let trust_anchors = queue
        .dane
        .then(|| mx::trust_anchors(queue.dnssec_trust_anchor.as_deref()))
        .transpose()?;
    let resolver = mx::resolver(&queue.dns_servers, trust_anchors)?;
    // The roots are loaded when something verifies: MTA-STS, or a `verify` policy.
    let verifying = (queue.mta_sts
        || queue.outbound_tls == TlsPolicy::Verify
        || queue
            .outbound_tls_domains
            .values()
            .any(|p| *p == TlsPolicy::Verify))
    .then(|| remote::verifying_connector(&queue.tls_ca_file))
    .transpose()?;
    let https = verifying.as_ref().map(|connector| https::Https {
        resolver: resolver.clone(),
        connector: connector.clone(),
    });
    let mta_sts = match (&https, queue.mta_sts) {
        (Some(https), true) => Some(mta_sts::MtaSts::new(
            resolver.clone(),
            https.clone(),
            queue.mta_sts_port,
            Duration::from_secs(queue.mta_sts_timeout_secs),
            ctx.store.clone(),
        )),
        _ => None,
    };
    let mail_auth = &ctx.config.mail_auth;
    let dkim = mail_auth.sign.then(|| {
        Arc::new(pochta_dkim::DkimSigning::new(
            ctx.store.clone(),
            Duration::from_secs(mail_auth.key_cache_secs),
        ))
    });
    Ok(Arc::new(worker::Settings {
        dkim,
        https,
        mta_sts,
        tls_report_period: queue.tls_reports.then_some(queue.tls_report_period_secs),
        router: route::Router {
            routes: queue.routes.clone(),
            smarthost: queue.smarthost.clone(),
            tls: queue.outbound_tls,
            tls_by_domain: queue
                .outbound_tls_domains
                .iter()
                .map(|(domain, policy)| (domain.to_ascii_lowercase(), *policy))
                .collect(),
            resolver,
            mx_port: queue.mx_port,
            denied: queue.denied_networks.clone(),
            dane: queue.dane,
        },
        dialer: remote::Dialer::new(
            remote::tls_connector()?,
            verifying,
            remote::DialTimeouts {
                connect: Duration::from_secs(queue.connect_timeout_secs),
                reply: Duration::from_secs(queue.reply_timeout_secs),
                write: Duration::from_secs(queue.write_timeout_secs),
                transaction: Duration::from_secs(queue.transaction_timeout_secs),
                slot_wait: Duration::from_secs(queue.slot_wait_secs),
                unreachable_hold: Duration::from_secs(queue.unreachable_hold_secs)
                    .min(Duration::from_secs(queue.retry_delay_secs) / 2),
            },
            Arc::new(remote::Pool::new(
                Duration::from_secs(queue.connection_reuse_secs),
                queue.connection_reuse_max_messages,
            )),
            queue.max_connections_per_destination as usize,
        ),
        hostname: queue.hostname.clone().unwrap_or(ctx.hostname.clone()),
        lifetime: Duration::from_secs(queue.message_lifetime_secs),
        dsn_max_full_bytes: queue.dsn_max_full_bytes as usize,
        delay_report_after: Duration::from_secs(queue.delay_report_after_secs),
        owner: ctx.instance.clone(),
        batch: queue.batch_size,
        claim_delay: Duration::from_millis(queue.claim_delay_ms),
        lease: Duration::from_secs(queue.lease_secs),
        scan_interval: Duration::from_secs(queue.scan_interval_secs),
        retry: worker::Backoff {
            first: Duration::from_secs(queue.retry_delay_secs),
            max: Duration::from_secs(queue.retry_max_delay_secs),
        },
        addresses: pochta_mail::AddressRules {
            srs: Some(srs),
            ..ctx.config.addresses.rules()
        },
    }))
}
