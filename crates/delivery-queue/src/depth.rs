//! The queue depth gauge: recipients due, deferred and held, read from the store every
//! interval. Every replica reports the same shared numbers (dashboards take the maximum).

use std::time::Duration;

use opentelemetry::KeyValue;
use pochta_service::Shutdown;
use pochta_store::Store;

pub async fn run(store: Store, interval: Duration, shutdown: Shutdown) {
    let gauge = opentelemetry::global::meter("delivery-queue")
        .i64_gauge("pochta.queue.depth")
        .with_description("Recipients waiting in the queue, by state (due, deferred, held)")
        .build();
    loop {
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
