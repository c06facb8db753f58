use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use governor::Quota;
use tower_layer::Layer;

use super::key::{KeyExtractor, MissingKey, RequestHead};
use super::limiter::{Allowed, Denied, KeyedLimiter};
use super::{ClientRateLimit, RateLimit};

/// Everything both layers share; cheap to clone.
pub(crate) struct Shared<X: KeyExtractor> {
    pub(crate) limiter: KeyedLimiter<X::Key>,
    pub(crate) keyless: KeyedLimiter<()>,
    pub(crate) extractor: Arc<X>,
    pub(crate) missing: MissingKey,
}

impl<X: KeyExtractor> Clone for Shared<X> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            keyless: self.keyless.clone(),
            extractor: self.extractor.clone(),
            missing: self.missing,
        }
    }
}

impl<X: KeyExtractor> fmt::Debug for Shared<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("limiter", &self.limiter)
            .field("missing", &self.missing)
            .finish_non_exhaustive()
    }
}

/// The bucket a request was counted in.
pub(crate) enum Target<K> {
    Keyed(K),
    Keyless,
}

impl<X: KeyExtractor> Shared<X> {
    fn new(limiter: KeyedLimiter<X::Key>, extractor: X) -> Self {
        let keyless = KeyedLimiter::with_bounds(limiter.quota(), 1, None);
        Self {
            limiter,
            keyless,
            extractor: Arc::new(extractor),
            missing: MissingKey::Reject,
        }
    }

    /// The bucket of a request; `None` when it has no key and the policy rejects it.
    pub(crate) fn target(&self, head: &RequestHead<'_>) -> Option<Target<X::Key>> {
        match self.extractor.extract(head) {
            Some(key) => Some(Target::Keyed(key)),
            None => match self.missing {
                MissingKey::Reject => None,
                MissingKey::SharedBucket => Some(Target::Keyless),
            },
        }
    }

    pub(crate) fn check(&self, target: &Target<X::Key>) -> Result<Allowed, Denied> {
        match target {
            Target::Keyed(key) => self.limiter.check(key),
            Target::Keyless => self.keyless.check(&()),
        }
    }
}

/// Server-side rate limiting: requests over the quota get `429 Too Many Requests` with
/// `Retry-After` and `RateLimit-Limit`/`-Remaining`/`-Reset` headers (allowed responses get
/// the `RateLimit-*` headers too).
///
/// Global with [`RateLimitLayer::new`], keyed with [`RateLimitLayer::keyed`]. Clones (of
/// the layer and of its services) share one limiter, so it works under axum and tonic,
/// which clone services per connection.
pub struct RateLimitLayer<X: KeyExtractor = ()> {
    shared: Shared<X>,
}

impl<X: KeyExtractor> Clone for RateLimitLayer<X> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<X: KeyExtractor> fmt::Debug for RateLimitLayer<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl RateLimitLayer<()> {
    /// One global bucket for every request.
    pub fn new(quota: Quota) -> Self {
        Self::keyed(quota, ())
    }
}

impl<X: KeyExtractor> RateLimitLayer<X> {
    /// One bucket per key from `extractor` (bounded memory, see [`KeyedLimiter`]).
    pub fn keyed(quota: Quota, extractor: X) -> Self {
        Self::with_limiter(KeyedLimiter::new(quota), extractor)
    }

    /// Uses an existing limiter (to share it with other layers or bound it differently).
    pub fn with_limiter(limiter: KeyedLimiter<X::Key>, extractor: X) -> Self {
        Self {
            shared: Shared::new(limiter, extractor),
        }
    }

    /// What to do with requests that have no key (default: [`MissingKey::Reject`], answered
    /// `403 Forbidden`).
    pub fn missing_key(mut self, policy: MissingKey) -> Self {
        self.shared.missing = policy;
        self
    }

    /// The limiter (for its key count, or to evict idle keys).
    pub fn limiter(&self) -> &KeyedLimiter<X::Key> {
        &self.shared.limiter
    }
}

impl<S, X: KeyExtractor> Layer<S> for RateLimitLayer<X> {
    type Service = RateLimit<S, X>;

    fn layer(&self, inner: S) -> RateLimit<S, X> {
        RateLimit::from_shared(inner, self.shared.clone())
    }
}

/// What a client-side limiter does when the quota is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnLimit {
    /// Wait until the request may be sent, if that is within `max`; fail otherwise.
    Wait {
        /// The longest wait.
        max: Duration,
    },
    /// Fail at once with [`RateLimited`](super::RateLimited).
    FailFast,
}

/// Client-side rate limiting: calls over the quota wait (up to a maximum) or fail fast with
/// [`RateLimited`](super::RateLimited), without sending anything.
pub struct ClientRateLimitLayer<X: KeyExtractor = ()> {
    shared: Shared<X>,
    on_limit: OnLimit,
}

impl<X: KeyExtractor> Clone for ClientRateLimitLayer<X> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            on_limit: self.on_limit,
        }
    }
}

impl<X: KeyExtractor> fmt::Debug for ClientRateLimitLayer<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRateLimitLayer")
            .field("shared", &self.shared)
            .field("on_limit", &self.on_limit)
            .finish()
    }
}

impl ClientRateLimitLayer<()> {
    /// One global bucket; waits up to 10 s by default.
    pub fn new(quota: Quota) -> Self {
        Self::keyed(quota, ())
    }
}

impl<X: KeyExtractor> ClientRateLimitLayer<X> {
    /// One bucket per key (e.g. per host: `|h: &RequestHead<'_>| h.uri.host().map(str::to_owned)`).
    pub fn keyed(quota: Quota, extractor: X) -> Self {
        Self {
            shared: Shared::new(KeyedLimiter::new(quota), extractor),
            on_limit: OnLimit::Wait {
                max: Duration::from_secs(10),
            },
        }
    }

    /// Waits up to `max` for the quota.
    pub fn wait_up_to(mut self, max: Duration) -> Self {
        self.on_limit = OnLimit::Wait { max };
        self
    }

    /// Fails at once when the quota is spent.
    pub fn fail_fast(mut self) -> Self {
        self.on_limit = OnLimit::FailFast;
        self
    }

    /// What to do with requests that have no key (default: reject with
    /// [`MissingRateLimitKey`](super::MissingRateLimitKey)).
    pub fn missing_key(mut self, policy: MissingKey) -> Self {
        self.shared.missing = policy;
        self
    }

    /// The limiter.
    pub fn limiter(&self) -> &KeyedLimiter<X::Key> {
        &self.shared.limiter
    }
}

impl<S, X: KeyExtractor> Layer<S> for ClientRateLimitLayer<X> {
    type Service = ClientRateLimit<S, X>;

    fn layer(&self, inner: S) -> ClientRateLimit<S, X> {
        ClientRateLimit::from_shared(inner, self.shared.clone(), self.on_limit)
    }
}
