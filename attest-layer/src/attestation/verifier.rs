use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm as JwtAlg, DecodingKey, Validation};
use serde::Deserialize;

use crate::clock::{Clock, SystemClock};
use crate::error::KeyError;

/// Why an attestation token was refused; [`AttestationError::as_str`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// No token was sent.
    #[error("no attestation token; the client must attach one from the platform")]
    Missing,
    /// The token is not a well-formed JWT.
    #[error("attestation token is malformed: {0}")]
    Malformed(String),
    /// The header names an algorithm that is not accepted (symmetric, `none`, unknown).
    #[error(
        "attestation token algorithm {0} is not accepted; expected an asymmetric JWS algorithm"
    )]
    UnsupportedAlg(String),
    /// No JWKS key has the token's `kid`.
    #[error("attestation token key id {0:?} is not in the JWKS")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("attestation token signature is invalid")]
    InvalidSignature,
    /// `exp` has passed.
    #[error("attestation token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The verifier's time.
        now: u64,
    },
    /// `iat` lies in the future.
    #[error("attestation token issued in the future")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("attestation token issuer {got:?} is not the expected {expected:?}")]
    WrongIssuer {
        /// The expected issuer.
        expected: String,
        /// What the token says.
        got: String,
    },
    /// `aud` does not name the project.
    #[error("attestation token audience does not include {expected:?}")]
    WrongAudience {
        /// The expected audience.
        expected: String,
    },
    /// `sub` (the app id) is not allowed.
    #[error("app {0:?} is not allowed")]
    AppNotAllowed(String),
    /// The token was already used (limited-use tokens with `jti`).
    #[error("attestation token was already used")]
    Replayed,
    /// The layer consumes tokens (`consume_jti`) and this one has no `jti` to consume, so it
    /// could be replayed until it expires.
    #[error(
        "attestation token has no jti, so it cannot be consumed; request limited-use tokens \
         from the platform (or opt out with `allow_missing_jti`)"
    )]
    MissingJti,
    /// The replay cache failed (fail closed).
    #[error("replay cache unavailable")]
    ReplayCacheUnavailable,
    /// This app's share of the replay cache is full: it alone is refused until entries expire.
    #[error("replay cache share of this app is full")]
    ReplayQuotaExceeded,
}

impl AttestationError {
    /// The stable reason string.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Missing => "attestation_missing",
            Self::Malformed(_) => "attestation_malformed",
            Self::UnsupportedAlg(_) => "attestation_unsupported_alg",
            Self::UnknownKey(_) => "attestation_unknown_key",
            Self::InvalidSignature => "attestation_invalid_signature",
            Self::Expired { .. } => "attestation_expired",
            Self::NotYetValid => "attestation_not_yet_valid",
            Self::WrongIssuer { .. } => "attestation_wrong_issuer",
            Self::WrongAudience { .. } => "attestation_wrong_audience",
            Self::AppNotAllowed(_) => "attestation_app_not_allowed",
            Self::Replayed => "attestation_replayed",
            Self::MissingJti => "attestation_jti_missing",
            Self::ReplayCacheUnavailable => "replay_cache_unavailable",
            Self::ReplayQuotaExceeded => "replay_quota_exceeded",
        }
    }
}

/// What a verified attestation says about the device's app; placed in request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedDevice {
    pub(crate) app_id: String,
    pub(crate) issuer: String,
    pub(crate) expires_at: u64,
    pub(crate) jti: Option<String>,
}

impl AttestedDevice {
    /// Builds the proof; for [`AttestationVerifier`] implementations outside this crate.
    pub fn new(
        app_id: impl Into<String>,
        issuer: impl Into<String>,
        expires_at: u64,
        jti: Option<String>,
    ) -> Self {
        Self {
            app_id: app_id.into(),
            issuer: issuer.into(),
            expires_at,
            jti,
        }
    }

    /// The attested app id (`sub`).
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The attestation service (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// When the attestation expires (UNIX seconds).
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The token id, for limited-use tokens.
    pub fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }
}

/// Checks an attestation token the platform produced.
pub trait AttestationVerifier: Send + Sync + 'static {
    /// Verifies `token` and says what it attests.
    ///
    /// # Errors
    /// The [`AttestationError`] naming what was wrong.
    fn verify(&self, token: &str) -> Result<AttestedDevice, AttestationError>;
}

impl<V: AttestationVerifier + ?Sized> AttestationVerifier for Arc<V> {
    fn verify(&self, token: &str) -> Result<AttestedDevice, AttestationError> {
        (**self).verify(token)
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<u64>,
    iat: Option<u64>,
    jti: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, want: &str) -> bool {
        match self {
            Self::One(a) => a == want,
            Self::Many(v) => v.iter().any(|a| a == want),
        }
    }
}

