use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

pin_project! {
    /// Response future of [`RequireBearer`](super::RequireBearer).
    pub struct ResponseFuture<F, ResBody, E> {
        #[pin]
        state: State<F, ResBody, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, ResBody, E> {
        Inner {
            #[pin]
            fut: F,
        },
        Respond {
            resp: Option<Response<ResBody>>,
        },
        Boxed {
            fut: BoxFuture<Response<ResBody>, E>,
        },
    }
}

impl<F, ResBody, E> ResponseFuture<F, ResBody, E> {
    pub(crate) fn inner(fut: F) -> Self {
        Self {
            state: State::Inner { fut },
        }
    }

    pub(crate) fn respond(resp: Response<ResBody>) -> Self {
        Self {
            state: State::Respond { resp: Some(resp) },
        }
    }

    pub(crate) fn boxed(fut: BoxFuture<Response<ResBody>, E>) -> Self {
        Self {
            state: State::Boxed { fut },
        }
    }
}

impl<F, ResBody, E> std::fmt::Debug for ResponseFuture<F, ResBody, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F, ResBody, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut } => fut.poll(cx),
            StateProj::Respond { resp } => match resp.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            StateProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}
