//! Replay protection: a cache that admits each key once within its time to live, with its
//! room shared out between the sources that fill it.
//!
//! The same cache serves signature nonces, DPoP `jti`s and attestation challenges; each
//! caller prefixes its keys so they never collide.
//!
//! # Partitions
//!
//! Every entry is counted against a *partition*: the source it came from (the signature
//! layer uses the key id, the attestation layer the app id, the DPoP layer the proof key or
//! the peer). Whether a key was seen is answered across all partitions, so a replay from
//! another source is still a replay; only the *room* is partitioned. Two limits apply:
//!
//! * **per partition**: a source holding `per_partition` live entries is refused with
//!   [`ReplayError::PartitionFull`] until some expire. Others are unaffected: one key (or
//!   one peer) minting fresh nonces as fast as it can no longer locks everyone out.
//! * **in total**: at most `capacity` live entries, so memory stays flat. The last eighth of
//!   the capacity is a *reserve* for sources that hold little: once `capacity - capacity/8`
//!   entries are live, only partitions holding fewer than `per_partition / 8` entries are
//!   admitted; the large ones are refused first ([`ReplayError::PartitionFull`]). Only when
//!   the reserve is spent too is a small source refused ([`ReplayError::Full`]).
//!
//! Entries are never evicted before their time to live: forgetting a live key would reopen
//! a replay window, so the cache refuses (fails closed) instead.
//!
//! # Security
//!
//! The bound an attacker faces: to get a source that holds fewer than `per_partition / 8`
//! live entries refused, it must keep at least
//! `(capacity - capacity/8) / per_partition + (capacity/8) / (per_partition/8)` partitions
//! filled within one time to live — about `1.875 × capacity / per_partition`, 60 with the
//! default share (`capacity / 32`). Each partition has to pass the calling layer's checks
//! first (a signing key the server resolves, an attested app, a peer address), so the
//! partition should be something that is costly to mint: prefer the peer address (an IPv6
//! /64 rather than a single address) over a DPoP key thumbprint, which anyone can mint.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The future returned by [`ReplayCache::insert_once`].
pub type ReplayFuture = Pin<Box<dyn Future<Output = Result<bool, ReplayError>> + Send + 'static>>;

/// Why the replay cache did not record a key. Callers fail closed on every variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The partition (one key id, one peer, one app) holds its share of live entries: this
    /// source is refused on its own until some of its entries expire; others are unaffected.
    #[error(
        "replay cache partition is full ({limit} live entries from this source); it is refused \
         until they expire; raise `per_partition` if this source is legitimate"
    )]
    PartitionFull {
        /// The share the partition hit (`per_partition`, or an eighth of it once the cache
        /// is into its reserve).
        limit: usize,
    },
    /// The whole cache holds `capacity` live entries, reserve included, and refuses new
    /// ones until some expire.
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
    /// Records `key` for `ttl`, counted against `partition` (the source: a key id, a peer).
    ///
    /// Resolves to `Ok(true)` if the key was new (accept the message) and `Ok(false)` if it
    /// is already present, from any partition (a replay).
    ///
    /// # Errors
    /// [`ReplayError::PartitionFull`] when `partition` holds its share (refuse this source
    /// only), [`ReplayError::Full`] when the whole cache is full, [`ReplayError::Backend`]
    /// when the store failed.
    fn insert_once(&self, partition: &str, key: String, ttl: Duration) -> ReplayFuture;

    /// A cheap synchronous hint that `partition` holds its share now, so a caller may refuse
    /// before doing expensive work (verifying a signature, reading a body).
    ///
    /// Never authoritative: [`insert_once`](Self::insert_once) decides. The default answers
    /// `false` (a shared backend cannot answer without a round trip).
    fn is_partition_full(&self, partition: &str) -> bool {
        let _ = partition;
        false
    }
}

