//! A client tower layer that fails closed on responses not delivered over a pinned connection.

use std::future::Future;
use std::pin::Pin as StdPin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::client::PinnedPeer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Requires every response to come over a connection made by
/// [`PinnedConnector`](crate::PinnedConnector) (its [`PinnedPeer`] in the response
/// extensions) and, with [`RequirePinnedLayer::require_match`], over one whose pin matched.
///
/// The [`PinnedPeer`] stays in the response extensions for the caller to read.
#[derive(Clone, Debug, Default)]
pub struct RequirePinnedLayer {
    require_match: bool,
}

impl RequirePinnedLayer {
    /// Requires a pinned connection (a matched pin or an unpinned host under standard
    /// validation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Also requires that the host was pinned and a pin matched.
    pub fn require_match(mut self) -> Self {
        self.require_match = true;
        self
    }
}

impl<S> Layer<S> for RequirePinnedLayer {
    type Service = RequirePinned<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequirePinned {
            inner,
            require_match: self.require_match,
        }
    }
}

/// The service made by [`RequirePinnedLayer`].
#[derive(Clone, Debug)]
pub struct RequirePinned<S> {
    inner: S,
    require_match: bool,
}

impl<S> RequirePinned<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            require_match: false,
        }
    }

    /// The layer.
    pub fn layer() -> RequirePinnedLayer {
        RequirePinnedLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequirePinned<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
            require_match: self.require_match,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequirePinned`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        require_match: bool,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx)).map_err(Into::into)?;
        match res.extensions().get::<PinnedPeer>() {
            None => Poll::Ready(Err(NotPinned { unmatched: false }.into())),
            Some(peer) if *this.require_match && peer.matched_pin().is_none() => {
                Poll::Ready(Err(NotPinned { unmatched: true }.into()))
            }
            Some(_) => Poll::Ready(Ok(res)),
        }
    }
}

/// A response arrived over a connection that was not pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotPinned {
    unmatched: bool,
}

impl std::fmt::Display for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.unmatched {
            f.write_str("response came over a connection whose host has no matching pin; pin the host in the policy")
        } else {
            f.write_str("response did not come over a pinned connection; build the client with PinnedTls::connector()")
        }
    }
}

impl std::error::Error for NotPinned {}
