use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http::uri::Authority;
use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{Breakers, PerAuthority};
use super::{CircuitBreakerLayer, CircuitState};
use crate::retry::HttpResponse;

/// The middleware made by [`CircuitBreakerLayer`].
pub struct CircuitBreaker<S, K = ()> {
    inner: S,
    breakers: Arc<Breakers<K>>,
}

impl<S: Clone, K> Clone for CircuitBreaker<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breakers: self.breakers.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for CircuitBreaker<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breakers", &self.breakers)
            .finish()
    }
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` with a new breaker with default settings.
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&CircuitBreakerLayer::new(), inner)
    }

    /// A [`CircuitBreakerLayer`] with default settings.
    pub fn layer() -> CircuitBreakerLayer {
        CircuitBreakerLayer::new()
    }

    /// The breaker's current state.
    pub fn state(&self) -> CircuitState {
        self.breakers.global.state()
    }
}

impl<S> CircuitBreaker<S, PerAuthority> {
    /// The state of the breaker of `authority` (closed if it has none yet).
    pub fn state_of(&self, authority: &Authority) -> CircuitState {
        self.breakers.state_of(authority)
    }
}

impl<S, K> CircuitBreaker<S, K> {
    pub(crate) fn from_breakers(inner: S, breakers: Arc<Breakers<K>>) -> Self {
        Self { inner, breakers }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for CircuitBreaker<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: HttpResponse,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let breaker = &self.breakers.global;
        match breaker.acquire() {
            Ok(permit) => ResponseFuture::called(self.inner.call(req), breaker.clone(), permit),
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}

impl<S, B> Service<Request<B>> for CircuitBreaker<S, PerAuthority>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Response: HttpResponse,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let breaker = self.breakers.for_authority(req.uri().authority());
        match breaker.acquire() {
            Ok(permit) => ResponseFuture::called(self.inner.call(req), breaker, permit),
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}
