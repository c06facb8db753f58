//! Threat: whoever can disrupt the shared Redis (crash or restart it, force a failover, fill
//! its memory) switches protections off for good: a replay cache or rate limiter that never
//! reconnects answers 503 to every signed request, or leaves the limiter off (fail open),
//! until the app is restarted; an evicting Redis forgets live replay entries and lets a
//! captured signed request through again. Defence: the Redis replay cache and rate limiter
//! reconnect by themselves with bounded calls, fail closed (503) only while Redis is away,
//! and the replay cache refuses at startup a Redis whose `maxmemory-policy` may evict, so
//! even a Redis over its memory limit forgets nothing.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::attest::replay::RedisConnectError;
use portcullis::attest::{
    RedisReplayCache, SignLayer, SigningKey, StaticKeys, VerifiedSignature, VerifySignatureLayer,
};
use portcullis::client::PinnedClient;
use portcullis::pin::{PinPolicy, PinnedTls};
use portcullis::retry::rate_limit::{Quota, RequestHead};
use portcullis::retry::redis::{RedisRateLimitLayer, RedisRateLimiter};
use testkit::pki::TestPki;
use testkit::redis::RedisServer;
use testkit::server::TestServer;
use tower::{Layer, ServiceExt, service_fn};

fn client(pki: &TestPki) -> PinnedClient {
    let policy = PinPolicy::builder()
        .pin(
            "localhost",
            &[&pki.intermediate.spki_pin(), &pki.root.spki_pin()],
        )
        .unwrap()
        .build()
        .unwrap();
    let tls = PinnedTls::builder(policy)
        .root_certificates([pki.root.cert()])
        .unwrap()
        .build()
        .unwrap();
    Client::builder(TokioExecutor::new()).build(tls.connector())
}

/// An HTTPS server on loopback verifying signatures with `cache`; answers the key id.
async fn verifier(pki: &TestPki, key: &SigningKey, cache: RedisReplayCache) -> TestServer {
    let layer =
        VerifySignatureLayer::builder(StaticKeys::new().with(key.keyid(), key.verifying_key()))
            .replay_cache(cache)
            .build()
            .unwrap();
    let app = service_fn(|req: Request<Full<Bytes>>| async move {
        let who = req.extensions().get::<VerifiedSignature>().unwrap().keyid();
        Ok::<_, Infallible>(Response::new(Full::from(who.to_owned())))
    });
    let config = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
    TestServer::https_with(config, move |req: Request<Incoming>| {
        let svc = layer.layer(app);
        async move {
            match svc.oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            }
        }
    })
    .await
}

/// A signed request for `server` (fresh nonce), as the device sends it.
async fn signed(key: &SigningKey, server: &TestServer, n: usize) -> Request<Full<Bytes>> {
    let slot = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let capture = service_fn(move |req: Request<Full<Bytes>>| {
        *out.lock().unwrap() = Some(req);
        async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
    });
    let req = Request::post(server.url("/v1/transfer"))
        .body(Full::<Bytes>::from(format!("{{\"n\":{n}}}")))
        .unwrap();
    SignLayer::new(key.clone())
        .layer(capture)
        .oneshot(req)
        .await
        .unwrap();
    slot.lock().unwrap().take().unwrap()
}

/// A byte-for-byte copy of a captured request, as an attacker replays it.
fn copy(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut out = Request::builder()
        .method(req.method())
        .uri(req.uri())
        .body(req.body().clone())
        .unwrap();
    *out.headers_mut() = req.headers().clone();
    out
}

