//! Wall-clock time for `created`, `expires`, `iat` and `exp` checks.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of UNIX time in seconds. The default reads the system clock; tests and
/// simulations plug in their own with a closure `Fn() -> u64`.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the UNIX epoch.
    fn now_unix(&self) -> u64;
}

/// The system wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

impl<F> Clock for F
where
    F: Fn() -> u64 + Send + Sync + 'static,
{
    fn now_unix(&self) -> u64 {
        self()
    }
}

/// A clock that is the system time when created plus the time elapsed on tokio's clock,
/// so `tokio::time::pause()` and `advance()` move it deterministically in tests.
#[derive(Clone, Copy)]
pub struct TokioClock {
    base_unix: u64,
    base: tokio::time::Instant,
}

impl fmt::Debug for TokioClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioClock")
            .field("now_unix", &self.now_unix())
            .finish()
    }
}

impl TokioClock {
    /// Starts at `unix` seconds, moving with tokio's clock.
    pub fn starting_at(unix: u64) -> Self {
        Self {
            base_unix: unix,
            base: tokio::time::Instant::now(),
        }
    }

    /// Starts at the current system time, moving with tokio's clock.
    pub fn new() -> Self {
        Self::starting_at(SystemClock.now_unix())
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_unix(&self) -> u64 {
        self.base_unix + self.base.elapsed().as_secs()
    }
}

impl fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clock")
            .field("now_unix", &self.now_unix())
            .finish()
    }
}
