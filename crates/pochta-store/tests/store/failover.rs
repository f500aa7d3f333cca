//! A primary with a synchronous standby, both clusters of the test's own: the store named with
//! both hosts follows the primary to the promoted standby, and every acknowledged commit is
//! there.

use std::time::{Duration, Instant};

use pochta_store::{Store, StoreOptions};
use pochta_testkit::cluster::{Cluster, StopMode};

use crate::{CONTENT, enqueue_n};

#[tokio::test]
async fn the_store_follows_a_promoted_standby_and_keeps_every_commit() {
    let primary = Cluster::start_new(true).unwrap();
    let standby = Cluster::start_standby(&primary).unwrap();
    let admin = Store::connect(&primary.url("postgres"), &StoreOptions::default())
        .await
        .unwrap();
    admin.create_database("pochta").await.unwrap();
    admin.close().await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/pochta?target_session_attrs=read-write",
        standby.port, primary.port
    );
    // The standby is named first: the store must still pick the primary.
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    for _ in 0..20 {
        enqueue_n(&store, 1).await;
    }

    primary.stop(StopMode::Immediate).unwrap();
    standby.promote().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    let mut after = 0;
    while after < 20 {
        let envelope = crate::envelope(vec![crate::recipient("x@example.org")]);
        match store.enqueue(&envelope, CONTENT).await {
            Ok(_) => after += 1,
            Err(_) => {
                failures += 1;
                assert!(
                    Instant::now() < deadline,
                    "the store never reached the new primary"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        store.counts().await.unwrap().envelopes,
        40,
        "nothing acknowledged was lost"
    );
    assert!(failures < 200, "{failures}");
}
