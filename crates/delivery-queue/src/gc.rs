//! Periodic housekeeping: held mail past its lifetime is made due (the next claim expires it
//! with its report), then garbage collection: message content nothing can read any more (its
//! recipients finished and no maildrop holds it, e.g. after POP3 deleted it), finished
//! envelopes past their retention and then the message rows nothing references. Each pass
//! looks at the new messages, those whose entries went and `window` others, so that its cost
//! does not grow with the store (`Store::collect_garbage_step`). Replicas may run it at the
//! same time: every step is idempotent.

use std::time::Duration;

use pochta_service::Shutdown;
use pochta_store::{GcSweep, Store};

pub async fn run(
    store: Store,
    interval: Duration,
    retention: Duration,
    window: i64,
    shutdown: Shutdown,
) {
    let mut sweep = GcSweep::default();
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
        match store
            .collect_garbage_step(retention, &mut sweep, window)
            .await
        {
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
