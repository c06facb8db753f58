use std::{
    fmt,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, Uri, header};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::{
    Algorithm, DecodingKey, DecodingKeyKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse},
};
use tokio::time::Instant;
use tower_service::Service;

use crate::BoxError;

/// A key that verifies token signatures, bound to exactly one algorithm (so an RS256 public
/// key can never be used as an HS256 secret, and `alg: none` never matches).
#[derive(Clone)]
pub struct VerificationKey(Arc<KeyInner>);

struct KeyInner {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The algorithm does not fit this kind of key.
    #[error("algorithm {alg:?} does not fit a {kind} key")]
    AlgorithmMismatch {
        /// The algorithm asked for.
        alg: Algorithm,
        /// The kind of key given.
        kind: &'static str,
    },
    /// The key material could not be parsed.
    #[error("invalid {kind} key: expected {expected}")]
    Invalid {
        /// The kind of key.
        kind: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// The JWK cannot verify signatures (unsupported curve, symmetric, `use` not `sig`).
    #[error("unusable JWK: {0}")]
    UnusableJwk(&'static str),
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Parses the public key the way verification will, so a key that can never verify a token
/// for `alg` (another curve, a truncated key, an RSA key under 2048 bits) fails when loaded.
fn check_public(alg: Algorithm, key: &DecodingKey) -> Result<(), KeyError> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519, ParsedPublicKey,
        RSA_PKCS1_2048_8192_SHA256, VerificationAlgorithm,
    };
    let (verification, kind, expected): (&'static dyn VerificationAlgorithm, _, _) = match alg {
        Algorithm::ES256 => (
            &ECDSA_P256_SHA256_FIXED,
            "EC",
            "a P-256 public key for ES256",
        ),
        Algorithm::ES384 => (
            &ECDSA_P384_SHA384_FIXED,
            "EC",
            "a P-384 public key for ES384",
        ),
        Algorithm::EdDSA => (&ED25519, "Ed25519", "a 32-byte Ed25519 public key"),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => (
            &RSA_PKCS1_2048_8192_SHA256,
            "RSA",
            "an RSA public key of 2048 to 8192 bits",
        ),
        _ => return Ok(()),
    };
    let invalid = KeyError::Invalid { kind, expected };
    match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => ParsedPublicKey::new(verification, bytes)
            .map(drop)
            .map_err(|_| invalid),
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            // aws-lc checks the components when verifying; refuse the sizes it never accepts.
            let bytes = n.iter().skip_while(|b| **b == 0).count();
            if (256..=1024).contains(&bytes) && !e.is_empty() {
                Ok(())
            } else {
                Err(invalid)
            }
        }
    }
}

