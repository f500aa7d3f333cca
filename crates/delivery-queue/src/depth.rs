//! The queue depth gauge (recipients due, deferred and held) and the maildrop usage gauges
//! (octets in maildrops, accounts at their quota), read from the store every interval. Every
//! replica reports the same shared numbers (dashboards take the maximum).

use std::time::Duration;

use opentelemetry::KeyValue;
use pochta_service::Shutdown;
use pochta_store::Store;

pub async fn run(store: Store, interval: Duration, shutdown: Shutdown) {
    let gauge = opentelemetry::global::meter("delivery-queue")
        .i64_gauge("pochta.queue.depth")
        .with_description("Recipients waiting in the queue, by state (due, deferred, held)")
        .build();
    let meter = opentelemetry::global::meter("delivery-queue");
    let maildrop_bytes = meter
        .i64_gauge("pochta.maildrop.bytes")
        .with_unit("By")
        .with_description("Octets in all maildrops, as POP3 STAT counts them")
        .build();
    let full = meter
        .i64_gauge("pochta.maildrop.full")
        .with_description("Accounts whose maildrop holds its quota or more")
        .build();
    loop {
        match store.maildrop_usage().await {
            Ok((bytes, accounts)) => {
                maildrop_bytes.record(bytes, &[]);
                full.record(accounts, &[]);
            }
            Err(e) => tracing::warn!("reading the maildrop usage failed: {e}"),
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
