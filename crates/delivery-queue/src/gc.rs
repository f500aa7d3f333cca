//! Periodic garbage collection: finished envelopes past their retention, and message content
//! that neither an envelope nor a maildrop entry holds any more (e.g. after POP3 deleted it).
//! Replicas may run it at the same time: the deletes are idempotent.

use std::time::Duration;

use pochta_service::Shutdown;
use pochta_store::Store;

pub async fn run(store: Store, interval: Duration, retention: Duration, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match store.collect_garbage(retention).await {
            Ok(c) if c.envelopes + c.messages > 0 => {
                tracing::info!(
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
