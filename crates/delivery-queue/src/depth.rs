//! The queue depth gauge (recipients due, deferred and held) and the quota gauges (octets in
//! maildrops with a quota, and how many are full), read from the store every interval. Every
//! replica reports the same shared numbers (dashboards take the maximum).

use std::time::Duration;

use opentelemetry::KeyValue;
use pochta_service::Shutdown;
use pochta_store::Store;

pub async fn run(store: Store, interval: Duration, shutdown: Shutdown) {
    let meter = opentelemetry::global::meter("delivery-queue");
    let gauge = meter
        .i64_gauge("pochta.queue.depth")
        .with_description("Recipients waiting in the queue, by state (due, deferred, held)")
        .build();
    let quota_bytes = meter
        .i64_gauge("pochta.maildrop.quota.bytes")
        .with_unit("By")
        .with_description(
            "Octets in the maildrops of accounts with a quota, as POP3 STAT counts them",
        )
        .build();
    let quota_full = meter
        .i64_gauge("pochta.maildrop.quota.full")
        .with_description("Accounts whose maildrop holds its quota or more")
        .build();
    loop {
        match store.quota_usage().await {
            Ok((bytes, full)) => {
                quota_bytes.record(bytes, &[]);
                quota_full.record(full, &[]);
            }
            Err(e) => tracing::warn!("reading the quota usage failed: {e}"),
        }
        match store.queue_depth().await {
            Ok(depth) => {
                for (state, n) in [
                    ("due", depth.due),
                    ("deferred", depth.deferred),
                    ("held", depth.held),
                ] {
                    gauge.record(n, &[KeyValue::new("state", state)]);
                }
            }
            Err(e) => tracing::warn!("reading the queue depth failed: {e}"),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
