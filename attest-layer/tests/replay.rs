//! Replay caches: the bounded in-memory cache and Redis shared by two server instances, and
//! the partitioned room of both (one source flooding is refused alone); the Redis cache
//! outliving restarts and failovers, and refusing servers that may evict its entries.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use portcullis_attest::replay::RedisConnectError;
use portcullis_attest::{
    MemoryReplayCache, RedisReplayCache, ReplayCache, ReplayError, SignLayer, SigningKey,
    StaticKeys, VerifySignatureLayer,
};
use testkit::redis::{RedisServer, SilentFailover};
use testkit::server::TestServer;
use tower::{Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn memory_cache_admits_once_and_forgets_after_ttl() {
    let cache = MemoryReplayCache::new(10);
    assert!(
        cache
            .insert_once("p", "a".into(), Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        !cache
            .insert_once("p", "a".into(), Duration::from_secs(5))
            .await
            .unwrap()
    );
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(
        !cache
            .insert_once("p", "a".into(), Duration::from_secs(5))
            .await
            .unwrap(),
        "still inside its window"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        cache
            .insert_once("p", "a".into(), Duration::from_secs(5))
            .await
            .unwrap(),
        "expired, admitted again"
    );
}

#[tokio::test(start_paused = true)]
async fn memory_stays_flat_under_a_flood_of_unique_nonces() {
    let cache = MemoryReplayCache::new(1_000);
    let ttl = Duration::from_secs(10);
    for second in 0..100u32 {
        for i in 0..100u32 {
            let fresh = cache
                // Every nonce from its own source: only the total bound applies.
                .insert_once(&format!("n-{second}-{i}"), format!("n-{second}-{i}"), ttl)
                .await
                .unwrap();
            assert!(fresh);
        }
        assert!(
            cache.len() <= 1_000,
            "len {} at second {second}",
            cache.len()
        );
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(
        cache.len(),
        900,
        "only the last ten seconds of nonces are held"
    );
    // A burst beyond capacity inside one window fails closed instead of forgetting nonces.
    let mut refused = 0;
    for i in 0..200u32 {
        match cache
            .insert_once(&format!("burst-{i}"), format!("burst-{i}"), ttl)
            .await
        {
            Ok(true) => {}
            Err(ReplayError::Full { capacity: 1_000 }) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(refused, 100);
    assert_eq!(cache.len(), 1_000);
}

#[tokio::test]
async fn redis_cache_set_nx_px_admits_once_and_expires() {
    let redis = RedisServer::start();
    let cache = RedisReplayCache::connect(&redis.url()).await.unwrap();
    assert!(
        cache
            .insert_once("p", "k1".into(), Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(
        !cache
            .insert_once("p", "k1".into(), Duration::from_millis(300))
            .await
            .unwrap()
    );
    // Redis expires the key on its own clock (PX); wait for it for real.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        cache
            .insert_once("p", "k1".into(), Duration::from_millis(300))
            .await
            .unwrap()
    );
    let other_prefix = RedisReplayCache::connect(&redis.url())
        .await
        .unwrap()
        .with_prefix("tenant-b:");
    assert!(
        other_prefix
            .insert_once("p", "k1".into(), Duration::from_secs(5))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn redis_unreachable_is_an_error_not_an_accept() {
    let redis = RedisServer::start();
    let url = redis.url();
    let cache = RedisReplayCache::connect(&url).await.unwrap();
    drop(redis);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = cache
        .insert_once("p", "x".into(), Duration::from_secs(5))
        .await;
    assert!(matches!(r, Err(ReplayError::Backend(_))), "{r:?}");
}

const HOUR: Duration = Duration::from_secs(3600);

/// 320 entries, 10 per partition: 40 kept in reserve for partitions holding fewer than 1.
fn small_memory() -> MemoryReplayCache {
    MemoryReplayCache::new(320).per_partition(10)
}

async fn small_redis(redis: &RedisServer) -> RedisReplayCache {
    RedisReplayCache::connect(&redis.url())
        .await
        .unwrap()
        .capacity(320)
        .per_partition(10)
}

/// One source minting fresh keys is refused alone; a replay is caught from any partition.
async fn one_source_flooding_is_refused_alone(cache: &impl ReplayCache) {
    for i in 0..10 {
        let r = cache.insert_once("peer:10.0.0.66", format!("flood-{i}"), HOUR);
        assert_eq!(r.await, Ok(true));
    }
    for i in 10..60 {
        let r = cache.insert_once("peer:10.0.0.66", format!("flood-{i}"), HOUR);
        assert_eq!(r.await, Err(ReplayError::PartitionFull { limit: 10 }));
    }
    for p in 0..20 {
        let r = cache.insert_once(&format!("sig:user-{p}"), format!("n-{p}"), HOUR);
        assert_eq!(r.await, Ok(true), "user {p} is not affected by the flood");
    }
    // Only the room is partitioned: a key is a replay whichever source presents it.
    let r = cache.insert_once("sig:user-0", "flood-0".into(), HOUR);
    assert_eq!(r.await, Ok(false));
    let r = cache.insert_once("peer:10.0.0.66", "n-3".into(), HOUR);
    assert_eq!(r.await, Ok(false), "a replay, even from a full partition");
}

/// An attacker with many partitions fills the large shares first; sources holding little
/// keep the reserve until the documented bound is spent (280 entries in large shares, then
/// 40 partitions of one entry each).
async fn many_sources_are_refused_largest_first(cache: &impl ReplayCache) {
    let r = cache.insert_once("sig:busy", "busy-0".into(), HOUR);
    assert_eq!(r.await, Ok(true));
    let r = cache.insert_once("sig:busy", "busy-1".into(), HOUR);
    assert_eq!(r.await, Ok(true));
    // 27 attacker partitions at their full share, and 8 more: 280 live, the reserve is reached.
    for a in 0..28 {
        let n = if a == 27 { 8 } else { 10 };
        for i in 0..n {
            let r = cache.insert_once(&format!("attacker-{a}"), format!("a-{a}-{i}"), HOUR);
            assert_eq!(r.await, Ok(true), "attacker {a} entry {i}");
        }
    }
    // In the reserve: partitions already holding entries are refused, the busy client too.
    let r = cache.insert_once("attacker-27", "a-27-8".into(), HOUR);
    assert_eq!(r.await, Err(ReplayError::PartitionFull { limit: 1 }));
    let r = cache.insert_once("sig:busy", "busy-2".into(), HOUR);
    assert_eq!(r.await, Err(ReplayError::PartitionFull { limit: 1 }));
    // Sources holding nothing still get in, one entry each, until the reserve is spent.
    for q in 0..40 {
        let r = cache.insert_once(&format!("sig:quiet-{q}"), format!("q-{q}"), HOUR);
        assert_eq!(r.await, Ok(true), "quiet source {q}");
    }
    let r = cache.insert_once("sig:late", "late".into(), HOUR);
    assert_eq!(r.await, Err(ReplayError::Full { capacity: 320 }));
    // Replays are still told apart from a full cache.
    let r = cache.insert_once("sig:late", "q-7".into(), HOUR);
    assert_eq!(r.await, Ok(false));
}

#[tokio::test(start_paused = true)]
async fn memory_one_source_flooding_is_refused_alone_until_its_entries_expire() {
    let cache = small_memory();
    one_source_flooding_is_refused_alone(&cache).await;
    assert_eq!(cache.partition_len("peer:10.0.0.66"), 10);
    assert!(cache.is_partition_full("peer:10.0.0.66"));
    assert!(!cache.is_partition_full("sig:user-0"));
    tokio::time::advance(HOUR).await;
    assert!(!cache.is_partition_full("peer:10.0.0.66"));
    let r = cache.insert_once("peer:10.0.0.66", "flood-60".into(), HOUR);
    assert_eq!(r.await, Ok(true), "admitted again once its entries expired");
    assert_eq!(cache.len(), 1);
}

#[tokio::test]
async fn memory_many_sources_are_refused_largest_first() {
    let cache = small_memory();
    many_sources_are_refused_largest_first(&cache).await;
    assert_eq!(cache.len(), 320, "the total stays bounded");
}

#[tokio::test]
async fn redis_one_source_flooding_is_refused_alone_until_its_entries_expire() {
    let redis = RedisServer::start();
    let cache = small_redis(&redis).await;
    one_source_flooding_is_refused_alone(&cache).await;
    // Redis expires on its own clock: a short share window, waited for for real.
    let short = RedisReplayCache::connect(&redis.url())
        .await
        .unwrap()
        .with_prefix("short:")
        .per_partition(2);
    let ttl = Duration::from_millis(300);
    for i in 0..2 {
        assert_eq!(short.insert_once("p", format!("k{i}"), ttl).await, Ok(true));
    }
    let r = short.insert_once("p", "k2".into(), ttl).await;
    assert_eq!(r, Err(ReplayError::PartitionFull { limit: 2 }));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(short.insert_once("p", "k2".into(), ttl).await, Ok(true));
}

#[tokio::test]
async fn redis_many_sources_are_refused_largest_first() {
    let redis = RedisServer::start();
    many_sources_are_refused_largest_first(&small_redis(&redis).await).await;
}

#[tokio::test]
async fn redis_replicas_racing_on_one_partition_cannot_overshoot_its_share() {
    let redis = RedisServer::start();
    let a = small_redis(&redis).await;
    let b = small_redis(&redis).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            cache.insert_once("sig:racer", format!("r-{i}"), HOUR).await
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(true) => admitted += 1,
            Err(ReplayError::PartitionFull { limit: 10 }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(admitted, 10, "the script checks and records atomically");
}

/// Starts an HTTP server on loopback verifying signatures with its own Redis connection.
async fn replica(redis_url: &str, key: &SigningKey) -> TestServer {
    let cache = RedisReplayCache::connect(redis_url).await.unwrap();
    let layer =
        VerifySignatureLayer::builder(StaticKeys::new().with(key.keyid(), key.verifying_key()))
            .replay_cache(cache)
            .default_scheme("http")
            .build()
            .unwrap();
    TestServer::http_with(move |req: Request<hyper::body::Incoming>| {
        let svc = layer.layer(common::app());
        async move { svc.oneshot(req).await.unwrap() }
    })
    .await
}

async fn send(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    req: Request<Full<Bytes>>,
) -> (u16, String) {
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let reason = res
        .headers()
        .get("portcullis-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = res.into_body().collect().await;
    (status, reason)
}

#[tokio::test]
async fn a_replay_is_refused_across_two_server_instances_sharing_redis() {
    let redis = RedisServer::start();
    let key = SigningKey::generate_ed25519("device-1").unwrap();
    let a = replica(&redis.url(), &key).await;
    let b = replica(&redis.url(), &key).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();

    // Sign once for replica A, then replay the identical bytes to replica B.
    let req = Request::post(format!("http://{}/transfer", a.addr()))
        .body(Full::from("{\"to\":\"bob\"}"))
        .unwrap();
    let signed = common::sign(&SignLayer::new(key.clone()), req)
        .await
        .unwrap();
    let mut replay = common::duplicate(&signed).await;
    // Replica B listens on another port: the attacker re-targets the connection, while the
    // signed `@authority` stays A's (both replicas serve the same public authority).
    let authority = signed.uri().authority().unwrap().clone();
    *replay.uri_mut() = format!("http://{}/transfer", b.addr()).parse().unwrap();
    replay
        .headers_mut()
        .insert("host", authority.as_str().parse().unwrap());
    let replay_uri: http::Uri = replay.uri().clone();
    // hyper sends origin-form; the server reads @authority from Host.
    assert_eq!(replay_uri.port_u16(), Some(b.port()));

    assert_eq!(send(&client, signed).await, (200, String::new()));
    assert_eq!(
        send(&client, replay).await,
        (401, "replayed".into()),
        "replica B saw the nonce A recorded"
    );
    assert_eq!(a.requests() + b.requests(), 2);
}

static FRESH: AtomicU64 = AtomicU64::new(0);

/// One insert of a fresh key; a hang (more than 5 s) fails the test.
async fn insert_fresh(cache: &RedisReplayCache) -> Result<bool, ReplayError> {
    let key = format!("fresh-{}", FRESH.fetch_add(1, Ordering::SeqCst));
    tokio::time::timeout(
        Duration::from_secs(5),
        cache.insert_once("load", key, Duration::from_secs(60)),
    )
    .await
    .expect("an insert hung on Redis: calls must be bounded")
}

/// Inserts fresh keys from 8 tasks until `stop`; returns every answer.
fn load(
    cache: &RedisReplayCache,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Result<bool, ReplayError>>> {
    let cache = cache.clone();
    tokio::spawn(async move {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, stop) = (cache.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        seen.push(insert_fresh(&cache).await);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    seen
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

/// Waits (up to 15 s) until a fresh key is admitted again.
async fn until_admitted(cache: &RedisReplayCache) {
    let since = Instant::now();
    loop {
        if insert_fresh(cache).await == Ok(true) {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "the replay cache did not recover after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_fails_closed_during_a_real_restart_and_recovers_after_it() {
    let mut redis = RedisServer::start();
    let cache = RedisReplayCache::connect(&redis.url()).await.unwrap();
    assert_eq!(
        cache
            .insert_once("p", "seen".into(), Duration::from_secs(60))
            .await,
        Ok(true)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let during = load(&cache, stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let during = during.await.unwrap();
    assert!(during.len() >= 8, "the load ran: {} inserts", during.len());
    for answer in &during {
        assert!(
            matches!(answer, Ok(true) | Err(ReplayError::Backend(_))),
            "a fresh key is admitted or the backend error is reported: {answer:?}"
        );
    }
    assert!(
        matches!(insert_fresh(&cache).await, Err(ReplayError::Backend(_))),
        "never an accept while Redis is down"
    );

    redis.restart();
    let stop = Arc::new(AtomicBool::new(false));
    let after = load(&cache, stop.clone());
    until_admitted(&cache).await;
    stop.store(true, Ordering::SeqCst);
    after.await.unwrap();
    // The script is loaded again and replays are caught again.
    assert_eq!(
        cache
            .insert_once("p", "after".into(), Duration::from_secs(60))
            .await,
        Ok(true)
    );
    assert_eq!(
        cache
            .insert_once("p", "after".into(), Duration::from_secs(60))
            .await,
        Ok(false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_bounds_a_silent_failover_and_replaces_the_connection() {
    let redis = RedisServer::start();
    let failover = SilentFailover::start(redis.port());
    let cache = RedisReplayCache::builder(&failover.url())
        .call_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    assert_eq!(insert_fresh(&cache).await, Ok(true));
    let opened = failover.connections();

    failover.silence_open_connections();
    let r = insert_fresh(&cache).await;
    assert!(matches!(r, Err(ReplayError::Backend(_))), "{r:?}");
    until_admitted(&cache).await;
    assert!(
        failover.connections() > opened,
        "served over a new connection"
    );
}

#[tokio::test]
async fn redis_servers_that_may_evict_entries_are_refused_unless_opted_in() {
    let lru = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let err = RedisReplayCache::connect(&lru.url()).await.unwrap_err();
    assert_eq!(
        err,
        RedisConnectError::EvictionPolicy {
            policy: "allkeys-lru".into()
        }
    );
    assert!(err.to_string().contains("noeviction"), "{err}");
    let volatile = RedisServer::start_with(&["--maxmemory-policy", "volatile-lru"]);
    assert!(matches!(
        RedisReplayCache::connect(&volatile.url()).await,
        Err(RedisConnectError::EvictionPolicy { .. })
    ));

    // The named opt-in only warns.
    let cache = RedisReplayCache::builder(&lru.url())
        .allow_evicting_server()
        .connect()
        .await
        .unwrap();
    assert_eq!(insert_fresh(&cache).await, Ok(true));

    let strict = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let cache = RedisReplayCache::connect(&strict.url()).await.unwrap();
    assert_eq!(insert_fresh(&cache).await, Ok(true));
}

/// Tracing events of the current thread, as `field=value` maps.
#[derive(Clone, Default)]
struct Events(Arc<std::sync::Mutex<Vec<std::collections::BTreeMap<String, String>>>>);

struct Fields(std::collections::BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields(Default::default());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[tokio::test]
async fn redis_servers_with_config_disabled_are_accepted_with_a_loud_warning() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let events = Events::default();
    let _guard =
        testkit::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    // As managed Redis services do: CONFIG is renamed away.
    let redis = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let cache = RedisReplayCache::connect(&redis.url()).await.unwrap();
    assert_eq!(insert_fresh(&cache).await, Ok(true));
    let seen = events.0.lock().unwrap().clone();
    assert!(
        seen.iter().any(|e| {
            e.get("event.action").map(String::as_str) == Some("replay_cache.eviction_policy")
                && e.get("event.kind").map(String::as_str) == Some("alert")
                && e.get("event.reason").map(String::as_str) == Some("unknown")
        }),
        "{seen:?}"
    );
}
