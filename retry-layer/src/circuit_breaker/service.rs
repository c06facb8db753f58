use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::state::Breaker;
use super::{CircuitBreakerLayer, CircuitState};
use crate::retry::HttpResponse;

/// The middleware made by [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Arc<Breaker>,
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` with a new breaker with default settings.
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&CircuitBreakerLayer::new(), inner)
    }

    pub(crate) fn from_breaker(inner: S, breaker: Arc<Breaker>) -> Self {
        Self { inner, breaker }
    }

    /// A [`CircuitBreakerLayer`] with default settings.
    pub fn layer() -> CircuitBreakerLayer {
        CircuitBreakerLayer::new()
    }

    /// The breaker's current state.
    pub fn state(&self) -> CircuitState {
        self.breaker.state()
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
        match self.breaker.acquire() {
            Ok(permit) => {
                ResponseFuture::called(self.inner.call(req), self.breaker.clone(), permit)
            }
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}