impl<C: ReplayCache + ?Sized> ReplayCache for Arc<C> {
    fn insert_once(&self, partition: &str, key: String, ttl: Duration) -> ReplayFuture {
        (**self).insert_once(partition, key, ttl)
    }

    fn is_partition_full(&self, partition: &str) -> bool {
        (**self).is_partition_full(partition)
    }
}

/// The admission rule both backends apply (the Redis script mirrors [`Quota::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quota {
    capacity: usize,
    per_partition: usize,
}

impl Quota {
    /// `capacity` entries in total, `capacity / 32` per partition (at least one).
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            per_partition: (capacity / 32).max(1),
        }
    }

    fn with_per_partition(self, n: usize) -> Self {
        Self {
            per_partition: n.clamp(1, self.capacity),
            ..self
        }
    }

    /// The room kept for small partitions.
    fn reserve(self) -> usize {
        self.capacity / 8
    }

    /// Below this many entries a partition is small and may use the reserve.
    fn small(self) -> usize {
        (self.per_partition / 8).max(1)
    }

    /// Whether a partition holding `held` entries is over its share while `total` are live,
    /// ignoring whether the whole cache is full.
    fn partition_refusal(self, held: usize, total: usize) -> Option<ReplayError> {
        if held >= self.per_partition {
            return Some(ReplayError::PartitionFull {
                limit: self.per_partition,
            });
        }
        if total >= self.capacity - self.reserve() && held >= self.small() {
            return Some(ReplayError::PartitionFull {
                limit: self.small(),
            });
        }
        None
    }

    /// Admits one more entry into a partition holding `held` while `total` are live.
    fn check(self, held: usize, total: usize) -> Result<(), ReplayError> {
        if let Some(e) = self.partition_refusal(held, total) {
            return Err(e);
        }
        if total >= self.capacity {
            return Err(ReplayError::Full {
                capacity: self.capacity,
            });
        }
        Ok(())
    }
}

#[derive(Default)]
struct MemoryState {
    /// Live keys and the partition each is counted against.
    entries: HashMap<Arc<str>, Arc<str>>,
    by_expiry: BTreeSet<(Instant, Arc<str>)>,
    /// Live entries per partition; a partition is removed with its last entry.
    partitions: HashMap<Arc<str>, usize>,
}

impl MemoryState {
    /// Drops expired entries: amortised O(log n) per entry ever inserted, no scan.
    fn purge(&mut self, now: Instant) {
        while let Some((at, _)) = self.by_expiry.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.by_expiry.pop_first() else {
                break;
            };
            if let Some(partition) = self.entries.remove(&key)
                && let Some(held) = self.partitions.get_mut(&partition)
            {
                *held -= 1;
                if *held == 0 {
                    self.partitions.remove(&partition);
                }
            }
        }
    }

    fn held(&self, partition: &str) -> usize {
        self.partitions.get(partition).copied().unwrap_or(0)
    }
}

/// A bounded in-memory [`ReplayCache`] for a single server instance, partitioned by source.
///
/// Entries are evicted when they expire (on tokio's clock), so memory stays flat under a
/// flood of unique keys: at most `capacity` live entries, of which one partition holds at
/// most `per_partition` (default `capacity / 32`). A full partition is refused alone with
/// [`ReplayError::PartitionFull`]; see the [module docs](crate::replay) for the reserve kept
/// for small partitions and the bound an attacker with many partitions faces. Nothing is
/// forgotten early, which would reopen a replay window.
///
/// Each insert costs a hash lookup and an O(log n) insert into the expiry index, plus the
/// amortised removal of expired entries: no scan.
#[derive(Clone)]
pub struct MemoryReplayCache {
    state: Arc<Mutex<MemoryState>>,
    quota: Quota,
}

