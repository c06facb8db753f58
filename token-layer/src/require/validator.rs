use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};

use super::{
    VerifiedClaims,
    claims::RawClaims,
    keys::{Jwks, VerificationKey},
};
use crate::header::MAX_TOKEN_LEN;

/// Why a token was refused. The client only ever sees `invalid_token`; this detail goes to
/// the server's security events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// Not a compact JWS, or claims of the wrong type.
    #[error("token is not a well-formed JWT")]
    Malformed,
    /// The header names an algorithm that is not accepted (`none`, or not configured).
    #[error("token algorithm {0:?} is not accepted")]
    AlgorithmNotAllowed(String),
    /// No configured key has this `kid` and algorithm.
    #[error("no verification key for this kid and algorithm")]
    UnknownKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` (or `iat`) is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not an accepted issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` holds no accepted audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A required claim is missing.
    #[error("token lacks the required {0} claim")]
    MissingClaim(&'static str),
    /// `exp - iat` exceeds the maximum lifetime.
    #[error("token lifetime {lifetime_s}s exceeds the maximum of {max_s}s")]
    LifetimeTooLong {
        /// The token's lifetime.
        lifetime_s: u64,
        /// The configured maximum.
        max_s: u64,
    },
    /// The `jti` is on the deny list.
    #[error("token id is on the deny list")]
    Denied,
    /// The header's `typ` names another kind of JWT (a DPoP proof, a security event, a logout
    /// token...), or is missing while an `at+jwt` access token is required.
    #[error(
        "token type (typ) {} is not accepted: expected an access token ({})",
        .seen.as_deref().map_or("absent".to_owned(), |t| format!("{t:?}")),
        if *.at_jwt_required { "at+jwt" } else { "at+jwt, JWT or no typ" }
    )]
    WrongType {
        /// The `typ` seen (sanitised, truncated), if any.
        seen: Option<String>,
        /// Whether only `at+jwt` is accepted ([`JwtValidatorBuilder::require_access_token_typ`]).
        at_jwt_required: bool,
    },
}

impl ValidationError {
    /// A short machine-readable reason for events (`expired`, `bad_signature`...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::LifetimeTooLong { .. } => "lifetime_too_long",
            Self::Denied => "jti_denied",
            Self::WrongType { .. } => "wrong_token_type",
        }
    }

    /// Whether this looks like an attack rather than a stale client (forged or confused
    /// algorithm, bad signature, revoked token, another kind of JWT passed off as an access
    /// token).
    pub fn is_suspicious(&self) -> bool {
        match self {
            Self::AlgorithmNotAllowed(_) | Self::BadSignature | Self::Denied => true,
            Self::WrongType { seen, .. } => seen.is_some(),
            _ => false,
        }
    }
}

/// Revoked token ids (`jti`). Implemented for closures `Fn(&str) -> bool` and [`JtiDenyList`].
pub trait DenyList: Send + Sync + 'static {
    /// Whether the token with this `jti` must be refused.
    fn is_denied(&self, jti: &str) -> bool;
}

impl<F: Fn(&str) -> bool + Send + Sync + 'static> DenyList for F {
    fn is_denied(&self, jti: &str) -> bool {
        self(jti)
    }
}

/// A shared in-memory `jti` deny list; clones share the set.
#[derive(Debug, Clone, Default)]
pub struct JtiDenyList(Arc<RwLock<HashSet<String>>>);

impl JtiDenyList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }
    /// Denies `jti` from now on.
    pub fn deny(&self, jti: impl Into<String>) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(jti.into());
    }
}

impl DenyList for JtiDenyList {
    fn is_denied(&self, jti: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(jti)
    }
}

/// Why a validator could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No issuer configured: every token would be accepted from any issuer.
    #[error("no issuer configured: call .issuer(..) (tokens from any issuer would be accepted)")]
    MissingIssuer,
    /// No audience configured: tokens for other services would be accepted.
    #[error(
        "no audience configured: call .audience(..) (tokens for other services would be accepted)"
    )]
    MissingAudience,
    /// No key and no JWKS configured.
    #[error("no verification key: add .key(..) or .jwks(..)")]
    MissingKeys,
}

