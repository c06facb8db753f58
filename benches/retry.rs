//! Resilience layer costs: per-request overhead of `RetryLayer` and of a keyed `RateLimitLayer`
//! check against the bare service in the same run, the keyed limiter check alone, the
//! circuit breaker, and the Redis GCRA limiter's checks per second on loopback.
//!
//! Run: `cargo bench -p portcullis-benches --bench retry -- --warm-up-time 1 --measurement-time 2`

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use portcullis_retry::circuit_breaker::CircuitBreakerLayer;
use portcullis_retry::rate_limit::{KeyedLimiter, PeerAddr, PeerIp, Quota, RateLimitLayer};
use portcullis_retry::redis::RedisRateLimiter;
use portcullis_retry::retry::{ReplayBody, RetryLayer};
use tower::{ServiceBuilder, ServiceExt, service_fn};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://api.test/v1/items/42")
        .body(Full::default())
        .expect("request")
}

fn put_1k() -> Request<Full<Bytes>> {
    Request::put("http://api.test/v1/items/42")
        .body(Full::new(Bytes::from_static(&[b'x'; 1024])))
        .expect("request")
}

fn retry(c: &mut Criterion) {
    let rt = runtime();
    let bare =
        service_fn(|_req: Request<Full<Bytes>>| async { Ok::<_, Infallible>(Response::new(())) });
    let inner = service_fn(|_req: Request<ReplayBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(()))
    });
    let retried = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(inner);
    let breaker = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new())
        .service(bare);

    let mut group = c.benchmark_group("retry");
    group.bench_function("bare_get", |b| {
        b.iter(|| rt.block_on(bare.oneshot(black_box(get()))))
    });
    group.bench_function("retry_layer_get", |b| {
        b.iter(|| rt.block_on(retried.clone().oneshot(black_box(get()))))
    });
    group.bench_function("bare_put_1k", |b| {
        b.iter(|| rt.block_on(bare.oneshot(black_box(put_1k()))))
    });
    group.bench_function("retry_layer_put_1k_buffered", |b| {
        b.iter(|| rt.block_on(retried.clone().oneshot(black_box(put_1k()))))
    });
    group.bench_function("circuit_breaker_get", |b| {
        b.iter(|| rt.block_on(breaker.clone().oneshot(black_box(get()))))
    });
    group.finish();
}

fn peer(i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i % 4096))), 40000)
}

fn with_peer(i: u32) -> Request<()> {
    let mut req = Request::get("/v1/items/42").body(()).expect("request");
    req.extensions_mut().insert(PeerAddr(peer(i)));
    req
}

fn limiter(c: &mut Criterion) {
    let rt = runtime();
    let bare = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    // A quota no request reaches: every check passes, so this measures the check itself.
    let quota = Quota::per_second(NonZeroU32::new(1_000_000).expect("non-zero"));
    let limited = ServiceBuilder::new()
        .layer(RateLimitLayer::keyed(quota, PeerIp::new()))
        .service(bare);
    let keyed: KeyedLimiter<IpAddr> = KeyedLimiter::new(quota);

    let mut group = c.benchmark_group("rate_limit");
    let mut i = 0u32;
    group.bench_function("bare", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            rt.block_on(bare.oneshot(black_box(with_peer(i))))
        })
    });
    group.bench_function("keyed_layer_4096_peers", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            rt.block_on(limited.clone().oneshot(black_box(with_peer(i))))
        })
    });
    group.bench_function("keyed_check_only", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(keyed.check(&peer(i).ip())).is_ok()
        })
    });
    group.finish();
}

fn redis(c: &mut Criterion) {
    let rt = runtime();
    let server = testkit::redis::RedisServer::start();
    let limiter = rt
        .block_on(RedisRateLimiter::connect(
            &server.url(),
            Quota::per_second(NonZeroU32::new(1_000_000).expect("non-zero")),
            "bench",
        ))
        .expect("redis limiter");

    let mut group = c.benchmark_group("redis_gcra");
    group.throughput(Throughput::Elements(1));
    group.bench_function("check_sequential", |b| {
        b.iter(|| {
            rt.block_on(limiter.check(black_box("client-1")))
                .expect("redis")
        })
    });
    const CONCURRENT: u64 = 32;
    group.throughput(Throughput::Elements(CONCURRENT));
    group.bench_function("check_32_concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for k in 0..CONCURRENT {
                    let limiter = limiter.clone();
                    set.spawn(async move { limiter.check(&format!("client-{k}")).await });
                }
                while let Some(r) = set.join_next().await {
                    let _decision = r.expect("task").expect("redis");
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, retry, limiter, redis);
criterion_main!(benches);
