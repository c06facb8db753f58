use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use tower_layer::Layer;

use super::CircuitBreaker;
use super::state::{Breaker, CircuitState, Settings};

/// Selects one breaker per upstream authority (`host:port`) instead of one for all calls.
///
/// Used with [`CircuitBreakerBuilder::build_per_authority`]: a failing host cannot open the
/// circuit for the others a multi-host client talks to. At most 1,024 authorities get their
/// own breaker (idle ones are forgotten first); beyond that, calls share the global one.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerAuthority;

const MAX_AUTHORITIES: usize = 1024;

pub(crate) struct Breakers<K> {
    pub(crate) global: Arc<Breaker>,
    settings: Settings,
    per_authority: Mutex<HashMap<Authority, Arc<Breaker>>>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> fmt::Debug for Breakers<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breakers")
            .field("global", &self.global)
            .finish_non_exhaustive()
    }
}

impl<K> Breakers<K> {
    fn new(settings: Settings) -> Self {
        Self {
            global: Arc::new(Breaker::new(settings.clone())),
            settings,
            per_authority: Mutex::new(HashMap::new()),
            _kind: PhantomData,
        }
    }

    /// The breaker of `authority` (the global one when there is none, or no room).
    pub(crate) fn for_authority(&self, authority: Option<&Authority>) -> Arc<Breaker> {
        let Some(authority) = authority else {
            return self.global.clone();
        };
        let mut map = self.per_authority.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(breaker) = map.get(authority) {
            return breaker.clone();
        }
        if map.len() >= MAX_AUTHORITIES {
            map.retain(|_, b| !b.is_idle());
            if map.len() >= MAX_AUTHORITIES {
                return self.global.clone();
            }
        }
        let breaker = Arc::new(Breaker::new(self.settings.clone()));
        map.insert(authority.clone(), breaker.clone());
        breaker
    }

    pub(crate) fn state_of(&self, authority: &Authority) -> CircuitState {
        let map = self.per_authority.lock().unwrap_or_else(|e| e.into_inner());
        map.get(authority)
            .map_or(CircuitState::Closed, |b| b.state())
    }
}

/// Adds a circuit breaker shared by every service this layer makes (and their clones).
///
/// Defaults: opens when at least 50 % of at least 10 calls in the last 10 s failed, stays
/// open 30 s, then lets 1 probe call through. `CircuitBreakerLayer<PerAuthority>` (from
/// [`CircuitBreakerBuilder::build_per_authority`]) keeps one breaker per upstream host.
pub struct CircuitBreakerLayer<K = ()> {
    breakers: Arc<Breakers<K>>,
}

impl<K> Clone for CircuitBreakerLayer<K> {
    fn clone(&self) -> Self {
        Self {
            breakers: self.breakers.clone(),
        }
    }
}

impl<K> fmt::Debug for CircuitBreakerLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breakers", &self.breakers)
            .finish()
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// Builder of a [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerBuilder {
    settings: Settings,
}

impl CircuitBreakerLayer {
    /// A breaker with the defaults above.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder starting from the defaults.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            settings: Settings {
                failure_rate: 0.5,
                minimum_calls: 10,
                window: Duration::from_secs(10),
                open_duration: Duration::from_secs(30),
                probes: 1,
            },
        }
    }
}

impl CircuitBreakerBuilder {
    /// The failure rate (0.0 to 1.0, clamped) that opens the circuit.
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.settings.failure_rate = if rate.is_nan() {
            0.5
        } else {
            rate.clamp(0.0, 1.0)
        };
        self
    }

    /// The fewest calls in the window before the rate is judged (at least 1).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.settings.minimum_calls = calls.max(1);
        self
    }

    /// The length of the sliding failure-rate window (at least 10 ms).
    pub fn window(mut self, window: Duration) -> Self {
        self.settings.window = window.max(Duration::from_millis(10));
        self
    }

    /// How long the circuit stays open before probing.
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.settings.open_duration = duration;
        self
    }

    /// How many probe calls half-open lets through, all of which must succeed to close (at
    /// least 1).
    pub fn probes(mut self, probes: u32) -> Self {
        self.settings.probes = probes.max(1);
        self
    }

    /// Builds a layer with one breaker for every call.
    pub fn build(self) -> CircuitBreakerLayer {
        CircuitBreakerLayer {
            breakers: Arc::new(Breakers::new(self.settings)),
        }
    }

    /// Builds a layer with one breaker per request authority (`http::Request`s only).
    pub fn build_per_authority(self) -> CircuitBreakerLayer<PerAuthority> {
        CircuitBreakerLayer {
            breakers: Arc::new(Breakers::new(self.settings)),
        }
    }
}

impl<S, K> Layer<S> for CircuitBreakerLayer<K> {
    type Service = CircuitBreaker<S, K>;

    fn layer(&self, inner: S) -> CircuitBreaker<S, K> {
        CircuitBreaker::from_breakers(inner, self.breakers.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_bounded() {
        let breakers: Breakers<PerAuthority> =
            Breakers::new(CircuitBreakerLayer::builder().settings);
        for i in 0..(MAX_AUTHORITIES + 100) {
            let authority: Authority = format!("h{i}.test").parse().unwrap();
            let b = breakers.for_authority(Some(&authority));
            assert!(b.acquire().is_ok());
        }
        let held = breakers
            .per_authority
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        assert!(held <= MAX_AUTHORITIES, "{held}");
    }
}