#[derive(Clone)]
enum KeySource {
    Static(Arc<Vec<VerificationKey>>),
    Jwks(Jwks),
}

/// Validates JWT access tokens: signature (EdDSA, ES256/384, RS*/PS*, HS*), `exp`, `nbf`,
/// `iss`, `aud`, a maximum lifetime, the token type and an optional `jti` deny list.
///
/// # Token type (`typ`, RFC 8725 §3.11, RFC 9068 §2.1)
/// An issuer signs other JWTs than access tokens with the same keys (ID tokens, logout tokens,
/// security event tokens), and a client signs DPoP proofs; none of them may pass for an access
/// token. The header's `typ` must be absent, `JWT` or `at+jwt` (also `application/at+jwt`,
/// compared without regard to case); any other type (`dpop+jwt`, `secevent+jwt`,
/// `logout+jwt`, `kb+jwt`...) is refused with [`ValidationError::WrongType`], unless named
/// with [`JwtValidatorBuilder::accept_typ`].
/// [`JwtValidatorBuilder::require_access_token_typ`] accepts only `at+jwt`.
#[derive(Clone)]
pub struct JwtValidator {
    inner: Arc<ValidatorInner>,
}

struct ValidatorInner {
    keys: KeySource,
    typ: TypPolicy,
    algorithms: Vec<Algorithm>,
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
    max_lifetime: Duration,
    deny: Option<Box<dyn DenyList>>,
}

impl fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidator")
            .field("algorithms", &self.inner.algorithms)
            .field("max_lifetime", &self.inner.max_lifetime)
            .field("deny_list", &self.inner.deny.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`JwtValidator`]; see [`JwtValidator::builder`].
#[derive(Default)]
pub struct JwtValidatorBuilder {
    keys: Vec<VerificationKey>,
    jwks: Option<Jwks>,
    algorithms: Option<Vec<Algorithm>>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Option<Duration>,
    max_lifetime: Option<Duration>,
    deny: Option<Box<dyn DenyList>>,
    typ: TypPolicy,
}

/// Which header `typ` values pass for an access token.
#[derive(Debug, Clone, Default)]
struct TypPolicy {
    /// Only `at+jwt` (RFC 9068).
    require_at_jwt: bool,
    /// Further accepted types, lower case without `application/`.
    extra: Vec<String>,
}

impl TypPolicy {
    /// The media type of `typ` as compared (RFC 7515 §4.1.9: case-insensitive, and
    /// `application/` may be left out).
    fn normalise(typ: &str) -> String {
        let lower = typ.trim().to_ascii_lowercase();
        match lower.strip_prefix("application/") {
            Some(rest) => rest.to_owned(),
            None => lower,
        }
    }

    fn check(&self, typ: Option<&str>) -> Result<(), ValidationError> {
        let refuse = |seen: Option<&str>| ValidationError::WrongType {
            seen: seen.map(|t| {
                let mut shown: String = t
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '/'))
                    .collect();
                shown.truncate(40);
                shown
            }),
            at_jwt_required: self.require_at_jwt,
        };
        let Some(typ) = typ else {
            return if self.require_at_jwt {
                Err(refuse(None))
            } else {
                Ok(())
            };
        };
        let t = Self::normalise(typ);
        let accepted =
            t == "at+jwt" || (!self.require_at_jwt && t == "jwt") || self.extra.contains(&t);
        if accepted {
            Ok(())
        } else {
            Err(refuse(Some(typ)))
        }
    }
}

impl fmt::Debug for JwtValidatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidatorBuilder")
            .field("keys", &self.keys)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

impl JwtValidatorBuilder {
    /// Adds a static verification key.
    pub fn key(mut self, key: VerificationKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Verifies with keys from a JWKS (replaces static keys).
    pub fn jwks(mut self, jwks: Jwks) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Accepted algorithms (default: the algorithms of the static keys; with a JWKS, the
    /// asymmetric ones: HMAC is never accepted from a JWKS).
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = Some(algs.into_iter().collect());
        self
    }

    /// Adds an accepted issuer (`iss`). At least one is required.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuers.push(iss.into());
        self
    }

