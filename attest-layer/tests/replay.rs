//! Replay caches: the bounded in-memory cache and Redis shared by two server instances, and
//! the partitioned room of both (one source flooding is refused alone).

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use portcullis_attest::{
    MemoryReplayCache, RedisReplayCache, ReplayCache, ReplayError, SignLayer, SigningKey,
    StaticKeys, VerifySignatureLayer,
};
use testkit::redis::RedisServer;
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
