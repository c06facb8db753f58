//! Replay caches: the bounded in-memory cache and Redis shared by two server instances.

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
            .insert_once("a".into(), Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        !cache
            .insert_once("a".into(), Duration::from_secs(5))
            .await
            .unwrap()
    );
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(
        !cache
            .insert_once("a".into(), Duration::from_secs(5))
            .await
            .unwrap(),
        "still inside its window"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        cache
            .insert_once("a".into(), Duration::from_secs(5))
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
                .insert_once(format!("n-{second}-{i}"), ttl)
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
        match cache.insert_once(format!("burst-{i}"), ttl).await {
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
            .insert_once("k1".into(), Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(
        !cache
            .insert_once("k1".into(), Duration::from_millis(300))
            .await
            .unwrap()
    );
    // Redis expires the key on its own clock (PX); wait for it for real.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        cache
            .insert_once("k1".into(), Duration::from_millis(300))
            .await
            .unwrap()
    );
    let other_prefix = RedisReplayCache::connect(&redis.url())
        .await
        .unwrap()
        .with_prefix("tenant-b:");
    assert!(
        other_prefix
            .insert_once("k1".into(), Duration::from_secs(5))
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
    let r = cache.insert_once("x".into(), Duration::from_secs(5)).await;
    assert!(matches!(r, Err(ReplayError::Backend(_))), "{r:?}");
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
