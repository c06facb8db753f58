use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response, StatusCode, header};
use tower_service::Service;

use super::{RequireBearerLayer, ResponseFuture, ValidationError, VerifiedClaims, layer::Config};
use crate::header::{AuthorizationError, parse_authorization, quote};

/// The service made by [`RequireBearerLayer`].
pub struct RequireBearer<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
}

impl<S> RequireBearer<S> {
    /// Wraps `inner` with the checks of `layer`.
    pub fn new(inner: S, layer: &RequireBearerLayer) -> Self {
        Self {
            inner,
            config: layer.config.clone(),
        }
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

impl<S: Clone> Clone for RequireBearer<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for RequireBearer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireBearer")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

pub(crate) enum Refusal {
    NoCredentials,
    InvalidRequest(AuthorizationError),
    InvalidToken(ValidationError),
    InsufficientScope {
        needed: String,
        subject: Option<String>,
    },
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Self::NoCredentials => "no_credentials",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(e) => e.reason(),
            Self::InsufficientScope { .. } => "insufficient_scope",
        }
    }
}

pub(crate) enum Checked<'a> {
    Token(&'a str),
    Refused(Refusal),
}

/// Reads the bearer token out of the request.
pub(crate) fn extract<B>(req: &Request<B>) -> Checked<'_> {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Checked::Refused(Refusal::NoCredentials);
    };
    if values.next().is_some() {
        return Checked::Refused(Refusal::InvalidRequest(AuthorizationError::Malformed));
    }
    match parse_authorization(value.as_bytes()) {
        Ok(token) => Checked::Token(token),
        Err(AuthorizationError::NotBearer) => Checked::Refused(Refusal::NoCredentials),
        Err(e) => Checked::Refused(Refusal::InvalidRequest(e)),
    }
}

/// Checks scopes and roles after validation; `Ok` puts the claims in the request.
pub(crate) fn authorize<B>(
    config: &Config,
    req: &mut Request<B>,
    claims: VerifiedClaims,
) -> Result<(), Refusal> {
    let route = config.table.lookup(req.method(), req.uri().path());
    let mut missing: Vec<&str> = Vec::new();
    let needed_scopes = config
        .scopes
        .iter()
        .chain(route.map(|r| r.0).unwrap_or_default());
    let mut needed: Vec<&str> = Vec::new();
    for s in needed_scopes {
        needed.push(s);
        if !claims.has_scope(s) {
            missing.push(s);
        }
    }
    let roles_missing = config
        .roles
        .iter()
        .chain(route.map(|r| r.1).unwrap_or_default())
        .any(|r| !claims.has_role(r));
    if !missing.is_empty() || roles_missing {
        return Err(Refusal::InsufficientScope {
            needed: needed.join(" "),
            subject: claims.subject().map(str::to_owned),
        });
    }
    req.extensions_mut().insert(claims);
    Ok(())
}

/// The 400/401/403 answer for a refusal, and its security event.
pub(crate) fn refuse<B, ResBody: Default>(
    config: &Config,
    req: &Request<B>,
    refusal: Refusal,
) -> Response<ResBody> {
    let realm = quote(&config.realm);
    let (status, challenge) = match &refusal {
        Refusal::NoCredentials => (StatusCode::UNAUTHORIZED, format!("Bearer realm={realm}")),
        Refusal::InvalidRequest(_) => (
            StatusCode::BAD_REQUEST,
            format!("Bearer realm={realm}, error=\"invalid_request\""),
        ),
        Refusal::InvalidToken(_) => (
            StatusCode::UNAUTHORIZED,
            format!("Bearer realm={realm}, error=\"invalid_token\""),
        ),
        Refusal::InsufficientScope { needed, .. } => (
            StatusCode::FORBIDDEN,
            format!(
                "Bearer realm={realm}, error=\"insufficient_scope\", scope={}",
                quote(needed)
            ),
        ),
    };
    let kind = match &refusal {
        Refusal::InvalidToken(e) if e.is_suspicious() => "alert",
        _ => "event",
    };
    let subject = match &refusal {
        Refusal::InsufficientScope { subject, .. } => subject.as_deref(),
        _ => None,
    };
    let detail = match &refusal {
        Refusal::InvalidToken(e) => e.to_string(),
        Refusal::InvalidRequest(e) => e.to_string(),
        Refusal::NoCredentials => "no bearer credentials".to_owned(),
        Refusal::InsufficientScope { needed, .. } => format!("requires scope(s) {needed}"),
    };
    tracing::warn!(
        target: "portcullis::token",
        {
            "event.kind" = kind,
            "event.category" = "authentication",
            "event.action" = "bearer.validate",
            "event.outcome" = "failure",
            "event.reason" = refusal.reason(),
            "user.id" = subject,
            "http.request.method" = req.method().as_str(),
            "url.path" = req.uri().path(),
            "http.response.status_code" = status.as_u16(),
        },
        "bearer token refused: {detail}"
    );
    let mut resp = Response::new(ResBody::default());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::try_from(challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl<S, B, ResBody> Service<Request<B>> for RequireBearer<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let config = &self.config;
        let token = match extract(&req) {
            Checked::Token(t) => t,
            Checked::Refused(r) => return ResponseFuture::respond(refuse(config, &req, r)),
        };
        match config.validator.validate(token) {
            Ok(claims) => match authorize(config, &mut req, claims) {
                Ok(()) => {
                    tracing::debug!(
                        target: "portcullis::token",
                        {
                            "event.kind" = "event",
                            "event.category" = "authentication",
                            "event.action" = "bearer.validate",
                            "event.outcome" = "success",
                            "http.request.method" = req.method().as_str(),
                            "url.path" = req.uri().path(),
                        },
                        "bearer token accepted"
                    );
                    ResponseFuture::inner(self.inner.call(req))
                }
                Err(r) => ResponseFuture::respond(refuse(config, &req, r)),
            },
            Err(ValidationError::UnknownKey) if config.validator.may_refetch() => {
                // Slow path: refetch the JWKS once (rate-limited), then decide.
                let token = token.to_owned();
                let config = self.config.clone();
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::boxed(Box::pin(async move {
                    match config.validator.validate_with_refetch(&token).await {
                        Ok(claims) => match authorize(&config, &mut req, claims) {
                            Ok(()) => {
                                std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                                inner.call(req).await
                            }
                            Err(r) => Ok(refuse(&config, &req, r)),
                        },
                        Err(e) => Ok(refuse(&config, &req, Refusal::InvalidToken(e))),
                    }
                }))
            }
            Err(e) => ResponseFuture::respond(refuse(config, &req, Refusal::InvalidToken(e))),
        }
    }
}
