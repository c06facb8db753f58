use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::request::Parts;
use http_body::Body;
use http_body_util::Limited;
use http_body_util::combinators::Collect;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower_service::Service;

use super::body::ReplayBody;
use super::error::{AttemptTimedOut, DeadlineExceeded};
use super::policy::{HttpResponse, RetryPolicy};
use super::service::AttemptService;

type Req<B> = Request<ReplayBody<B>>;
type TowerRetry<S> = tower::retry::Retry<RetryPolicy, AttemptService<S>>;

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Req<B>>,
        S::Error: Into<BoxError>,
        S::Response: HttpResponse,
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Req<B>>,
        S::Error: Into<BoxError>,
        S::Response: HttpResponse,
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        Buffering {
            #[pin]
            collect: Collect<Limited<B>>,
            parts: Option<Parts>,
            retry: Option<TowerRetry<S>>,
        },
        Running {
            #[pin]
            future: tower::retry::future::ResponseFuture<RetryPolicy, AttemptService<S>, Req<B>>,
        },
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Req<B>>,
    S::Error: Into<BoxError>,
    S::Response: HttpResponse,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Req<B>> + Clone,
    S::Error: Into<BoxError>,
    S::Response: HttpResponse,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    pub(crate) fn running(mut retry: TowerRetry<S>, req: Req<B>) -> Self {
        Self {
            state: State::Running {
                future: retry.call(req),
            },
        }
    }

    pub(crate) fn buffering(
        retry: TowerRetry<S>,
        parts: Parts,
        collect: Collect<Limited<B>>,
    ) -> Self {
        Self {
            state: State::Buffering {
                collect,
                parts: Some(parts),
                retry: Some(retry),
            },
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Req<B>> + Clone,
    S::Error: Into<BoxError>,
    S::Response: HttpResponse,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering {
                    collect,
                    parts,
                    retry,
                } => {
                    let collected = ready!(collect.poll(cx))?;
                    let (Some(parts), Some(mut retry)) = (parts.take(), retry.take()) else {
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    let req =
                        Request::from_parts(parts, ReplayBody::buffered(collected.to_bytes()));
                    let future = retry.call(req);
                    this.state.set(State::Running { future });
                }
                StateProj::Running { future } => return future.poll(cx),
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    Timeout,
    Deadline,
}

pin_project! {
    /// Response future of one attempt, bounded by the attempt timeout and the deadline.
    #[derive(Debug)]
    pub struct AttemptFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        limit: Limit,
        timeout: Duration,
        overall: Duration,
    }
}

impl<F> AttemptFuture<F> {
    pub(crate) fn new(
        inner: F,
        until: Option<Instant>,
        limit: Limit,
        timeout: Duration,
        overall: Duration,
    ) -> Self {
        Self {
            inner,
            sleep: until.map(tokio::time::sleep_until),
            limit,
            timeout,
            overall,
        }
    }
}

impl<F, T, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            return Poll::Ready(Err(match this.limit {
                Limit::Timeout => Box::new(AttemptTimedOut {
                    after: *this.timeout,
                }) as BoxError,
                Limit::Deadline => Box::new(DeadlineExceeded {
                    deadline: *this.overall,
                }),
            }));
        }
        Poll::Pending
    }
}
