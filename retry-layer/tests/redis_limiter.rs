//! The Redis GCRA limiter against a real `redis-server` on a free loopback port: two
//! instances (two replicas, two connections) share one quota, and the limiter outlives
//! Redis restarts and failovers without restarting the app.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use portcullis_retry::rate_limit::{PeerAddr, PeerIp, Quota};
use portcullis_retry::redis::{OnBackendError, RedisRateLimitLayer, RedisRateLimiter};
use testkit::redis::{RedisServer, SilentFailover};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap())
}

#[tokio::test]
async fn redis_limiter_is_shared_by_two_instances() {
    let redis = RedisServer::start();
    let a = RedisRateLimiter::connect(&redis.url(), per_minute(3), "test")
        .await
        .unwrap();
    let b = RedisRateLimiter::connect(&redis.url(), per_minute(3), "test")
        .await
        .unwrap();

    let mut decisions = Vec::new();
    for i in 0..6 {
        let replica = if i % 2 == 0 { &a } else { &b };
        decisions.push(replica.check("client-1").await.unwrap());
    }
    let allowed: Vec<bool> = decisions.iter().map(Result::is_ok).collect();
    assert_eq!(
        allowed,
        [true, true, true, false, false, false],
        "one quota for both"
    );
    let remaining: Vec<u32> = decisions[..3]
        .iter()
        .map(|d| d.unwrap().remaining)
        .collect();
    assert_eq!(remaining, [2, 1, 0]);
    let denied = decisions[3].unwrap_err();
    assert_eq!(denied.limit, 3);
    // One cell every 20 s; the first came back no later than 20 s from now.
    assert!(
        denied.retry_after > Duration::from_secs(15)
            && denied.retry_after <= Duration::from_secs(20)
    );

    // Another key has its own bucket, on either instance.
    assert!(b.check("client-2").await.unwrap().is_ok());

    // Keys expire in Redis once idle (at most one burst period), so memory stays bounded.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("test:client-1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "ttl {ttl} ms");
}

fn from(peer: &str) -> Request<()> {
    let mut req = Request::get("http://api.test/").body(()).unwrap();
    req.extensions_mut().insert(PeerAddr(SocketAddr::new(
        peer.parse::<IpAddr>().unwrap(),
        1234,
    )));
    req
}

#[tokio::test]
async fn redis_layer_answers_429_across_replicas_and_fails_closed_when_redis_is_gone() {
    let redis = RedisServer::start();
    let upstream = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let replica = |limiter: RedisRateLimiter| {
        ServiceBuilder::new()
            .layer(RedisRateLimitLayer::new(limiter, PeerIp::new()))
            .service(upstream)
    };
    let mut one = replica(
        RedisRateLimiter::connect(&redis.url(), per_minute(2), "api")
            .await
            .unwrap(),
    );
    let mut two = replica(
        RedisRateLimiter::connect(&redis.url(), per_minute(2), "api")
            .await
            .unwrap(),
    );

    let r = one
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.7"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["ratelimit-remaining"], "1");
    let r = two
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.7"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = one
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.7"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "retry-after {wait}");
    assert_eq!(r.headers()["ratelimit-limit"], "2");
    // A request without a peer address is refused, not a 500.
    let r = two.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let limiter = RedisRateLimiter::connect(&redis.url(), per_minute(2), "api")
        .await
        .unwrap();
    drop(redis);
    let closed = replica(limiter.clone());
    let r = closed.oneshot(from("192.0.2.8")).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "limits hold when redis is gone"
    );
    let open = ServiceBuilder::new()
        .layer(
            RedisRateLimitLayer::new(limiter, PeerIp::new())
                .on_backend_error(OnBackendError::FailOpen),
        )
        .service(upstream);
    let r = open.oneshot(from("192.0.2.8")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "fail-open is a named opt-in");
}

/// A fail-closed and a fail-open replica on one limiter, called from `peer`.
type Replica = tower::util::BoxCloneService<Request<()>, Response<String>, Infallible>;

fn replicas(limiter: &RedisRateLimiter) -> (Replica, Replica) {
    let upstream = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let closed = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(limiter.clone(), PeerIp::new()))
        .service(upstream);
    let open = ServiceBuilder::new()
        .layer(
            RedisRateLimitLayer::new(limiter.clone(), PeerIp::new())
                .on_backend_error(OnBackendError::FailOpen),
        )
        .service(upstream);
    (
        tower::util::BoxCloneService::new(closed),
        tower::util::BoxCloneService::new(open),
    )
}

