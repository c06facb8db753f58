//! Rate limits on governor: server side (429 with `Retry-After` and `RateLimit-*` headers)
//! and client side (wait or fail fast).
//!
//! - Global ([`RateLimitLayer::new`]) or keyed ([`RateLimitLayer::keyed`]) quotas, given as a
//!   governor [`Quota`] (requests per period with a burst).
//! - Keys come from a [`KeyExtractor`]: [`PeerIp`] (the connection's peer, with
//!   `X-Forwarded-For` believed only from configured proxies), [`ExtensionKey`] (a verified
//!   identity another layer put in the extensions), or any closure over [`RequestHead`].
//! - A request without a key is a [`MissingKey`] policy decision (reject with 403, or one
//!   shared bucket), never a 500.
//! - Memory is bounded ([`KeyedLimiter`]): idle keys are evicted, and at most `max_keys`
//!   are held; beyond that, new keys share one overflow bucket.
//! - Every clone shares one limiter.

mod error;
mod future;
mod key;
mod layer;
mod limiter;
mod service;

pub use error::{MissingRateLimitKey, RateLimited};
pub use future::{ClientResponseFuture, ResponseFuture};
pub use governor::Quota;
pub use key::{
    ExtensionKey, InvalidIpNet, IpNet, KeyExtractor, MissingKey, PeerAddr, PeerIp, RequestHead,
};
pub use layer::{ClientRateLimitLayer, OnLimit, RateLimitLayer};
pub use limiter::{Allowed, Denied, KeyedLimiter, TokioClock};
pub use service::{ClientRateLimit, RateLimit};
#[cfg(feature = "redis")]
pub(crate) use service::{add_headers, allowed_headers};