impl VerificationKey {
    /// An HMAC secret for HS256, HS384 or HS512 (at least 32 bytes).
    ///
    /// ```
    /// use portcullis_token::require::{Algorithm, KeyError, VerificationKey};
    ///
    /// let key = VerificationKey::hmac(Algorithm::HS256, b"a shared secret of 32 bytes or more")?;
    /// assert_eq!(key.algorithm(), Algorithm::HS256);
    /// // Short secrets and non-HMAC algorithms are refused.
    /// assert!(matches!(VerificationKey::hmac(Algorithm::HS256, b"short"), Err(KeyError::Invalid { .. })));
    /// assert!(matches!(
    ///     VerificationKey::hmac(Algorithm::RS256, &[7; 32]),
    ///     Err(KeyError::AlgorithmMismatch { .. })
    /// ));
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`KeyError`] when `alg` is not HMAC or the secret is shorter than 32 bytes.
    pub fn hmac(alg: Algorithm, secret: &[u8]) -> Result<Self, KeyError> {
        if !is_hmac(alg) {
            return Err(KeyError::AlgorithmMismatch { alg, kind: "HMAC" });
        }
        if secret.len() < 32 {
            return Err(KeyError::Invalid {
                kind: "HMAC",
                expected: "a secret of at least 32 bytes",
            });
        }
        Ok(Self::make(None, alg, DecodingKey::from_secret(secret)))
    }

    /// A PEM public key for RS*/PS* (RSA, `PUBLIC KEY` or `RSA PUBLIC KEY`), ES256/ES384
    /// (EC P-256/P-384) or EdDSA (Ed25519). The key is checked against `alg` now, so a key
    /// for another curve or algorithm fails here rather than on every token.
    ///
    /// ```
    /// use portcullis_token::require::{Algorithm, KeyError, VerificationKey};
    ///
    /// let pem = "-----BEGIN PUBLIC KEY-----
    /// MCowBQYDK2VwAyEA0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT/mU=
    /// -----END PUBLIC KEY-----";
    /// let key = VerificationKey::from_pem(Algorithm::EdDSA, pem.as_bytes())?.with_kid("login-1");
    /// assert_eq!((key.algorithm(), key.kid()), (Algorithm::EdDSA, Some("login-1")));
    /// // The same Ed25519 key is no ES256 key:
    /// assert!(VerificationKey::from_pem(Algorithm::ES256, pem.as_bytes()).is_err());
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the PEM does not parse as a key for `alg`.
    pub fn from_pem(alg: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                DecodingKey::from_rsa_pem(pem).map_err(|_| KeyError::Invalid {
                    kind: "RSA",
                    expected: "a PEM RSA public key",
                })?
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                DecodingKey::from_ec_pem(pem).map_err(|_| KeyError::Invalid {
                    kind: "EC",
                    expected: "a PEM EC public key",
                })?
            }
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem).map_err(|_| KeyError::Invalid {
                kind: "Ed25519",
                expected: "a PEM Ed25519 public key",
            })?,
            _ => {
                return Err(KeyError::AlgorithmMismatch {
                    alg,
                    kind: "PEM public",
                });
            }
        };
        check_public(alg, &key)?;
        Ok(Self::make(None, alg, key))
    }

    /// A DER public key: `SubjectPublicKeyInfo` (what `openssl pkey -pubout -outform DER`
    /// writes) for every public-key algorithm, or PKCS#1 `RSAPublicKey` for RS*/PS*. Checked
    /// against `alg` like [`VerificationKey::from_pem`].
    ///
    /// ```
    /// use base64::Engine as _;
    /// use portcullis_token::require::{Algorithm, KeyError, VerificationKey};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let der = base64::engine::general_purpose::STANDARD
    ///     .decode("MCowBQYDK2VwAyEA0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT/mU=")?;
    /// let key = VerificationKey::from_der(Algorithm::EdDSA, &der)?;
    /// assert_eq!(key.algorithm(), Algorithm::EdDSA);
    /// // Bytes that are not a key for the algorithm are refused when loading.
    /// assert!(matches!(
    ///     VerificationKey::from_der(Algorithm::ES256, &der),
    ///     Err(KeyError::Invalid { kind: "EC", .. })
    /// ));
    /// assert!(VerificationKey::from_der(Algorithm::RS256, b"not a key").is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the DER is not a public key for `alg` (or `alg` is HMAC).
    pub fn from_der(alg: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        use base64::Engine as _;
        let pem = |label: &str| {
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                base64::engine::general_purpose::STANDARD.encode(der)
            )
        };
        match Self::from_pem(alg, pem("PUBLIC KEY").as_bytes()) {
            Err(KeyError::Invalid { kind: "RSA", .. }) => {
                Self::from_pem(alg, pem("RSA PUBLIC KEY").as_bytes()).map_err(|_| {
                    KeyError::Invalid {
                        kind: "RSA",
                        expected: "a DER RSA public key (SubjectPublicKeyInfo or PKCS#1)",
                    }
                })
            }
            Err(KeyError::Invalid { kind, .. }) => Err(KeyError::Invalid {
                kind,
                expected: match kind {
                    "EC" => {
                        "a DER EC public key (SubjectPublicKeyInfo) on the curve of the algorithm"
                    }
                    _ => "a DER Ed25519 public key (SubjectPublicKeyInfo)",
                },
            }),
            other => other,
        }
    }

    /// A public key from one JWK in JSON text (see [`VerificationKey::from_jwk`]).
    ///
    /// ```
    /// use portcullis_token::require::{Algorithm, KeyError, VerificationKey};
    ///
    /// let key = VerificationKey::from_jwk_json(
    ///     r#"{"kty":"OKP","crv":"Ed25519","kid":"login-1","x":"0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT_mU"}"#,
    /// )?;
    /// assert_eq!((key.algorithm(), key.kid()), (Algorithm::EdDSA, Some("login-1")));
    /// // A shared secret is never taken from a JWK:
    /// assert!(matches!(
    ///     VerificationKey::from_jwk_json(r#"{"kty":"oct","k":"c2VjcmV0"}"#),
    ///     Err(KeyError::UnusableJwk(_))
    /// ));
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`KeyError::UnusableJwk`] when the text is not a JWK or the JWK cannot verify
    /// signatures.
    pub fn from_jwk_json(json: &str) -> Result<Self, KeyError> {
        let jwk: Jwk =
            serde_json::from_str(json).map_err(|_| KeyError::UnusableJwk("not a JWK object"))?;
        Self::from_jwk(&jwk)
    }

    /// A public key from a JWK. The algorithm is the JWK's `alg`, or inferred from the key type
    /// (EC P-256 → ES256, P-384 → ES384, OKP Ed25519 → EdDSA, RSA → RS256). Symmetric (`oct`)
    /// JWKs are refused: a published key set must never hold a shared secret.
    ///
    /// ```
    /// use portcullis_token::require::{Algorithm, JwkSet, KeyError, VerificationKey};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let set: JwkSet = serde_json::from_str(
    ///     r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"login-1","x":"0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT_mU"}]}"#,
    /// )?;
    /// let key = VerificationKey::from_jwk(&set.keys[0])?;
    /// assert_eq!((key.algorithm(), key.kid()), (Algorithm::EdDSA, Some("login-1")));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the JWK is not a usable signature verification key.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return Err(KeyError::UnusableJwk("use is not sig"));
        }
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return Err(KeyError::UnusableJwk("unsupported EC curve")),
            },
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                EllipticCurve::Ed25519 => Algorithm::EdDSA,
                _ => return Err(KeyError::UnusableJwk("unsupported OKP curve")),
            },
            AlgorithmParameters::OctetKey(_) => {
                return Err(KeyError::UnusableJwk(
                    "symmetric keys are not accepted from a JWKS",
                ));
            }
            _ => return Err(KeyError::UnusableJwk("unsupported key type")),
        };
        let alg = match jwk.common.key_algorithm {
            None => inferred,
            Some(ka) => {
                let alg: Algorithm = ka
                    .to_string()
                    .parse()
                    .map_err(|_| KeyError::UnusableJwk("unsupported alg"))?;
                let fits = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => matches!(
                        alg,
                        Algorithm::RS256
                            | Algorithm::RS384
                            | Algorithm::RS512
                            | Algorithm::PS256
                            | Algorithm::PS384
                            | Algorithm::PS512
                    ),
                    _ => alg == inferred,
                };
                if !fits {
                    return Err(KeyError::UnusableJwk("alg does not fit the key type"));
                }
                alg
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|_| KeyError::UnusableJwk("malformed key"))?;
        check_public(alg, &key).map_err(|_| KeyError::UnusableJwk("malformed key"))?;
        Ok(Self::make(jwk.common.key_id.clone(), alg, key))
    }

    /// Sets the key id matched against the token header's `kid`.
    pub fn with_kid(self, kid: impl Into<String>) -> Self {
        let inner = &self.0;
        Self::make(Some(kid.into()), inner.alg, inner.key.clone())
    }

    fn make(kid: Option<String>, alg: Algorithm, key: DecodingKey) -> Self {
        Self(Arc::new(KeyInner { kid, alg, key }))
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.0.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.0.alg
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.0.key
    }

    fn same_key(&self, other: &Self) -> bool {
        self.0.kid == other.0.kid && self.0.alg == other.0.alg
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.0.kid)
            .field("alg", &self.0.alg)
            .finish_non_exhaustive()
    }
}

