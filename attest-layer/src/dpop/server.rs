use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm as JwtAlg, DecodingKey, Validation};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

pub use portcullis_core::VerifiedDpop;
use portcullis_core::{DEFAULT_IPV6_PREFIX, client_network};

use super::{access_token_hash, jwk_thumbprint, normalize_htu};
use crate::clock::{Clock, SystemClock};
use crate::replay::{MemoryReplayCache, ReplayCache, ReplayError, ReplayFuture};
use crate::verify::REASON_HEADER;

/// The JWS algorithms a proof may use by default: ECDSA P-256 and P-384, and Ed25519.
/// RSA (RS*/PS*) is an opt-in through [`VerifyDpopLayerBuilder::algorithms`].
const DEFAULT_ALGS: [JwtAlg; 3] = [JwtAlg::ES256, JwtAlg::ES384, JwtAlg::EdDSA];

/// Every asymmetric JWS algorithm the verifier can check; symmetric ones and `none` never are.
const ASYMMETRIC: [JwtAlg; 9] = [
    JwtAlg::ES256,
    JwtAlg::ES384,
    JwtAlg::EdDSA,
    JwtAlg::RS256,
    JwtAlg::RS384,
    JwtAlg::RS512,
    JwtAlg::PS256,
    JwtAlg::PS384,
    JwtAlg::PS512,
];

/// Server-issued DPoP nonces (RFC 9449 §9): what to hand out and what to accept.
///
/// [`DpopNonces`] is the built-in source: an HMAC of the current time window, so every
/// replica with the same secret agrees without shared state.
pub trait NonceSource: Send + Sync + 'static {
    /// The nonce to send in `DPoP-Nonce` now.
    fn current(&self, now_unix: u64) -> String;
    /// Whether `nonce` is still accepted.
    fn is_valid(&self, nonce: &str, now_unix: u64) -> bool;
}

/// Stateless rotating nonces: `base64url(HMAC-SHA256(secret, window))`, accepted during
/// the current and the previous window.
pub struct DpopNonces {
    key: aws_lc_rs::hmac::Key,
    period: u64,
}

impl fmt::Debug for DpopNonces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopNonces")
            .field("period", &self.period)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl DpopNonces {
    /// Nonces from a secret of at least 32 bytes, rotating every `period`.
    ///
    /// # Errors
    /// [`KeyError::ShortSecret`](crate::KeyError::ShortSecret) for a shorter secret.
    pub fn new(
        secret: &secrecy::SecretSlice<u8>,
        period: Duration,
    ) -> Result<Self, crate::KeyError> {
        use secrecy::ExposeSecret;
        let bytes = secret.expose_secret();
        if bytes.len() < 32 {
            return Err(crate::KeyError::ShortSecret(bytes.len()));
        }
        Ok(Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, bytes),
            period: period.as_secs().max(1),
        })
    }

    fn for_window(&self, window: u64) -> String {
        URL_SAFE_NO_PAD
            .encode(&aws_lc_rs::hmac::sign(&self.key, &window.to_be_bytes()).as_ref()[..18])
    }
}

impl NonceSource for DpopNonces {
    fn current(&self, now_unix: u64) -> String {
        self.for_window(now_unix / self.period)
    }

    fn is_valid(&self, nonce: &str, now_unix: u64) -> bool {
        let w = now_unix / self.period;
        [w, w.saturating_sub(1)].iter().any(|w| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                self.for_window(*w).as_bytes(),
                nonce.as_bytes(),
            )
            .is_ok()
        })
    }
}

/// Why a DPoP proof was refused; [`DpopReason::as_str`] is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DpopReason {
    /// No `DPoP` header.
    MissingProof,
    /// More than one `DPoP` header.
    MultipleProofs,
    /// Not a JWS compact token, or bad JSON.
    MalformedProof,
    /// `typ` is not `dpop+jwt`.
    WrongTyp,
    /// `alg` is symmetric, `none` or unknown.
    UnsupportedAlg,
    /// No usable public `jwk` in the header (or it holds private members).
    BadJwk,
    /// The signature does not verify with the embedded key.
    InvalidSignature,
    /// `htm` is not the request method.
    HtmMismatch,
    /// `htu` is not the request URI.
    HtuMismatch,
    /// `iat` is outside the accepted window.
    StaleIat,
    /// `jti` is missing.
    MissingJti,
    /// `jti` was already used.
    Replayed,
    /// An access token is sent and `ath` is missing or does not match.
    AthMismatch,
    /// The replay cache failed (fail closed).
    ReplayCacheUnavailable,
    /// This client's share of the replay cache is full (a flood of proofs from one peer):
    /// it alone is refused with `429` until its entries expire.
    ReplayQuotaExceeded,
    /// The server requires a nonce and the proof has none or a stale one.
    UseNonce,
}

