//! pop3-access: the POP3 server (RFC 1939, 2449, 2595, 5034) over the maildrops. Port 110
//! offers STLS, port 995 is implicit TLS (RFC 8314). One session per maildrop across every
//! replica; deletions only at QUIT.

mod actions;
mod lock;
mod server;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use server::{ListenerKind, Server};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    pochta_service::run("pop3-access", env!("CARGO_PKG_VERSION"), |ctx| async move {
        let pop3 = ctx.config.pop3.clone();
        let tls = pochta_service::tls::acceptor(&ctx.config.tls)?;
        if tls.is_none() && !pop3.pop3s_listen.is_empty() {
            bail!(
                "the POP3S listeners need TLS: set tls.cert_path and tls.key_path, or empty pop3.pop3s_listen"
            );
        }
        let mut listeners = Vec::new();
        for (addrs, kind) in [
            (&pop3.pop3_listen, ListenerKind::Pop3),
            (&pop3.pop3s_listen, ListenerKind::Pop3s),
        ] {
            for addr in addrs {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the {} listener on {addr}", kind.name()))?;
                tracing::info!(local = %listener.local_addr()?, listener = kind.name(), "POP3 listening");
                listeners.push((listener, kind));
            }
        }
        let grace = Duration::from_secs(pop3.shutdown_grace_secs);
        let server = Server::new(&ctx.config, ctx.store.clone(), tls, ctx.instance.clone())?;
        let pop3_task = tokio::spawn(server.serve(listeners, ctx.shutdown.clone(), grace));
        let grpc = ctx
            .serve_grpc(pop3.grpc_listen, tonic::service::Routes::default(), grace)
            .await;
        let _ = pop3_task.await;
        grpc
    })
}
