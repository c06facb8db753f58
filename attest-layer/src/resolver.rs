//! Key lookup for verifiers: static maps, JWKS documents and rotation with overlap.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::KeyError;
use crate::key::VerifyingKey;

/// Finds the verification key for a `keyid`. The key decides the algorithm.
///
/// Closures `Fn(&str) -> Option<VerifyingKey>` implement it.
pub trait KeyResolver: Send + Sync + 'static {
    /// The key named `keyid`, or `None` when it is unknown.
    fn resolve(&self, keyid: &str) -> Option<VerifyingKey>;
}

impl<F> KeyResolver for F
where
    F: Fn(&str) -> Option<VerifyingKey> + Send + Sync + 'static,
{
    fn resolve(&self, keyid: &str) -> Option<VerifyingKey> {
        self(keyid)
    }
}

impl<R: KeyResolver + ?Sized> KeyResolver for Arc<R> {
    fn resolve(&self, keyid: &str) -> Option<VerifyingKey> {
        (**self).resolve(keyid)
    }
}

/// A fixed map from key id to key.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys {
    keys: HashMap<String, VerifyingKey>,
}

impl StaticKeys {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` under `keyid`.
    #[must_use]
    pub fn with(mut self, keyid: impl Into<String>, key: VerifyingKey) -> Self {
        self.keys.insert(keyid.into(), key);
        self
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl KeyResolver for StaticKeys {
    fn resolve(&self, keyid: &str) -> Option<VerifyingKey> {
        self.keys.get(keyid).cloned()
    }
}

/// Keys from a JWKS document (`{"keys": [...]}`), by `kid`. `OKP`/`Ed25519` and `EC`/`P-256`
/// keys are used; other kinds are skipped and counted.
#[derive(Debug, Clone, Default)]
pub struct JwksKeys {
    keys: StaticKeys,
    skipped: usize,
}

impl JwksKeys {
    /// Parses a JWKS document.
    ///
    /// # Errors
    /// When the JSON is not a JWKS object with a `keys` array, or a usable key is malformed.
    pub fn from_json(json: &str) -> Result<Self, KeyError> {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| KeyError::Jwk(format!("jwks is not json: {e}")))?;
        let keys = v
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| KeyError::Jwk("jwks has no \"keys\" array".into()))?;
        let mut out = StaticKeys::new();
        let mut skipped = 0;
        for k in keys {
            let Some(kid) = k.get("kid").and_then(|v| v.as_str()) else {
                skipped += 1;
                continue;
            };
            match (
                k.get("kty").and_then(|v| v.as_str()),
                k.get("crv").and_then(|v| v.as_str()),
            ) {
                (Some("OKP"), Some("Ed25519")) | (Some("EC"), Some("P-256")) => {
                    out = out.with(kid, VerifyingKey::from_jwk(k)?);
                }
                _ => skipped += 1,
            }
        }
        Ok(Self { keys: out, skipped })
    }

    /// How many JWKs were skipped (no `kid`, or a key type this crate does not verify).
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

impl KeyResolver for JwksKeys {
    fn resolve(&self, keyid: &str) -> Option<VerifyingKey> {
        self.keys.resolve(keyid)
    }
}

struct Rotation {
    current: Arc<dyn KeyResolver>,
    previous: Option<(Arc<dyn KeyResolver>, Instant)>,
}

/// A key set that can be replaced at runtime; after [`RotatingKeys::rotate`] the previous
/// set is still accepted for an overlap period, so in-flight clients keep working.
#[derive(Clone)]
pub struct RotatingKeys {
    inner: Arc<RwLock<Rotation>>,
}

impl fmt::Debug for RotatingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("RotatingKeys")
            .field("overlap_until", &r.previous.as_ref().map(|(_, t)| *t))
            .finish()
    }
}

impl RotatingKeys {
    /// Starts with `current`.
    pub fn new(current: impl KeyResolver) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Rotation {
                current: Arc::new(current),
                previous: None,
            })),
        }
    }

    /// Makes `next` current; the old current set stays valid for `overlap` (tokio clock).
    pub fn rotate(&self, next: impl KeyResolver, overlap: Duration) {
        let mut r = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut r.current, Arc::new(next));
        r.previous = Some((old, Instant::now() + overlap));
    }
}

impl KeyResolver for RotatingKeys {
    fn resolve(&self, keyid: &str) -> Option<VerifyingKey> {
        let r = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = r.current.resolve(keyid) {
            return Some(k);
        }
        match &r.previous {
            Some((prev, until)) if Instant::now() < *until => prev.resolve(keyid),
            _ => None,
        }
    }
}
