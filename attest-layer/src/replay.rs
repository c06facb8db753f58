//! Replay protection: a cache that admits each key once within its time to live.
//!
//! The same cache serves signature nonces, DPoP `jti`s and attestation challenges; each
//! caller prefixes its keys so they never collide.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The future returned by [`ReplayCache::insert_once`].
pub type ReplayFuture = Pin<Box<dyn Future<Output = Result<bool, ReplayError>> + Send + 'static>>;

/// Why the replay cache could not answer. Callers fail closed on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The in-memory cache holds `capacity` live entries and refuses new ones until some expire.
    #[error(
        "replay cache is full ({capacity} live entries); raise the capacity or shorten the window"
    )]
    Full {
        /// The configured capacity.
        capacity: usize,
    },
    /// The shared backend (Redis) failed.
    #[error("replay cache backend failed: {0}")]
    Backend(String),
}

/// A store that records keys for a time and tells whether a key was seen before.
pub trait ReplayCache: Send + Sync + 'static {
    /// Records `key` for `ttl`. Resolves to `true` if the key was new (accept the message)
    /// and `false` if it is already present (a replay).
    fn insert_once(&self, key: String, ttl: Duration) -> ReplayFuture;
}

impl<C: ReplayCache + ?Sized> ReplayCache for Arc<C> {
    fn insert_once(&self, key: String, ttl: Duration) -> ReplayFuture {
        (**self).insert_once(key, ttl)
    }
}

#[derive(Default)]
struct MemoryState {
    entries: HashMap<String, Instant>,
    by_expiry: BTreeSet<(Instant, String)>,
}

impl MemoryState {
    fn purge(&mut self, now: Instant) {
        while let Some((at, _)) = self.by_expiry.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.by_expiry.pop_first() {
                self.entries.remove(&key);
            }
        }
    }
}

/// A bounded in-memory [`ReplayCache`] for a single server instance.
///
/// Entries are evicted when they expire (on tokio's clock), so memory stays flat under a
/// flood of unique keys: at most `capacity` live entries. When it is full of live entries
/// new keys are refused with [`ReplayError::Full`] (fail closed) rather than forgetting
/// a key early, which would reopen a replay window.
#[derive(Clone)]
pub struct MemoryReplayCache {
    state: Arc<Mutex<MemoryState>>,
    capacity: usize,
}

impl fmt::Debug for MemoryReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReplayCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl MemoryReplayCache {
    /// A cache holding at most `capacity` live keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(MemoryState::default())),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of live entries (expired ones are purged first).
    pub fn len(&self) -> usize {
        let mut s = self.lock();
        s.purge(Instant::now());
        s.entries.len()
    }

    /// Whether no live entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The synchronous form of [`ReplayCache::insert_once`].
    ///
    /// # Errors
    /// [`ReplayError::Full`] when `capacity` live entries are held.
    pub fn insert_once_now(&self, key: String, ttl: Duration) -> Result<bool, ReplayError> {
        let now = Instant::now();
        let mut s = self.lock();
        s.purge(now);
        if s.entries.contains_key(&key) {
            return Ok(false);
        }
        if s.entries.len() >= self.capacity {
            return Err(ReplayError::Full {
                capacity: self.capacity,
            });
        }
        let at = now + ttl;
        s.entries.insert(key.clone(), at);
        s.by_expiry.insert((at, key));
        Ok(true)
    }
}

impl Default for MemoryReplayCache {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl ReplayCache for MemoryReplayCache {
    fn insert_once(&self, key: String, ttl: Duration) -> ReplayFuture {
        let r = self.insert_once_now(key, ttl);
        Box::pin(std::future::ready(r))
    }
}

#[cfg(feature = "redis")]
pub use self::redis_cache::RedisReplayCache;

#[cfg(feature = "redis")]
mod redis_cache {
    use super::{ReplayCache, ReplayError, ReplayFuture};
    use std::fmt;
    use std::sync::Arc;
    use std::time::Duration;

    /// A [`ReplayCache`] in Redis (`SET key 1 NX PX ttl`), so several server replicas share
    /// one view of what was already seen. Enabled by the `redis` feature.
    #[derive(Clone)]
    pub struct RedisReplayCache {
        conn: redis::aio::MultiplexedConnection,
        prefix: Arc<str>,
    }

    impl fmt::Debug for RedisReplayCache {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RedisReplayCache")
                .field("prefix", &self.prefix)
                .finish()
        }
    }

    impl RedisReplayCache {
        /// Connects to `url` (`redis://host:port`), with key prefix `portcullis:replay:`.
        ///
        /// # Errors
        /// When the URL is invalid or the server cannot be reached.
        pub async fn connect(url: &str) -> Result<Self, ReplayError> {
            let client =
                redis::Client::open(url).map_err(|e| ReplayError::Backend(e.to_string()))?;
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| ReplayError::Backend(e.to_string()))?;
            Ok(Self::new(conn))
        }

        /// Uses an existing multiplexed connection.
        pub fn new(conn: redis::aio::MultiplexedConnection) -> Self {
            Self {
                conn,
                prefix: Arc::from("portcullis:replay:"),
            }
        }

        /// Sets the key prefix (to share one Redis between deployments).
        #[must_use]
        pub fn with_prefix(mut self, prefix: &str) -> Self {
            self.prefix = Arc::from(prefix);
            self
        }
    }

    impl ReplayCache for RedisReplayCache {
        fn insert_once(&self, key: String, ttl: Duration) -> ReplayFuture {
            let mut conn = self.conn.clone();
            let full = format!("{}{}", self.prefix, key);
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            Box::pin(async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(&full)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| ReplayError::Backend(e.to_string()))?;
                Ok(set.is_some())
            })
        }
    }
}
