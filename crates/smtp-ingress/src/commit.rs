//! Group commit: messages of concurrent sessions share PostgreSQL commits.
//!
//! A session whose DATA ended hands its message to a small set of writers and waits. A free
//! writer takes every message waiting at that moment (up to a count and a size) and stores
//! them in one statement, one commit; so under load each commit carries many messages and
//! the per-statement work of PostgreSQL is paid once for all of them, while a lone message
//! is written at once, without waiting for company. A second writer joins only while large
//! messages pile up (`parallel_bytes`). Each session still answers 250 only after its own
//! message is committed (invariant 1).
//!
//! The CPU work of storing (cutting content into rows, compressing them) is done by each
//! session before it hands its message over (`Store::prepare`), large content on a blocking
//! thread: the writers, one commit at a time, only send rows.

use std::sync::Arc;
use std::time::Duration;

use pochta_store::{NewEnvelope, PreparedContent, Store};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, Notify, mpsc, oneshot};

/// The handle sessions commit through; cheap to share.
pub struct GroupCommit {
    store: Store,
    jobs: mpsc::UnboundedSender<Job>,
    shared: Arc<Shared>,
    limits: Limits,
}

struct Job {
    envelope: NewEnvelope,
    content: PreparedContent,
    done: oneshot::Sender<Result<(), String>>,
}

/// Content at least this large is prepared on a blocking thread rather than on the session's
/// async worker (about 0.1 ms of compression), so other sessions are not held up.
const PREPARE_APART: usize = 48 * 1024;

struct Shared {
    queue: Mutex<mpsc::UnboundedReceiver<Job>>,
    /// Octets of content handed over and not yet taken by a writer.
    waiting_bytes: AtomicU64,
    /// Signalled when `waiting_bytes` reaches `Limits::parallel_bytes`.
    backlog: Notify,
}

/// How big one commit may grow, and when more than one commit runs at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub writers: u32,
    pub max_messages: usize,
    /// Gathering stops once the batch holds this many octets.
    pub max_bytes: u64,
    /// Writers beyond the first start only while this many octets wait: large messages gain
    /// from commits that overlap, small ones from fewer, bigger batches.
    pub parallel_bytes: u64,
}

impl GroupCommit {
    /// Starts the writers; they end when the handle is dropped.
    pub fn start(store: Store, limits: Limits) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(queue),
            waiting_bytes: AtomicU64::new(0),
            backlog: Notify::new(),
        });
        tokio::spawn(first_writer(store.clone(), shared.clone(), limits));
        for _ in 1..limits.writers.max(1) {
            tokio::spawn(backlog_writer(store.clone(), shared.clone(), limits));
        }
        GroupCommit {
            store,
            jobs,
            shared,
            limits,
        }
    }

    /// Stores one accepted transaction. Ok means committed; an error (why, for the log) means
    /// it was not stored: the session answers 451 and the client tries again.
    pub async fn commit(&self, envelope: NewEnvelope, content: Vec<u8>) -> Result<(), String> {
        let content = if content.len() >= PREPARE_APART {
            let (store, envelope) = (self.store.clone(), envelope.clone());
            tokio::task::spawn_blocking(move || store.prepare(&envelope, content))
                .await
                .map_err(|e| format!("preparing the content failed: {e}"))?
        } else {
            self.store.prepare(&envelope, content)
        };
        let (done, result) = oneshot::channel();
        let len = content.text().len() as u64;
        let job = Job {
            envelope,
            content,
            done,
        };
        let waiting = self.shared.waiting_bytes.fetch_add(len, Ordering::AcqRel) + len;
        if self.jobs.send(job).is_err() {
            self.shared.waiting_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err("the store writers stopped".into());
        }
        if waiting >= self.limits.parallel_bytes {
            self.shared.backlog.notify_one();
        }
        result
            .await
            .unwrap_or_else(|_| Err("a store writer stopped".into()))
    }
}

/// Always there: waits for the next message, takes what else waits, writes.
async fn first_writer(store: Store, shared: Arc<Shared>, limits: Limits) {
    loop {
        let batch = {
            let mut queue = shared.queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            gather(&mut queue, first, &shared, limits)
        };
        write(&store, batch).await;
    }
}