    /// Adds an accepted audience (`aud`). At least one is required.
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }

    /// Clock skew allowed on `exp`, `nbf` and `iat` (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = Some(leeway);
        self
    }

    /// Longest accepted lifetime, `exp - iat` (default 1 h): long-lived tokens are refused.
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }

    /// Refuses tokens whose `jti` is on `deny`.
    pub fn deny_list(mut self, deny: impl DenyList) -> Self {
        self.deny = Some(Box::new(deny));
        self
    }

    /// Accepts only tokens typed as JWT access tokens, header `typ` `at+jwt` or
    /// `application/at+jwt` (RFC 9068 §2.1; compared without regard to case). Tokens with no
    /// `typ`, or `typ: JWT`, are refused then. Use it when the issuer follows RFC 9068.
    pub fn require_access_token_typ(mut self) -> Self {
        self.typ.require_at_jwt = true;
        self
    }

    /// Also accepts tokens whose header `typ` is `typ` (an issuer's own access-token type,
    /// compared without regard to case, `application/` optional). Never name the type of
    /// another kind of JWT (`dpop+jwt`, `secevent+jwt`, `logout+jwt`).
    pub fn accept_typ(mut self, typ: impl AsRef<str>) -> Self {
        self.typ.extra.push(TypPolicy::normalise(typ.as_ref()));
        self
    }

    /// Builds the validator.
    ///
    /// # Errors
    ///
    /// [`BuildError`] when the issuer, the audience or the keys are missing.
    pub fn build(self) -> Result<JwtValidator, BuildError> {
        if self.issuers.is_empty() {
            return Err(BuildError::MissingIssuer);
        }
        if self.audiences.is_empty() {
            return Err(BuildError::MissingAudience);
        }
        let (keys, default_algs) = match self.jwks {
            Some(jwks) => (
                KeySource::Jwks(jwks),
                ALL_ALGORITHMS
                    .iter()
                    .copied()
                    .filter(|a| {
                        !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
                    })
                    .collect(),
            ),
            None if self.keys.is_empty() => return Err(BuildError::MissingKeys),
            None => {
                let mut algs: Vec<Algorithm> = Vec::new();
                for k in &self.keys {
                    if !algs.contains(&k.algorithm()) {
                        algs.push(k.algorithm());
                    }
                }
                (KeySource::Static(Arc::new(self.keys)), algs)
            }
        };
        let algorithms = self.algorithms.unwrap_or(default_algs);
        let leeway = self.leeway.unwrap_or(Duration::from_secs(30)).as_secs();
        let validations = algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(&self.issuers);
                v.set_audience(&self.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                (alg, v)
            })
            .collect();
        Ok(JwtValidator {
            inner: Arc::new(ValidatorInner {
                keys,
                typ: self.typ,
                algorithms,
                validations,
                leeway,
                max_lifetime: self.max_lifetime.unwrap_or(Duration::from_secs(3600)),
                deny: self.deny,
            }),
        })
    }
}

fn map_jwt_error(kind: &ErrorKind) -> ValidationError {
    match kind {
        ErrorKind::ExpiredSignature => ValidationError::Expired,
        ErrorKind::ImmatureSignature => ValidationError::NotYetValid,
        ErrorKind::InvalidIssuer => ValidationError::WrongIssuer,
        ErrorKind::InvalidAudience => ValidationError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => ValidationError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            "nbf" => "nbf",
            _ => "sub",
        }),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            ValidationError::AlgorithmNotAllowed("mismatch".into())
        }
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => ValidationError::BadSignature,
        _ => ValidationError::Malformed,
    }
}

/// The header fields read before the signature is checked.
struct Peeked {
    alg: Algorithm,
    kid: Option<String>,
    typ: Option<String>,
}

