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

    /// Takes a token, into debt if there is none, and says how long until the debt is paid:
    /// zero if there was a token. For a sender that is slowed down rather than refused.
    pub fn spend(&mut self) -> Duration {
        self.refill();
        self.tokens -= 1.0;
        Duration::from_secs_f64((-self.tokens / self.per_sec).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_twice_the_rate_then_refills_at_the_rate() {
        let mut bucket = TokenBucket::new(10);
        assert_eq!((0..25).filter(|_| bucket.take()).count(), 20);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(bucket.take());
        assert!(!bucket.take());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..25).filter(|_| bucket.take()).count(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn spending_past_the_burst_waits_one_interval_per_message() {
        let mut bucket = TokenBucket::new(10);
        for _ in 0..20 {
            assert_eq!(bucket.spend(), Duration::ZERO);
        }
        assert_eq!(bucket.spend(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        // Debt paid, no token to spare: the next message waits a whole interval again.
        assert_eq!(bucket.spend(), Duration::from_millis(100));
    }
}
