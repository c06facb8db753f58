use std::fmt;
use std::time::Duration;

/// The circuit is open (or half-open with all probe slots taken): the call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    pub(crate) retry_in: Duration,
}

impl CircuitOpen {
    /// How long until the breaker lets a probe call through.
    pub fn retry_in(&self) -> Duration {
        self.retry_in
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit open after repeated upstream failures: call not sent, next probe in {:.1?}",
            self.retry_in
        )
    }
}

impl std::error::Error for CircuitOpen {}
