//! Reconnection delays: exponential backoff with full jitter, capped, reset after a success, and
//! never sooner than the server asked (its SSE `retry:`).
//!
//! Full jitter (a delay drawn uniformly from zero to the exponential ceiling) spreads the
//! reconnections of many clients that lost the same server at the same moment, so they don't
//! come back in one wave.

use std::time::Duration;

/// The first ceiling.
pub const DEFAULT_BASE: Duration = Duration::from_millis(500);
/// The highest ceiling.
pub const DEFAULT_CAP: Duration = Duration::from_secs(30);

/// Delays between reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Failed attempts since the last success.
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(DEFAULT_BASE, DEFAULT_CAP)
    }
}

impl Backoff {
    /// Ceilings `base`, 2·`base`, 4·`base`, … up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt: uniform in zero to the current ceiling, but at least
    /// `floor` (the server's `retry:`) when it gave one. Each call raises the ceiling.
    pub fn next_delay(&mut self, floor: Option<Duration>) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = ceiling.mul_f64(unit_random());
        floor.map_or(jittered, |floor| jittered.max(floor.min(self.cap)))
    }

    /// Attempts failed since the last success.
    pub fn failures(&self) -> u32 {
        self.attempt
    }

    /// A connection succeeded: the next delay starts small again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A number in [0, 1) from the OS's random source (0.5 if it fails: a delay is still made).
fn unit_random() -> f64 {
    getrandom::u64().map_or(0.5, |r| {
        // 53 random bits make every f64 in [0, 1) with that spacing.
        #[allow(clippy::cast_precision_loss)]
        let fraction = (r >> 11) as f64 / (1u64 << 53) as f64;
        fraction
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let delay = backoff.next_delay(None);
            ceilings.push(delay);
        }
        // Each delay is within its ceiling: 100, 200, 400, 800, then the cap.
        for (i, delay) in ceilings.iter().enumerate() {
            let ceiling = Duration::from_millis(100 * (1 << i.min(10))).min(Duration::from_secs(1));
            assert!(*delay <= ceiling, "{i}: {delay:?} > {ceiling:?}");
        }
        // Jitter: not all the capped ones are the same.
        let capped: Vec<_> = (0..20).map(|_| backoff.next_delay(None)).collect();
        assert!(capped.iter().any(|d| *d != capped[0]), "{capped:?}");
        assert_eq!(backoff.failures(), 28);
        backoff.reset();
        assert!(backoff.next_delay(None) <= Duration::from_millis(100));
        // The server's retry is a floor (itself capped).
        assert!(backoff.next_delay(Some(Duration::from_millis(700))) >= Duration::from_millis(700));
        assert!(backoff.next_delay(Some(Duration::from_secs(60))) <= Duration::from_secs(1));
    }
}
