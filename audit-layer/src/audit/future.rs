use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::span;

use super::layer::Config;
use crate::auditor::{RequestEvents, Shared};
use crate::record::AuditRecord;
use crate::schema::{MAX_VALUE_LEN, truncate};

/// Closes a request's event buffer when the request finishes or is dropped.
pub(crate) struct RequestSlot {
    shared: Arc<Shared>,
    id: Option<span::Id>,
}

impl RequestSlot {
    pub(crate) fn new(shared: Arc<Shared>, id: span::Id) -> Self {
        RequestSlot {
            shared,
            id: Some(id),
        }
    }

    fn take(&mut self) -> RequestEvents {
        match self.id.take() {
            Some(id) => self.shared.close_request(&id),
            None => RequestEvents::default(),
        }
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.shared.close_request(&id);
        }
    }
}

pub(crate) struct Pending {
    pub(crate) config: Arc<Config>,
    pub(crate) start: Instant,
    pub(crate) timestamp: OffsetDateTime,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) server_address: Option<String>,
    pub(crate) client_address: Option<String>,
    pub(crate) identity: Option<String>,
    pub(crate) slot: Option<RequestSlot>,
}

pin_project! {
    /// Response future of [`Audit`](super::Audit).
    pub struct ResponseFuture<F> {
        #[pin]
        pub(crate) inner: F,
        pub(crate) span: tracing::Span,
        pub(crate) pending: Option<Pending>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        if let Some(mut p) = this.pending.take() {
            let duration = p.start.elapsed();
            let events = p.slot.as_mut().map(RequestSlot::take).unwrap_or_default();
            let (status, error, response_identity) = match &result {
                Ok(res) => (
                    Some(res.status().as_u16()),
                    None,
                    p.config.identity.identity(res.extensions()),
                ),
                Err(e) => {
                    let mut msg = e.to_string();
                    truncate(&mut msg, MAX_VALUE_LEN);
                    (None, Some(msg), None)
                }
            };
            let user_id = p.identity.take().or(response_identity).or_else(|| {
                events
                    .events
                    .iter()
                    .find_map(|e| e.user_id().map(str::to_owned))
            });
            let record = AuditRecord {
                timestamp: p.timestamp,
                side: p.config.side,
                method: p.method,
                path: p.path,
                server_address: p.server_address,
                client_address: p.client_address,
                user_id,
                status,
                error,
                duration,
                events: events.events,
                dropped_events: events.dropped,
            };
            p.config.auditor.shared.finish(&record);
        }
        Poll::Ready(result)
    }
}
