use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::DEFAULT_HEADER;
use super::verifier::{AttestationError, AttestationVerifier};
use crate::clock::{Clock, SystemClock};
use crate::replay::{ReplayCache, ReplayError, ReplayFuture};
use crate::verify::REASON_HEADER;

/// How a route treats attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AttestationMode {
    /// A valid token is required; anything else is refused with 401 (the default).
    #[default]
    Required,
    /// Report only: failures are logged as alerts and the request goes on without a proof.
    Optional,
    /// No check.
    Off,
}

struct AttestConfig {
    verifier: Arc<dyn AttestationVerifier>,
    header: HeaderName,
    default_mode: AttestationMode,
    routes: Vec<(String, AttestationMode)>,
    replay: Option<Arc<dyn ReplayCache>>,
    /// Let tokens without a `jti` through unconsumed (named opt-in).
    allow_missing_jti: bool,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for AttestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestConfig")
            .field("header", &self.header)
            .field("default_mode", &self.default_mode)
            .field("routes", &self.routes)
            .field("consume_jti", &self.replay.is_some())
            .field("allow_missing_jti", &self.allow_missing_jti)
            .finish_non_exhaustive()
    }
}

impl AttestConfig {
    /// The mode of the longest route prefix matching `path` (segment-wise), else the default.
    fn mode_for(&self, path: &str) -> AttestationMode {
        self.routes
            .iter()
            .filter(|(prefix, _)| {
                path == prefix
                    || (path.starts_with(prefix.as_str())
                        && (prefix.ends_with('/')
                            || path.as_bytes().get(prefix.len()) == Some(&b'/')))
            })
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.default_mode, |(_, m)| *m)
    }
}

/// Verifies device attestation tokens per route. See the [module docs](crate::attestation).
#[derive(Debug, Clone)]
pub struct AttestationLayer {
    config: Arc<AttestConfig>,
}

/// Builds an [`AttestationLayer`].
pub struct AttestationLayerBuilder {
    config: AttestConfig,
}

impl fmt::Debug for AttestationLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl AttestationLayer {
    /// A builder checking tokens with `verifier`; every route requires attestation unless
    /// configured otherwise.
    pub fn builder(verifier: impl AttestationVerifier) -> AttestationLayerBuilder {
        AttestationLayerBuilder {
            config: AttestConfig {
                verifier: Arc::new(verifier),
                header: HeaderName::from_static(DEFAULT_HEADER),
                default_mode: AttestationMode::Required,
                routes: Vec::new(),
                replay: None,
                allow_missing_jti: false,
                clock: Arc::new(SystemClock),
            },
        }
    }
}

impl AttestationLayerBuilder {
    /// Sets the mode for paths under `prefix` (the longest matching prefix wins).
    #[must_use]
    pub fn route(mut self, prefix: impl Into<String>, mode: AttestationMode) -> Self {
        self.config.routes.push((prefix.into(), mode));
        self
    }

    /// The mode for paths no route matches (default [`AttestationMode::Required`]).
    #[must_use]
    pub fn default_mode(mut self, mode: AttestationMode) -> Self {
        self.config.default_mode = mode;
        self
    }

    /// Reads the token from another header.
    #[must_use]
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config.header = name;
        self
    }

    /// Consumes each token's `jti` in `cache`, so a limited-use token works once.
    ///
    /// A token without a `jti` cannot be consumed, so it is refused with
    /// [`AttestationError::MissingJti`] (`attestation_jti_missing`); see
    /// [`allow_missing_jti`](Self::allow_missing_jti).
    #[must_use]
    pub fn consume_jti(mut self, cache: impl ReplayCache) -> Self {
        self.config.replay = Some(Arc::new(cache));
        self
    }

    /// With [`consume_jti`](Self::consume_jti), lets tokens without a `jti` through
    /// unconsumed: each may be replayed until it expires. For platforms that mix
    /// limited-use and plain tokens.
    #[must_use]
    pub fn allow_missing_jti(mut self) -> Self {
        self.config.allow_missing_jti = true;
        self
    }

    /// The clock for the `jti` lifetime.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config.clock = Arc::new(clock);
        self
    }

    /// Builds the layer.
    pub fn build(self) -> AttestationLayer {
        AttestationLayer {
            config: Arc::new(self.config),
        }
    }
}