impl DpopReason {
    /// The stable reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingProof => "dpop_missing",
            Self::MultipleProofs => "dpop_multiple",
            Self::MalformedProof => "dpop_malformed",
            Self::WrongTyp => "dpop_wrong_typ",
            Self::UnsupportedAlg => "dpop_unsupported_alg",
            Self::BadJwk => "dpop_bad_jwk",
            Self::InvalidSignature => "dpop_invalid_signature",
            Self::HtmMismatch => "dpop_htm_mismatch",
            Self::HtuMismatch => "dpop_htu_mismatch",
            Self::StaleIat => "dpop_stale_iat",
            Self::MissingJti => "dpop_missing_jti",
            Self::Replayed => "dpop_replayed",
            Self::AthMismatch => "dpop_ath_mismatch",
            Self::ReplayCacheUnavailable => "replay_cache_unavailable",
            Self::ReplayQuotaExceeded => "replay_quota_exceeded",
            Self::UseNonce => "use_dpop_nonce",
        }
    }
}

impl fmt::Display for DpopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The service's public origins, against which a proof's `htu` is compared.
///
/// Each is `scheme://host[:port][/path-prefix]` as clients address the service; the request's
/// path is appended to it. The request's own `Host` header or absolute target are never used:
/// a client chooses those, so a proof made for another server would otherwise be accepted here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin(String);

impl Origin {
    fn parse(origin: &str) -> Result<Self, DpopConfigError> {
        let bad = |why: &'static str| DpopConfigError::InvalidOrigin {
            origin: origin.to_owned(),
            why,
        };
        let uri: http::Uri = origin.parse().map_err(|_| bad("not a URI"))?;
        match uri.scheme_str() {
            Some("https" | "http") => {}
            Some(_) => return Err(bad("the scheme must be https or http")),
            None => return Err(bad("a scheme (https://) is required")),
        }
        if uri.authority().is_none() {
            return Err(bad("a host is required"));
        }
        if uri.query().is_some() || origin.contains('#') {
            return Err(bad("an origin has no query or fragment"));
        }
        let canonical = normalize_htu(origin).ok_or_else(|| bad("not a URI"))?;
        Ok(Self(canonical.trim_end_matches('/').to_owned()))
    }

    /// Whether `htu` (normalized) is this origin followed by `path`.
    fn matches(&self, htu: &str, path: &str) -> bool {
        htu.strip_prefix(self.0.as_str()) == Some(path)
    }
}

/// Why a [`VerifyDpopLayerBuilder`] could not build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopConfigError {
    /// No origin was configured: `htu` could only be compared with a client-supplied `Host`.
    #[error(
        "no origin configured: call `.origin(\"https://api.example.com\")` with the URL clients use"
    )]
    NoOrigin,
    /// An origin is not `scheme://host[:port][/prefix]`.
    #[error("invalid origin {origin:?}: {why}")]
    InvalidOrigin {
        /// The configured text.
        origin: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An algorithm is symmetric or `none`.
    #[error("{0:?} cannot sign DPoP proofs: only asymmetric algorithms are accepted")]
    SymmetricAlgorithm(JwtAlg),
    /// The list of algorithms is empty.
    #[error("no algorithm accepted: name at least one (ES256, EdDSA, ...)")]
    NoAlgorithm,
}

struct DpopServerConfig {
    replay: Arc<dyn ReplayCache>,
    clock: Arc<dyn Clock>,
    max_age: Duration,
    skew: Duration,
    origins: Vec<Origin>,
    algorithms: Vec<JwtAlg>,
    /// `DPoP error="invalid_dpop_proof", algs="..."`, built once.
    challenge: HeaderValue,
    optional: bool,
    ipv6_prefix: u8,
    nonces: Option<Arc<dyn NonceSource>>,
}

impl fmt::Debug for DpopServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopServerConfig")
            .field("max_age", &self.max_age)
            .field("skew", &self.skew)
            .field("origins", &self.origins)
            .field("algorithms", &self.algorithms)
            .field("optional", &self.optional)
            .finish_non_exhaustive()
    }
}

/// Verifies DPoP proofs on incoming requests. See the [module docs](crate::dpop).
#[derive(Debug, Clone)]
pub struct VerifyDpopLayer {
    config: Arc<DpopServerConfig>,
}

