//! `spawn_beside`: the task it spawns runs while the caller keeps its worker busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pochta_service::spawn::spawn_beside;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_spawned_beside_runs_while_the_caller_never_yields() {
    // The caller is a task on a worker, as a session is (the test's own body is not).
    let caller = tokio::spawn(async {
        for _ in 0..20 {
            let started = Arc::new(AtomicBool::new(false));
            let flag = started.clone();
            let task = spawn_beside(async move { flag.store(true, Ordering::SeqCst) }).await;
            // Busy without an await, as a session sending a batch into a socket that takes
            // it all: the task must start on the other worker meanwhile.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !started.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::hint::spin_loop();
            }
            assert!(
                started.load(Ordering::SeqCst),
                "the task waited for the caller"
            );
            task.await.unwrap();
        }
    });
    caller.await.unwrap();
}