/// Why fetching a JWKS failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Transport failure.
    #[error("jwks fetch failed: {0}")]
    Transport(#[source] BoxError),
    /// The fetch (connection, answer and body) did not finish in time.
    #[error(
        "jwks fetch did not finish within {0:?}; keeping the previous keys (see Jwks::fetch_timeout)"
    )]
    Timeout(Duration),
    /// Non-200 status.
    #[error("jwks endpoint answered {0}, expected 200")]
    Status(u16),
    /// The body is not a JWK set, or holds no usable key.
    #[error("invalid jwks document: {0}")]
    Invalid(&'static str),
    /// Fetched too recently to fetch again.
    #[error("jwks fetched less than the minimum interval ago")]
    TooSoon,
    /// The set is static ([`Jwks::from_file`], [`Jwks::from_json`]): there is nothing to fetch.
    #[error("jwks is static (loaded from a file or text); an unknown kid is refused")]
    Static,
}

/// Why a static key set ([`Jwks::from_file`], [`Jwks::from_json`], [`Jwks::from_jwk_set`])
/// could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksLoadError {
    /// The file could not be read.
    #[error("cannot read jwks file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a JWK set (a JSON object with a `keys` array).
    #[error("{origin} is not a JWK set: {reason}; expected a JSON object with a \"keys\" array")]
    NotJwkSet {
        /// Where the text came from (the file, or `jwks text`).
        origin: String,
        /// What was wrong (the position of a JSON error; never the text itself).
        reason: String,
    },
    /// One key of the set cannot verify signatures.
    #[error("{origin}: key #{index}{} cannot verify signatures: {source}", .kid.as_ref().map(|k| format!(" (kid {k:?})")).unwrap_or_default())]
    Key {
        /// Where the set came from.
        origin: String,
        /// The key's position in the `keys` array, from 0.
        index: usize,
        /// The key's `kid`, if it has one.
        kid: Option<String>,
        /// Why the key is unusable.
        #[source]
        source: KeyError,
    },
    /// The set holds no signature key.
    #[error("{origin} holds no signature key; expected at least one")]
    Empty {
        /// Where the set came from.
        origin: String,
    },
}

fn load_failed(error: JwksLoadError) -> JwksLoadError {
    tracing::warn!(
        target: "portcullis::token",
        {
            "event.kind" = "event",
            "event.category" = "configuration",
            "event.action" = "jwks.load",
            "event.outcome" = "failure",
            "event.reason" = %error,
        },
        "static jwks refused"
    );
    error
}

/// The keys of a static set: every key must verify signatures (keys marked `"use": "enc"` are
/// skipped), and there must be at least one.
fn static_keys(
    origin: &str,
    keys: &[serde_json::Value],
) -> Result<Vec<VerificationKey>, JwksLoadError> {
    let mut out = Vec::with_capacity(keys.len());
    for (index, value) in keys.iter().enumerate() {
        let bad = |source| JwksLoadError::Key {
            origin: origin.to_owned(),
            index,
            kid: value.get("kid").and_then(|k| k.as_str()).map(str::to_owned),
            source,
        };
        if value.get("use").and_then(|u| u.as_str()) == Some("enc") {
            continue;
        }
        let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|_| {
            bad(KeyError::UnusableJwk(
                "not a JWK (unknown kty or alg, or a malformed member)",
            ))
        })?;
        out.push(VerificationKey::from_jwk(&jwk).map_err(bad)?);
    }
    if out.is_empty() {
        return Err(JwksLoadError::Empty {
            origin: origin.to_owned(),
        });
    }
    Ok(out)
}

/// Why a JWKS URI was refused when the key set was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksUriError {
    /// The URI is not `https`: keys fetched in the clear can be replaced by anyone on the path.
    #[error(
        "jwks uri scheme is {seen:?}, expected \"https\" (keys fetched in the clear can be \
         swapped on the path; a test server on loopback may use \
         require::danger::jwks_from_loopback_http)"
    )]
    NotHttps {
        /// The scheme seen (`None` for a relative URI).
        seen: Option<String>,
    },
    /// The URI has no host.
    #[error("jwks uri has no host, expected an absolute https://host/path URI")]
    NoHost,
    /// Plain `http` was asked for a host that is not loopback.
    #[error(
        "jwks uri host {host:?} is not loopback: plain http is allowed only for 127.0.0.1, \
         ::1 or localhost"
    )]
    NotLoopback {
        /// The host seen.
        host: String,
    },
}

/// The default bound on one JWKS fetch (connection, answer and body).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

fn refuse_uri(uri: &Uri, error: JwksUriError) -> JwksUriError {
    tracing::warn!(
        target: "portcullis::token",
        {
            "event.kind" = "event",
            "event.category" = "configuration",
            "event.action" = "jwks.configure",
            "event.outcome" = "failure",
            "event.reason" = %error,
            "url.scheme" = uri.scheme_str(),
            "url.domain" = uri.host(),
        },
        "jwks uri refused"
    );
    error
}

