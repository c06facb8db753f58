//! Exponential backoff with full jitter, in tower's `Backoff` vocabulary.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower::retry::backoff::{Backoff, MakeBackoff};

/// Makes [`FullJitterBackoff`]s: delay `n` (from 0) is uniform in `[0, min(max, base * 2^n)]`
/// ("full jitter", which spreads retries of many clients best).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullJitterBackoffMaker {
    base: Duration,
    max: Duration,
}

impl FullJitterBackoffMaker {
    /// A maker with the given first ceiling and maximum ceiling (`max` is raised to `base` if
    /// smaller).
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
        }
    }
}

impl Default for FullJitterBackoffMaker {
    /// 100 ms first ceiling, 10 s maximum.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl MakeBackoff for FullJitterBackoffMaker {
    type Backoff = FullJitterBackoff;

    fn make_backoff(&mut self) -> FullJitterBackoff {
        FullJitterBackoff {
            base: self.base,
            max: self.max,
            iteration: 0,
        }
    }
}

/// One backoff session: each call gives the next, larger, jittered delay.
#[derive(Debug, Clone)]
pub struct FullJitterBackoff {
    base: Duration,
    max: Duration,
    iteration: u32,
}

impl FullJitterBackoff {
    /// The ceiling of the next delay, `min(max, base * 2^n)`.
    pub fn ceiling(&self) -> Duration {
        self.base
            .checked_mul(2_u32.saturating_pow(self.iteration))
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The next delay, uniform in `[0, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.iteration = self.iteration.saturating_add(1);
        ceiling.mul_f64(unit_random())
    }
}

impl Backoff for FullJitterBackoff {
    type Future = tokio::time::Sleep;

    fn next_backoff(&mut self) -> Self::Future {
        tokio::time::sleep(self.next_delay())
    }
}

/// A uniform value in `[0, 1]`; not for cryptography, only to spread retries. Every call
/// draws a fresh value (a cloned backoff does not repeat its siblings' sequence).
fn unit_random() -> f64 {
    static STATE: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = STATE.get_or_init(RandomState::new).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    // 53 random bits make an exact f64 in [0, 1).
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A random 128-bit value as 32 hex digits (for generated `Idempotency-Key`s).
pub(crate) fn random_hex128() -> String {
    static STATE: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = STATE.get_or_init(RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut a = state.build_hasher();
    a.write_u64(n);
    a.write_u64(nanos);
    let mut b = state.build_hasher();
    b.write_u64(!n);
    b.write_u64(nanos.rotate_left(17));
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_full_jitter_bounds() {
        let mut maker =
            FullJitterBackoffMaker::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut backoff = maker.make_backoff();
        let ceilings = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for expected in ceilings {
            let ceiling = backoff.ceiling();
            assert_eq!(ceiling, Duration::from_millis(expected));
            let d = backoff.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
        }
        // Full jitter really spreads: many draws under one ceiling are not all equal and cover
        // both halves of the range.
        let draws: Vec<Duration> = (0..200)
            .map(|_| maker.make_backoff().next_delay())
            .collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(50)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(50)));
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(100)));
    }

    #[test]
    fn huge_iterations_saturate_at_max() {
        let mut b = FullJitterBackoffMaker::new(Duration::from_secs(1), Duration::from_secs(30))
            .make_backoff();
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }

    #[test]
    fn generated_keys_differ() {
        let a = random_hex128();
        let b = random_hex128();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
