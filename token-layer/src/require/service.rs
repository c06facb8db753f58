use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response, StatusCode, header};
use tower_service::Service;

use portcullis_core::VerifiedDpop;

use super::{RequireBearerLayer, ResponseFuture, ValidationError, VerifiedClaims, layer::Config};
use crate::header::{AuthorizationError, TokenScheme, parse_credentials, quote};

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
    InvalidToken(TokenScheme, ValidationError),
    Binding(BindingError),
    InsufficientScope {
        needed: String,
        subject: Option<String>,
    },
}

/// Why a valid token does not fit the way it was presented (RFC 9449 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindingError {
    /// A token bound with `cnf.jkt` was sent as `Bearer`: a stolen bound token, replayed
    /// without its key.
    BoundTokenAsBearer,
    /// `Authorization: DPoP` with a token that has no `cnf.jkt`.
    TokenNotBound,
    /// A bound token and no verified proof in the request (no DPoP verifier outside this layer).
    ProofMissing,
    /// The proof was made with another key than the token's `cnf.jkt`.
    KeyMismatch,
    /// The proof's `ath` is not the hash of this token.
    AthMismatch,
    /// Only DPoP-bound tokens are accepted ([`RequireBearerLayer::require_dpop`]).
    DpopRequired,
}

impl BindingError {
    fn reason(self) -> &'static str {
        match self {
            Self::BoundTokenAsBearer => "dpop_bound_token_as_bearer",
            Self::TokenNotBound => "dpop_token_not_bound",
            Self::ProofMissing => "dpop_proof_missing",
            Self::KeyMismatch => "dpop_jkt_mismatch",
            Self::AthMismatch => "dpop_ath_mismatch",
            Self::DpopRequired => "dpop_required",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Self::BoundTokenAsBearer => {
                "token is bound to a key (cnf.jkt) but was sent as Bearer; send it as DPoP with a proof"
            }
            Self::TokenNotBound => "token sent as DPoP has no cnf.jkt binding",
            Self::ProofMissing => {
                "token is bound to a key (cnf.jkt) but no verified DPoP proof came with it"
            }
            Self::KeyMismatch => "DPoP proof key is not the key the token is bound to (cnf.jkt)",
            Self::AthMismatch => "DPoP proof ath is not the hash of this access token",
            Self::DpopRequired => "only DPoP-bound tokens are accepted",
        }
    }
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Self::NoCredentials => "no_credentials",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(_, e) => e.reason(),
            Self::Binding(e) => e.reason(),
            Self::InsufficientScope { .. } => "insufficient_scope",
        }
    }
}

pub(crate) enum Checked<'a> {
    Token(TokenScheme, &'a str),
    Refused(Refusal),
}

/// Reads the access token, sent as `Bearer` or `DPoP`, out of the request.
pub(crate) fn extract<B>(req: &Request<B>) -> Checked<'_> {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Checked::Refused(Refusal::NoCredentials);
    };
    if values.next().is_some() {
        return Checked::Refused(Refusal::InvalidRequest(AuthorizationError::Malformed));
    }
    match parse_credentials(value.as_bytes()) {
        Ok((scheme, token)) => Checked::Token(scheme, token),
        Err(AuthorizationError::NotBearer) => Checked::Refused(Refusal::NoCredentials),
        Err(e) => Checked::Refused(Refusal::InvalidRequest(e)),
    }
}

/// RFC 9449 §7.1: a token bound with `cnf.jkt` is accepted only under the `DPoP` scheme with a
/// verified proof ([`VerifiedDpop`], left by the DPoP verifier outside) by that key whose `ath`
/// is this token's hash; an unbound token only as `Bearer`.
fn check_binding<B>(
    config: &Config,
    req: &Request<B>,
    scheme: TokenScheme,
    token: &str,
    claims: &VerifiedClaims,
) -> Result<(), BindingError> {
    match (claims.confirmation_jkt(), scheme) {
        (Some(_), TokenScheme::Bearer) => Err(BindingError::BoundTokenAsBearer),
        (None, TokenScheme::Dpop) => Err(BindingError::TokenNotBound),
        (None, _) if config.require_dpop => Err(BindingError::DpopRequired),
        (None, _) => Ok(()),
        (Some(jkt), _) => {
            let proof = req
                .extensions()
                .get::<VerifiedDpop>()
                .ok_or(BindingError::ProofMissing)?;
            if proof.jkt() != jkt {
                return Err(BindingError::KeyMismatch);
            }
            let want = access_token_hash(token);
            if proof.ath() != Some(want.as_str()) {
                return Err(BindingError::AthMismatch);
            }
            Ok(())
        }
    }
}

