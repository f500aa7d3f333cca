//! smtp-ingress: the ESMTP server (RFC 5321). MX listeners accept mail for our domains from
//! anyone; submission (587, STARTTLS) and submissions (465, implicit TLS) accept mail from
//! authenticated users. Each message is committed to the store before the 250 reply.

mod actions;
mod commit;
mod mail_auth;
mod sending_limits;
mod server;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use server::{Ingress, ListenerKind};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    pochta_service::run(
        "smtp-ingress",
        env!("CARGO_PKG_VERSION"),
        |ctx| async move {
            let smtp = ctx.config.smtp.clone();
            let tls = pochta_service::tls::acceptor(&ctx.config.tls)?;
            if tls.is_none()
                && !(smtp.submission_listen.is_empty() && smtp.submissions_listen.is_empty())
            {
                bail!(
                    "the submission listeners need TLS: set tls.cert_path and tls.key_path, or empty \
                 smtp.submission_listen and smtp.submissions_listen"
                );
            }
            let hostname = smtp.hostname.clone().unwrap_or(ctx.hostname.clone());
            let srs = ctx.store.srs_key().await?;
            let actions = actions::Actions::new(&ctx.config, ctx.store.clone(), hostname, srs)?;
            let mut listeners = Vec::new();
            for (addrs, kind) in [
                (&smtp.mx_listen, ListenerKind::Mx),
                (&smtp.submission_listen, ListenerKind::Submission),
                (&smtp.submissions_listen, ListenerKind::Submissions),
            ] {
                for addr in addrs {
                    let listener = TcpListener::bind(addr).await.with_context(|| {
                        format!("binding the {} listener on {addr}", kind.name())
                    })?;
                    tracing::info!(local = %listener.local_addr()?, listener = kind.name(), "SMTP listening");
                    listeners.push((listener, kind));
                }
            }
            let grace = Duration::from_secs(smtp.shutdown_grace_secs);
            let ingress = Ingress::new(&ctx.config, actions, tls);
            let smtp_task = tokio::spawn(ingress.serve(listeners, ctx.shutdown.clone(), grace));
            let grpc = ctx
                .serve_grpc(smtp.grpc_listen, tonic::service::Routes::default(), grace)
                .await;
            let _ = smtp_task.await;
            grpc
        },
    )
}
