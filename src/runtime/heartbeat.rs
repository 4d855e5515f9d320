//! Heartbeats: a long-running loop (the uplink, the MQTT adapter) beats on every turn, and its
//! watchdog probe fails when the last beat is older than the loop can legitimately be busy.
//! A probe that only asked "is the task still there" would miss a loop stuck on an await.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::notify::Probe;

/// How often an idle loop beats (its select has a tick of this period).
pub const EVERY: Duration = Duration::from_secs(1);

/// The time of a loop's last turn; cheap to clone and to beat from the loop itself.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds since `origin` at the last beat.
    last: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Heartbeat {
        Heartbeat {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn beat(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn silence(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Runs `future` and beats every [`EVERY`] while it is pending: for waits bounded by a
    /// timer of their own (a connect timeout, a retry delay), where the loop is alive.
    pub async fn beat_while<F: std::future::Future>(&self, future: F) -> F::Output {
        tokio::pin!(future);
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                output = &mut future => {
                    self.beat();
                    return output;
                }
                _ = tick.tick() => self.beat(),
            }
        }
    }

    /// The watchdog probe: fails once the loop has been silent longer than `max_silence`.
    pub fn probe(&self, name: &str, max_silence: Duration) -> Probe {
        let heartbeat = self.clone();
        Probe::new(name, move || {
            let silence = heartbeat.silence();
            async move {
                if silence <= max_silence {
                    Ok(())
                } else {
                    Err(format!(
                        "no heartbeat for {:.1} s (at most {:.1} s expected)",
                        silence.as_secs_f64(),
                        max_silence.as_secs_f64()
                    ))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::notify::failures;

    #[tokio::test(start_paused = true)]
    async fn a_silent_loop_fails_its_probe_and_a_beat_clears_it() {
        let heartbeat = Heartbeat::new();
        let probe = heartbeat.probe("uplink", Duration::from_secs(5));
        let timeout = Duration::from_secs(1);
        assert!(
            failures(std::slice::from_ref(&probe), timeout)
                .await
                .is_empty()
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        let failed = failures(std::slice::from_ref(&probe), timeout).await;
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].starts_with("uplink: no heartbeat for 6.0 s"),
            "{}",
            failed[0]
        );
        heartbeat.beat();
        assert!(failures(&[probe], timeout).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn beat_while_keeps_beating_during_a_bounded_wait() {
        let heartbeat = Heartbeat::new();
        let probe = heartbeat.probe("uplink", Duration::from_secs(2));
        let watched = heartbeat.clone();
        let wait = tokio::spawn(async move {
            watched
                .beat_while(tokio::time::sleep(Duration::from_secs(30)))
                .await;
        });
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(heartbeat.silence() <= Duration::from_secs(1));
        }
        wait.await.expect("the wait ends");
        assert!(failures(&[probe], Duration::from_secs(1)).await.is_empty());
    }
}