/// `ath`: base64url of the SHA-256 of the access token (RFC 9449 §4.2).
fn access_token_hash(token: &str) -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// Checks the token binding, then scopes and roles after validation; `Ok` puts the claims in
/// the request.
pub(crate) fn authorize<B>(
    config: &Config,
    req: &mut Request<B>,
    bound: Result<(), BindingError>,
    claims: VerifiedClaims,
) -> Result<(), Refusal> {
    bound.map_err(Refusal::Binding)?;
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
    // The challenge names the scheme the client used; a binding failure or a DPoP-only
    // resource answers with the DPoP scheme (RFC 9449 §7.1).
    let default_scheme = if config.require_dpop {
        TokenScheme::Dpop
    } else {
        TokenScheme::Bearer
    };
    let (status, challenge) = match &refusal {
        Refusal::NoCredentials => (
            StatusCode::UNAUTHORIZED,
            format!("{} realm={realm}", default_scheme.as_str()),
        ),
        Refusal::InvalidRequest(_) => (
            StatusCode::BAD_REQUEST,
            format!(
                "{} realm={realm}, error=\"invalid_request\"",
                default_scheme.as_str()
            ),
        ),
        Refusal::InvalidToken(scheme, _) => (
            StatusCode::UNAUTHORIZED,
            format!("{} realm={realm}, error=\"invalid_token\"", scheme.as_str()),
        ),
        Refusal::Binding(e) => (
            StatusCode::UNAUTHORIZED,
            format!(
                "DPoP realm={realm}, error=\"invalid_token\", error_description={}",
                quote(e.detail())
            ),
        ),
        Refusal::InsufficientScope { needed, .. } => (
            StatusCode::FORBIDDEN,
            format!(
                "{} realm={realm}, error=\"insufficient_scope\", scope={}",
                default_scheme.as_str(),
                quote(needed)
            ),
        ),
    };
    let kind = match &refusal {
        Refusal::InvalidToken(_, e) if e.is_suspicious() => "alert",
        Refusal::Binding(_) => "alert",
        _ => "event",
    };
    let subject = match &refusal {
        Refusal::InsufficientScope { subject, .. } => subject.as_deref(),
        _ => None,
    };
    let detail = match &refusal {
        Refusal::InvalidToken(_, e) => e.to_string(),
        Refusal::Binding(e) => e.detail().to_owned(),
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
        let (scheme, token) = match extract(&req) {
            Checked::Token(scheme, t) => (scheme, t),
            Checked::Refused(r) => return ResponseFuture::respond(refuse(config, &req, r)),
        };
        match config.validator.validate(token) {
            Ok(claims) => {
                let bound = check_binding(config, &req, scheme, token, &claims);
                let authorized = authorize(config, &mut req, bound, claims);
                match authorized {
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
                }
            }
            Err(ValidationError::UnknownKey) if config.validator.may_refetch() => {
                // Slow path: refetch the JWKS once (rate-limited), then decide.
                let token = token.to_owned();
                let config = self.config.clone();
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::boxed(Box::pin(async move {
                    match config.validator.validate_with_refetch(&token).await {
                        Ok(claims) => {
                            let bound = check_binding(&config, &req, scheme, &token, &claims);
                            match authorize(&config, &mut req, bound, claims) {
                                Ok(()) => {
                                    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                                    inner.call(req).await
                                }
                                Err(r) => Ok(refuse(&config, &req, r)),
                            }
                        }
                        Err(e) => Ok(refuse(&config, &req, Refusal::InvalidToken(scheme, e))),
                    }
                }))
            }
            Err(e) => {
                ResponseFuture::respond(refuse(config, &req, Refusal::InvalidToken(scheme, e)))
            }
        }
    }
}
