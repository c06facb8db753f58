use std::{
    future::Future,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    ReplayBody,
    service::{is_invalid_token, replay},
};
use crate::{
    BoxError,
    secret::SecretStore,
    token::{AccessToken, Refresh, TokenSource},
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pub(crate) struct Ctx<Svc, R, S> {
    pub(crate) source: TokenSource<R, S>,
    pub(crate) token: AccessToken,
    pub(crate) replay: Option<(Svc, http::request::Parts)>,
}

pin_project! {
    /// Response future of [`Bearer`](super::Bearer).
    pub struct ResponseFuture<Svc, R, S, B, ResBody>
    where
        Svc: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<Svc::Future, Svc, R, S, ResBody>,
        _body: PhantomData<fn() -> B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Svc, R, S, ResBody> {
        Inner {
            #[pin]
            fut: F,
            ctx: Option<Ctx<Svc, R, S>>,
        },
        Boxed {
            fut: BoxFuture<Response<ResBody>>,
        },
        Error {
            err: Option<BoxError>,
        },
    }
}

impl<Svc, R, S, B, ResBody> ResponseFuture<Svc, R, S, B, ResBody>
where
    Svc: Service<Request<ReplayBody<B>>>,
{
    pub(crate) fn inner(fut: Svc::Future, ctx: Ctx<Svc, R, S>) -> Self {
        Self {
            state: State::Inner {
                fut,
                ctx: Some(ctx),
            },
            _body: PhantomData,
        }
    }

    pub(crate) fn boxed(fut: BoxFuture<Response<ResBody>>) -> Self {
        Self {
            state: State::Boxed { fut },
            _body: PhantomData,
        }
    }

    pub(crate) fn error(err: BoxError) -> Self {
        Self {
            state: State::Error { err: Some(err) },
            _body: PhantomData,
        }
    }
}

impl<Svc, R, S, B, ResBody> std::fmt::Debug for ResponseFuture<Svc, R, S, B, ResBody>
where
    Svc: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<Svc, R, S, B, ResBody> Future for ResponseFuture<Svc, R, S, B, ResBody>
where
    Svc: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Send + 'static,
    Svc::Future: Send,
    Svc::Error: Into<BoxError>,
    B: Send + 'static,
    R: Refresh,
    S: SecretStore,
    ResBody: Send + 'static,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { fut, ctx } => {
                    let resp = ready!(fut.poll(cx)).map_err(Into::into)?;
                    if !is_invalid_token(&resp) {
                        return Poll::Ready(Ok(resp));
                    }
                    let Some(ctx) = ctx.take() else {
                        return Poll::Ready(Ok(resp));
                    };
                    match ctx.replay {
                        Some((svc, head)) => {
                            let fut = replay::<Svc, R, S, B, ResBody>(
                                svc,
                                ctx.source,
                                ctx.token,
                                head,
                                Bytes::new(),
                            );
                            this.state.set(State::Boxed { fut: Box::pin(fut) });
                        }
                        None => {
                            ctx.source.mark_rejected(&ctx.token);
                            return Poll::Ready(Ok(resp));
                        }
                    }
                }
                StateProj::Boxed { fut } => return fut.as_mut().poll(cx),
                StateProj::Error { err } => {
                    return Poll::Ready(Err(err
                        .take()
                        .unwrap_or_else(|| "response future polled after completion".into())));
                }
            }
        }
    }
}