/// Checks that `uri` is `https` with a host (or, with `allow_loopback_http`, plain `http` to a
/// loopback address).
pub(super) fn check_jwks_uri(uri: &Uri, allow_loopback_http: bool) -> Result<(), JwksUriError> {
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err(refuse_uri(uri, JwksUriError::NoHost));
    };
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => Ok(()),
        Some(s) if allow_loopback_http && s.eq_ignore_ascii_case("http") => {
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let loopback = bare.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(refuse_uri(
                    uri,
                    JwksUriError::NotLoopback {
                        host: host.to_owned(),
                    },
                ))
            }
        }
        seen => Err(refuse_uri(
            uri,
            JwksUriError::NotHttps {
                seen: seen.map(str::to_owned),
            },
        )),
    }
}

type FetchFuture = Pin<Box<dyn Future<Output = Result<JwkSet, JwksError>> + Send>>;
type Fetcher = Box<dyn Fn() -> FetchFuture + Send + Sync>;

struct Entry {
    key: VerificationKey,
    retired_at: Option<Instant>,
}

struct JwksInner {
    /// `None` for a static set (loaded once from a file or text): nothing is ever fetched.
    fetch: Option<Fetcher>,
    entries: RwLock<Arc<Vec<Entry>>>,
    overlap: Duration,
    min_interval: Duration,
    fetch_timeout: Duration,
    /// Held only for bookkeeping, never across an await.
    state: Mutex<FetchState>,
}

#[derive(Default)]
struct FetchState {
    last_fetch: Option<Instant>,
    /// The fetch in flight, if any: its receiver wakes when the fetch ends (or is dropped).
    in_flight: Option<(u64, tokio::sync::watch::Receiver<()>)>,
    next_id: u64,
}

/// What a caller does about a fetch.
enum Begin<'a> {
    /// Fetch; the guard marks the fetch as in flight until dropped.
    Lead(FlightGuard<'a>),
    /// Wait (bounded) for the fetch already in flight.
    Join(tokio::sync::watch::Receiver<()>),
    /// Fetched within the minimum interval.
    TooSoon,
    /// A static set: there is nothing to fetch.
    Static,
}

/// Clears the in-flight mark and wakes the waiters when the fetch ends or is cancelled.
struct FlightGuard<'a> {
    jwks: &'a Jwks,
    id: u64,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.jwks.state();
        if state
            .in_flight
            .as_ref()
            .is_some_and(|(id, _)| *id == self.id)
        {
            state.in_flight = None;
        }
        // `_done` drops after this: the waiters' `changed()` returns.
    }
}