/// Writes alongside the first writer, only while a backlog of large messages waits.
async fn backlog_writer(store: Store, shared: Arc<Shared>, limits: Limits) {
    loop {
        shared.backlog.notified().await;
        while shared.waiting_bytes.load(Ordering::Acquire) >= limits.parallel_bytes {
            let batch = {
                let mut queue = shared.queue.lock().await;
                match queue.try_recv() {
                    Ok(first) => gather(&mut queue, first, &shared, limits),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            };
            write(&store, batch).await;
        }
    }
}

/// `first` and whatever else waits now, up to the limits.
fn gather(
    queue: &mut mpsc::UnboundedReceiver<Job>,
    first: Job,
    shared: &Shared,
    limits: Limits,
) -> Vec<Job> {
    let mut bytes = first.content.text().len() as u64;
    let mut batch = vec![first];
    while batch.len() < limits.max_messages && bytes < limits.max_bytes {
        match queue.try_recv() {
            Ok(job) => {
                bytes += job.content.text().len() as u64;
                batch.push(job);
            }
            Err(_) => break,
        }
    }
    shared.waiting_bytes.fetch_sub(bytes, Ordering::AcqRel);
    batch
}

/// How long the ingress keeps asking the store whether a failed commit was stored after all
/// (the store may be coming back from a restart or a failover meanwhile).
const OUTCOME_WAIT: Duration = Duration::from_secs(15);

/// Commits the batch and tells each session. If the batch fails as a whole (it is one
/// statement), the store is asked which of its messages are there anyway: a connection lost
/// after PostgreSQL committed but before it answered leaves the outcome unknown, and a 451
/// then would make the client send the message again. Those found are acknowledged; each of
/// the others is tried alone, so one bad message or a transient error cannot fail the rest.
async fn write(store: &Store, batch: Vec<Job>) {
    let items: Vec<(&NewEnvelope, &PreparedContent)> = batch
        .iter()
        .map(|job| (&job.envelope, &job.content))
        .collect();
    let Err(e) = store.enqueue_prepared(&items).await else {
        for job in batch {
            let _ = job.done.send(Ok(()));
        }
        return;
    };
    tracing::warn!(messages = batch.len(), "a group commit failed: {e}");
    let Some(stored) = stored_anyway(store, &batch).await else {
        for job in batch {
            let _ = job
                .done
                .send(Err(format!("{e} (whether it was stored is unknown)")));
        }
        return;
    };
    let alone = batch.len() == 1;
    for (job, stored) in batch.into_iter().zip(stored) {
        let result = if stored {
            tracing::info!(queue_id = %job.envelope.queue_id, "stored although the commit failed");
            Ok(())
        } else if alone {
            Err(e.to_string())
        } else {
            commit_alone(store, &job).await
        };
        let _ = job.done.send(result);
    }
}

/// One message after its batch failed, with the same question if it fails too.
async fn commit_alone(store: &Store, job: &Job) -> Result<(), String> {
    let Err(e) = store
        .enqueue_prepared(&[(&job.envelope, &job.content)])
        .await
    else {
        return Ok(());
    };
    match stored_anyway(store, std::slice::from_ref(job)).await {
        Some(stored) if stored[0] => Ok(()),
        Some(_) => Err(e.to_string()),
        None => Err(format!("{e} (whether it was stored is unknown)")),
    }
}

/// Whether each job's envelope is in the store; None if the store does not answer within
/// `OUTCOME_WAIT` (then the sessions answer 451 and a client's retry may duplicate a message
/// that was in fact stored: said in the log).
async fn stored_anyway(store: &Store, jobs: &[Job]) -> Option<Vec<bool>> {
    let ids: Vec<&str> = jobs.iter().map(|j| j.envelope.queue_id.as_str()).collect();
    let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
    loop {
        match store.stored_queue_ids(&ids).await {
            Ok(found) => return Some(ids.iter().map(|id| found.iter().any(|f| f == id)).collect()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("asking whether a failed commit was stored: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                tracing::error!(queue_ids = ?ids, "a failed commit's outcome is unknown: {e}");
                return None;
            }
        }
    }
}
