//! Group commit: messages of concurrent sessions share PostgreSQL commits.
//!
//! A session whose DATA ended hands its message to a small set of writers and waits. A free
//! writer takes every message waiting at that moment (up to a count and a size) and stores
//! them in one statement, one commit; so under load each commit carries many messages and
//! the per-statement work of PostgreSQL is paid once for all of them, while a lone message
//! is written at once, without waiting for company. Each session still answers 250 only
//! after its own message is committed (invariant 1).

use std::sync::Arc;

use pochta_store::{NewEnvelope, Store};
use tokio::sync::{Mutex, mpsc, oneshot};

/// The handle sessions commit through; cheap to share.
pub struct GroupCommit {
    jobs: mpsc::UnboundedSender<Job>,
}

struct Job {
    envelope: NewEnvelope,
    content: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// How big one commit may grow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub writers: u32,
    pub max_messages: usize,
    /// Gathering stops once the batch holds this many octets.
    pub max_bytes: u64,
}

impl GroupCommit {
    /// Starts the writers; they end when the handle is dropped.
    pub fn start(store: Store, limits: Limits) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..limits.writers.max(1) {
            tokio::spawn(writer(store.clone(), queue.clone(), limits));
        }
        GroupCommit { jobs }
    }

    /// Stores one accepted transaction. Ok means committed; an error (why, for the log) means
    /// it was not stored: the session answers 451 and the client tries again.
    pub async fn commit(&self, envelope: NewEnvelope, content: Vec<u8>) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        let job = Job {
            envelope,
            content,
            done,
        };
        if self.jobs.send(job).is_err() {
            return Err("the store writers stopped".into());
        }
        result
            .await
            .unwrap_or_else(|_| Err("a store writer stopped".into()))
    }
}

async fn writer(store: Store, queue: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>, limits: Limits) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut bytes = first.content.len() as u64;
            let mut batch = vec![first];
            while batch.len() < limits.max_messages && bytes < limits.max_bytes {
                match queue.try_recv() {
                    Ok(job) => {
                        bytes += job.content.len() as u64;
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        write(&store, batch).await;
    }
}

/// Commits the batch and tells each session. If the batch fails as a whole (nothing of it was
/// stored: it is one statement), each message is tried alone, so one bad message or a
/// transient error cannot fail the others without their own try.
async fn write(store: &Store, batch: Vec<Job>) {
    let items: Vec<(&NewEnvelope, &[u8])> = batch
        .iter()
        .map(|job| (&job.envelope, job.content.as_slice()))
        .collect();
    match store.enqueue_many(&items).await {
        Ok(_) => {
            for job in batch {
                let _ = job.done.send(Ok(()));
            }
        }
        Err(e) if batch.len() == 1 => {
            let job = batch.into_iter().next().expect("one job");
            let _ = job.done.send(Err(e.to_string()));
        }
        Err(e) => {
            tracing::warn!(
                messages = batch.len(),
                "a group commit failed, storing its messages one by one: {e}"
            );
            for job in batch {
                let result = store
                    .enqueue(&job.envelope, &job.content)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let _ = job.done.send(result);
            }
        }
    }
}