/// Sends `req`; a hang (more than 10 s) fails the test. Returns (status, reason).
async fn send(client: &PinnedClient, req: Request<Full<Bytes>>) -> (u16, String) {
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("a request hung on Redis")
        .unwrap();
    let status = res.status().as_u16();
    let reason = res
        .headers()
        .get("portcullis-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = res.into_body().collect().await;
    (status, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_fail_closed_during_a_redis_restart_and_are_served_after_it() {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let key = SigningKey::generate_ed25519("device-1").unwrap();
    let mut redis = RedisServer::start();
    let cache = RedisReplayCache::connect(&redis.url()).await.unwrap();
    let server = verifier(&pki, &key, cache).await;
    let client = client(&pki);

    let first = signed(&key, &server, 0).await;
    let captured = copy(&first);
    assert_eq!(send(&client, first).await, (200, String::new()));

    // The attacker crashes Redis, then replays the captured request: never accepted.
    redis.stop();
    assert_eq!(
        send(&client, copy(&captured)).await,
        (503, "replay_cache_unavailable".into())
    );
    assert_eq!(
        send(&client, signed(&key, &server, 1).await).await,
        (503, "replay_cache_unavailable".into()),
        "fail closed while Redis is away"
    );

    // Redis is back (same port): the same server process serves signed requests again.
    redis.restart();
    let since = Instant::now();
    let mut n = 2;
    loop {
        let req = signed(&key, &server, n).await;
        let replay = copy(&req);
        if send(&client, req).await == (200, String::new()) {
            assert_eq!(
                send(&client, replay).await,
                (401, "replayed".into()),
                "replays are caught again after the restart"
            );
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "signed requests were not served again after Redis came back"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_rate_limit_holds_through_a_redis_restart() {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let mut redis = RedisServer::start();
    let quota = Quota::per_minute(NonZeroU32::new(3).unwrap());
    let limiter = RedisRateLimiter::connect(&redis.url(), quota, "edge")
        .await
        .unwrap();
    let layer = RedisRateLimitLayer::new(limiter, |head: &RequestHead<'_>| {
        head.headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let app = service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
    });
    let config = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
    let server = TestServer::https_with(config, move |req: Request<Incoming>| {
        let svc = layer.layer(app);
        async move {
            match svc.oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            }
        }
    })
    .await;
    let client = client(&pki);
    let call = |who: &str| {
        let req = Request::get(server.url("/v1/search"))
            .header("x-api-key", who)
            .body(Full::<Bytes>::default())
            .unwrap();
        send(&client, req)
    };

    // The attacker exhausts their quota.
    let burst: Vec<u16> = futures_statuses(&call, "mallory", 4).await;
    assert_eq!(burst, [200, 200, 200, 429]);

    // Crashing Redis does not lift the limit (fail closed, the default).
    redis.stop();
    assert_eq!(call("mallory").await, (503, String::new()));

    // Back (with its data gone): the same process limits again, by itself.
    redis.restart();
    let since = Instant::now();
    while call("alice").await.0 != 200 {
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "the limiter did not come back after Redis did"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let burst = futures_statuses(&call, "mallory", 4).await;
    assert_eq!(burst, [200, 200, 200, 429], "limits apply again");
}

/// `n` calls in a row from `who`: their statuses.
async fn futures_statuses<F, Fut>(call: &F, who: &str, n: usize) -> Vec<u16>
where
    F: Fn(&str) -> Fut,
    Fut: Future<Output = (u16, String)>,
{
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(call(who).await.0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_refused_and_a_full_one_forgets_no_nonce() {
    testkit::install_default_provider();
    // A Redis that drops keys under memory pressure would forget live nonces.
    let lru = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    assert_eq!(
        RedisReplayCache::connect(&lru.url()).await.unwrap_err(),
        RedisConnectError::EvictionPolicy {
            policy: "allkeys-lru".into()
        }
    );

    assert!(matches!(
        RedisReplayCache::connect(
            &RedisServer::start_with(&["--maxmemory-policy", "volatile-ttl"]).url()
        )
        .await,
        Err(RedisConnectError::EvictionPolicy { .. })
    ));

    // With noeviction, the attacker fills Redis past its memory limit: the captured
    // request is still a replay and new nonces are still recorded; nothing is forgotten.
    let redis = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let pki = TestPki::new();
    let key = SigningKey::generate_ed25519("device-1").unwrap();
    let cache = RedisReplayCache::connect(&redis.url()).await.unwrap();
    let server = verifier(&pki, &key, cache).await;
    let client = client(&pki);
    let first = signed(&key, &server, 0).await;
    let captured = copy(&first);
    assert_eq!(send(&client, first).await, (200, String::new()));

    // 4 MiB of junk, then a memory limit below what is held: Redis is over its limit.
    let filler = redis::Client::open(redis.url()).unwrap();
    let mut conn = filler.get_multiplexed_async_connection().await.unwrap();
    let blob = vec![b'x'; 64 * 1024];
    for i in 0..64 {
        let _: () = redis::cmd("SET")
            .arg(format!("junk:{i}"))
            .arg(&blob)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("2mb")
        .query_async(&mut conn)
        .await
        .unwrap();
    let oom: redis::RedisResult<()> = redis::cmd("SET")
        .arg("one-more")
        .arg("x")
        .query_async(&mut conn)
        .await;
    assert!(
        oom.as_ref().is_err_and(|e| e.to_string().contains("OOM")),
        "redis refuses writes once full: {oom:?}"
    );
    assert_eq!(
        send(&client, copy(&captured)).await,
        (401, "replayed".into()),
        "the captured request's nonce was not evicted"
    );
    let fresh = signed(&key, &server, 1).await;
    let replay = copy(&fresh);
    assert_eq!(send(&client, fresh).await, (200, String::new()));
    assert_eq!(
        send(&client, replay).await,
        (401, "replayed".into()),
        "recorded despite the memory limit"
    );
}
