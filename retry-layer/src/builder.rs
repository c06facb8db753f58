//! `ServiceBuilder` shortcuts.

use tower::ServiceBuilder;
use tower::layer::util::Stack;

use crate::circuit_breaker::CircuitBreakerLayer;
use crate::rate_limit::{ClientRateLimitLayer, KeyExtractor, Quota, RateLimitLayer};
use crate::retry::RetryLayer;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds the resilience layers to a [`ServiceBuilder`].
///
/// ```
/// use std::num::NonZeroU32;
/// use http::{Request, Response, StatusCode};
/// use portcullis_retry::ServiceBuilderExt;
/// use portcullis_retry::rate_limit::{PeerIp, Quota};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let quota = Quota::per_second(NonZeroU32::new(100).unwrap());
/// let server = ServiceBuilder::new()
///     .rate_limit_by(quota, PeerIp::new())
///     .service(service_fn(|_req: Request<()>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
///     }));
/// // No peer address in the extensions: refused by policy (403), not a 500.
/// let res = server.oneshot(Request::new(())).await?;
/// assert_eq!(res.status(), StatusCode::FORBIDDEN);
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a [`RetryLayer`] with the default settings.
    fn retry_transient(self) -> ServiceBuilder<Stack<RetryLayer, L>>;

    /// Adds a server-side [`RateLimitLayer`] with one global bucket.
    fn rate_limit_global(self, quota: Quota) -> ServiceBuilder<Stack<RateLimitLayer, L>>;

    /// Adds a server-side [`RateLimitLayer`] keyed by `extractor`.
    fn rate_limit_by<X: KeyExtractor>(
        self,
        quota: Quota,
        extractor: X,
    ) -> ServiceBuilder<Stack<RateLimitLayer<X>, L>>;

    /// Adds a client-side [`ClientRateLimitLayer`] with one global bucket (waits up to 10 s).
    fn client_rate_limit(self, quota: Quota) -> ServiceBuilder<Stack<ClientRateLimitLayer, L>>;

    /// Adds a [`CircuitBreakerLayer`] with the default settings.
    fn circuit_breaker(self) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn retry_transient(self) -> ServiceBuilder<Stack<RetryLayer, L>> {
        self.layer(RetryLayer::new())
    }

    fn rate_limit_global(self, quota: Quota) -> ServiceBuilder<Stack<RateLimitLayer, L>> {
        self.layer(RateLimitLayer::new(quota))
    }

    fn rate_limit_by<X: KeyExtractor>(
        self,
        quota: Quota,
        extractor: X,
    ) -> ServiceBuilder<Stack<RateLimitLayer<X>, L>> {
        self.layer(RateLimitLayer::keyed(quota, extractor))
    }

    fn client_rate_limit(self, quota: Quota) -> ServiceBuilder<Stack<ClientRateLimitLayer, L>> {
        self.layer(ClientRateLimitLayer::new(quota))
    }

    fn circuit_breaker(self) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>> {
        self.layer(CircuitBreakerLayer::new())
    }
}
