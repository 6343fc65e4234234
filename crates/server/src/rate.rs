//! Token buckets for the per-identity limits: a request rate that refuses
//! calls over it, and a bandwidth that slows transfers down to it.

use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so that tests can run paused time.
use tokio::time::Instant;

/// A bucket that refills at `rate` per second up to `burst`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Takes `amount` (the level may go negative: a debt that later calls
    /// wait out) and returns how long the caller should wait for its share;
    /// or, without debt and short of `amount`, how long until it would fit.
    fn take(&self, amount: f64, allow_debt: bool) -> Result<Duration, Duration> {
        // A poisoned lock only means another caller panicked mid-update; the
        // numbers are still usable.
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let (level, last) = *state;
        let level = (level + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if level >= amount || allow_debt {
            let left = level - amount;
            *state = (left, now);
            let wait = if left < 0.0 { seconds(-left / self.rate) } else { Duration::ZERO };
            Ok(wait)
        } else {
            *state = (level, now);
            Err(seconds((amount - level) / self.rate))
        }
    }
}

/// A wait in seconds; saturating where a tiny configured rate makes it
/// longer than a `Duration` holds.
fn seconds(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

/// Calls per second, with bursts of up to one second's worth.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Bucket,
}

impl RateLimiter {
    pub fn per_second(rate: f64) -> Self {
        let rate = rate.max(f64::MIN_POSITIVE);
        Self { bucket: Bucket::new(rate, rate.max(1.0)) }
    }

    /// One more call now, or how long until one would fit.
    pub fn acquire(&self) -> Result<(), Duration> {
        self.bucket.take(1.0, false).map(|_| ())
    }

    pub fn per_second_limit(&self) -> f64 {
        self.bucket.rate
    }
}

/// Bytes per second: [`Throttle::consume`] sleeps so that the long-run rate
/// stays at the limit, whatever the number of concurrent transfers sharing it.
#[derive(Debug)]
pub struct Throttle {
    bucket: Bucket,
}

impl Throttle {
    pub fn per_second(bytes: u64) -> Self {
        let rate = bytes.max(1) as f64;
        // A quarter second of burst: smooth enough, and a 4 MiB chunk at a
        // low limit simply waits its turn.
        Self { bucket: Bucket::new(rate, rate / 4.0) }
    }

    pub async fn consume(&self, bytes: u64) {
        if let Ok(wait) = self.bucket.take(bytes as f64, true)
            && !wait.is_zero()
        {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_allows_its_burst_then_refuses() {
        let limiter = RateLimiter::per_second(3.0);
        assert!((0..3).all(|_| limiter.acquire().is_ok()));
        // Refused, and told when the next call fits: a third of a second at 3/s.
        let wait = limiter.acquire().expect_err("past the burst");
        assert!(!wait.is_zero() && wait <= Duration::from_millis(334), "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_paces_to_its_rate() {
        let throttle = Throttle::per_second(1000);
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            throttle.consume(250).await;
        }
        // 2500 bytes at 1000/s after a 250-byte burst: about 2.25 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2200) && took <= Duration::from_millis(2400), "{took:?}");
    }
}
