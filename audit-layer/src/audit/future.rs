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

enum Outcome<'a> {
    Response {
        status: u16,
        extensions: &'a http::Extensions,
    },
    Error(String),
}

impl Pending {
    fn finish(mut self, outcome: Outcome<'_>) {
        let duration = self.start.elapsed();
        let events = self
            .slot
            .as_mut()
            .map(RequestSlot::take)
            .unwrap_or_default();
        let (status, error, response_identity) = match outcome {
            Outcome::Response { status, extensions } => (
                Some(status),
                None,
                self.config.identity.identity(extensions),
            ),
            Outcome::Error(msg) => (None, Some(msg), None),
        };
        let user_id = self.identity.take().or(response_identity).or_else(|| {
            events
                .events
                .iter()
                .find_map(|e| e.user_id().map(str::to_owned))
        });
        let record = AuditRecord {
            timestamp: self.timestamp,
            side: self.config.side,
            method: self.method,
            path: self.path,
            server_address: self.server_address,
            client_address: self.client_address,
            user_id,
            status,
            error,
            duration,
            events: events.events,
            dropped_events: events.dropped,
        };
        self.config.auditor.shared.finish(&record);
    }
}

/// Produces a record for a request dropped before its response (a client that went away,
/// a timeout above the audit layer), so that no audited request goes unrecorded.
pub(crate) struct PendingGuard(pub(crate) Option<Pending>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.finish(Outcome::Error(String::from(
                "request cancelled before a response",
            )));
        }
    }
}

pin_project! {
    /// Response future of [`Audit`](super::Audit).
    pub struct ResponseFuture<F> {
        #[pin]
        pub(crate) inner: F,
        pub(crate) span: tracing::Span,
        pub(crate) pending: PendingGuard,
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
        if let Some(p) = this.pending.0.take() {
            let outcome = match &result {
                Ok(res) => Outcome::Response {
                    status: res.status().as_u16(),
                    extensions: res.extensions(),
                },
                Err(e) => {
                    let mut msg = e.to_string();
                    truncate(&mut msg, MAX_VALUE_LEN);
                    Outcome::Error(msg)
                }
            };
            p.finish(outcome);
        }
        Poll::Ready(result)
    }
}
