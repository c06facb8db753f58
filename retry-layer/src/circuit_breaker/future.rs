use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::error::CircuitOpen;
use super::state::{Breaker, Permit, Verdict};
use crate::classify::is_transport_error;
use crate::retry::HttpResponse;

/// Records `Ignored` if the call is dropped before it completes.
#[derive(Debug)]
struct Guard {
    breaker: Arc<Breaker>,
    permit: Option<Permit>,
}

impl Guard {
    fn record(&mut self, verdict: Verdict) {
        if let Some(permit) = self.permit.take() {
            self.breaker.record(permit, verdict);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.record(Verdict::Ignored);
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Rejected { open: Option<CircuitOpen> },
        Called { #[pin] future: F, guard: Guard },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F, breaker: Arc<Breaker>, permit: Permit) -> Self {
        Self {
            kind: Kind::Called {
                future,
                guard: Guard {
                    breaker,
                    permit: Some(permit),
                },
            },
        }
    }

    pub(crate) fn rejected(open: CircuitOpen) -> Self {
        Self {
            kind: Kind::Rejected { open: Some(open) },
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    R: HttpResponse,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { open } => Poll::Ready(Err(match open.take() {
                Some(open) => Box::new(open),
                None => "circuit breaker future polled after completion".into(),
            })),
            KindProj::Called { future, guard } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                let verdict = match &result {
                    Ok(res) if res.status().is_server_error() => Verdict::Failure,
                    Ok(_) => Verdict::Success,
                    Err(e) if is_transport_error(&**e) => Verdict::Failure,
                    Err(_) => Verdict::Ignored,
                };
                guard.record(verdict);
                Poll::Ready(result)
            }
        }
    }
}
