use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::CircuitBreaker;
use super::state::{Breaker, Settings};

/// Adds a circuit breaker shared by every service this layer makes (and their clones).
///
/// Defaults: opens when at least 50 % of at least 10 calls in the last 10 s failed, stays
/// open 30 s, then lets 1 probe call through.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breaker: Arc<Breaker>,
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

    /// Builds the layer.
    pub fn build(self) -> CircuitBreakerLayer {
        CircuitBreakerLayer {
            breaker: Arc::new(Breaker::new(self.settings)),
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::from_breaker(inner, self.breaker.clone())
    }
}
