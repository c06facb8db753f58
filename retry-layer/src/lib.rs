//! Retries with backoff and budgets, governor rate limits and circuit breaking that never
//! weaken security.
//!
//! - [`retry::RetryLayer`]: full-jitter exponential backoff, attempt limit, overall deadline,
//!   per-attempt timeout and tower's retry budget; security failures (TLS, certificates,
//!   pins, 401/403) are final; only idempotent or `Idempotency-Key` requests with replayable
//!   bodies are repeated.
//! - [`rate_limit::RateLimitLayer`]: governor quotas, global or keyed (peer IP with trusted
//!   proxies, verified identity, custom), with bounded memory; 429 with `Retry-After` and
//!   `RateLimit-*` headers on servers, wait or fail fast on clients.
//! - [`circuit_breaker::CircuitBreakerLayer`]: closed, open, half-open over a failure-rate
//!   window that only transport failures and 5xx answers feed.
//! - `redis` feature: `redis::RedisRateLimiter` and `redis::RedisRateLimitLayer`, a GCRA
//!   limiter in Redis (one atomic Lua script per check) shared by replicas.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use portcullis_retry::retry::{Attempt, ReplayBody, RetryLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! // A flaky upstream: the first attempt gets a 503, the second succeeds.
//! let upstream = service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
//!     let n = counter.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let attempt = req.extensions().get::<Attempt>().unwrap().number();
//!         let status = if n == 0 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!         Ok::<_, std::convert::Infallible>(
//!             Response::builder().status(status).header("x-attempt", attempt).body(()).unwrap(),
//!         )
//!     }
//! });
//!
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new().max_attempts(3).backoff(Duration::from_millis(10), Duration::from_secs(1)))
//!     .service(upstream);
//!
//! let res = client.oneshot(Request::get("http://api.test/").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["x-attempt"], "2");
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```

mod builder;
pub mod circuit_breaker;
pub mod classify;
pub mod rate_limit;
#[cfg(feature = "redis")]
pub mod redis;
pub mod retry;

pub use builder::ServiceBuilderExt;
