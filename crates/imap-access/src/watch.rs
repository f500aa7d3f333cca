//! One LISTEN connection per process (`Store::listen_for_mailbox_changes`) and what it heard:
//! a generation per mailbox some session here has selected, and an epoch that moves when the
//! connection was lost (every session then looks again). Sessions compare what they last saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pochta_service::Shutdown;
use pochta_store::{MailboxChange, Store};

#[derive(Default)]
pub struct MailboxWatch {
    /// Watched mailbox id: (sessions watching it, changes heard).
    watched: Mutex<HashMap<i64, (usize, u64)>>,
    epoch: AtomicU64,
}

/// Where a session's mailbox stood when it last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    generation: u64,
    epoch: u64,
}

impl MailboxWatch {
    /// Listens in the background until shutdown, connecting again after a failure.
    pub fn start(store: Store, shutdown: Shutdown) -> Arc<Self> {
        let watch = Arc::new(MailboxWatch::default());
        let hearing = watch.clone();
        tokio::spawn(async move {
            let listen = async {
                loop {
                    match store.listen_for_mailbox_changes().await {
                        Ok(mut changes) => loop {
                            match changes.next().await {
                                Ok(MailboxChange::Changed(id)) => hearing.changed(id),
                                Ok(MailboxChange::Missed) => hearing.missed(),
                                Err(e) => {
                                    tracing::warn!("mailbox notifications failed: {e}");
                                    hearing.missed();
                                    break;
                                }
                            }
                        },
                        Err(e) => tracing::warn!("listening for mailbox changes failed: {e}"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            };
            tokio::select! {
                _ = listen => {}
                _ = shutdown.wait() => {}
            }
        });
        watch
    }

    fn changed(&self, mailbox_id: i64) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, generation)) = watched.get_mut(&mailbox_id) {
            *generation += 1;
        }
    }

    fn missed(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// A session starts watching a mailbox.
    pub fn watch(&self, mailbox_id: i64) -> Seen {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let entry = watched.entry(mailbox_id).or_insert((0, 0));
        entry.0 += 1;
        Seen {
            generation: entry.1,
            epoch: self.epoch.load(Ordering::Relaxed),
        }
    }

    /// A session stops watching a mailbox.
    pub fn unwatch(&self, mailbox_id: i64) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = watched.get_mut(&mailbox_id) {
            entry.0 -= 1;
            if entry.0 == 0 {
                watched.remove(&mailbox_id);
            }
        }
    }

    /// Where the mailbox stands now.
    pub fn now(&self, mailbox_id: i64) -> Seen {
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        Seen {
            generation: watched.get(&mailbox_id).map_or(0, |e| e.1),
            epoch: self.epoch.load(Ordering::Relaxed),
        }
    }
}
