//! The governor limiter with bounded memory that both layers use.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::Quota;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;

/// A clock that follows tokio's (pausable) clock, so time-based limits can be tested with
/// `tokio::time::pause()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A keyed state store that never holds more than `max_keys` keys: once full, new keys share
/// one overflow bucket until idle keys are evicted.
pub(crate) struct BoundedStore<K: Hash + Eq> {
    map: DashMap<K, AtomicU64>,
    max_keys: usize,
    overflow: AtomicU64,
}

fn measure<T, F, E>(cell: &AtomicU64, f: F) -> Result<T, E>
where
    F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
{
    let read = |v: u64| (v != 0).then(|| Nanos::from(v));
    let mut prev = cell.load(Ordering::Acquire);
    let mut decision = f(read(prev));
    while let Ok((result, new)) = decision {
        match cell.compare_exchange_weak(prev, new.as_u64(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(result),
            Err(actual) => prev = actual,
        }
        decision = f(read(prev));
    }
    decision.map(|(result, _)| result)
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(cell) = self.map.get(key) {
            return measure(&cell, f);
        }
        if self.map.len() >= self.max_keys {
            return measure(&self.overflow, f);
        }
        let cell = self.map.entry(key.clone()).or_default();
        measure(&cell, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = drop_below.as_u64();
        self.map.retain(|_, v| v.load(Ordering::Relaxed) > below);
        if self.overflow.load(Ordering::Relaxed) <= below {
            self.overflow.store(0, Ordering::Relaxed);
        }
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

type Governor<K> =
    governor::RateLimiter<K, BoundedStore<K>, TokioClock, StateInformationMiddleware>;

/// A request allowed by the limiter, with what `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The burst size of the quota.
    pub limit: u32,
    /// Further requests that would pass right now.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// A request over the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// The burst size of the quota.
    pub limit: u32,
    /// The earliest time a request with this key would pass.
    pub retry_after: Duration,
}

struct Inner<K: Hash + Eq + Clone> {
    governor: Governor<K>,
    quota: Quota,
    max_keys: usize,
    sweep_every: Duration,
    last_sweep: AtomicU64,
    epoch: std::time::Instant,
}

/// A keyed GCRA rate limiter (governor) with bounded memory. Cloning shares the state.
///
/// Idle keys (whose bucket is full again) are evicted at most every `sweep_every` (default:
/// the time to refill the whole burst, at least one second), on the request path; the map
/// never holds more than `max_keys` keys (default 100,000): beyond that, new keys share one
/// overflow bucket until a sweep frees room, so a flood of unique keys is throttled as one.
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    inner: Arc<Inner<K>>,
}

impl<K: Hash + Eq + Clone> Clone for KeyedLimiter<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("quota", &self.inner.quota)
            .field("keys", &self.len())
            .field("max_keys", &self.inner.max_keys)
            .finish()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter for `quota` with the default bounds.
    pub fn new(quota: Quota) -> Self {
        Self::with_bounds(quota, 100_000, None)
    }

    /// A limiter holding at most `max_keys` keys (at least 1), sweeping idle keys every
    /// `sweep_every` (default: the burst refill time, at least one second).
    pub fn with_bounds(quota: Quota, max_keys: usize, sweep_every: Option<Duration>) -> Self {
        let max_keys = max_keys.max(1);
        // A burst over 10^9 per second rounds governor's interval down to zero, which its
        // arithmetic divides by: clamp to one nanosecond.
        let quota = if quota.replenish_interval().is_zero() {
            Quota::with_period(Duration::from_nanos(1))
                .map_or(quota, |q| q.allow_burst(quota.burst_size()))
        } else {
            quota
        };
        let store = BoundedStore {
            map: DashMap::new(),
            max_keys,
            overflow: AtomicU64::new(0),
        };
        let governor: Governor<K> = governor::RateLimiter::<
            K,
            BoundedStore<K>,
            TokioClock,
            governor::middleware::NoOpMiddleware<std::time::Instant>,
        >::new(quota, store, TokioClock)
        .with_middleware::<StateInformationMiddleware>();
        let sweep_every = sweep_every.unwrap_or_else(|| {
            quota
                .burst_size_replenished_in()
                .max(Duration::from_secs(1))
        });
        Self {
            inner: Arc::new(Inner {
                governor,
                quota,
                max_keys,
                sweep_every,
                last_sweep: AtomicU64::new(0),
                epoch: TokioClock.now(),
            }),
        }
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.inner.quota
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.inner.governor.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.inner.governor.is_empty()
    }

    /// The most keys ever held.
    pub fn max_keys(&self) -> usize {
        self.inner.max_keys
    }

    /// Evicts keys whose bucket is full again (indistinguishable from a new key).
    pub fn evict_idle(&self) {
        self.inner.governor.retain_recent();
        self.inner.governor.shrink_to_fit();
    }

    fn maybe_sweep(&self) {
        let now = TokioClock.now().duration_since(self.inner.epoch).as_nanos() as u64;
        let last = self.inner.last_sweep.load(Ordering::Relaxed);
        let every = self.inner.sweep_every.as_nanos() as u64;
        if now.saturating_sub(last) >= every
            && self
                .inner
                .last_sweep
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.evict_idle();
        }
    }

    /// Counts one request for `key`.
    ///
    /// # Errors
    /// [`Denied`] when the key's bucket is empty.
    pub fn check(&self, key: &K) -> Result<Allowed, Denied> {
        self.maybe_sweep();
        let limit = self.inner.quota.burst_size().get();
        let interval = self.inner.quota.replenish_interval();
        match self.inner.governor.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(limit);
                Ok(Allowed {
                    limit,
                    remaining,
                    reset: interval * (limit - remaining),
                })
            }
            Err(not_until) => Err(Denied {
                limit,
                retry_after: not_until.wait_time_from(TokioClock.now()),
            }),
        }
    }
}