impl fmt::Debug for MemoryReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (len, partitions) = {
            let mut s = self.lock();
            s.purge(Instant::now());
            (s.entries.len(), s.partitions.len())
        };
        f.debug_struct("MemoryReplayCache")
            .field("capacity", &self.quota.capacity)
            .field("per_partition", &self.quota.per_partition)
            .field("len", &len)
            .field("partitions", &partitions)
            .finish()
    }
}

impl MemoryReplayCache {
    /// A cache holding at most `capacity` live keys, `capacity / 32` per partition.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(MemoryState::default())),
            quota: Quota::new(capacity),
        }
    }

    /// Sets the share of one partition (clamped to `1..=capacity`).
    ///
    /// Size it for the busiest legitimate source: a signing key sending `r` requests per
    /// second with nonces kept for `w` seconds needs `r × w` (at the defaults, 305 s).
    #[must_use]
    pub fn per_partition(mut self, n: usize) -> Self {
        self.quota = self.quota.with_per_partition(n);
        self
    }

    /// The total capacity.
    pub fn capacity(&self) -> usize {
        self.quota.capacity
    }

    /// The share of one partition.
    pub fn partition_limit(&self) -> usize {
        self.quota.per_partition
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

    /// The number of live entries counted against `partition`.
    pub fn partition_len(&self, partition: &str) -> usize {
        let mut s = self.lock();
        s.purge(Instant::now());
        s.held(partition)
    }

    /// Whether no live entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The synchronous form of [`ReplayCache::insert_once`].
    ///
    /// # Errors
    /// [`ReplayError::PartitionFull`] when `partition` holds its share,
    /// [`ReplayError::Full`] when `capacity` live entries are held.
    pub fn insert_once_now(
        &self,
        partition: &str,
        key: String,
        ttl: Duration,
    ) -> Result<bool, ReplayError> {
        let now = Instant::now();
        let mut s = self.lock();
        s.purge(now);
        if s.entries.contains_key(key.as_str()) {
            return Ok(false);
        }
        let held = s.held(partition);
        self.quota.check(held, s.entries.len())?;
        let partition = match s.partitions.get_key_value(partition) {
            Some((p, _)) => p.clone(),
            None => Arc::from(partition),
        };
        *s.partitions.entry(partition.clone()).or_insert(0) += 1;
        let at = now + ttl;
        let key: Arc<str> = Arc::from(key);
        s.entries.insert(key.clone(), partition);
        s.by_expiry.insert((at, key));
        Ok(true)
    }
}

impl Default for MemoryReplayCache {
    /// 100 000 entries, 3 125 per partition.
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl ReplayCache for MemoryReplayCache {
    fn insert_once(&self, partition: &str, key: String, ttl: Duration) -> ReplayFuture {
        let r = self.insert_once_now(partition, key, ttl);
        Box::pin(std::future::ready(r))
    }

    fn is_partition_full(&self, partition: &str) -> bool {
        let mut s = self.lock();
        s.purge(Instant::now());
        self.quota
            .partition_refusal(s.held(partition), s.entries.len())
            .is_some()
    }
}

#[cfg(feature = "redis")]
pub use self::redis_cache::{RedisConnectError, RedisReplayCache, RedisReplayCacheBuilder};

#[cfg(feature = "redis")]
mod redis_cache {
    use super::{Quota, ReplayCache, ReplayError, ReplayFuture};
    use std::collections::HashMap;
    use std::fmt;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use redis::aio::{ConnectionManager, ConnectionManagerConfig};

