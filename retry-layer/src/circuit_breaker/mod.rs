//! A circuit breaker that only transport failures and 5xx answers can trip.
//!
//! [`CircuitBreakerLayer`] keeps one breaker shared by all clones of the layer (or one per
//! upstream authority, with [`CircuitBreakerBuilder::build_per_authority`]):
//! - **closed**: calls pass; outcomes go into a sliding time window; when at least
//!   `minimum_calls` were seen and the failure rate reaches the threshold, it opens;
//! - **open**: calls fail fast with [`CircuitOpen`] for `open_duration`;
//! - **half-open**: then up to `probes` calls go through; if they all succeed it closes, if one
//!   fails it opens again.
//!
//! Failures are transport errors (I/O, connect, timeouts) and 5xx responses. 401/403 and
//! security rejections (TLS, certificate and pin failures) never trip the breaker: an attacker
//! who can make a handshake fail must not be able to take a healthy upstream offline.

mod error;
mod future;
mod layer;
mod service;
mod state;

pub use error::CircuitOpen;
pub use future::ResponseFuture;
pub use layer::{CircuitBreakerBuilder, CircuitBreakerLayer, PerAuthority};
pub use service::CircuitBreaker;
pub use state::CircuitState;