/// A JSON Web Key Set fetched from the issuer, refreshed in the background.
///
/// Key rotation overlap: a key that disappears from the document keeps verifying for the
/// `overlap` period (default 10 min) so tokens signed just before a rotation stay valid; a
/// token with an unknown `kid` triggers an immediate refetch, at most once per
/// `min_refetch_interval` (default 30 s) so forged `kid`s cannot hammer the issuer.
///
/// Every fetch is bounded by [`Jwks::fetch_timeout`] (default 10 s). No lock is held while a
/// fetch runs: a request with an unknown `kid` that arrives during a fetch waits for that
/// fetch, at most the fetch timeout, then is decided with whatever keys are installed (an
/// issuer that accepts the connection and never answers costs each such request at most the
/// timeout, and refuses the token: fail closed).
#[derive(Clone)]
pub struct Jwks {
    inner: Arc<JwksInner>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.snapshot();
        f.debug_struct("Jwks")
            .field("keys", &entries.iter().map(|e| &e.key).collect::<Vec<_>>())
            .field("overlap", &self.inner.overlap)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A key set fetched with `GET uri` through `client` (use the pinned client). Nothing is
    /// fetched until [`Jwks::refresh`] or [`Jwks::spawn_refresh`].
    ///
    /// # Errors
    ///
    /// [`JwksUriError`] when `uri` is not an absolute `https` URI. For a test issuer on
    /// loopback over plain http, see
    /// [`danger::jwks_from_loopback_http`](super::danger::jwks_from_loopback_http).
    pub fn from_uri<S, B>(client: S, uri: Uri) -> Result<Self, JwksUriError>
    where
        S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        check_jwks_uri(&uri, false)?;
        Ok(Self::from_checked_uri(client, uri))
    }

    pub(super) fn from_checked_uri<S, B>(client: S, uri: Uri) -> Self
    where
        S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        Self::from_fetcher(move || {
            let mut client = client.clone();
            let uri = uri.clone();
            async move {
                let req = Request::builder()
                    .method(Method::GET)
                    .uri(uri)
                    .header(header::ACCEPT, "application/json, application/jwk-set+json")
                    .body(Empty::new())
                    .map_err(|e| JwksError::Transport(e.into()))?;
                std::future::poll_fn(|cx| client.poll_ready(cx))
                    .await
                    .map_err(|e| JwksError::Transport(e.into()))?;
                let resp = client
                    .call(req)
                    .await
                    .map_err(|e| JwksError::Transport(e.into()))?;
                if resp.status() != http::StatusCode::OK {
                    return Err(JwksError::Status(resp.status().as_u16()));
                }
                let body = Limited::new(resp.into_body(), 512 * 1024)
                    .collect()
                    .await
                    .map_err(JwksError::Transport)?
                    .to_bytes();
                serde_json::from_slice::<JwkSet>(&body)
                    .map_err(|_| JwksError::Invalid("body is not a JWK set"))
            }
        })
    }

    /// A static key set from JWKS text (`{"keys": [...]}`): no fetching, ever. A token whose
    /// `kid` is not in the set is refused.
    ///
    /// Every key must be a usable signature key (`EC` P-256/P-384, `RSA`, `OKP` Ed25519; keys
    /// with `"use": "enc"` are skipped): a static set is your own configuration, so a key that
    /// cannot verify is an error naming it rather than a key silently left out.
    ///
    /// ```
    /// use portcullis_token::require::{Algorithm, Jwks, JwksLoadError, JwtValidator};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let jwks = Jwks::from_json(
    ///     r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"login-1","x":"0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT_mU"}]}"#,
    /// )?;
    /// let validator = JwtValidator::builder()
    ///     .issuer("https://login.example")
    ///     .audience("orders")
    ///     .jwks(jwks)
    ///     .build()?;
    /// # let _ = validator;
    ///
    /// // A key that cannot verify is named:
    /// let err = Jwks::from_json(r#"{"keys":[{"kty":"oct","kid":"shared","k":"c2VjcmV0"}]}"#).unwrap_err();
    /// assert!(matches!(err, JwksLoadError::Key { index: 0, .. }));
    /// assert!(err.to_string().contains(r#"key #0 (kid "shared")"#), "{err}");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`JwksLoadError`] when the text is not a JWK set, a key in it cannot verify signatures,
    /// or it holds no signature key.
    pub fn from_json(json: &str) -> Result<Self, JwksLoadError> {
        Self::load("jwks text".to_owned(), json)
    }

    /// A static key set read from a JWKS file (see [`Jwks::from_json`]).
    ///
    /// ```
    /// use portcullis_token::require::{Jwks, JwksLoadError};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let path = std::env::temp_dir().join(format!("portcullis-jwks-doc-{}.json", std::process::id()));
    /// std::fs::write(
    ///     &path,
    ///     r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"login-1","x":"0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT_mU"}]}"#,
    /// )?;
    /// let jwks = Jwks::from_file(&path)?;
    /// # let _ = jwks;
    /// // Errors name the file:
    /// std::fs::write(&path, "{not json")?;
    /// let err = Jwks::from_file(&path).unwrap_err();
    /// assert!(matches!(err, JwksLoadError::NotJwkSet { .. }));
    /// assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    /// std::fs::remove_file(&path)?;
    /// assert!(matches!(Jwks::from_file(&path), Err(JwksLoadError::Read { .. })));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`JwksLoadError`] naming the file: unreadable, not a JWK set, a key that cannot verify
    /// signatures, or no signature key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, JwksLoadError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| {
            load_failed(JwksLoadError::Read {
                path: path.to_owned(),
                source,
            })
        })?;
        Self::load(format!("jwks file {}", path.display()), &text)
    }

    /// A static key set from a parsed [`JwkSet`] (see [`Jwks::from_json`]).
    ///
    /// ```
    /// use portcullis_token::require::{JwkSet, Jwks};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let set: JwkSet = serde_json::from_str(
    ///     r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"login-1","x":"0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT_mU"}]}"#,
    /// )?;
    /// let jwks = Jwks::from_jwk_set(&set)?;
    /// # let _ = jwks;
    /// assert!(Jwks::from_jwk_set(&JwkSet { keys: vec![] }).is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`JwksLoadError`] when a key cannot verify signatures or the set holds none.
    pub fn from_jwk_set(set: &JwkSet) -> Result<Self, JwksLoadError> {
        let keys = serde_json::to_value(&set.keys).map_err(|e| JwksLoadError::NotJwkSet {
            origin: "jwk set".to_owned(),
            reason: format!("{:?} error", e.classify()),
        });
        let keys = match keys {
            Ok(serde_json::Value::Array(keys)) => keys,
            Ok(_) => Vec::new(),
            Err(e) => return Err(load_failed(e)),
        };
        Self::install_static("jwk set", &keys)
    }

    fn load(origin: String, json: &str) -> Result<Self, JwksLoadError> {
        let not_set = |reason: String| {
            load_failed(JwksLoadError::NotJwkSet {
                origin: origin.clone(),
                reason,
            })
        };
        // Only the position of a JSON error: the text itself never reaches a message.
        let doc: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            not_set(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| not_set("no \"keys\" array".to_owned()))?;
        Self::install_static(&origin, keys)
    }

    fn install_static(origin: &str, keys: &[serde_json::Value]) -> Result<Self, JwksLoadError> {
        let keys = static_keys(origin, keys).map_err(load_failed)?;
        tracing::debug!(
            target: "portcullis::token",
            {
                "event.kind" = "event",
                "event.category" = "configuration",
                "event.action" = "jwks.load",
                "event.outcome" = "success",
                "jwks.keys" = keys.len(),
            },
            "static jwks loaded"
        );
        let entries = keys
            .into_iter()
            .map(|key| Entry {
                key,
                retired_at: None,
            })
            .collect();
        Ok(Self {
            inner: Arc::new(JwksInner {
                fetch: None,
                entries: RwLock::new(Arc::new(entries)),
                overlap: Duration::from_secs(600),
                min_interval: Duration::from_secs(30),
                fetch_timeout: DEFAULT_FETCH_TIMEOUT,
                state: Mutex::new(FetchState::default()),
            }),
        })
    }

    fn is_static(&self) -> bool {
        self.inner.fetch.is_none()
    }

    /// A key set from a custom fetch function.
    pub fn from_fetcher<F, Fut>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<JwkSet, JwksError>> + Send + 'static,
    {
        Self {
            inner: Arc::new(JwksInner {
                fetch: Some(Box::new(move || Box::pin(fetch()))),
                entries: RwLock::new(Arc::new(Vec::new())),
                overlap: Duration::from_secs(600),
                min_interval: Duration::from_secs(30),
                fetch_timeout: DEFAULT_FETCH_TIMEOUT,
                state: Mutex::new(FetchState::default()),
            }),
        }
    }

    /// How long a key removed from the document keeps verifying (default 10 min).
    ///
    /// # Panics
    ///
    /// When called after the set was cloned (configure before sharing).
    pub fn overlap(mut self, overlap: Duration) -> Self {
        self.inner_mut().overlap = overlap;
        self
    }

    /// Least time between two fetches triggered by unknown `kid`s (default 30 s).
    ///
    /// # Panics
    ///
    /// When called after the set was cloned (configure before sharing).
    pub fn min_refetch_interval(mut self, interval: Duration) -> Self {
        self.inner_mut().min_interval = interval;
        self
    }

    /// Longest time one fetch (connection, answer and body) may take before it fails with
    /// [`JwksError::Timeout`] and the previous keys stay in place (default 10 s).
    ///
    /// # Panics
    ///
    /// When called after the set was cloned (configure before sharing).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().fetch_timeout = timeout;
        self
    }

    fn inner_mut(&mut self) -> &mut JwksInner {
        Arc::get_mut(&mut self.inner).expect("configure Jwks before cloning it")
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides, without waiting, whether an unknown-`kid` refetch fetches, joins the fetch in
    /// flight, or is too soon.
    fn begin(&self) -> Begin<'_> {
        if self.is_static() {
            return Begin::Static;
        }
        let mut state = self.state();
        if let Some((_, rx)) = &state.in_flight {
            return Begin::Join(rx.clone());
        }
        if state
            .last_fetch
            .is_some_and(|t| t.elapsed() < self.inner.min_interval)
        {
            return Begin::TooSoon;
        }
        Begin::Lead(self.lead(&mut state))
    }

    /// Marks a fetch as in flight (and as the last fetch) until the guard drops.
    fn lead(&self, state: &mut FetchState) -> FlightGuard<'_> {
        let (tx, rx) = tokio::sync::watch::channel(());
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(1);
        state.in_flight = Some((id, rx));
        state.last_fetch = Some(Instant::now());
        FlightGuard {
            jwks: self,
            id,
            _done: tx,
        }
    }

    fn snapshot(&self) -> Arc<Vec<Entry>> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Fetches the document now and installs its keys; returns how many keys verify. A
    /// static set fetches nothing and returns its key count.
    ///
    /// # Errors
    ///
    /// [`JwksError`] when the fetch fails, takes longer than [`Jwks::fetch_timeout`] or the
    /// document holds no usable key; the previous keys stay in place then.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let flight = {
            let mut state = self.state();
            self.lead(&mut state)
        };
        let result = self.fetch_and_install().await;
        drop(flight);
        result
    }

    /// One bounded fetch, then the keys installed in one step. Holds no lock across the await.
    async fn fetch_and_install(&self) -> Result<usize, JwksError> {
        let timeout = self.inner.fetch_timeout;
        let Some(fetch) = &self.inner.fetch else {
            return Ok(self.snapshot().len());
        };
        let set = match tokio::time::timeout(timeout, fetch()).await {
            Ok(result) => result,
            Err(_) => Err(JwksError::Timeout(timeout)),
        };
        let set = match set {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(
                    target: "portcullis::token",
                    {
                        "event.kind" = "event",
                        "event.category" = "configuration",
                        "event.action" = "jwks.refresh",
                        "event.outcome" = "failure",
                        "event.reason" = %e,
                    },
                    "jwks refresh failed; keeping the previous keys"
                );
                return Err(e);
            }
        };
        let fresh: Vec<VerificationKey> = set
            .keys
            .iter()
            .filter_map(|jwk| VerificationKey::from_jwk(jwk).ok())
            .collect();
        if fresh.is_empty() {
            return Err(JwksError::Invalid("no usable signature key"));
        }
        let now = Instant::now();
        let count = fresh.len();
        {
            // Read, merge and write under one write lock, so two fetches ending together
            // cannot lose each other's retired keys.
            let mut entries = self
                .inner
                .entries
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let mut next: Vec<Entry> = fresh
                .iter()
                .map(|k| Entry {
                    key: k.clone(),
                    retired_at: None,
                })
                .collect();
            for old in entries.iter() {
                if fresh.iter().any(|k| k.same_key(&old.key)) {
                    continue;
                }
                let retired_at = old.retired_at.unwrap_or(now);
                if now.saturating_duration_since(retired_at) < self.inner.overlap {
                    next.push(Entry {
                        key: old.key.clone(),
                        retired_at: Some(retired_at),
                    });
                }
            }
            *entries = Arc::new(next);
        }
        tracing::debug!(
            target: "portcullis::token",
            {
                "event.kind" = "event",
                "event.category" = "configuration",
                "event.action" = "jwks.refresh",
                "event.outcome" = "success",
                "jwks.keys" = count,
            },
            "jwks refreshed"
        );
        Ok(count)
    }

    /// Refetches for an unknown `kid`, unless a fetch happened within the minimum interval;
    /// joins (for at most the fetch timeout) a fetch already in flight instead of starting
    /// another. The caller then validates again with whatever keys are installed.
    pub(crate) async fn refetch_for_unknown_kid(&self) -> Result<(), JwksError> {
        match self.begin() {
            Begin::TooSoon => Err(JwksError::TooSoon),
            Begin::Static => Err(JwksError::Static),
            Begin::Join(mut done) => {
                // Ends when the fetch in flight ends or is cancelled, or after the timeout.
                let _ = tokio::time::timeout(self.inner.fetch_timeout, done.changed()).await;
                Ok(())
            }
            Begin::Lead(flight) => {
                let result = self.fetch_and_install().await;
                drop(flight);
                result.map(drop)
            }
        }
    }

    /// Whether an unknown-`kid` refetch would be allowed now (or a fetch is in flight to wait
    /// for).
    pub(crate) fn may_refetch(&self) -> bool {
        if self.is_static() {
            return false;
        }
        let state = self.state();
        state.in_flight.is_some()
            || state
                .last_fetch
                .is_none_or(|t| t.elapsed() >= self.inner.min_interval)
    }

    /// Refreshes every `every` on the current tokio runtime until the handle is dropped.
    /// A static set has nothing to refresh: the task ends at once.
    pub fn spawn_refresh(&self, every: Duration) -> JwksRefreshHandle {
        if self.is_static() {
            return JwksRefreshHandle(tokio::spawn(async {}));
        }
        let jwks = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = jwks.refresh().await;
            }
        });
        JwksRefreshHandle(task)
    }

    pub(crate) fn keys_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        out: &mut Vec<VerificationKey>,
    ) {
        let now = Instant::now();
        for e in self.snapshot().iter() {
            if e.retired_at
                .is_some_and(|t| now.saturating_duration_since(t) >= self.inner.overlap)
            {
                continue;
            }
            if e.key.algorithm() == alg && (kid.is_none() || e.key.kid() == kid) {
                out.push(e.key.clone());
            }
        }
    }
}

