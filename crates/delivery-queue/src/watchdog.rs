//! The delivery loops' watchdog: health says SERVING only while every loop is alive and none
//! has been on one batch for longer than a batch may take. A loop that ended (a panic) is
//! started again; a stuck one cannot be, and stays reported until it moves.

use std::sync::Arc;
use std::time::Duration;

use pochta_service::{Health, Shutdown};
use pochta_store::Claim;
use tokio::task::JoinHandle;

use crate::worker::LoopState;

/// How often the loops are looked at.
const EVERY: Duration = Duration::from_secs(2);

/// Starts loop `index` of `class`, returning what the watchdog needs of it.
pub type Start = Box<dyn Fn(Claim, u32) -> (Arc<LoopState>, JoinHandle<()>) + Send>;

struct Loop {
    class: Claim,
    index: u32,
    state: Arc<LoopState>,
    task: JoinHandle<()>,
}

pub struct Watchdog {
    loops: Vec<Loop>,
    start: Start,
    /// A batch taking longer than this means the loop is stuck.
    stuck_after: Duration,
}

impl Watchdog {
    /// Starts `local` local loops and `remote` remote loops through `start`.
    pub fn start(local: u32, remote: u32, stuck_after: Duration, start: Start) -> Self {
        let classes = (0..local)
            .map(|i| (Claim::Local, i))
            .chain((0..remote).map(|i| (Claim::Remote, i)));
        let loops = classes
            .map(|(class, index)| {
                let (state, task) = start(class, index);
                Loop {
                    class,
                    index,
                    state,
                    task,
                }
            })
            .collect();
        Watchdog {
            loops,
            start,
            stuck_after,
        }
    }

    /// Restarts loops that ended; true when every loop is alive and moving.
    pub fn check(&mut self) -> bool {
        let mut healthy = true;
        for l in &mut self.loops {
            if l.task.is_finished() {
                tracing::error!(class = ?l.class, index = l.index, "a delivery loop ended; starting it again");
                (l.state, l.task) = (self.start)(l.class, l.index);
                healthy = false;
            } else if let Some(busy) = l.state.busy_for()
                && busy > self.stuck_after
            {
                tracing::error!(class = ?l.class, index = l.index, ?busy, "a delivery loop is stuck on one batch");
                healthy = false;
            }
        }
        healthy
    }

    /// Watches until shutdown, reporting to `health`; then hands the loops back so they can be
    /// waited for.
    pub async fn run(mut self, health: Health, shutdown: Shutdown) -> Vec<JoinHandle<()>> {
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(EVERY) => {}
            }
            let healthy = self.check();
            health.set("delivery loops", healthy).await;
        }
        self.loops.into_iter().map(|l| l.task).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn an_ended_loop_is_started_again_and_reported_once() {
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let start: Start = Box::new(move |_, _| {
            // The first start of each loop ends at once (as a panic would end it).
            let first = counted.fetch_add(1, Ordering::SeqCst) < 2;
            let task = tokio::spawn(async move {
                if !first {
                    std::future::pending::<()>().await;
                }
            });
            (Arc::default(), task)
        });
        let mut dog = Watchdog::start(1, 1, Duration::from_secs(60), start);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!dog.check(), "two loops had ended");
        assert_eq!(starts.load(Ordering::SeqCst), 4, "both started again");
        assert!(dog.check(), "alive again");
    }

    #[tokio::test]
    async fn a_loop_on_one_batch_too_long_is_unhealthy() {
        let state = Arc::new(LoopState::default());
        let shared = state.clone();
        let start: Start =
            Box::new(move |_, _| (shared.clone(), tokio::spawn(std::future::pending::<()>())));
        let mut dog = Watchdog::start(1, 0, Duration::from_millis(100), start);
        assert!(dog.check());
        state.set_busy(true);
        assert!(dog.check(), "busy, but not for long");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!dog.check(), "stuck");
        state.set_busy(false);
        assert!(dog.check());
    }
}
