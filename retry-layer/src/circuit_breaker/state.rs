use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::error::CircuitOpen;

/// The state of a breaker, as reported by [`CircuitBreaker::state`](super::CircuitBreaker::state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls pass and outcomes are counted.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few probe calls pass to test the upstream.
    HalfOpen,
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) failure_rate: f64,
    pub(crate) minimum_calls: u32,
    pub(crate) window: Duration,
    pub(crate) open_duration: Duration,
    pub(crate) probes: u32,
}

const BUCKETS: u32 = 10;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    ok: u32,
    failed: u32,
}

#[derive(Debug)]
enum Phase {
    Closed { buckets: VecDeque<Bucket> },
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    generation: u64,
}

/// The result of one call, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure,
    /// Neither (a security rejection, an unknown error, a cancelled call).
    Ignored,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    settings: Settings,
    inner: Mutex<Inner>,
}

/// Admission to make one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Permit {
    generation: u64,
    probe: bool,
}

impl Breaker {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner {
                phase: Phase::Closed {
                    buckets: VecDeque::new(),
                },
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the state inconsistent (every update is
        // a single assignment), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn state(&self) -> CircuitState {
        let inner = self.lock();
        match inner.phase {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { until } if Instant::now() >= until => CircuitState::HalfOpen,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Closed with no outcome left in the window: indistinguishable from a new breaker.
    pub(crate) fn is_idle(&self) -> bool {
        let now = Instant::now();
        let inner = self.lock();
        match &inner.phase {
            Phase::Closed { buckets } => buckets
                .back()
                .is_none_or(|b| now.duration_since(b.start) >= self.settings.window),
            _ => false,
        }
    }

    pub(crate) fn acquire(&self) -> Result<Permit, CircuitOpen> {
        let now = Instant::now();
        let mut inner = self.lock();
        let generation = inner.generation;
        match &mut inner.phase {
            Phase::Closed { .. } => Ok(Permit {
                generation,
                probe: false,
            }),
            Phase::Open { until } => {
                if now >= *until {
                    inner.generation += 1;
                    inner.phase = Phase::HalfOpen {
                        in_flight: 1,
                        succeeded: 0,
                    };
                    transition("half_open", "open duration elapsed, probing upstream");
                    Ok(Permit {
                        generation: inner.generation,
                        probe: true,
                    })
                } else {
                    Err(CircuitOpen {
                        retry_in: *until - now,
                    })
                }
            }
            Phase::HalfOpen { in_flight, .. } => {
                if *in_flight < self.settings.probes {
                    *in_flight += 1;
                    Ok(Permit {
                        generation,
                        probe: true,
                    })
                } else {
                    Err(CircuitOpen {
                        retry_in: Duration::ZERO,
                    })
                }
            }
        }
    }

    pub(crate) fn record(&self, permit: Permit, verdict: Verdict) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.generation != permit.generation {
            return; // the outcome of a call admitted under an earlier state
        }
        let settings = &self.settings;
        let next = match &mut inner.phase {
            Phase::Closed { buckets } => {
                let width = settings.window / BUCKETS;
                while buckets
                    .front()
                    .is_some_and(|b| now.duration_since(b.start) >= settings.window)
                {
                    buckets.pop_front();
                }
                if verdict == Verdict::Ignored {
                    return;
                }
                let bucket = match buckets.back_mut() {
                    Some(b) if now.duration_since(b.start) < width => b,
                    _ => {
                        buckets.push_back(Bucket {
                            start: now,
                            ok: 0,
                            failed: 0,
                        });
                        buckets.back_mut().expect("just pushed")
                    }
                };
                match verdict {
                    Verdict::Success => bucket.ok += 1,
                    Verdict::Failure => bucket.failed += 1,
                    Verdict::Ignored => {}
                }
                let (ok, failed) = buckets
                    .iter()
                    .fold((0u32, 0u32), |(o, f), b| (o + b.ok, f + b.failed));
                let total = ok + failed;
                if total >= settings.minimum_calls
                    && f64::from(failed) / f64::from(total) >= settings.failure_rate
                {
                    transition("open", "failure rate reached the threshold");
                    Some(Phase::Open {
                        until: now + settings.open_duration,
                    })
                } else {
                    None
                }
            }
            Phase::Open { .. } => None,
            Phase::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if permit.probe {
                    *in_flight = in_flight.saturating_sub(1);
                }
                match verdict {
                    Verdict::Failure => {
                        transition("open", "probe call failed");
                        Some(Phase::Open {
                            until: now + settings.open_duration,
                        })
                    }
                    Verdict::Success => {
                        *succeeded += 1;
                        if *succeeded >= settings.probes {
                            transition("closed", "probe calls succeeded");
                            Some(Phase::Closed {
                                buckets: VecDeque::new(),
                            })
                        } else {
                            None
                        }
                    }
                    Verdict::Ignored => None,
                }
            }
        };
        if let Some(phase) = next {
            inner.phase = phase;
            inner.generation += 1;
        }
    }
}

fn transition(to: &'static str, reason: &'static str) {
    tracing::warn!(
        target: "portcullis::breaker",
        {
            "event.kind" = "event",
            "event.category" = "network",
            "event.action" = "circuit.transition",
            "event.outcome" = if to == "closed" { "success" } else { "failure" },
            "event.reason" = reason,
            state = to
        },
        "circuit breaker state change"
    );
}