/// Builds a [`VerifyDpopLayer`].
pub struct VerifyDpopLayerBuilder {
    replay: Option<Arc<dyn ReplayCache>>,
    clock: Arc<dyn Clock>,
    max_age: Duration,
    skew: Duration,
    origins: Vec<String>,
    algorithms: Vec<JwtAlg>,
    optional: bool,
    ipv6_prefix: u8,
    nonces: Option<Arc<dyn NonceSource>>,
}

impl fmt::Debug for VerifyDpopLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyDpopLayerBuilder")
            .field("max_age", &self.max_age)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

impl VerifyDpopLayer {
    /// A builder with defaults: `iat` at most 60 s old and 5 s ahead, `jti`s in a private
    /// in-memory cache, algorithms ES256, ES384 and EdDSA, a proof required on every request.
    /// At least one [`origin`](VerifyDpopLayerBuilder::origin) must be named.
    pub fn builder() -> VerifyDpopLayerBuilder {
        VerifyDpopLayerBuilder {
            replay: None,
            clock: Arc::new(SystemClock),
            max_age: Duration::from_secs(60),
            skew: Duration::from_secs(5),
            origins: Vec::new(),
            algorithms: DEFAULT_ALGS.to_vec(),
            optional: false,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            nonces: None,
        }
    }
}