/// Stops the background JWKS refresh when dropped.
#[derive(Debug)]
pub struct JwksRefreshHandle(tokio::task::JoinHandle<()>);

impl Drop for JwksRefreshHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header};

    use super::*;
    use crate::require::{JwtValidator, ValidationError};

    const ISS: &str = "https://issuer.test";
    const AUD: &str = "orders-api";

    /// A fresh key pair for `alg`: the signing key and the public key as SPKI DER and PEM.
    struct Pair {
        alg: Algorithm,
        enc: EncodingKey,
        spki_der: Vec<u8>,
        pem: String,
    }

    fn pair(alg: Algorithm) -> Pair {
        let rc: &'static rcgen::SignatureAlgorithm = match alg {
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => &rcgen::PKCS_RSA_SHA256,
        };
        let kp = rcgen::KeyPair::generate_for(rc).unwrap();
        let private = kp.serialize_pem();
        let enc = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(private.as_bytes()),
            _ => EncodingKey::from_rsa_pem(private.as_bytes()),
        }
        .unwrap();
        Pair {
            alg,
            enc,
            spki_der: rcgen::PublicKeyData::subject_public_key_info(&kp),
            pem: kp.public_key_pem(),
        }
    }

    fn token(pair: &Pair, alg: Algorithm, kid: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        let claims = serde_json::json!({
            "iss": ISS, "aud": AUD, "sub": "user-42", "iat": now, "exp": now + 300,
        });
        jsonwebtoken::encode(&header, &claims, &pair.enc).unwrap()
    }

    fn validator_with(key: VerificationKey) -> JwtValidator {
        JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .key(key)
            .build()
            .unwrap()
    }

    fn jwks_text(pairs: &[(&Pair, &str)]) -> String {
        let keys: Vec<Jwk> = pairs
            .iter()
            .map(|(p, kid)| {
                let mut jwk = Jwk::from_encoding_key(&p.enc, p.alg).unwrap();
                jwk.common.key_id = Some((*kid).to_owned());
                jwk
            })
            .collect();
        serde_json::to_string(&JwkSet { keys }).unwrap()
    }

    /// A static set verifies tokens by its keys, and an unknown `kid` is refused without any
    /// fetch being attempted (there is nothing to fetch).
    #[tokio::test]
    async fn a_static_jwks_verifies_its_keys_and_refuses_unknown_kids_without_fetching() {
        let es = pair(Algorithm::ES256);
        let rsa = pair(Algorithm::RS256);
        let jwks = Jwks::from_json(&jwks_text(&[(&es, "es-1"), (&rsa, "rsa-1")])).unwrap();
        assert!(!jwks.may_refetch());
        assert_eq!(jwks.refresh().await.unwrap(), 2);
        let validator = JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .jwks(jwks.clone())
            .build()
            .unwrap();
        for (p, kid) in [(&es, "es-1"), (&rsa, "rsa-1")] {
            let claims = validator
                .validate_with_refetch(&token(p, p.alg, kid))
                .await
                .unwrap();
            assert_eq!(claims.subject(), Some("user-42"));
        }
        let stranger = pair(Algorithm::ES256);
        assert!(matches!(
            validator
                .validate_with_refetch(&token(&stranger, Algorithm::ES256, "es-2"))
                .await,
            Err(ValidationError::UnknownKey)
        ));
        assert!(matches!(
            jwks.refetch_for_unknown_kid().await,
            Err(JwksError::Static)
        ));
        // The same key under a known kid but another signer is still a forgery.
        assert!(
            validator
                .validate(&token(&stranger, Algorithm::ES256, "es-1"))
                .is_err()
        );
    }

    /// Every way a static set can be wrong is a typed error naming the source and the key,
    /// and never echoes the document's text.
    #[test]
    fn static_jwks_errors_name_the_file_and_the_key() {
        let err = Jwks::from_json("{\"keys\": [ \"secret-looking-text\" ").unwrap_err();
        assert!(matches!(err, JwksLoadError::NotJwkSet { .. }), "{err}");
        assert!(err.to_string().contains("line 1 column"), "{err}");
        assert!(!err.to_string().contains("secret-looking-text"), "{err}");

        let err = Jwks::from_json(r#"{"kid": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("no \"keys\" array"), "{err}");

        let es = pair(Algorithm::ES256);
        let good = serde_json::from_str::<serde_json::Value>(&jwks_text(&[(&es, "es-1")])).unwrap()
            ["keys"][0]
            .clone();
        let doc = serde_json::json!({"keys": [
            good,
            {"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
        ]});
        let err = Jwks::from_json(&doc.to_string()).unwrap_err();
        match &err {
            JwksLoadError::Key { index, kid, .. } => {
                assert_eq!((*index, kid.as_deref()), (1, Some("shared")));
            }
            other => panic!("expected a Key error, got {other:?}"),
        }
        assert!(
            err.to_string().contains(r#"key #1 (kid "shared")"#),
            "{err}"
        );
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");

        let doc = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bad", "x": "AAAA", "y": "AAAA"}]});
        let err = Jwks::from_json(&doc.to_string()).unwrap_err();
        assert!(matches!(err, JwksLoadError::Key { index: 0, .. }), "{err}");

        let doc = serde_json::json!({"keys": [{"kty": "RSA", "use": "enc", "kid": "wrap", "n": "AQAB", "e": "AQAB"}]});
        let err = Jwks::from_json(&doc.to_string()).unwrap_err();
        assert!(matches!(err, JwksLoadError::Empty { .. }), "{err}");

        let dir = std::env::temp_dir().join(format!("portcullis-jwks-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        let err = Jwks::from_file(&path).unwrap_err();
        assert!(matches!(err, JwksLoadError::Read { .. }), "{err}");
        assert!(err.to_string().contains("jwks.json"), "{err}");
        std::fs::write(&path, "[]").unwrap();
        let err = Jwks::from_file(&path).unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        std::fs::write(&path, jwks_text(&[(&es, "es-1")])).unwrap();
        let jwks = Jwks::from_file(&path).unwrap();
        let mut found = Vec::new();
        jwks.keys_for(Some("es-1"), Algorithm::ES256, &mut found);
        assert_eq!(found.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// DER (SPKI, and PKCS#1 for RSA), PEM and JWK load the same key for every public-key
    /// algorithm the validator supports, and each verifies a real token.
    #[test]
    fn der_pem_and_jwk_keys_verify_tokens_for_every_public_key_algorithm() {
        for alg in [
            Algorithm::EdDSA,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::PS384,
        ] {
            let p = pair(alg);
            let tok = token(&p, alg, "k");
            let mut keys = vec![
                ("der", VerificationKey::from_der(alg, &p.spki_der).unwrap()),
                (
                    "pem",
                    VerificationKey::from_pem(alg, p.pem.as_bytes()).unwrap(),
                ),
            ];
            if alg != Algorithm::EdDSA {
                let mut jwk = Jwk::from_encoding_key(&p.enc, alg).unwrap();
                jwk.common.key_id = Some("k".into());
                let json = serde_json::to_string(&jwk).unwrap();
                keys.push(("jwk", VerificationKey::from_jwk_json(&json).unwrap()));
            }
            if matches!(alg, Algorithm::RS256 | Algorithm::PS384) {
                let pkcs1 = DecodingKey::from_rsa_pem(p.pem.as_bytes())
                    .unwrap()
                    .try_get_as_bytes()
                    .unwrap()
                    .to_vec();
                keys.push(("pkcs1 der", VerificationKey::from_der(alg, &pkcs1).unwrap()));
            }
            for (form, key) in keys {
                let claims = validator_with(key.with_kid("k")).validate(&tok);
                assert!(claims.is_ok(), "{alg:?} from {form}: {claims:?}");
            }
        }
    }

    /// A key for another curve or algorithm is refused when loaded, not silently kept as a key
    /// that can never verify (or, worse, verify under the wrong algorithm).
    #[test]
    fn keys_that_do_not_fit_the_algorithm_are_refused_when_loaded() {
        let p256 = pair(Algorithm::ES256);
        let p384 = pair(Algorithm::ES384);
        let ed = pair(Algorithm::EdDSA);
        let rsa = pair(Algorithm::RS256);
        for (alg, p) in [
            (Algorithm::ES256, &p384),
            (Algorithm::ES384, &p256),
            (Algorithm::ES256, &ed),
            (Algorithm::EdDSA, &p256),
            (Algorithm::RS256, &p256),
            (Algorithm::ES256, &rsa),
        ] {
            let der = VerificationKey::from_der(alg, &p.spki_der);
            let pem = VerificationKey::from_pem(alg, p.pem.as_bytes());
            assert!(
                matches!(der, Err(KeyError::Invalid { .. })),
                "{:?} DER as {alg:?}: {der:?}",
                p.alg
            );
            assert!(
                matches!(pem, Err(KeyError::Invalid { .. })),
                "{:?} PEM as {alg:?}: {pem:?}",
                p.alg
            );
        }
        assert!(
            VerificationKey::from_der(Algorithm::RS256, &[0x30, 0x03, 0x02, 0x01, 0x01]).is_err()
        );
        assert!(VerificationKey::from_der(Algorithm::HS256, &p256.spki_der).is_err());
        // A JWK whose P-384 coordinates are declared P-256 is refused too.
        let mut jwk = Jwk::from_encoding_key(&p384.enc, Algorithm::ES384).unwrap();
        if let AlgorithmParameters::EllipticCurve(ec) = &mut jwk.algorithm {
            ec.curve = EllipticCurve::P256;
        }
        jwk.common.key_algorithm = None;
        assert!(VerificationKey::from_jwk(&jwk).is_err());
    }
}
