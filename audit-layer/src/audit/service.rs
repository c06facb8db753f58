use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use time::OffsetDateTime;
use tokio::time::Instant;
use tower_service::Service;

use super::future::{Pending, PendingGuard, RequestSlot, ResponseFuture};
use super::layer::{AuditLayer, Config};
use crate::auditor::Auditor;
use crate::record::Side;
use crate::schema::{MAX_VALUE_LEN, truncate};

/// Middleware that produces one [`AuditRecord`](crate::AuditRecord) per request.
///
/// See the [module docs](crate::audit) for what it records.
#[derive(Clone)]
pub struct Audit<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("inner", &self.inner)
            .field("side", &self.config.side)
            .finish_non_exhaustive()
    }
}

impl<S> Audit<S> {
    /// Wraps `inner`, reporting to `auditor`, on `side`.
    pub fn new(inner: S, auditor: Auditor, side: Side) -> Self {
        AuditLayer::new(auditor, side).layer_service(inner)
    }

    /// A layer wrapping services with [`Audit`].
    pub fn layer(auditor: Auditor, side: Side) -> AuditLayer {
        AuditLayer::new(auditor, side)
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

impl AuditLayer {
    fn layer_service<S>(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The host of the server called: the URI's, else the `Host` header's, without the port.
fn server_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(h) = req.uri().host() {
        return Some(h.trim_start_matches('[').trim_end_matches(']').to_owned());
    }
    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    Some(host.to_owned())
}

fn cut(mut s: String) -> String {
    truncate(&mut s, MAX_VALUE_LEN);
    s
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        let start = Instant::now();
        let timestamp = OffsetDateTime::now_utc();
        let method = cut(req.method().as_str().to_owned());
        let path = cut(req.uri().path().to_owned());
        let (server_address, client_address) = match config.side {
            Side::Client => (server_host(&req).map(cut), None),
            Side::Server => (None, config.peer.peer(req.extensions()).map(cut)),
        };
        let identity = config.identity.identity(req.extensions()).map(cut);
        let span = tracing::info_span!(
            target: "portcullis::audit",
            "portcullis.request",
            "portcullis.side" = config.side.as_str(),
            "http.request.method" = method.as_str(),
            "url.path" = path.as_str(),
            "server.address" = server_address.as_deref(),
            "client.address" = client_address.as_deref(),
            "user.id" = identity.as_deref(),
        );
        let shared = &config.auditor.shared;
        let slot = span
            .id()
            .filter(|id| shared.open_request(id))
            .map(|id| RequestSlot::new(shared.clone(), id));
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner,
            span,
            pending: PendingGuard(Some(Pending {
                config: config.clone(),
                start,
                timestamp,
                method,
                path,
                server_address,
                client_address,
                identity,
                slot,
            })),
        }
    }
}