impl VerifyDpopLayerBuilder {
    /// A public origin of the service, as clients address it (`https://api.example.com`,
    /// optionally with a port and a path prefix the service is mounted under). A proof's `htu`
    /// must be one of these followed by the request's path; call again for more origins.
    #[must_use]
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into());
        self
    }

    /// Records `jti`s in `cache` (share one across replicas).
    #[must_use]
    pub fn replay_cache(mut self, cache: impl ReplayCache) -> Self {
        self.replay = Some(Arc::new(cache));
        self
    }

    /// The clock for `iat`.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The oldest `iat` accepted.
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// How far ahead `iat` may be.
    #[must_use]
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.skew = skew;
        self
    }

    /// The JWS algorithms accepted for proofs, in the order the challenge's `algs` lists them
    /// (default ES256, ES384, EdDSA). Only asymmetric algorithms can be named.
    #[must_use]
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = JwtAlg>) -> Self {
        self.algorithms = algs.into_iter().collect();
        self
    }

    /// Lets requests that carry neither a `DPoP` header nor `Authorization: DPoP` through
    /// without a proof (clients still on plain bearer tokens). A token bound with `cnf.jkt`
    /// is still refused without a proof by the token check
    /// (`portcullis_token::require`), which reads the [`VerifiedDpop`] this layer leaves.
    #[must_use]
    pub fn proof_optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// The IPv6 prefix length clients share one replay-cache share by (default 64): the
    /// cache's room is partitioned per client network, since proof keys cost nothing to mint.
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    /// Requires a server nonce in every proof; a missing or stale one is answered with
    /// `401`, `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a fresh `DPoP-Nonce`.
    #[must_use]
    pub fn require_nonce(mut self, nonces: impl NonceSource) -> Self {
        self.nonces = Some(Arc::new(nonces));
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// [`DpopConfigError`] when no origin is named, an origin is not
    /// `scheme://host[:port][/prefix]`, or an algorithm is symmetric.
    pub fn build(self) -> Result<VerifyDpopLayer, DpopConfigError> {
        if self.origins.is_empty() {
            return Err(DpopConfigError::NoOrigin);
        }
        let origins = self
            .origins
            .iter()
            .map(|o| Origin::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        if self.algorithms.is_empty() {
            return Err(DpopConfigError::NoAlgorithm);
        }
        if let Some(alg) = self.algorithms.iter().find(|a| !ASYMMETRIC.contains(a)) {
            return Err(DpopConfigError::SymmetricAlgorithm(*alg));
        }
        let algs = self
            .algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        let challenge = HeaderValue::from_str(&format!(
            "DPoP error=\"invalid_dpop_proof\", algs=\"{algs}\""
        ))
        .map_err(|_| DpopConfigError::NoAlgorithm)?;
        Ok(VerifyDpopLayer {
            config: Arc::new(DpopServerConfig {
                replay: self
                    .replay
                    .unwrap_or_else(|| Arc::new(MemoryReplayCache::default())),
                clock: self.clock,
                max_age: self.max_age,
                skew: self.skew,
                origins,
                algorithms: self.algorithms,
                challenge,
                optional: self.optional,
                ipv6_prefix: self.ipv6_prefix,
                nonces: self.nonces,
            }),
        })
    }
}

impl<S> Layer<S> for VerifyDpopLayer {
    type Service = VerifyDpop<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyDpop {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`VerifyDpopLayer`].
#[derive(Debug, Clone)]
pub struct VerifyDpop<S> {
    inner: S,
    config: Arc<DpopServerConfig>,
}

impl<S> VerifyDpop<S> {
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

#[derive(Deserialize)]
struct ProofClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<u64>,
    ath: Option<String>,
    nonce: Option<String>,
}

/// The access token the request carries, under the `DPoP` or the `Bearer` scheme (case
/// insensitive), and whether the scheme was `DPoP`.
fn access_token(parts: &Parts) -> Option<(&str, bool)> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let dpop = scheme.eq_ignore_ascii_case("dpop");
    (dpop || scheme.eq_ignore_ascii_case("bearer")).then(|| (token.trim(), dpop))
}

/// What [`check`] decided for a request.
enum Checked {
    /// A proof passed every stateless check; its `jti` must still be recorded.
    Proof(VerifiedDpop, String, Duration),
    /// No proof and none needed ([`VerifyDpopLayerBuilder::proof_optional`]).
    NoProof,
}

fn check(config: &DpopServerConfig, parts: &Parts) -> Result<Checked, DpopReason> {
    let token_sent = access_token(parts);
    let mut proofs = parts.headers.get_all("dpop").iter();
    let Some(proof) = proofs.next() else {
        return match token_sent {
            Some((_, false)) | None if config.optional => Ok(Checked::NoProof),
            _ => Err(DpopReason::MissingProof),
        };
    };
    if proofs.next().is_some() {
        return Err(DpopReason::MultipleProofs);
    }
    let token = proof
        .to_str()
        .map_err(|_| DpopReason::MalformedProof)?
        .trim();
    let raw_header = token.split('.').next().ok_or(DpopReason::MalformedProof)?;
    let header_json: serde_json::Value = URL_SAFE_NO_PAD
        .decode(raw_header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(DpopReason::MalformedProof)?;
    if header_json.get("typ").and_then(|v| v.as_str()) != Some("dpop+jwt") {
        return Err(DpopReason::WrongTyp);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| DpopReason::UnsupportedAlg)?;
    if !config.algorithms.contains(&header.alg) {
        return Err(DpopReason::UnsupportedAlg);
    }
    let jwk_json = header_json.get("jwk").ok_or(DpopReason::BadJwk)?;
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|m| jwk_json.get(m).is_some())
    {
        return Err(DpopReason::BadJwk);
    }
    let jwk = header.jwk.as_ref().ok_or(DpopReason::BadJwk)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| DpopReason::BadJwk)?;
    let jkt = jwk_thumbprint(jwk_json).ok_or(DpopReason::BadJwk)?;
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<ProofClaims>(token, &key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => DpopReason::InvalidSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => DpopReason::UnsupportedAlg,
            _ => DpopReason::MalformedProof,
        })?
        .claims;

    if claims.htm.as_deref() != Some(parts.method.as_str()) {
        return Err(DpopReason::HtmMismatch);
    }
    let got_htu = claims
        .htu
        .as_deref()
        .and_then(normalize_htu)
        .ok_or(DpopReason::HtuMismatch)?;
    let path = match parts.uri.path() {
        "" => "/",
        p => p,
    };
    if !config.origins.iter().any(|o| o.matches(&got_htu, path)) {
        return Err(DpopReason::HtuMismatch);
    }
    let now = config.clock.now_unix();
    let iat = claims.iat.ok_or(DpopReason::StaleIat)?;
    if iat > now.saturating_add(config.skew.as_secs())
        || now.saturating_sub(iat) > config.max_age.as_secs()
    {
        return Err(DpopReason::StaleIat);
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(DpopReason::MissingJti)?;
    if let Some(nonces) = &config.nonces
        && !claims
            .nonce
            .as_deref()
            .is_some_and(|n| nonces.is_valid(n, now))
    {
        return Err(DpopReason::UseNonce);
    }
    // RFC 9449 §4.3 step 11: whenever an access token comes with the proof, under either
    // scheme, the proof must carry its hash.
    let ath = match token_sent {
        Some((access_token, _)) => {
            let want = access_token_hash(access_token);
            let ok = claims.ath.as_deref().is_some_and(|got| {
                aws_lc_rs::constant_time::verify_slices_are_equal(got.as_bytes(), want.as_bytes())
                    .is_ok()
            });
            if !ok {
                return Err(DpopReason::AthMismatch);
            }
            Some(want)
        }
        None => None,
    };
    let key = format!("dpop:{jkt}:{jti}");
    Ok(Checked::Proof(
        VerifiedDpop::new(jkt, ath, jti, iat, got_htu),
        key,
        config.max_age + config.skew,
    ))
}