/// Reads `alg`, `kid` and `typ` from the header without trusting anything else.
fn peek_header(token: &str) -> Result<Peeked, ValidationError> {
    #[derive(serde::Deserialize)]
    struct Head {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
        #[serde(default)]
        typ: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ValidationError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| ValidationError::Malformed)?;
    let head: Head = serde_json::from_slice(&bytes).map_err(|_| ValidationError::Malformed)?;
    let alg: Algorithm = head.alg.parse().map_err(|_| {
        let mut shown: String = head
            .alg
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        shown.truncate(16);
        ValidationError::AlgorithmNotAllowed(shown)
    })?;
    Ok(Peeked {
        alg,
        kid: head.kid,
        typ: head.typ,
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtValidator {
    /// Starts a builder.
    pub fn builder() -> JwtValidatorBuilder {
        JwtValidatorBuilder::default()
    }

    /// The JWKS this validator uses, if any.
    pub fn jwks(&self) -> Option<&Jwks> {
        match &self.inner.keys {
            KeySource::Jwks(j) => Some(j),
            KeySource::Static(_) => None,
        }
    }

    /// Validates `token` with the keys at hand.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] naming the failed check.
    pub fn validate(&self, token: &str) -> Result<VerifiedClaims, ValidationError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(ValidationError::Malformed);
        }
        let Peeked { alg, kid, typ } = peek_header(token)?;
        self.inner.typ.check(typ.as_deref())?;
        let Some(validation) = self
            .inner
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
        else {
            return Err(ValidationError::AlgorithmNotAllowed(format!("{alg:?}")));
        };
        let mut candidates = Vec::new();
        match &self.inner.keys {
            KeySource::Static(keys) => candidates.extend(
                keys.iter()
                    .filter(|k| {
                        k.algorithm() == alg && (kid.is_none() || k.kid() == kid.as_deref())
                    })
                    .cloned(),
            ),
            KeySource::Jwks(jwks) => jwks.keys_for(kid.as_deref(), alg, &mut candidates),
        }
        if candidates.is_empty() {
            return Err(ValidationError::UnknownKey);
        }
        let mut last = ValidationError::BadSignature;
        for key in candidates.iter().take(8) {
            match jsonwebtoken::decode::<RawClaims>(token, key.decoding_key(), validation) {
                Ok(data) => return self.post_checks(data.claims, key.kid()),
                Err(e) => {
                    last = map_jwt_error(e.kind());
                    if last != ValidationError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// Like [`JwtValidator::validate`], but an unknown `kid` first refetches the JWKS
    /// (rate-limited).
    ///
    /// # Errors
    ///
    /// [`ValidationError`] naming the failed check.
    pub async fn validate_with_refetch(
        &self,
        token: &str,
    ) -> Result<VerifiedClaims, ValidationError> {
        match self.validate(token) {
            Err(ValidationError::UnknownKey) => {
                if let KeySource::Jwks(jwks) = &self.inner.keys
                    && jwks.refetch_for_unknown_kid().await.is_ok()
                {
                    return self.validate(token);
                }
                Err(ValidationError::UnknownKey)
            }
            other => other,
        }
    }

    pub(crate) fn may_refetch(&self) -> bool {
        matches!(&self.inner.keys, KeySource::Jwks(j) if j.may_refetch())
    }

    fn post_checks(
        &self,
        claims: RawClaims,
        kid: Option<&str>,
    ) -> Result<VerifiedClaims, ValidationError> {
        let now = now_unix();
        let leeway = self.inner.leeway;
        let exp = claims.exp().ok_or(ValidationError::MissingClaim("exp"))?;
        if let Some(iat) = claims.iat()
            && iat > now.saturating_add(leeway)
        {
            return Err(ValidationError::NotYetValid);
        }
        let start = claims.iat().unwrap_or(now);
        let lifetime = exp.saturating_sub(start);
        let max = self.inner.max_lifetime.as_secs();
        if lifetime > max {
            return Err(ValidationError::LifetimeTooLong {
                lifetime_s: lifetime,
                max_s: max,
            });
        }
        if let (Some(deny), Some(jti)) = (&self.inner.deny, claims.jti())
            && deny.is_denied(jti)
        {
            return Err(ValidationError::Denied);
        }
        Ok(claims.into_verified(kid.map(str::to_owned)))
    }
}
