//! Periodic housekeeping: held mail past its lifetime is made due (the next claim expires it
//! with its report), then garbage collection: message content nothing can read any more (its
//! recipients finished and no maildrop holds it, e.g. after POP3 deleted it) at once, finished
//! envelopes past their retention and then the message rows nothing references. Replicas may
//! run it at the same time: every step is idempotent.

use std::time::Duration;

use pochta_service::Shutdown;
use pochta_store::Store;

pub async fn run(store: Store, interval: Duration, retention: Duration, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match store.expire_held().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                recipients = n,
                "held mail past its lifetime made due to expire"
            ),
            Err(e) => tracing::warn!("expiring held mail failed (retried next interval): {e}"),
        }
        match store.collect_garbage(retention).await {
            Ok(c) if c.contents + c.envelopes + c.messages > 0 => {
                tracing::info!(
                    contents = c.contents,
                    envelopes = c.envelopes,
                    messages = c.messages,
                    "garbage collected"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("garbage collection failed (retried next interval): {e}"),
        }
    }
}
