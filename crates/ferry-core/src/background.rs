//! Background workers and the runner that drives them.
//!
//! A [`Worker`] holds only domain logic: do one unit of work, or wait until there is some. The
//! [`BackgroundRunner`] owns everything else, the same for every worker: the state machine,
//! error counting and exponential backoff after failures, a status record for the CLI and admin
//! API, and shutdown.
//!
//! Shutdown: when the stop token is cancelled, a worker that is waiting (idle or throttled) exits
//! at once; a worker inside [`Worker::work`] is let finish its unit (it can also watch the token),
//! and [`BackgroundRunner::shutdown`] aborts whatever has not finished by its deadline. Work units
//! must therefore be safe to interrupt at any `.await`: durable state lives in the metadata
//! store, never only in a worker's memory.

use crate::sync::lock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Error type returned by workers.
pub type WorkerError = Box<dyn std::error::Error + Send + Sync>;

/// What the runner should do next with a worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WorkerState {
    /// More work is available: call [`Worker::work`] again at once.
    Busy,
    /// Call [`Worker::work`] again after this pause (rate limiting, or waiting for a due time).
    Throttled(Duration),
    /// Nothing to do: call [`Worker::wait_for_work`].
    Idle,
    /// The worker is finished and will not be called again.
    Done,
}

/// Status a worker reports about itself, shown by the CLI without knowing the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Items waiting, if the worker has a queue.
    pub queue_length: Option<u64>,
    /// Items that failed permanently and wait for an operator.
    pub persistent_errors: Option<u64>,
    /// Progress as free text (e.g. "45.2%").
    pub progress: Option<String>,
    /// Anything else worth showing.
    pub freeform: Vec<String>,
}

/// A unit of background work (replication, garbage collection, backfill...).
#[async_trait::async_trait]
pub trait Worker: Send + 'static {
    /// A stable, human-readable name, e.g. `gc` or `replicate:eu-west-1`.
    fn name(&self) -> String;

    /// The worker's own status.
    fn status(&self) -> WorkerStatus {
        WorkerStatus::default()
    }

    /// Does one unit of work if one is available, or returns [`WorkerState::Idle`] at once.
    /// The future is normally run to completion; `stop` tells it that the process is exiting.
    async fn work(&mut self, stop: &CancellationToken) -> Result<WorkerState, WorkerError>;

    /// Waits until work may be available. Must be cancel-safe, and should return after a bounded
    /// time even without a wake-up (a backstop against a lost notification).
    async fn wait_for_work(&mut self) -> WorkerState;
}

/// A worker's state as recorded by the runner.
#[derive(Debug, Clone, Default)]
pub struct WorkerInfo {
    /// The worker's name.
    pub name: String,
    /// `busy`, `throttled`, `idle` or `done`.
    pub state: &'static str,
    /// Total failed work units.
    pub errors: u64,
    /// Failures since the last success (drives the backoff).
    pub consecutive_errors: u32,
    /// The last error message and when it happened (µs since epoch).
    pub last_error: Option<(String, i64)>,
    /// The worker's own status, refreshed after each step.
    pub status: WorkerStatus,
}

/// Drives workers until shutdown.
pub struct BackgroundRunner {
    stop: CancellationToken,
    // std Mutex: held only for short, non-async sections.
    tasks: Mutex<JoinSet<()>>,
    infos: Mutex<Vec<Arc<Mutex<WorkerInfo>>>>,
}

/// Backoff after `n` consecutive errors: 1 s × 1.5^(n-1), at most 60 s, with ±20% jitter.
#[must_use]
pub fn error_backoff(consecutive_errors: u32) -> Duration {
    let exp = consecutive_errors.saturating_sub(1).min(12);
    let base = (1.5f64.powi(i32::try_from(exp).unwrap_or(12))).min(60.0);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    Duration::from_secs_f64(base * jitter)
}

impl BackgroundRunner {
    /// A runner whose workers stop when `stop` is cancelled.
    #[must_use]
    pub fn new(stop: CancellationToken) -> Arc<Self> {
        Arc::new(Self { stop, tasks: Mutex::new(JoinSet::new()), infos: Mutex::new(Vec::new()) })
    }

    /// The stop token shared by every worker of this runner.
    #[must_use]
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Starts driving `worker` on the current tokio runtime.
    pub fn spawn<W: Worker>(&self, worker: W) {
        let info = Arc::new(Mutex::new(WorkerInfo { name: worker.name(), state: "busy", ..WorkerInfo::default() }));
        lock(&self.infos).push(info.clone());
        let stop = self.stop.clone();
        lock(&self.tasks).spawn(drive(worker, stop, info));
    }

