use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode, header::HeaderValue};
use tower::BoxError;
use tower_service::Service;

use super::error::{MissingRateLimitKey, RateLimited};
use super::future::{ClientResponseFuture, ResponseFuture};
use super::key::{KeyExtractor, PeerAddr, RequestHead};
use super::layer::{OnLimit, Shared};
use super::limiter::{Allowed, Denied};

/// The server-side middleware made by [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimit<S, X: KeyExtractor> {
    inner: S,
    shared: Shared<X>,
}

impl<S: Clone, X: KeyExtractor> Clone for RateLimit<S, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, X: KeyExtractor> fmt::Debug for RateLimit<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, X: KeyExtractor> RateLimit<S, X> {
    pub(crate) fn from_shared(inner: S, shared: Shared<X>) -> Self {
        Self { inner, shared }
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

fn secs_ceil(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

pub(crate) fn add_headers(headers: &mut http::HeaderMap, limit: u32, remaining: u32, reset: u64) {
    headers.insert("ratelimit-limit", HeaderValue::from(limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(reset));
}

pub(crate) fn allowed_headers(headers: &mut http::HeaderMap, allowed: &Allowed) {
    // A limiter closer to the service (a per-identity limit under a per-peer one) already
    // described its quota: keep whichever has less left, so clients see the binding limit.
    if let Some(inner) = headers
        .get("ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && inner <= u64::from(allowed.remaining)
    {
        return;
    }
    add_headers(
        headers,
        allowed.limit,
        allowed.remaining,
        secs_ceil(allowed.reset),
    );
}

fn too_many<B: Default>(denied: &Denied) -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let wait = secs_ceil(denied.retry_after).max(1);
    res.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(wait));
    add_headers(res.headers_mut(), denied.limit, 0, wait);
    res
}

fn forbidden<B: Default>() -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::FORBIDDEN;
    res
}

fn event<B>(req: &Request<B>, action: &'static str, reason: &'static str, status: u16) {
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip())
        .or_else(|| {
            req.extensions()
                .get::<std::net::SocketAddr>()
                .map(|s| s.ip())
        });
    tracing::warn!(
        target: "portcullis::ratelimit",
        {
            "event.kind" = "event",
            "event.category" = "network",
            "event.action" = action,
            "event.outcome" = "failure",
            "event.reason" = reason,
            "client.address" = peer.map(tracing::field::display),
            "http.request.method" = %req.method(),
            "url.path" = req.uri().path(),
            "http.response.status_code" = status
        },
        "request refused by the rate limiter"
    );
}

impl<S, X, B, ResB> Service<Request<B>> for RateLimit<S, X>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    X: KeyExtractor,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(target) = self.shared.target(&RequestHead::of(&req)) else {
            event(
                &req,
                "rate_limit.check",
                "request has no rate-limit key",
                403,
            );
            return ResponseFuture::answered(forbidden());
        };
        match self.shared.check(&target) {
            Ok(allowed) => ResponseFuture::called(self.inner.call(req), allowed),
            Err(denied) => {
                event(&req, "rate_limit.check", "quota exhausted", 429);
                ResponseFuture::answered(too_many(&denied))
            }
        }
    }
}

/// The client-side middleware made by [`ClientRateLimitLayer`](super::ClientRateLimitLayer).
pub struct ClientRateLimit<S, X: KeyExtractor> {
    inner: S,
    shared: Shared<X>,
    on_limit: OnLimit,
}

impl<S: Clone, X: KeyExtractor> Clone for ClientRateLimit<S, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            on_limit: self.on_limit,
        }
    }
}

impl<S: fmt::Debug, X: KeyExtractor> fmt::Debug for ClientRateLimit<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .field("on_limit", &self.on_limit)
            .finish()
    }
}

impl<S, X: KeyExtractor> ClientRateLimit<S, X> {
    pub(crate) fn from_shared(inner: S, shared: Shared<X>, on_limit: OnLimit) -> Self {
        Self {
            inner,
            shared,
            on_limit,
        }
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

impl<S, X, B> Service<Request<B>> for ClientRateLimit<S, X>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
    X: KeyExtractor,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ClientResponseFuture<S, B, X>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(target) = self.shared.target(&RequestHead::of(&req)) else {
            return ClientResponseFuture::failed(Box::new(MissingRateLimitKey));
        };
        match self.shared.check(&target) {
            Ok(_) => ClientResponseFuture::called(self.inner.call(req)),
            Err(denied) => match self.on_limit {
                OnLimit::Wait { max } if denied.retry_after <= max => {
                    let clone = self.inner.clone();
                    let ready = std::mem::replace(&mut self.inner, clone);
                    ClientResponseFuture::waiting(
                        ready,
                        req,
                        self.shared.clone(),
                        target,
                        denied.retry_after,
                        max,
                    )
                }
                _ => ClientResponseFuture::failed(Box::new(RateLimited {
                    retry_after: denied.retry_after,
                    limit: denied.limit,
                })),
            },
        }
    }
}
