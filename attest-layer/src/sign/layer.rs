use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::service::Sign;
use crate::clock::{Clock, SystemClock};
use crate::components::Component;
use crate::digest::DigestAlgorithm;
use crate::key::SigningKey;

#[derive(Clone)]
pub(crate) struct SignConfig {
    pub(crate) key: SigningKey,
    pub(crate) label: String,
    pub(crate) components: Option<Vec<Component>>,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) nonce: bool,
    pub(crate) include_alg: bool,
    pub(crate) tag: Option<String>,
    pub(crate) digest: DigestAlgorithm,
    pub(crate) max_body: usize,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) default_scheme: String,
    /// The default components, parsed once: `@method @authority @path @query`, then
    /// `content-digest`, `content-type`, `authorization` (used when applicable).
    pub(crate) defaults: Arc<[Component]>,
}

impl std::fmt::Debug for SignConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignConfig")
            .field("key", &self.key)
            .field("label", &self.label)
            .field("components", &self.components)
            .field("expires_in", &self.expires_in)
            .field("nonce", &self.nonce)
            .field("include_alg", &self.include_alg)
            .field("tag", &self.tag)
            .field("digest", &self.digest)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// Signs requests per RFC 9421. See the [module docs](crate::sign).
///
/// Defaults: label `sig1`; components `@method`, `@authority`, `@path`, `@query`, plus
/// `content-digest` when there is a body and `content-type`/`authorization` when present;
/// parameters `created`, `expires` (+5 minutes), `nonce` (128 random bits), `keyid`, `alg`;
/// `Content-Digest: sha-256`; body cap 1 MiB.
#[derive(Debug, Clone)]
pub struct SignLayer {
    pub(crate) config: Arc<SignConfig>,
}

impl SignLayer {
    /// Signs with `key`.
    pub fn new(key: SigningKey) -> Self {
        Self {
            config: Arc::new(SignConfig {
                key,
                label: "sig1".into(),
                components: None,
                expires_in: Some(Duration::from_secs(300)),
                nonce: true,
                include_alg: true,
                tag: None,
                digest: DigestAlgorithm::Sha256,
                max_body: 1024 * 1024,
                clock: Arc::new(SystemClock),
                default_scheme: "https".into(),
                defaults: [
                    "@method",
                    "@authority",
                    "@path",
                    "@query",
                    "content-digest",
                    "content-type",
                    "authorization",
                ]
                .iter()
                .filter_map(|n| Component::new(n).ok())
                .collect(),
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut SignConfig)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Covers exactly these components instead of the default set (`content-digest` is
    /// still computed and set when it is listed and there is a body).
    #[must_use]
    pub fn components(self, components: Vec<Component>) -> Self {
        self.with(|c| c.components = Some(components))
    }

    /// The signature label (default `sig1`); must be a structured-field key.
    #[must_use]
    pub fn label(self, label: impl Into<String>) -> Self {
        let label = label.into();
        self.with(|c| c.label = label)
    }

    /// Sets `expires` this long after `created`; `None` leaves it out.
    #[must_use]
    pub fn expires_in(self, ttl: Option<Duration>) -> Self {
        self.with(|c| c.expires_in = ttl)
    }

    /// Leaves the `nonce` parameter out (verifiers that require one will refuse).
    #[must_use]
    pub fn without_nonce(self) -> Self {
        self.with(|c| c.nonce = false)
    }

    /// Leaves the `alg` parameter out (the verifier takes the algorithm from the key anyway).
    #[must_use]
    pub fn without_alg(self) -> Self {
        self.with(|c| c.include_alg = false)
    }

    /// Adds a `tag` parameter naming the application profile.
    #[must_use]
    pub fn tag(self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        self.with(|c| c.tag = Some(tag))
    }

    /// The `Content-Digest` algorithm (default `sha-256`).
    #[must_use]
    pub fn digest(self, alg: DigestAlgorithm) -> Self {
        self.with(|c| c.digest = alg)
    }

    /// The largest body that is read and hashed (default 1 MiB); a larger body fails the
    /// call with [`SignError::BodyTooLarge`](crate::SignError::BodyTooLarge).
    #[must_use]
    pub fn max_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_body = bytes)
    }

    /// The clock for `created` and `expires`.
    #[must_use]
    pub fn clock(self, clock: impl Clock) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        self.with(|c| c.clock = clock)
    }

    /// The scheme assumed when a request URI has none (default `https`).
    #[must_use]
    pub fn default_scheme(self, scheme: impl Into<String>) -> Self {
        let scheme = scheme.into();
        self.with(|c| c.default_scheme = scheme)
    }
}

impl<S> Layer<S> for SignLayer {
    type Service = Sign<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sign {
            inner,
            config: self.config.clone(),
        }
    }
}