    /// A snapshot of every worker's info, in spawn order.
    #[must_use]
    pub fn infos(&self) -> Vec<WorkerInfo> {
        lock(&self.infos).iter().map(|i| lock(i).clone()).collect()
    }

    /// Cancels the stop token and waits for the workers, aborting those still running after
    /// `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let drained = tokio::time::timeout(deadline, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(remaining = tasks.len(), "background workers did not stop in time; aborting them");
            tasks.shutdown().await;
        }
    }
}

async fn drive<W: Worker>(mut worker: W, stop: CancellationToken, info: Arc<Mutex<WorkerInfo>>) {
    let mut state = WorkerState::Busy;
    loop {
        if stop.is_cancelled() {
            break;
        }
        state = match state {
            WorkerState::Busy => match worker.work(&stop).await {
                Ok(next) => {
                    lock(&info).consecutive_errors = 0;
                    next
                }
                Err(e) => {
                    let mut i = lock(&info);
                    i.errors += 1;
                    i.consecutive_errors = i.consecutive_errors.saturating_add(1);
                    i.last_error = Some((e.to_string(), crate::time::now_micros()));
                    tracing::error!(worker = %i.name, error = %e, "background worker error");
                    WorkerState::Throttled(error_backoff(i.consecutive_errors))
                }
            },
            WorkerState::Throttled(d) => {
                tokio::select! {
                    () = tokio::time::sleep(d) => WorkerState::Busy,
                    () = stop.cancelled() => break,
                }
            }
            WorkerState::Idle => {
                tokio::select! {
                    s = worker.wait_for_work() => s,
                    () = stop.cancelled() => break,
                }
            }
            WorkerState::Done => break,
        };
        let mut i = lock(&info);
        i.state = state_name(state);
        i.status = worker.status();
    }
    lock(&info).state = "done";
}

fn state_name(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Busy => "busy",
        WorkerState::Throttled(_) => "throttled",
        WorkerState::Idle => "idle",
        WorkerState::Done => "done",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails `fail_first` times, then does `units` units of work, then is done.
    struct Flaky {
        fail_first: u32,
        units: u32,
        calls: Arc<AtomicU32>,
    }

    #[async_trait::async_trait]
    impl Worker for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }
        async fn work(&mut self, _stop: &CancellationToken) -> Result<WorkerState, WorkerError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail_first > 0 {
                self.fail_first -= 1;
                return Err("boom".into());
            }
            if self.units == 0 {
                return Ok(WorkerState::Done);
            }
            self.units -= 1;
            Ok(WorkerState::Busy)
        }
        async fn wait_for_work(&mut self) -> WorkerState {
            WorkerState::Busy
        }
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_then_work_resumes() {
        let calls = Arc::new(AtomicU32::new(0));
        let runner = BackgroundRunner::new(CancellationToken::new());
        runner.spawn(Flaky { fail_first: 3, units: 2, calls: calls.clone() });
        // Paused time auto-advances through the backoff sleeps.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let info = &runner.infos()[0];
        assert_eq!(info.errors, 3);
        assert_eq!(info.consecutive_errors, 0, "reset by the first success");
        assert_eq!(info.state, "done");
        assert_eq!(calls.load(Ordering::SeqCst), 3 + 2 + 1);
        assert_eq!(info.last_error.as_ref().map(|e| e.0.as_str()), Some("boom"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(error_backoff(1) <= Duration::from_secs_f64(1.2));
        assert!(error_backoff(5) > Duration::from_secs(3));
        assert!(error_backoff(100) <= Duration::from_secs(72));
    }

    struct Idle;
    #[async_trait::async_trait]
    impl Worker for Idle {
        fn name(&self) -> String {
            "idle".into()
        }
        async fn work(&mut self, _stop: &CancellationToken) -> Result<WorkerState, WorkerError> {
            Ok(WorkerState::Idle)
        }
        async fn wait_for_work(&mut self) -> WorkerState {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn shutdown_stops_idle_workers_promptly() {
        let runner = BackgroundRunner::new(CancellationToken::new());
        runner.spawn(Idle);
        tokio::task::yield_now().await;
        let t = std::time::Instant::now();
        runner.shutdown(Duration::from_secs(10)).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(runner.infos()[0].state, "done");
    }
}
