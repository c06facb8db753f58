use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{Config, EnforceLayer};
use crate::hook::{PenaltyBox, Verdict};

/// Middleware refusing requests from penalized identities and peers.
///
/// See the [module docs](crate::enforce).
#[derive(Clone)]
pub struct Enforce<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for Enforce<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enforce")
            .field("inner", &self.inner)
            .field("penalties", &self.config.penalties)
            .finish_non_exhaustive()
    }
}

impl<S> Enforce<S> {
    /// Wraps `inner`, enforcing `penalties`.
    pub fn new(inner: S, penalties: PenaltyBox) -> Self {
        EnforceLayer::new(penalties).layer(inner)
    }

    /// A layer wrapping services with [`Enforce`].
    pub fn layer(penalties: PenaltyBox) -> EnforceLayer {
        EnforceLayer::new(penalties)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Enforce<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let identity = self.config.identity.identity(req.extensions());
        let peer = self.config.peer.peer(req.extensions());
        let verdict = self
            .config
            .penalties
            .check(identity.as_deref(), peer.as_deref());
        let (status, reason, retry_after) = match verdict {
            Verdict::Allow => return ResponseFuture::inner(self.inner.call(req)),
            Verdict::Blocked { retry_after } => (StatusCode::FORBIDDEN, "blocked", retry_after),
            Verdict::Throttled { retry_after } => {
                (StatusCode::TOO_MANY_REQUESTS, "throttled", retry_after)
            }
        };
        tracing::warn!(
            target: "portcullis::audit",
            {
            "event.kind" = "alert",
            "event.category" = "intrusion_detection",
            "event.action" = "policy.enforce",
            "event.outcome" = "failure",
            "event.reason" = reason,
            "user.id" = identity.as_deref(),
            "client.address" = peer.as_deref(),
            "http.request.method" = req.method().as_str(),
            "url.path" = req.uri().path(),
            "http.response.status_code" = status.as_u16(),
            },
            "request refused: {reason}"
        );
        let mut res = Response::new(ResBody::default());
        *res.status_mut() = status;
        let secs = retry_after_secs(retry_after);
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        ResponseFuture::refused(res)
    }
}
