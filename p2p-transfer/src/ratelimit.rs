//! Per-host token buckets for upload and download.
//!
//! [`TokenBucket`] is the pure rule: a reservation of `n` bytes always succeeds and returns
//! how long to wait before sending them; the bucket may go into debt, so the long-run rate is
//! exactly the configured one and the only slack is the burst ([`RATE_BURST_WINDOW`] of
//! traffic). [`RateLimiter`] shares one bucket among every connection of a node, which is what
//! "the figure you configure is the figure you get" needs: quinn's own per-connection limit
//! would multiply by the number of peers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The burst a bucket allows, as time at the configured rate.
pub const RATE_BURST_WINDOW: Duration = Duration::from_millis(50);
/// The smallest burst, in bytes: one chunk group, so a single write never waits twice.
pub const MIN_BURST_BYTES: u64 = 16 * 1024;

/// A token bucket in "debt" form. Time comes from the caller.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_bytes_per_sec: f64,
    burst_bytes: f64,
    /// Available tokens; negative while in debt.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate_bytes_per_sec` (at least 1).
    pub fn new(rate_bytes_per_sec: u64, now: Instant) -> TokenBucket {
        let rate = rate_bytes_per_sec.max(1) as f64;
        let burst = (rate * RATE_BURST_WINDOW.as_secs_f64()).max(MIN_BURST_BYTES as f64);
        TokenBucket { rate_bytes_per_sec: rate, burst_bytes: burst, tokens: burst, last: now }
    }

    /// Takes `n` bytes' worth of tokens; returns how long the caller must wait before
    /// sending them (zero if the bucket had them).
    pub fn reserve(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate_bytes_per_sec).min(self.burst_bytes);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate_bytes_per_sec)
        }
    }
}

/// A [`TokenBucket`] shared by the tasks of one node, or no limit at all.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Option<Mutex<TokenBucket>>,
    throttled_waits: AtomicU64,
    throttled_micros: AtomicU64,
}

/// How much a [`RateLimiter`] held its takers back, since it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThrottleStats {
    /// Reservations that had to wait.
    pub waits: u64,
    /// Their waits added up, in microseconds.
    pub waited_micros: u64,
}

impl RateLimiter {
    /// A limiter at `rate_bytes_per_sec`, or unlimited for `None`.
    pub fn new(rate_bytes_per_sec: Option<u64>) -> RateLimiter {
        let now = tokio::time::Instant::now().into_std();
        RateLimiter {
            bucket: rate_bytes_per_sec.map(|rate| Mutex::new(TokenBucket::new(rate, now))),
            throttled_waits: AtomicU64::new(0),
            throttled_micros: AtomicU64::new(0),
        }
    }

    /// How often and how long takers waited.
    pub fn stats(&self) -> ThrottleStats {
        ThrottleStats {
            waits: self.throttled_waits.load(Ordering::Relaxed),
            waited_micros: self.throttled_micros.load(Ordering::Relaxed),
        }
    }

    /// Waits until `n` more bytes may pass.
    pub async fn acquire(&self, n: u64) {
        let Some(bucket) = &self.bucket else { return };
        let wait = {
            let now = tokio::time::Instant::now().into_std();
            bucket.lock().expect("rate limiter lock").reserve(n, now)
        };
        if !wait.is_zero() {
            self.throttled_waits.fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
            self.throttled_micros.fetch_add(micros, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Sends `total` bytes in `chunk`-byte reservations, waiting as told; returns elapsed time.
    fn simulate(rate: u64, total: u64, chunk: u64) -> Duration {
        let start = Instant::now();
        let mut now = start;
        let mut bucket = TokenBucket::new(rate, now);
        let mut sent = 0;
        while sent < total {
            now += bucket.reserve(chunk, now);
            sent += chunk;
        }
        now - start
    }

    #[test]
    fn the_configured_rate_is_the_rate_you_get_within_ten_percent() {
        for (rate, chunk) in [(4 << 20, 16 << 10), (2 << 20, 1500), (100 << 10, 64 << 10)] {
            let total = 40 * rate;
            let elapsed = simulate(rate, total, chunk).as_secs_f64();
            let achieved = total as f64 / elapsed;
            let error = (achieved - rate as f64).abs() / rate as f64;
            assert!(error < 0.10, "rate {rate}: achieved {achieved:.0} B/s ({error:.3} off)");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_takers_share_one_bucket() {
        let rate = 1 << 20;
        let limiter = Arc::new(RateLimiter::new(Some(rate)));
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    for _ in 0..64 {
                        limiter.acquire(16 << 10).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // 8 MiB at 1 MiB/s: 8 s of (simulated) time, less the initial burst.
        let elapsed = start.elapsed().as_secs_f64();
        assert!((elapsed - 8.0).abs() / 8.0 < 0.10, "took {elapsed:.2} s");
        // The waits are tallied: most takers waited, and (all waiting at once) they waited at
        // least as long as the run took.
        let stats = limiter.stats();
        assert!(stats.waits > 400 && stats.waits <= 512, "{stats:?}");
        assert!(stats.waited_micros as f64 / 1e6 >= elapsed * 0.9, "{stats:?}");
        let unlimited = RateLimiter::new(None);
        let start = tokio::time::Instant::now();
        unlimited.acquire(u64::MAX).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(unlimited.stats(), ThrottleStats::default());
    }
}
