use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::service::VerifySignature;
use crate::clock::{Clock, SystemClock};
use crate::components::Component;
use crate::error::BuildError;
use crate::key::Algorithm;
use crate::replay::{MemoryReplayCache, ReplayCache};
use crate::resolver::KeyResolver;

pub(crate) struct VerifyConfig {
    pub(crate) resolver: Arc<dyn KeyResolver>,
    pub(crate) replay: Arc<dyn ReplayCache>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) required: Vec<Component>,
    pub(crate) require_digest_for_body: bool,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) max_age: Duration,
    pub(crate) skew: Duration,
    pub(crate) require_nonce: bool,
    pub(crate) tag: Option<String>,
    pub(crate) label: Option<String>,
    pub(crate) max_body: usize,
    pub(crate) default_scheme: String,
    pub(crate) accept_signature: Option<String>,
    /// What a signature must have, in words, for challenges.
    pub(crate) requirements: String,
}

impl fmt::Debug for VerifyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyConfig")
            .field("required", &self.required)
            .field("require_digest_for_body", &self.require_digest_for_body)
            .field("algorithms", &self.algorithms)
            .field("max_age", &self.max_age)
            .field("skew", &self.skew)
            .field("require_nonce", &self.require_nonce)
            .field("tag", &self.tag)
            .field("label", &self.label)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// Verifies RFC 9421 signatures on incoming requests. See the [module docs](crate::verify).
#[derive(Debug, Clone)]
pub struct VerifySignatureLayer {
    pub(crate) config: Arc<VerifyConfig>,
}

impl VerifySignatureLayer {
    /// A builder with secure defaults, resolving keys with `resolver`.
    ///
    /// Defaults: required components `@method`, `@authority`, `@path`, `@query` (a covered
    /// `@target-uri` covers the last three, `@request-target` the last two), and
    /// `content-digest` whenever the body is not empty; all three algorithms; `created`
    /// required, at most 300 s old and at most 5 s in the future; `expires` honoured;
    /// `nonce` required and recorded in a 100 000-entry in-memory replay cache partitioned by
    /// key id (3 125 live nonces per key; a key over its share gets `429`
    /// `replay_quota_exceeded`, other keys are unaffected); body cap 1 MiB; scheme `https`
    /// when the request target has none.
    pub fn builder(resolver: impl KeyResolver) -> VerifySignatureLayerBuilder {
        VerifySignatureLayerBuilder {
            resolver: Arc::new(resolver),
            replay: None,
            clock: Arc::new(SystemClock),
            required: ["@method", "@authority", "@path", "@query"]
                .into_iter()
                .map(String::from)
                .collect(),
            require_digest_for_body: true,
            algorithms: Algorithm::ALL.to_vec(),
            max_age: Duration::from_secs(300),
            skew: Duration::from_secs(5),
            require_nonce: true,
            tag: None,
            label: None,
            max_body: 1024 * 1024,
            default_scheme: "https".into(),
        }
    }
}

impl<S> Layer<S> for VerifySignatureLayer {
    type Service = VerifySignature<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifySignature {
            inner,
            config: self.config.clone(),
        }
    }
}

/// Builds a [`VerifySignatureLayer`]. Every relaxation is a named method.
pub struct VerifySignatureLayerBuilder {
    resolver: Arc<dyn KeyResolver>,
    replay: Option<Arc<dyn ReplayCache>>,
    clock: Arc<dyn Clock>,
    required: Vec<String>,
    require_digest_for_body: bool,
    algorithms: Vec<Algorithm>,
    max_age: Duration,
    skew: Duration,
    require_nonce: bool,
    tag: Option<String>,
    label: Option<String>,
    max_body: usize,
    default_scheme: String,
}