impl<S> Layer<S> for AttestationLayer {
    type Service = Attestation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Attestation {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`AttestationLayer`].
#[derive(Debug, Clone)]
pub struct Attestation<S> {
    inner: S,
    config: Arc<AttestConfig>,
}

impl<S> Attestation<S> {
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

fn event(parts: &Parts, err: &AttestationError, mode: AttestationMode) {
    let outcome = if mode == AttestationMode::Optional {
        "report_only"
    } else {
        "refused"
    };
    tracing::warn!(
        target: "portcullis::attest",
        {
            "event.kind" = "alert",
            "event.category" = "authentication",
            "event.action" = "attestation.verify",
            "event.outcome" = "failure",
            "event.reason" = err.as_str(),
            "http.request.method" = parts.method.as_str(),
            "url.path" = parts.uri.path(),
            "portcullis.mode" = outcome,
        },
        "device attestation failed"
    );
}

fn reject<ResBody: Default>(err: &AttestationError) -> Response<ResBody> {
    let mut res = Response::new(ResBody::default());
    *res.status_mut() = match err {
        AttestationError::ReplayCacheUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        AttestationError::ReplayQuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::UNAUTHORIZED,
    };
    res.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(err.as_str()));
    if res.status() == StatusCode::UNAUTHORIZED
        && let Ok(v) = HeaderValue::from_str(&format!(
            "Attestation realm=\"api\", error=\"{}\"",
            err.as_str()
        ))
    {
        // RFC 9110 §11.6.1: every 401 carries a challenge.
        res.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    res
}

impl<S, B, ResBody> Service<Request<B>> for Attestation<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = AttestationFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mode = self.config.mode_for(req.uri().path());
        if mode == AttestationMode::Off {
            return AttestationFuture {
                state: AttestState::Calling {
                    fut: self.inner.call(req),
                },
            };
        }
        let (mut parts, body) = req.into_parts();
        let token = parts
            .headers
            .get(&self.config.header)
            .map(|v| v.to_str().map(str::trim));
        let result = match token {
            None => Err(AttestationError::Missing),
            Some(Err(_)) => Err(AttestationError::Malformed(
                "header is not visible ascii".into(),
            )),
            Some(Ok(t)) => self.config.verifier.verify(t),
        };
        let result = match result {
            Ok(d)
                if d.jti().is_none()
                    && self.config.replay.is_some()
                    && !self.config.allow_missing_jti =>
            {
                Err(AttestationError::MissingJti)
            }
            other => other,
        };
        let device = match result {
            Ok(d) => d,
            Err(e) => {
                event(&parts, &e, mode);
                if mode == AttestationMode::Optional {
                    return AttestationFuture {
                        state: AttestState::Calling {
                            fut: self.inner.call(Request::from_parts(parts, body)),
                        },
                    };
                }
                return AttestationFuture {
                    state: AttestState::Rejected {
                        response: Some(reject(&e)),
                    },
                };
            }
        };
        let replay = match (&self.config.replay, device.jti()) {
            (Some(cache), Some(jti)) => {
                let ttl = Duration::from_secs(
                    device
                        .expires_at()
                        .saturating_sub(self.config.clock.now_unix())
                        .max(1),
                );
                Some(cache.insert_once(
                    &format!("attest:{}", device.app_id()),
                    format!("attest:{}:{jti}", device.app_id()),
                    ttl,
                ))
            }
            _ => None,
        };
        parts.extensions.insert(device);
        let req = Request::from_parts(parts, body);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        match replay {
            None => AttestationFuture {
                state: AttestState::Calling {
                    fut: inner.call(req),
                },
            },
            Some(fut) => AttestationFuture {
                state: AttestState::Replaying {
                    fut,
                    pending: Some((req, inner, mode)),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`Attestation`].
    pub struct AttestationFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: AttestState<S, B, S::Future, S::Response>,
    }
}

pin_project! {
    #[project = AttestStateProj]
    enum AttestState<S, B, F, R> {
        Replaying { fut: ReplayFuture, pending: Option<(Request<B>, S, AttestationMode)> },
        Calling { #[pin] fut: F },
        Rejected { response: Option<R> },
    }
}

impl<S, B> fmt::Debug for AttestationFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestationFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Future for AttestationFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                AttestStateProj::Replaying { fut, pending } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let Some((mut req, mut inner, mode)) = pending.take() else {
                        return Poll::Pending;
                    };
                    let err = match result {
                        Ok(true) => None,
                        Ok(false) => Some(AttestationError::Replayed),
                        Err(ReplayError::PartitionFull { .. }) => {
                            Some(AttestationError::ReplayQuotaExceeded)
                        }
                        Err(_) => Some(AttestationError::ReplayCacheUnavailable),
                    };
                    match err {
                        None => {
                            let fut = inner.call(req);
                            this.state.set(AttestState::Calling { fut });
                        }
                        Some(e) => {
                            let (parts, body) = req.into_parts();
                            event(&parts, &e, mode);
                            if mode == AttestationMode::Optional {
                                req = Request::from_parts(parts, body);
                                req.extensions_mut().remove::<super::AttestedDevice>();
                                let fut = inner.call(req);
                                this.state.set(AttestState::Calling { fut });
                            } else {
                                this.state.set(AttestState::Rejected {
                                    response: Some(reject(&e)),
                                });
                            }
                        }
                    }
                }
                AttestStateProj::Calling { fut } => return fut.poll(cx),
                AttestStateProj::Rejected { response } => {
                    return match response.take() {
                        Some(r) => Poll::Ready(Ok(r)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}
