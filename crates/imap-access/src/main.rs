//! imap-access: the IMAP server (RFC 9051, IMAP4rev1 clients welcome) over the same mailboxes
//! POP3 serves. Port 143 offers STARTTLS, port 993 is implicit TLS (RFC 8314). Any number of
//! replicas: sessions learn of changes made anywhere through the store's notifications.

mod server;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use server::{ListenerKind, Server};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    pochta_service::run("imap-access", env!("CARGO_PKG_VERSION"), |ctx| async move {
        let imap = ctx.config.imap.clone();
        let tls = pochta_service::tls::acceptor(&ctx.config.tls)?;
        if tls.is_none() && !imap.imaps_listen.is_empty() {
            bail!(
                "the IMAPS listeners need TLS: set tls.cert_path and tls.key_path, or empty imap.imaps_listen"
            );
        }
        let mut listeners = Vec::new();
        for (addrs, kind) in [
            (&imap.imap_listen, ListenerKind::Imap),
            (&imap.imaps_listen, ListenerKind::Imaps),
        ] {
            for addr in addrs {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the {} listener on {addr}", kind.name()))?;
                tracing::info!(local = %listener.local_addr()?, listener = kind.name(), "IMAP listening");
                listeners.push((listener, kind));
            }
        }
        let grace = Duration::from_secs(imap.shutdown_grace_secs);
        let watch = watch::MailboxWatch::start(ctx.store.clone(), ctx.shutdown.clone());
        let server = Server::new(&ctx.config, ctx.store.clone(), tls, watch)?;
        let imap_task = tokio::spawn(server.serve(listeners, ctx.shutdown.clone(), grace));
        let grpc = ctx
            .serve_grpc(imap.grpc_listen, tonic::service::Routes::default(), grace)
            .await;
        let _ = imap_task.await;
        grpc
    })
}
