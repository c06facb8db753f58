use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower_service::Service;

use super::{BearerLayer, ReplayBody, ResponseFuture, future::Ctx, layer::DEFAULT_REPLAY_CAP};
use crate::{
    BoxError,
    header::parse_www_authenticate,
    secret::SecretStore,
    token::{AccessToken, Refresh, TokenSource},
};

/// The service made by [`BearerLayer`].
pub struct Bearer<Svc, R, S> {
    pub(crate) inner: Svc,
    pub(crate) source: TokenSource<R, S>,
    pub(crate) replay_cap: usize,
}

impl<Svc, R, S> Bearer<Svc, R, S> {
    /// Wraps `inner`, drawing tokens from `source`.
    pub fn new(inner: Svc, source: TokenSource<R, S>) -> Self {
        Self {
            inner,
            source,
            replay_cap: DEFAULT_REPLAY_CAP,
        }
    }

    /// A [`BearerLayer`] for `source`.
    pub fn layer(source: TokenSource<R, S>) -> BearerLayer<R, S> {
        BearerLayer::new(source)
    }

    /// See [`BearerLayer::replay_body_cap`].
    pub fn replay_body_cap(mut self, bytes: usize) -> Self {
        self.replay_cap = bytes;
        self
    }

    /// The inner service.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> Svc {
        self.inner
    }
}

impl<Svc: Clone, R, S> Clone for Bearer<Svc, R, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            source: self.source.clone(),
            replay_cap: self.replay_cap,
        }
    }
}

impl<Svc: std::fmt::Debug, R, S> std::fmt::Debug for Bearer<Svc, R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer")
            .field("inner", &self.inner)
            .field("source", &self.source)
            .field("replay_cap", &self.replay_cap)
            .finish()
    }
}

/// Builds the request for one attempt from the saved head.
pub(crate) fn build<B>(
    head: &http::request::Parts,
    token: &AccessToken,
    body: ReplayBody<B>,
) -> Result<Request<ReplayBody<B>>, BoxError> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    *req.extensions_mut() = head.extensions.clone();
    let value = token
        .header()
        .ok_or_else(|| BoxError::from("access token is not a valid header value"))?;
    req.headers_mut()
        .insert(header::AUTHORIZATION, value.clone());
    Ok(req)
}

/// Whether the response is a 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
pub(crate) fn is_invalid_token<B>(resp: &Response<B>) -> bool {
    resp.status() == StatusCode::UNAUTHORIZED
        && resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| parse_www_authenticate(v.as_bytes()))
            .any(|c| c.is_invalid_token())
}

impl<Svc, R, S, B, ResBody> Service<Request<B>> for Bearer<Svc, R, S>
where
    Svc: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    Svc::Future: Send,
    Svc::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    R: Refresh,
    S: SecretStore,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<Svc, R, S, B, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (head, body) = req.into_parts();
        let empty = body.is_end_stream();
        let bufferable = !empty
            && body
                .size_hint()
                .upper()
                .is_some_and(|n| n <= self.replay_cap as u64);
        let source = self.source.clone();

        if !bufferable && let Some(token) = source.cached() {
            // Fast path: a cached token and nothing to buffer.
            let body = if empty {
                ReplayBody::buffered(Bytes::new())
            } else {
                ReplayBody::streaming(body)
            };
            let req = match build(&head, &token, body) {
                Ok(req) => req,
                Err(e) => return ResponseFuture::error(e),
            };
            let fut = inner.call(req);
            let ctx = Ctx {
                source,
                token,
                replay: empty.then_some((inner, head)),
            };
            return ResponseFuture::inner(fut, ctx);
        }

        let cap = self.replay_cap;
        ResponseFuture::boxed(Box::pin(async move {
            let token = source.token().await?;
            let (body, saved) = if empty {
                (ReplayBody::buffered(Bytes::new()), Some(Bytes::new()))
            } else if bufferable {
                let bytes = Limited::new(body, cap).collect().await?.to_bytes();
                (ReplayBody::buffered(bytes.clone()), Some(bytes))
            } else {
                (ReplayBody::streaming(body), None)
            };
            let req = build(&head, &token, body)?;
            std::future::poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let resp = inner.call(req).await.map_err(Into::into)?;
            if !is_invalid_token(&resp) {
                return Ok(resp);
            }
            match saved {
                Some(bytes) => replay(inner, source, token, head, bytes).await,
                None => {
                    source.mark_rejected(&token);
                    Ok(resp)
                }
            }
        }))
    }
}

/// Refreshes (once, shared) and sends the request a second time.
pub(crate) async fn replay<Svc, R, S, B, ResBody>(
    mut inner: Svc,
    source: TokenSource<R, S>,
    rejected: AccessToken,
    head: http::request::Parts,
    body: Bytes,
) -> Result<Response<ResBody>, BoxError>
where
    Svc: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
    Svc::Error: Into<BoxError>,
    R: Refresh,
    S: SecretStore,
{
    let token = source.token_after_rejection(&rejected).await?;
    tracing::info!(
        target: "portcullis::token",
        {
            "event.kind" = "event",
            "event.category" = "authentication",
            "event.action" = "bearer.replay",
            "event.outcome" = "success",
            "http.request.method" = %head.method,
            "url.path" = head.uri.path(),
        },
        "server answered 401 invalid_token: replaying once with a refreshed token"
    );
    let req = build(&head, &token, ReplayBody::buffered(body))?;
    std::future::poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    inner.call(req).await.map_err(Into::into)
}
