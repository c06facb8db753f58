use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header::CONTENT_LENGTH};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;
use tower::BoxError;
use tower_service::Service;

use super::RetryLayer;
use super::backoff::random_hex128;
use super::body::ReplayBody;
use super::future::{AttemptFuture, ResponseFuture};
use super::layer::Config;
use super::policy::{Attempt, HttpResponse, RequestContext, RetryPolicy};

/// The `Idempotency-Key` header name.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The retry middleware made by [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Retry<S> {
    /// Wraps `inner` with the default [`RetryLayer`] settings.
    pub fn new(inner: S) -> Self {
        RetryLayer::new().layer_inner(inner)
    }

    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// A [`RetryLayer`] with the default settings.
    pub fn layer() -> RetryLayer {
        RetryLayer::new()
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

impl RetryLayer {
    fn layer_inner<S>(&self, inner: S) -> Retry<S> {
        tower_layer::Layer::layer(self, inner)
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn skipped(parts: &http::request::Parts, reason: &'static str) {
    tracing::info!(
        target: "portcullis::retry",
        {"event.kind" = "event",
        "event.category" = "network",
        "event.action" = "retry.disabled",
        "event.reason" = reason,
        "http.request.method" = %parts.method,
        "url.path" = parts.uri.path()},
        "request sent once, never retried"
    );
}

impl<S, B> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>> + Clone,
    S::Error: Into<BoxError>,
    S::Response: HttpResponse,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let config = &self.config;
        let retry = tower::retry::Retry::new(
            RetryPolicy::new(config.clone()),
            AttemptService {
                inner: ready,
                timeout: config.attempt_timeout,
            },
        );

        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(Attempt::new(1));
        parts.extensions.insert(RequestContext {
            deadline: config.deadline.map(|d| Instant::now() + d),
            overall: config.deadline,
        });

        let mut keyed = parts.headers.contains_key(IDEMPOTENCY_KEY);
        if !keyed
            && !is_idempotent(&parts.method)
            && config.add_idempotency_key
            && let Ok(value) = HeaderValue::from_str(&random_hex128())
        {
            parts.headers.insert(IDEMPOTENCY_KEY, value);
            keyed = true;
        }
        if config.max_attempts <= 1 {
            return ResponseFuture::running(
                retry,
                Request::from_parts(parts, ReplayBody::streaming(body)),
            );
        }
        if !keyed && !is_idempotent(&parts.method) {
            skipped(
                &parts,
                "method is not idempotent and has no idempotency-key",
            );
            return ResponseFuture::running(
                retry,
                Request::from_parts(parts, ReplayBody::streaming(body)),
            );
        }
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let known = body.size_hint().exact().or(declared);
        match known {
            Some(len) if len <= config.max_body_bytes => ResponseFuture::buffering(
                retry,
                parts,
                Limited::new(body, config.max_body_bytes as usize).collect(),
            ),
            Some(_) => {
                skipped(&parts, "body is larger than the replay buffer cap");
                ResponseFuture::running(
                    retry,
                    Request::from_parts(parts, ReplayBody::streaming(body)),
                )
            }
            None => {
                skipped(&parts, "body is streaming with an unknown length");
                ResponseFuture::running(
                    retry,
                    Request::from_parts(parts, ReplayBody::streaming(body)),
                )
            }
        }
    }
}

/// One attempt: the inner service under the per-attempt timeout and the overall deadline.
#[derive(Clone, Debug)]
pub struct AttemptService<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S, B> Service<Request<ReplayBody<B>>> for AttemptService<S>
where
    S: Service<Request<ReplayBody<B>>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        let ctx = req.extensions().get::<RequestContext>().cloned();
        let now = Instant::now();
        let by_timeout = self.timeout.map(|t| now + t);
        let deadline = ctx.as_ref().and_then(|c| c.deadline);
        let (until, kind) = match (by_timeout, deadline) {
            (Some(t), Some(d)) if d <= t => (Some(d), super::future::Limit::Deadline),
            (Some(t), _) => (Some(t), super::future::Limit::Timeout),
            (None, Some(d)) => (Some(d), super::future::Limit::Deadline),
            (None, None) => (None, super::future::Limit::Timeout),
        };
        AttemptFuture::new(
            self.inner.call(req),
            until,
            kind,
            self.timeout.unwrap_or_default(),
            ctx.and_then(|c| c.overall).unwrap_or_default(),
        )
    }
}
