use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Request;
use http::request::Parts;
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::layer::SignConfig;
use super::service::{into_request, sign_parts};
use crate::body::{Collect, CollectError};
use crate::error::{BoxError, SignError};

pin_project! {
    /// Response future of [`Sign`](super::Sign).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        state: State<S, B, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F> {
        Collecting {
            #[pin]
            collect: Collect<B>,
            parts: Option<Parts>,
            inner: Option<S>,
            config: Arc<SignConfig>,
        },
        Calling {
            #[pin]
            fut: F,
        },
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
{
    pub(crate) fn collecting(
        collect: Collect<B>,
        parts: Parts,
        inner: S,
        config: Arc<SignConfig>,
    ) -> Self {
        Self {
            state: State::Collecting {
                collect,
                parts: Some(parts),
                inner: Some(inner),
                config,
            },
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Collecting {
                    collect,
                    parts,
                    inner,
                    config,
                } => {
                    let (body, digests) = match ready!(collect.poll_collect(cx)) {
                        Ok(c) => c,
                        Err(CollectError::TooLarge) => {
                            tracing::warn!(
                                target: "portcullis::attest",
                                {
                                    "event.kind" = "event",
                                    "event.category" = "web",
                                    "event.action" = "request.sign",
                                    "event.outcome" = "failure",
                                    "event.reason" = "body_too_large",
                                },
                                "request body over the signing cap; request not sent"
                            );
                            return Poll::Ready(Err(SignError::BodyTooLarge {
                                limit: config.max_body,
                            }
                            .into()));
                        }
                        Err(CollectError::Body(e)) => {
                            return Poll::Ready(Err(SignError::Body(e).into()));
                        }
                    };
                    let (Some(mut p), Some(mut svc)) = (parts.take(), inner.take()) else {
                        return Poll::Ready(Err("sign future polled after completion".into()));
                    };
                    if let Err(e) = sign_parts(config, &mut p, body.len(), digests) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let fut = svc.call(into_request(p, body));
                    this.state.set(State::Calling { fut });
                }
                StateProj::Calling { fut } => return fut.poll(cx).map_err(Into::into),
            }
        }
    }
}