impl fmt::Debug for VerifySignatureLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifySignatureLayerBuilder")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl VerifySignatureLayerBuilder {
    /// Records nonces in `cache` (for example a [`RedisReplayCache`](crate::replay)
    /// shared by all replicas) instead of a private in-memory cache.
    ///
    /// Entries are counted against the partition `sig:{keyid}`: size the cache's
    /// per-partition share for the busiest key (requests per second × `max_age + skew`).
    #[must_use]
    pub fn replay_cache(mut self, cache: impl ReplayCache) -> Self {
        self.replay = Some(Arc::new(cache));
        self
    }

    /// The components every signature must cover (names such as `@method`, `content-type`).
    #[must_use]
    pub fn require_components<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.required = names.into_iter().map(Into::into).collect();
        self
    }

    /// Accepts bodies whose `content-digest` is not covered (not recommended).
    #[must_use]
    pub fn allow_unsigned_body(mut self) -> Self {
        self.require_digest_for_body = false;
        self
    }

    /// Accepts only keys of these algorithms.
    #[must_use]
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algs.into_iter().collect();
        self
    }

    /// The oldest `created` accepted (default 300 s).
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// How far into the future `created` may lie (default 5 s).
    #[must_use]
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.skew = skew;
        self
    }

    /// Accepts signatures without a `nonce`; replays are then detected by a SHA-256 of the
    /// signature base (algorithm, key id, every covered component and parameter), never by
    /// the signature bytes, so a re-encoded or malleated signature of the same message (the
    /// ECDSA `(r, n - s)` twin) is still a replay. Two identical requests signed within the
    /// same second are indistinguishable from a replay: the second is refused.
    #[must_use]
    pub fn allow_missing_nonce(mut self) -> Self {
        self.require_nonce = false;
        self
    }

    /// Requires this `tag` parameter (an application profile).
    #[must_use]
    pub fn require_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Verifies only the signature with this label (default: the first one).
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// The largest body read and hashed (default 1 MiB).
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The clock for `created` and `expires`.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The scheme assumed when the request target has none (default `https`).
    #[must_use]
    pub fn default_scheme(mut self, scheme: impl Into<String>) -> Self {
        self.default_scheme = scheme.into();
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// [`BuildError`] for an invalid required component, an empty algorithm list, a zero
    /// maximum age or an invalid label.
    pub fn build(self) -> Result<VerifySignatureLayer, BuildError> {
        let required = self
            .required
            .iter()
            .map(|n| Component::new(n).map_err(|e| BuildError::Invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if self.algorithms.is_empty() {
            return Err(BuildError::Invalid(
                "no algorithm accepted; list at least one".into(),
            ));
        }
        if self.max_age.is_zero() {
            return Err(BuildError::Invalid(
                "max_age is zero; every signature would be too old".into(),
            ));
        }
        let label = self.label.clone().unwrap_or_else(|| "sig1".into());
        if sfv::Key::from_string(label.clone()).is_err() {
            return Err(BuildError::Invalid(format!(
                "label {label:?} is not a structured-field key"
            )));
        }
        let accept_signature = crate::params::serialize_accept_signature(
            &label,
            &required,
            self.require_nonce,
            self.tag.as_deref(),
        );
        let requirements = requirements(
            self.label.as_deref(),
            &required,
            self.require_nonce,
            self.tag.as_deref(),
            &self.algorithms,
        );
        Ok(VerifySignatureLayer {
            config: Arc::new(VerifyConfig {
                resolver: self.resolver,
                replay: self
                    .replay
                    .unwrap_or_else(|| Arc::new(MemoryReplayCache::default())),
                clock: self.clock,
                required,
                require_digest_for_body: self.require_digest_for_body,
                algorithms: self.algorithms,
                max_age: self.max_age,
                skew: self.skew,
                require_nonce: self.require_nonce,
                tag: self.tag,
                label: self.label,
                max_body: self.max_body,
                default_scheme: self.default_scheme,
                accept_signature,
                requirements,
            }),
        })
    }
}

/// The requirements of a policy in words (no quotes: it goes inside a quoted challenge
/// parameter), e.g. `covering @method @authority @path @query (@target-uri covers
/// @authority @path @query), created, nonce; alg ed25519 ecdsa-p256-sha256 hmac-sha256`.
fn requirements(
    label: Option<&str>,
    required: &[Component],
    nonce: bool,
    tag: Option<&str>,
    algorithms: &[Algorithm],
) -> String {
    let names: Vec<&str> = required.iter().map(Component::name).collect();
    let mut out = match label {
        Some(label) => format!("label {label} covering {}", names.join(" ")),
        None => format!("covering {}", names.join(" ")),
    };
    if names
        .iter()
        .any(|n| matches!(*n, "@authority" | "@path" | "@query"))
    {
        out.push_str(" (@target-uri covers @authority @path @query)");
    }
    out.push_str(", content-digest when there is a body, created");
    if nonce {
        out.push_str(", nonce");
    }
    if let Some(tag) = tag {
        out.push_str(", tag ");
        out.push_str(tag);
    }
    let algs: Vec<&str> = algorithms.iter().map(|a| a.as_str()).collect();
    out.push_str("; alg ");
    out.push_str(&algs.join(" "));
    out.retain(|c| c != '"' && c != '\\');
    out
}