/// One request; a hang (more than 5 s) fails the test.
fn status(svc: &Replica, peer: &str) -> impl Future<Output = StatusCode> + Send + use<> {
    let call = svc.clone().oneshot(from(peer));
    async move {
        tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("a request hung on Redis: calls must be bounded")
            .unwrap()
            .status()
    }
}

/// Sends requests from 8 tasks until `stop`, each through the fail-closed and the
/// fail-open replica, and returns every (fail-closed, fail-open) answer.
fn load(
    closed: Replica,
    open: Replica,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(StatusCode, StatusCode)>> {
    tokio::spawn(async move {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (closed, open, stop) = (closed.clone(), open.clone(), stop.clone());
                tokio::spawn(async move {
                    let peer = format!("198.51.100.{i}");
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let c = status(&closed, &peer).await;
                        let o = status(&open, &peer).await;
                        seen.push((c, o));
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

/// Waits (up to 15 s) until the fail-closed replica answers 200 again.
async fn until_served(closed: &Replica, peer: &str) -> Duration {
    let since = Instant::now();
    loop {
        if status(closed, peer).await == StatusCode::OK {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "the limiter did not recover after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_recovers_after_a_real_redis_restart_under_load() {
    let mut redis = RedisServer::start();
    let limiter = RedisRateLimiter::connect(&redis.url(), per_minute(10_000), "restart")
        .await
        .unwrap();
    let (closed, open) = replicas(&limiter);
    assert_eq!(status(&closed, "192.0.2.1").await, StatusCode::OK);

    let stop = Arc::new(AtomicBool::new(false));
    let before = load(closed.clone(), open.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let before = before.await.unwrap();
    assert!(
        before
            .iter()
            .all(|&s| s == (StatusCode::OK, StatusCode::OK))
    );

    // Redis crashes under load: every answer meanwhile is the documented one.
    let stop = Arc::new(AtomicBool::new(false));
    let during = load(closed.clone(), open.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let during = during.await.unwrap();
    assert!(during.len() >= 8, "the load ran: {} requests", during.len());
    for (closed, open) in &during {
        assert!(
            [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(closed),
            "fail closed answers 503, never a 500: {closed}"
        );
        assert_eq!(*open, StatusCode::OK, "fail open lets requests through");
    }
    assert_eq!(
        status(&closed, "192.0.2.2").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "limits hold while Redis is down"
    );

    // Same port, empty data, no script loaded: the same limiter serves again.
    redis.restart();
    let stop = Arc::new(AtomicBool::new(false));
    let after = load(closed.clone(), open.clone(), stop.clone());
    until_served(&closed, "192.0.2.3").await;
    stop.store(true, Ordering::SeqCst);
    after.await.unwrap();
    // Limiting works again (the script is reloaded), on a fresh key with a small quota.
    let small = RedisRateLimiter::connect(&redis.url(), per_minute(1), "after")
        .await
        .unwrap();
    let (small_closed, _) = replicas(&small);
    assert_eq!(status(&small_closed, "192.0.2.4").await, StatusCode::OK);
    assert_eq!(
        status(&small_closed, "192.0.2.4").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let r = limiter.check("after-restart").await.unwrap().unwrap();
    assert_eq!(r.limit, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_failover_is_bounded_by_the_call_timeout_and_the_connection_replaced() {
    let redis = RedisServer::start();
    let failover = SilentFailover::start(redis.port());
    let limiter = RedisRateLimiter::connect(&failover.url(), per_minute(10_000), "failover")
        .await
        .unwrap()
        .call_timeout(Duration::from_millis(200));
    let (closed, open) = replicas(&limiter);
    assert_eq!(status(&closed, "192.0.2.1").await, StatusCode::OK);
    let opened = failover.connections();

    // The primary drops off the network: the open connection goes silent, while the
    // address now leads to a serving Redis.
    failover.silence_open_connections();
    let err = limiter.check("k").await.unwrap_err();
    assert!(
        matches!(err, portcullis_retry::redis::RedisLimitError::Timeout(_)),
        "{err}"
    );
    assert_eq!(status(&open, "192.0.2.5").await, StatusCode::OK);
    until_served(&closed, "192.0.2.6").await;
    assert!(
        failover.connections() > opened,
        "served over a new connection"
    );
}