    /// Records the key and counts it against its partition and the total, atomically.
    ///
    /// KEYS: entry, partition set, total set. ARGV: ttl ms, per_partition, small share,
    /// capacity, reserve. Returns 1 (new), 0 (replay), 2 (partition full, ARGV limit in
    /// the second element), 3 (cache full). The sets hold entry keys scored by expiry
    /// (server time), trimmed on each call; the mirror of [`Quota::check`].
    const SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local per, small = tonumber(ARGV[2]), tonumber(ARGV[3])
local capacity, reserve = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local held = redis.call('ZCARD', KEYS[2])
local total = redis.call('ZCARD', KEYS[3])
if held >= per then return {2, per} end
if total >= capacity - reserve and held >= small then return {2, small} end
if total >= capacity then return {3, capacity} end
redis.call('SET', KEYS[1], '1', 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
redis.call('ZADD', KEYS[3], now + ttl, KEYS[1])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
return {1, 0}
";

    /// The default bound on one insert, waiting for a reconnection included.
    const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(500);

    /// Why [`RedisReplayCache`] refused to start.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[non_exhaustive]
    pub enum RedisConnectError {
        /// The URL is not a Redis URL (the message never repeats it: it may hold a password).
        #[error("redis replay cache url is invalid: {0}; expected redis://host:port/db")]
        InvalidUrl(String),
        /// Redis could not be reached, or did not answer within the call timeout.
        #[error("redis replay cache cannot reach the server: {0}")]
        Unreachable(String),
        /// The server evicts keys under memory pressure (`maxmemory-policy` is not
        /// `noeviction`): a live replay entry could be dropped early and its message
        /// accepted a second time.
        #[error(
            "redis maxmemory-policy is {policy:?}, which may evict live replay entries and \
             reopen the replay window; set `maxmemory-policy noeviction` (Redis then never \
             drops a live entry), or accept the risk with \
             `RedisReplayCacheBuilder::allow_evicting_server`"
        )]
        EvictionPolicy {
            /// The server's policy, such as `allkeys-lru`.
            policy: String,
        },
    }

