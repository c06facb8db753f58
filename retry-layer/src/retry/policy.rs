//! The retry decision, as a tower [`Policy`].

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};
use tokio::time::Instant;
use tower::BoxError;
use tower::retry::Policy;
use tower::retry::backoff::MakeBackoff;

use super::backoff::FullJitterBackoff;
use super::body::ReplayBody;
use super::layer::Config;
use crate::classify::{Outcome, classify_error, classify_status, is_security_failure};

/// The attempt number of a request (1 for the first call), put into the request extensions
/// before every call of the inner service, so layers below (a signer, a logger) can see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(u32);

impl Attempt {
    pub(crate) fn new(n: u32) -> Self {
        Self(n)
    }

    /// The attempt number, from 1.
    pub fn number(self) -> u32 {
        self.0
    }

    /// Whether this call repeats an earlier one.
    pub fn is_retry(self) -> bool {
        self.0 > 1
    }
}

/// Per-request context carried in the extensions (private to the crate).
#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    pub(crate) deadline: Option<Instant>,
    pub(crate) overall: Option<Duration>,
}

mod sealed {
    pub trait Sealed {}
}

/// A response whose status and headers the retry policy can read (`http::Response<B>`).
pub trait HttpResponse: sealed::Sealed {
    /// The status code.
    fn status(&self) -> StatusCode;
    /// The headers.
    fn headers(&self) -> &HeaderMap;
}

impl<B> sealed::Sealed for Response<B> {}

impl<B> HttpResponse for Response<B> {
    fn status(&self) -> StatusCode {
        Response::status(self)
    }
    fn headers(&self) -> &HeaderMap {
        Response::headers(self)
    }
}

/// The tower [`Policy`] of [`RetryLayer`](super::RetryLayer): classifies every outcome,
/// retries only transient failures of replayable requests, with full-jitter backoff, within
/// the attempt limit, the budget, the `Retry-After` cap and the overall deadline.
///
/// It can also be used directly with `tower::retry::RetryLayer` on services that take
/// `Request<ReplayBody<B>>`.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    config: Arc<Config>,
    backoff: FullJitterBackoff,
    attempts: u32,
}

impl RetryPolicy {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        let backoff = config.backoff.clone().make_backoff();
        Self {
            config,
            backoff,
            attempts: 0,
        }
    }
}

impl<B, Res> Policy<Request<ReplayBody<B>>, Res, BoxError> for RetryPolicy
where
    Res: HttpResponse,
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<ReplayBody<B>>,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        self.attempts += 1;
        if self.attempts == 1 {
            self.config.budget.deposit();
        }
        let outcome = match result {
            Ok(res) => classify_status(res.status(), res.headers()),
            Err(e) => match &self.config.extra_transient {
                Some(extra) if !is_security_failure(&**e) && extra(&**e) => {
                    Outcome::Transient { retry_after: None }
                }
                _ => classify_error(&**e),
            },
        };
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        let retry_after = match outcome {
            Outcome::Success => return None,
            Outcome::Final { reason } => {
                tracing::debug!(
                    target: "portcullis::retry",
                    {"event.kind" = "event",
                    "event.category" = "network",
                    "event.action" = "retry.final",
                    "event.outcome" = "failure",
                    "event.reason" = reason,
                    "http.request.method" = %req.method(),
                    "url.path" = req.uri().path(),
                    "http.response.status_code" = status,
                    attempt = self.attempts},
                    "final failure, not retried"
                );
                return None;
            }
            Outcome::Transient { retry_after } => retry_after,
        };
        let give_up = |reason: &'static str| {
            tracing::info!(
                target: "portcullis::retry",
                {"event.kind" = "event",
                "event.category" = "network",
                "event.action" = "retry.give_up",
                "event.outcome" = "failure",
                "event.reason" = reason,
                "http.request.method" = %req.method(),
                "url.path" = req.uri().path(),
                "http.response.status_code" = status,
                attempt = self.attempts},
                "transient failure, not retried"
            );
        };
        if self.attempts >= self.config.max_attempts {
            give_up("maximum number of attempts reached");
            return None;
        }
        let mut delay = self.backoff.next_delay();
        if let Some(asked) = retry_after {
            if asked > self.config.max_retry_after {
                give_up("retry-after is longer than the configured maximum");
                return None;
            }
            delay = delay.max(asked);
        }
        let deadline = req
            .extensions()
            .get::<RequestContext>()
            .and_then(|c| c.deadline);
        if let Some(deadline) = deadline
            && Instant::now() + delay >= deadline
        {
            give_up("next attempt would start after the deadline");
            return None;
        }
        if !self.config.budget.withdraw() {
            give_up("retry budget exhausted");
            return None;
        }
        let next = self.attempts + 1;
        req.extensions_mut().insert(Attempt::new(next));
        tracing::info!(
            target: "portcullis::retry",
            {"event.kind" = "event",
            "event.category" = "network",
            "event.action" = "retry.attempt",
            "event.outcome" = "unknown",
            "http.request.method" = %req.method(),
            "url.path" = req.uri().path(),
            "http.response.status_code" = status,
            attempt = next,
            delay_ms = delay.as_millis() as u64},
            "retrying after a transient failure"
        );
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        let body = req.body().try_clone()?;
        let mut clone = Request::new(body);
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}
