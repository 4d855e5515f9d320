//! A token bucket on tokio's clock, for limits on one connection's messages per second (a web
//! client's, a gateway's): `per_sec` messages a second, bursts of twice that.

use std::time::Duration;

use tokio::time::Instant;

pub struct TokenBucket {
    tokens: f64,
    per_sec: f64,
    at: Instant,
}

impl TokenBucket {
    /// Starts full. `per_sec` 0 is taken as 1: callers that allow "no limit" skip the bucket.
    pub fn new(per_sec: u32) -> TokenBucket {
        let per_sec = f64::from(per_sec.max(1));
        TokenBucket {
            tokens: 2.0 * per_sec,
            per_sec,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(2.0 * self.per_sec);
        self.at = now;
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until [`take`](Self::take) succeeds: zero if it would now.
    pub fn wait(&mut self) -> Duration {
        self.refill();
        Duration::from_secs_f64(((1.0 - self.tokens) / self.per_sec).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_twice_the_rate_then_refills_at_the_rate() {
        let mut bucket = TokenBucket::new(10);
        assert_eq!((0..25).filter(|_| bucket.take()).count(), 20);
        let wait = bucket.wait();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        tokio::time::advance(wait).await;
        assert!(bucket.take());
        assert!(!bucket.take());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(bucket.wait(), Duration::ZERO);
        assert_eq!((0..25).filter(|_| bucket.take()).count(), 20);
    }
}
