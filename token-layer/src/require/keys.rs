use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, Uri, header};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::{
    Algorithm, DecodingKey,
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

impl VerificationKey {
    /// An HMAC secret for HS256, HS384 or HS512 (at least 32 bytes).
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

    /// A PEM public key for RS*/PS* (RSA), ES256/ES384 (EC) or EdDSA (Ed25519).
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
        Ok(Self::make(None, alg, key))
    }

    /// A public key from a JWK. The algorithm is the JWK's `alg`, or inferred from the key type
    /// (EC P-256 → ES256, P-384 → ES384, OKP Ed25519 → EdDSA, RSA → RS256). Symmetric (`oct`)
    /// JWKs are refused: a published key set must never hold a shared secret.
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
    fetch: Fetcher,
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

    /// A key set from a custom fetch function.
    pub fn from_fetcher<F, Fut>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<JwkSet, JwksError>> + Send + 'static,
    {
        Self {
            inner: Arc::new(JwksInner {
                fetch: Box::new(move || Box::pin(fetch())),
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

    /// Fetches the document now and installs its keys; returns how many keys verify.
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
        let set = match tokio::time::timeout(timeout, (self.inner.fetch)()).await {
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
        let state = self.state();
        state.in_flight.is_some()
            || state
                .last_fetch
                .is_none_or(|t| t.elapsed() >= self.inner.min_interval)
    }

    /// Refreshes every `every` on the current tokio runtime until the handle is dropped.
    pub fn spawn_refresh(&self, every: Duration) -> JwksRefreshHandle {
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