    /// How the connection manager reconnects: quickly, then at most one second apart, one
    /// attempt never longer than a second.
    fn manager_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            // Every call is bounded by the cache's own timeout, which also replaces a
            // connection that stopped answering (the manager only reconnects on errors).
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
    }

    /// A self-healing connection: the current manager, replaced when it stops answering.
    struct Backend {
        client: redis::Client,
        /// The manager in use and its generation, bumped on each replacement.
        current: Mutex<(u64, ConnectionManager)>,
    }

    impl Backend {
        fn get(&self) -> (u64, ConnectionManager) {
            self.current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        }

        /// Replaces the manager of `generation` (once, however many calls saw it fail)
        /// with a fresh one that connects on first use.
        fn replace(&self, generation: u64, why: &str) {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if current.0 != generation {
                return;
            }
            match ConnectionManager::new_lazy_with_config(self.client.clone(), manager_config()) {
                Ok(fresh) => {
                    *current = (generation + 1, fresh);
                    tracing::warn!(
                        target: "portcullis::replay",
                        {
                            "event.kind" = "event",
                            "event.category" = "database",
                            "event.action" = "replay_cache.reconnect",
                            "event.outcome" = "success",
                            "event.reason" = why,
                        },
                        "redis connection of the replay cache replaced"
                    );
                }
                Err(e) => tracing::error!(
                    target: "portcullis::replay",
                    {
                        "event.kind" = "event",
                        "event.category" = "database",
                        "event.action" = "replay_cache.reconnect",
                        "event.outcome" = "failure",
                        "event.reason" = %e,
                    },
                    "redis connection of the replay cache could not be replaced"
                ),
            }
        }
    }

    /// Whether `e` means the connection must be replaced: the manager reconnects by itself
    /// on a dropped connection, not on a timeout or a primary turned read-only replica.
    fn needs_new_connection(e: &redis::RedisError) -> bool {
        e.is_timeout() || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
    }

    /// A [`ReplayCache`] in Redis, so several server replicas share one view of what was
    /// already seen, with the same partitioned room as
    /// [`MemoryReplayCache`](super::MemoryReplayCache). Enabled by the `redis` feature.
    ///
    /// One Lua script checks the key (`EXISTS`), the partition's and the total's live
    /// counts (sorted sets scored by expiry, trimmed on each call) and records the key
    /// (`SET PX`) atomically, so replicas racing on one partition cannot overshoot its
    /// share. Keys: `{prefix}{key}` for entries, `{prefix}quota:{partition}` and
    /// `{prefix}quota` for the counts (entry keys must not start with `quota`; the layers
    /// of this crate use `sig:`, `dpop:` and `attest:`). The script touches three keys, so
    /// it needs a single Redis primary (not Redis Cluster).
    ///
    /// Defaults: 1 000 000 entries, `capacity / 32` per partition, 500 ms per call.
    ///
    /// # Outages
    ///
    /// The connection heals itself: a dropped connection (restart, crash, a failover that
    /// resets connections) is reopened in the background with backoff at most one second
    /// apart, and a connection that stops answering or lands on a read-only replica is
    /// replaced. Each insert waits at most the [call
    /// timeout](RedisReplayCacheBuilder::call_timeout), then fails with
    /// [`ReplayError::Backend`]: the layers refuse with `503 replay_cache_unavailable` for as
    /// long as Redis is away and accept again as soon as it answers, without a restart.
    ///
    /// # Security
    ///
    /// An entry that disappears before its time to live reopens the replay window for its
    /// message. Two ways that happens, and what to configure:
    ///
    /// * **Eviction.** [`connect`](Self::connect) reads `maxmemory-policy` (`CONFIG GET`)
    ///   and refuses with [`RedisConnectError::EvictionPolicy`] unless it is `noeviction`,
    ///   under which Redis never drops a live entry: past `maxmemory` it refuses other
    ///   writes but still lets the script record (it writes first with a command Redis
    ///   does not refuse), so size `maxmemory` for [`capacity`](Self::capacity) entries, the
    ///   cache's own bound. [`allow_evicting_server`](RedisReplayCacheBuilder::allow_evicting_server)
    ///   turns the refusal into a warning. Where `CONFIG` is disabled (managed services,
    ///   renamed commands, ACLs) the policy cannot be read: a warning is logged and the
    ///   operator must check it. The check runs at connect: a failover target must have the
    ///   same policy.
    /// * **Restart without persistence.** A Redis restarted without its data forgets every
    ///   entry: until one replay window has passed (the signature layer's `max_age` plus
    ///   skew, the attestation token's lifetime, the DPoP `iat` window), messages captured
    ///   before the restart are accepted once more. Run the replay Redis with
    ///   `appendonly yes` (`appendfsync always` loses nothing, `everysec` up to a second of
    ///   entries) or with replicas that take over with the data; after a restart that lost
    ///   the data, keep verifiers refusing for one window, or rotate the keys.
    #[derive(Clone)]
    pub struct RedisReplayCache {
        backend: Arc<Backend>,
        prefix: Arc<str>,
        quota: Quota,
        script: Arc<redis::Script>,
        timeout: Duration,
    }

    impl fmt::Debug for RedisReplayCache {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RedisReplayCache")
                .field("prefix", &self.prefix)
                .field("capacity", &self.quota.capacity)
                .field("per_partition", &self.quota.per_partition)
                .field("timeout", &self.timeout)
                .finish()
        }
    }

    /// Connects a [`RedisReplayCache`]: [`RedisReplayCache::builder`].
    pub struct RedisReplayCacheBuilder {
        url: String,
        timeout: Duration,
        allow_eviction: bool,
    }

    impl fmt::Debug for RedisReplayCacheBuilder {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // The URL may hold a password.
            f.debug_struct("RedisReplayCacheBuilder")
                .field("timeout", &self.timeout)
                .field("allow_eviction", &self.allow_eviction)
                .finish_non_exhaustive()
        }
    }

    fn event_policy(policy: &str, outcome: &str, message: &str) {
        tracing::warn!(
            target: "portcullis::replay",
            {
                "event.kind" = "alert",
                "event.category" = "configuration",
                "event.action" = "replay_cache.eviction_policy",
                "event.outcome" = outcome,
                "event.reason" = policy,
            },
            "{message}"
        );
    }

    impl RedisReplayCacheBuilder {
        /// Bounds each insert, waiting for a reconnection included (default 500 ms); the
        /// check at connect too.
        #[must_use]
        pub fn call_timeout(mut self, timeout: Duration) -> Self {
            self.timeout = timeout;
            self
        }

        /// Connects to a server whose `maxmemory-policy` may evict keys, with a warning
        /// instead of [`RedisConnectError::EvictionPolicy`]. Evicted entries reopen their
        /// replay window: use it only where memory is sized for every live entry.
        #[must_use]
        pub fn allow_evicting_server(mut self) -> Self {
            self.allow_eviction = true;
            self
        }

        /// Connects and checks the server's eviction policy (see the
        /// [security notes](RedisReplayCache#security)).
        ///
        /// # Errors
        /// [`RedisConnectError::InvalidUrl`], [`RedisConnectError::Unreachable`] when the
        /// server cannot be reached within the call timeout (the message never contains the
        /// URL), [`RedisConnectError::EvictionPolicy`] when the server may evict entries.
        pub async fn connect(self) -> Result<RedisReplayCache, RedisConnectError> {
            let client = redis::Client::open(self.url.as_str())
                .map_err(|e| RedisConnectError::InvalidUrl(e.to_string()))?;
            let unreachable = |e: String| RedisConnectError::Unreachable(e);
            // Connecting tries three times, each attempt bounded to one second.
            let wait = self.timeout.max(Duration::from_secs(4));
            let mut manager = tokio::time::timeout(
                wait,
                ConnectionManager::new_with_config(client.clone(), manager_config()),
            )
            .await
            .map_err(|_| unreachable(format!("no connection within {wait:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
            let policy = tokio::time::timeout(
                self.timeout,
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async::<HashMap<String, String>>(&mut manager),
            )
            .await
            .map_err(|_| unreachable("CONFIG GET did not answer within the call timeout".into()))?;
            match policy {
                Ok(map) => match map.get("maxmemory-policy").map(String::as_str) {
                    Some("noeviction") => {}
                    Some(other) if self.allow_eviction => event_policy(
                        other,
                        "success",
                        "redis replay cache accepted a server that may evict live entries \
                         (allow_evicting_server): evictions reopen replay windows",
                    ),
                    Some(other) => {
                        event_policy(
                            other,
                            "failure",
                            "redis replay cache refused a server that may evict live entries",
                        );
                        return Err(RedisConnectError::EvictionPolicy {
                            policy: other.to_owned(),
                        });
                    }
                    None => event_policy(
                        "unknown",
                        "unknown",
                        "redis replay cache could not read maxmemory-policy (empty CONFIG GET \
                         answer); make sure it is noeviction, or evictions reopen replay windows",
                    ),
                },
                Err(e) if e.is_io_error() => return Err(unreachable(e.to_string())),
                // CONFIG renamed, disabled or denied by an ACL (managed Redis services).
                Err(_) => event_policy(
                    "unknown",
                    "unknown",
                    "redis replay cache cannot read maxmemory-policy (CONFIG is disabled or \
                     denied); make sure it is noeviction, or evictions reopen replay windows",
                ),
            }
            Ok(RedisReplayCache {
                backend: Arc::new(Backend {
                    client,
                    current: Mutex::new((0, manager)),
                }),
                prefix: Arc::from("portcullis:replay:"),
                quota: Quota::new(1_000_000),
                script: Arc::new(redis::Script::new(SCRIPT)),
                timeout: self.timeout,
            })
        }
    }

    impl RedisReplayCache {
        /// Connects to `url` (`redis://host:port`), with key prefix `portcullis:replay:`,
        /// refusing a server that may evict entries: `builder(url).connect()`.
        ///
        /// # Errors
        /// As [`RedisReplayCacheBuilder::connect`].
        pub async fn connect(url: &str) -> Result<Self, RedisConnectError> {
            Self::builder(url).connect().await
        }

        /// A builder for the connection to `url`: call timeout, eviction opt-in.
        pub fn builder(url: &str) -> RedisReplayCacheBuilder {
            RedisReplayCacheBuilder {
                url: url.to_owned(),
                timeout: DEFAULT_CALL_TIMEOUT,
                allow_eviction: false,
            }
        }

        /// Sets the key prefix (to share one Redis between deployments).
        #[must_use]
        pub fn with_prefix(mut self, prefix: &str) -> Self {
            self.prefix = Arc::from(prefix);
            self
        }

        /// Sets the total capacity (live entries across all replicas); the share of one
        /// partition becomes `capacity / 32` unless [`per_partition`](Self::per_partition)
        /// is called after.
        #[must_use]
        pub fn capacity(mut self, capacity: usize) -> Self {
            self.quota = Quota::new(capacity);
            self
        }

        /// Sets the share of one partition (clamped to `1..=capacity`).
        #[must_use]
        pub fn per_partition(mut self, n: usize) -> Self {
            self.quota = self.quota.with_per_partition(n);
            self
        }
    }

    impl ReplayCache for RedisReplayCache {
        fn insert_once(&self, partition: &str, key: String, ttl: Duration) -> ReplayFuture {
            let backend = self.backend.clone();
            let script = self.script.clone();
            let quota = self.quota;
            let timeout = self.timeout;
            let entry = format!("{}{}", self.prefix, key);
            let part = format!("{}quota:{}", self.prefix, partition);
            let total = format!("{}quota", self.prefix);
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            Box::pin(async move {
                let (generation, mut conn) = backend.get();
                let mut invocation = script.key(&entry);
                invocation
                    .key(&part)
                    .key(&total)
                    .arg(ms)
                    .arg(quota.per_partition)
                    .arg(quota.small())
                    .arg(quota.capacity)
                    .arg(quota.reserve());
                let answer = tokio::time::timeout(
                    timeout,
                    invocation.invoke_async::<(u8, usize)>(&mut conn),
                )
                .await;
                let (code, limit) = match answer {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(e)) => {
                        if needs_new_connection(&e) {
                            backend.replace(generation, "redis error");
                        }
                        return Err(ReplayError::Backend(e.to_string()));
                    }
                    Err(_) => {
                        backend.replace(generation, "no answer within the call timeout");
                        return Err(ReplayError::Backend(format!(
                            "redis did not answer within {timeout:?}"
                        )));
                    }
                };
                match code {
                    1 => Ok(true),
                    0 => Ok(false),
                    2 => Err(ReplayError::PartitionFull { limit }),
                    3 => Err(ReplayError::Full { capacity: limit }),
                    other => Err(ReplayError::Backend(format!(
                        "unexpected replay script answer {other}"
                    ))),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_refuses_the_large_partitions_first_and_small_ones_last() {
        let q = Quota::new(320); // 40 reserved, 10 per partition, 1 when small
        assert_eq!((q.reserve(), q.per_partition, q.small()), (40, 10, 1));
        assert_eq!(q.check(9, 0), Ok(()));
        assert_eq!(
            q.check(10, 0),
            Err(ReplayError::PartitionFull { limit: 10 })
        );
        // In the reserve: a partition already holding entries is refused, an empty one is not.
        assert_eq!(
            q.check(1, 280),
            Err(ReplayError::PartitionFull { limit: 1 })
        );
        assert_eq!(q.check(0, 280), Ok(()));
        assert_eq!(q.check(0, 320), Err(ReplayError::Full { capacity: 320 }));
        assert_eq!(q.with_per_partition(0).per_partition, 1);
        assert_eq!(q.with_per_partition(1_000).per_partition, 320);
        assert_eq!(Quota::new(0).check(0, 0), Ok(()));
    }
}
