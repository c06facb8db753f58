use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower_service::Service;

use super::error::RateLimited;
use super::key::KeyExtractor;
use super::layer::{Shared, Target};
use super::limiter::Allowed;
use super::service::allowed_headers;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Answered { response: Option<Response<B>> },
        Called { #[pin] future: F, allowed: Allowed },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn answered(response: Response<B>) -> Self {
        Self {
            kind: Kind::Answered {
                response: Some(response),
            },
        }
    }

    pub(crate) fn called(future: F, allowed: Allowed) -> Self {
        Self {
            kind: Kind::Called { future, allowed },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Answered { response } => {
                // Polled again after completion: answer an empty 429 rather than panic.
                Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    let mut r = Response::new(B::default());
                    *r.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                    r
                })))
            }
            KindProj::Called { future, allowed } => {
                let mut res = ready!(future.poll(cx))?;
                allowed_headers(res.headers_mut(), allowed);
                Poll::Ready(Ok(res))
            }
        }
    }
}

pin_project! {
    /// Response future of [`ClientRateLimit`](super::ClientRateLimit).
    pub struct ClientResponseFuture<S, B, X>
    where
        S: Service<Request<B>>,
        X: KeyExtractor,
    {
        #[pin]
        state: ClientState<S, B, X>,
    }
}

pin_project! {
    #[project = ClientStateProj]
    enum ClientState<S, B, X>
    where
        S: Service<Request<B>>,
        X: KeyExtractor,
    {
        Failed { error: Option<BoxError> },
        Called { #[pin] future: S::Future },
        Waiting {
            #[pin]
            sleep: Sleep,
            inner: Option<S>,
            req: Option<Request<B>>,
            shared: Shared<X>,
            target: Target<X::Key>,
            give_up_at: Instant,
        },
    }
}

impl<S, B, X> fmt::Debug for ClientResponseFuture<S, B, X>
where
    S: Service<Request<B>>,
    X: KeyExtractor,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<S, B, X> ClientResponseFuture<S, B, X>
where
    S: Service<Request<B>>,
    X: KeyExtractor,
{
    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            state: ClientState::Failed { error: Some(error) },
        }
    }

    pub(crate) fn called(future: S::Future) -> Self {
        Self {
            state: ClientState::Called { future },
        }
    }

    pub(crate) fn waiting(
        inner: S,
        req: Request<B>,
        shared: Shared<X>,
        target: Target<X::Key>,
        wait: Duration,
        max: Duration,
    ) -> Self {
        let now = Instant::now();
        Self {
            state: ClientState::Waiting {
                sleep: tokio::time::sleep_until(now + wait),
                inner: Some(inner),
                req: Some(req),
                shared,
                target,
                give_up_at: now + max,
            },
        }
    }
}

impl<S, B, X> Future for ClientResponseFuture<S, B, X>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    X: KeyExtractor,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                ClientStateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "rate limit future polled after completion".into())));
                }
                ClientStateProj::Called { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
                ClientStateProj::Waiting {
                    mut sleep,
                    inner,
                    req,
                    shared,
                    target,
                    give_up_at,
                } => {
                    ready!(sleep.as_mut().poll(cx));
                    match shared.check(target) {
                        Ok(_) => {
                            let (Some(mut inner), Some(req)) = (inner.take(), req.take()) else {
                                return Poll::Ready(Err(
                                    "rate limit future polled after completion".into(),
                                ));
                            };
                            let future = inner.call(req);
                            this.state.set(ClientState::Called { future });
                        }
                        Err(denied) => {
                            let next = Instant::now() + denied.retry_after;
                            if next > *give_up_at {
                                let error: BoxError = Box::new(RateLimited {
                                    retry_after: denied.retry_after,
                                    limit: denied.limit,
                                });
                                this.state.set(ClientState::Failed { error: Some(error) });
                            } else {
                                sleep.reset(next);
                            }
                        }
                    }
                }
            }
        }
    }
}