/// Verifies JWT attestation tokens signed by keys from a JWKS, in the style of Firebase
/// App Check: `iss` = `https://firebaseappcheck.googleapis.com/<project number>`, `aud`
/// includes `projects/<project number>`, `sub` = the app id, `exp` in the future.
pub struct JwtAttestationVerifier {
    jwks: JwkSet,
    issuer: String,
    audience: String,
    apps: Option<HashSet<String>>,
    clock: Arc<dyn Clock>,
    skew: u64,
}

impl fmt::Debug for JwtAttestationVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAttestationVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("apps", &self.apps)
            .field("keys", &self.jwks.keys.len())
            .finish()
    }
}

const ACCEPTED: [JwtAlg; 6] = [
    JwtAlg::RS256,
    JwtAlg::RS384,
    JwtAlg::PS256,
    JwtAlg::ES256,
    JwtAlg::ES384,
    JwtAlg::EdDSA,
];

impl JwtAttestationVerifier {
    /// A verifier for Firebase App Check tokens of `project_number`, with the JWKS document
    /// served at `https://firebaseappcheck.googleapis.com/v1/jwks`.
    ///
    /// # Errors
    /// When `jwks` is not a JWKS document.
    pub fn firebase_app_check(project_number: &str, jwks: &str) -> Result<Self, KeyError> {
        Self::new(
            &format!("https://firebaseappcheck.googleapis.com/{project_number}"),
            &format!("projects/{project_number}"),
            jwks,
        )
    }

    /// A verifier for any JWT attestation service: expected `iss`, required `aud` member, JWKS.
    ///
    /// # Errors
    /// When `jwks` is not a JWKS document.
    pub fn new(issuer: &str, audience: &str, jwks: &str) -> Result<Self, KeyError> {
        let jwks: JwkSet = serde_json::from_str(jwks)
            .map_err(|e| KeyError::Jwk(format!("attestation jwks: {e}")))?;
        Ok(Self {
            jwks,
            issuer: issuer.into(),
            audience: audience.into(),
            apps: None,
            clock: Arc::new(SystemClock),
            skew: 5,
        })
    }

    /// Accepts only these app ids (`sub`), such as `1:1234:android:abcd`.
    #[must_use]
    pub fn allowed_apps<I, T>(mut self, apps: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.apps = Some(apps.into_iter().map(Into::into).collect());
        self
    }

    /// Uses `clock` for `exp` and `iat`.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Replaces the JWKS (after fetching a rotated set).
    ///
    /// # Errors
    /// When `jwks` is not a JWKS document; the old set is kept.
    pub fn update_jwks(&mut self, jwks: &str) -> Result<(), KeyError> {
        self.jwks = serde_json::from_str(jwks)
            .map_err(|e| KeyError::Jwk(format!("attestation jwks: {e}")))?;
        Ok(())
    }
}

impl AttestationVerifier for JwtAttestationVerifier {
    fn verify(&self, token: &str) -> Result<AttestedDevice, AttestationError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            // An unknown `alg` (HS*, none) fails header parsing or the accepted list below.
            let head = token
                .split('.')
                .next()
                .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok());
            let alg = head
                .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
                .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
            match alg {
                Some(a) => AttestationError::UnsupportedAlg(a),
                None => AttestationError::Malformed(e.to_string()),
            }
        })?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(AttestationError::UnsupportedAlg(format!(
                "{:?}",
                header.alg
            )));
        }
        let kid = header
            .kid
            .clone()
            .ok_or_else(|| AttestationError::Malformed("no kid in header".into()))?;
        let jwk = self
            .jwks
            .find(&kid)
            .ok_or_else(|| AttestationError::UnknownKey(kid.clone()))?;
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| AttestationError::Malformed(format!("jwks key {kid}: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    AttestationError::InvalidSignature
                }
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    AttestationError::UnsupportedAlg(format!("{:?}", header.alg))
                }
                _ => AttestationError::Malformed(e.to_string()),
            })?
            .claims;
        let now = self.clock.now_unix();
        let exp = claims
            .exp
            .ok_or_else(|| AttestationError::Malformed("no exp".into()))?;
        if exp <= now {
            return Err(AttestationError::Expired { exp, now });
        }
        if claims.iat.is_some_and(|iat| iat > now + self.skew) {
            return Err(AttestationError::NotYetValid);
        }
        let iss = claims.iss.unwrap_or_default();
        if iss != self.issuer {
            return Err(AttestationError::WrongIssuer {
                expected: self.issuer.clone(),
                got: iss,
            });
        }
        if !claims.aud.is_some_and(|a| a.contains(&self.audience)) {
            return Err(AttestationError::WrongAudience {
                expected: self.audience.clone(),
            });
        }
        let sub = claims
            .sub
            .ok_or_else(|| AttestationError::Malformed("no sub".into()))?;
        if let Some(apps) = &self.apps
            && !apps.contains(&sub)
        {
            return Err(AttestationError::AppNotAllowed(sub));
        }
        Ok(AttestedDevice {
            app_id: sub,
            issuer: iss,
            expires_at: exp,
            jti: claims.jti,
        })
    }
}
