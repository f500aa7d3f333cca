//! Tasks that must run beside the one that spawns them: reads ahead of what a session sends.

use std::future::Future;

use tokio::task::JoinHandle;

/// Spawns `future` and yields once, so that it runs beside the caller from now on.
///
/// Tokio puts a task spawned on a worker thread in that worker's LIFO slot, which the other
/// workers do not steal from: it waits until the spawning task next yields. A session that
/// spawns a read of the next batch and then sends the current one without blocking (loopback
/// sockets take a megabyte at once) started the read only when the sending was done, and
/// waited for all of it (BENCHMARKS.md, twenty-fifth session). The yield puts the caller in
/// the worker's queue, where an idle worker takes it, while this worker starts the new task.
pub async fn spawn_beside<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = tokio::spawn(future);
    tokio::task::yield_now().await;
    handle
}
