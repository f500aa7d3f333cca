//! The maildrop lock kept alive for as long as its session lives, whatever the session is
//! doing: a RETR of a large message to a slow client, or a long run of pipelined commands, may
//! outlast the lock's TTL, and the lock must not lapse under it (RFC 1939 8: exclusive access
//! until the session ends).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pochta_store::Store;

/// Renews one maildrop lock every third of its TTL in a task of its own; stops when dropped.
pub struct LockKeeper {
    lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LockKeeper {
    pub fn start(store: Store, account_id: i64, owner: String, ttl: Duration) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            let period = ttl / 3;
            loop {
                tokio::time::sleep(period).await;
                match store.renew_maildrop_lock(account_id, &owner, ttl).await {
                    Ok(true) => {}
                    // Expired and taken, or released: another session may have it now.
                    Ok(false) => {
                        flag.store(true, Ordering::Release);
                        return;
                    }
                    // The store did not answer: try again (the lock holds for the rest of
                    // its TTL; if it lapses meanwhile, the next renewal says so).
                    Err(e) => tracing::warn!("renewing the maildrop lock failed: {e}"),
                }
            }
        });
        LockKeeper { lost, task }
    }

    /// True once the lock was found lost: the session must end and may delete nothing (its
    /// deletions are conditioned on the lock anyway).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

impl Drop for LockKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