fn reject<ResBody: Default>(
    config: &DpopServerConfig,
    parts: &Parts,
    reason: DpopReason,
) -> Response<ResBody> {
    tracing::warn!(
        target: "portcullis::attest",
        {
            "event.kind" = "alert",
            "event.category" = "authentication",
            "event.action" = "dpop.verify",
            "event.outcome" = "failure",
            "event.reason" = reason.as_str(),
            "http.request.method" = parts.method.as_str(),
            "url.path" = parts.uri.path(),
        },
        "refused dpop proof"
    );
    let mut res = Response::new(ResBody::default());
    let unavailable = matches!(
        reason,
        DpopReason::ReplayCacheUnavailable | DpopReason::ReplayQuotaExceeded
    );
    *res.status_mut() = match reason {
        DpopReason::ReplayCacheUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        DpopReason::ReplayQuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::UNAUTHORIZED,
    };
    res.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    if reason == DpopReason::UseNonce {
        res.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "DPoP error=\"use_dpop_nonce\", error_description=\"a server nonce is required\"",
            ),
        );
    } else if !unavailable {
        res.headers_mut()
            .insert(WWW_AUTHENTICATE, config.challenge.clone());
    }
    if let Some(nonces) = &config.nonces
        && let Ok(v) = HeaderValue::from_str(&nonces.current(config.clock.now_unix()))
    {
        res.headers_mut().insert("dpop-nonce", v);
    }
    res
}

impl<S, B, ResBody> Service<Request<B>> for VerifyDpop<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = VerifyDpopFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        match check(&self.config, &parts) {
            Err(reason) => VerifyDpopFuture {
                state: DpopServerState::Rejected {
                    response: Some(reject(&self.config, &parts, reason)),
                },
            },
            Ok(Checked::NoProof) => VerifyDpopFuture {
                state: DpopServerState::Calling {
                    fut: self.inner.call(Request::from_parts(parts, body)),
                },
            },
            Ok(Checked::Proof(proof, key, ttl)) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                // Proof keys cost nothing to mint, so the replay cache's room is shared per
                // client network (IPv6 per /64 by default), not per key; per key when no
                // address is known.
                let partition = match parts.extensions.get::<SocketAddr>() {
                    Some(peer) => format!(
                        "peer:{}",
                        client_network(peer.ip(), self.config.ipv6_prefix)
                    ),
                    None => format!("jkt:{}", proof.jkt()),
                };
                let fut = self.config.replay.insert_once(&partition, key, ttl);
                parts.extensions.insert(proof);
                VerifyDpopFuture {
                    state: DpopServerState::Replaying {
                        fut,
                        pending: Some((
                            Request::from_parts(parts, body),
                            inner,
                            self.config.clone(),
                        )),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`VerifyDpop`].
    pub struct VerifyDpopFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: DpopServerState<S, B, S::Future, S::Response>,
    }
}

pin_project! {
    #[project = DpopServerStateProj]
    enum DpopServerState<S, B, F, R> {
        Replaying { fut: ReplayFuture, pending: Option<(Request<B>, S, Arc<DpopServerConfig>)> },
        Calling { #[pin] fut: F },
        Rejected { response: Option<R> },
    }
}

impl<S, B> fmt::Debug for VerifyDpopFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyDpopFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Future for VerifyDpopFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                DpopServerStateProj::Replaying { fut, pending } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let Some((req, mut inner, config)) = pending.take() else {
                        return Poll::Pending;
                    };
                    let reason = match result {
                        Ok(true) => None,
                        Ok(false) => Some(DpopReason::Replayed),
                        Err(ReplayError::PartitionFull { .. }) => {
                            Some(DpopReason::ReplayQuotaExceeded)
                        }
                        Err(_) => Some(DpopReason::ReplayCacheUnavailable),
                    };
                    match reason {
                        Some(r) => {
                            let (parts, _) = req.into_parts();
                            this.state.set(DpopServerState::Rejected {
                                response: Some(reject(&config, &parts, r)),
                            });
                        }
                        None => {
                            let fut = inner.call(req);
                            this.state.set(DpopServerState::Calling { fut });
                        }
                    }
                }
                DpopServerStateProj::Calling { fut } => return fut.poll(cx),
                DpopServerStateProj::Rejected { response } => {
                    return match response.take() {
                        Some(r) => Poll::Ready(Ok(r)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}
