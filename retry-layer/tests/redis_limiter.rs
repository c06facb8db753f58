//! The Redis GCRA limiter against a real `redis-server` on a free loopback port: two
//! instances (two replicas, two connections) share one quota.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use portcullis_retry::rate_limit::{PeerAddr, PeerIp, Quota};
use portcullis_retry::redis::{OnBackendError, RedisRateLimitLayer, RedisRateLimiter};
use testkit::redis::RedisServer;
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
