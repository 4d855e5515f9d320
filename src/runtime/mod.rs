//! Running the roles: named tasks under one shutdown token, signals, and the drain deadline.
//!
//! Shutdown is decide / tell / wait: a signal (or a failing essential task) cancels the token,
//! every loop sees it and closes its peers politely, and the supervisor waits for the tasks up
//! to a deadline.

pub mod heartbeat;
pub mod notify;
pub mod rate;
pub mod root;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long tasks get to finish after shutdown is decided.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Owns every task of a process: they are spawned here, named, and awaited at shutdown.
#[derive(Clone)]
pub struct Supervisor {
    shutdown: CancellationToken,
    tracker: TaskTracker,
    failed: Arc<AtomicBool>,
    /// How the watchdog tells that each subsystem still works (see [`notify`]).
    probes: Arc<Mutex<Vec<notify::Probe>>>,
    /// The one-line summary for systemd's `STATUS=`.
    status: Arc<Mutex<Option<StatusLine>>>,
}

type StatusLine = Box<dyn Fn() -> String + Send + Sync>;

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Supervisor {
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            failed: Arc::new(AtomicBool::new(false)),
            probes: Arc::default(),
            status: Arc::default(),
        }
    }

    /// Adds a liveness probe the watchdog runs before each ping.
    pub fn add_probe(&self, probe: notify::Probe) {
        self.probes
            .lock()
            .expect("no panics while holding it")
            .push(probe);
    }

    pub fn probes(&self) -> Vec<notify::Probe> {
        self.probes
            .lock()
            .expect("no panics while holding it")
            .clone()
    }

    /// Sets what `STATUS=` says; the role calls it once with a closure reading its counters.
    pub fn set_status(&self, status: impl Fn() -> String + Send + Sync + 'static) {
        *self.status.lock().expect("no panics while holding it") = Some(Box::new(status));
    }

    pub fn status_line(&self) -> String {
        match &*self.status.lock().expect("no panics while holding it") {
            Some(status) => status(),
            None => "running".into(),
        }
    }

    /// The token every loop selects on.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Spawns a task whose end is uneventful (a connection, a helper loop).
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(future);
    }

    /// Spawns a task the process cannot do without (a listener, the hub, the uplink). If it
    /// fails, the error is logged with the task's name and the whole process shuts down with a
    /// failure exit code; a role degraded without telling anyone is worse than a restart.
    pub fn spawn_essential<F>(&self, name: &'static str, future: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        let failed = self.failed.clone();
        self.tracker.spawn(async move {
            if let Err(error) = future.await {
                tracing::error!(task = name, "{error:#}");
                failed.store(true, Ordering::SeqCst);
                shutdown.cancel();
            }
        });
    }

    /// Waits for SIGINT or SIGTERM (or for a task to trigger shutdown), then drains.
    /// Returns whether the process ended cleanly.
    pub async fn run_until_signal(self) -> anyhow::Result<bool> {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            () = self.shutdown.cancelled() => {}
        }
        notify::stopping();
        Ok(self.drain(DRAIN_DEADLINE).await)
    }

    /// Cancels every task and waits for them up to `deadline`. Returns whether all ended in
    /// time and none had failed.
    pub async fn drain(self, deadline: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        let in_time = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !in_time {
            tracing::warn!(
                tasks = self.tracker.len(),
                "drain deadline passed, exiting anyway"
            );
        }
        in_time && !self.failed.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_that_watch_the_token() {
        let supervisor = Supervisor::new();
        let token = supervisor.shutdown_token();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        supervisor.spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!(supervisor.drain(Duration::from_secs(5)).await);
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_failing_essential_task_shuts_everything_down_and_reports_failure() {
        let supervisor = Supervisor::new();
        supervisor.spawn_essential("broken", async { anyhow::bail!("listener died") });
        supervisor.shutdown_token().cancelled().await;
        assert!(!supervisor.drain(Duration::from_secs(5)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_deadline() {
        let supervisor = Supervisor::new();
        supervisor.spawn(std::future::pending());
        assert!(!supervisor.drain(Duration::from_secs(1)).await);
    }
}
