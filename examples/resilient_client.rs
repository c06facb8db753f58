//! A resilient client against a local flaky server: retries with full-jitter backoff and
//! `Retry-After`, idempotency rules, a client-side rate limit, a circuit breaker, and a
//! server-side keyed rate limit answering 429 with `RateLimit-*` headers.
//!
//! Run: `cargo run -p portcullis-examples --example resilient_client`

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis_retry::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
use portcullis_retry::rate_limit::{ClientRateLimitLayer, PeerAddr, PeerIp, Quota, RateLimitLayer};
use portcullis_retry::retry::{Attempt, ReplayBody, RetryLayer};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

type Body = Full<Bytes>;

/// Serves `app` on a free loopback port, putting each connection's peer address into the
/// request extensions (what `PeerIp` keys on).
async fn serve<S>(app: S) -> Result<SocketAddr, BoxError>
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let app = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    req
                })
                .service(app.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    Ok(addr)
}

fn respond(status: StatusCode, body: &str) -> Response<Body> {
    let mut res = Response::new(Body::from(body.to_owned()));
    *res.status_mut() = status;
    res
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    run().await
}

/// Runs the example (also run by `tests/examples.rs`); fails with the step that differed.
pub(crate) async fn run() -> Result<(), BoxError> {
    // --- A flaky upstream: /flaky fails twice (the second time with Retry-After: 1),
    // /orders fails its first two requests, /down is always down, /login always 401. ---
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let log = seen.clone();
    let flaky = service_fn(move |req: Request<Incoming>| {
        let path = req.uri().path().to_owned();
        let attempt = req
            .headers()
            .get("x-attempt")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        let n = {
            let mut seen = log.lock().unwrap_or_else(|e| e.into_inner());
            let n = seen.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        println!("  server: {} {path} (attempt {attempt})", req.method());
        let res = match (path.as_str(), n) {
            ("/flaky", 1) => respond(StatusCode::SERVICE_UNAVAILABLE, "warming up"),
            ("/flaky", 2) => {
                let mut res = respond(StatusCode::SERVICE_UNAVAILABLE, "busy");
                res.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                res
            }
            ("/orders", n) if n < 3 => respond(StatusCode::BAD_GATEWAY, "upstream hiccup"),
            ("/down", _) => respond(StatusCode::INTERNAL_SERVER_ERROR, "down"),
            ("/login", _) => respond(StatusCode::UNAUTHORIZED, "bad credentials"),
            _ => respond(StatusCode::OK, "ok"),
        };
        async move { Ok::<_, Infallible>(res) }
    });
    let flaky_addr = serve(flaky).await?;

    // --- A rate-limited API: 3 requests per 10 s per client IP. ---
    let quota = Quota::with_period(Duration::from_millis(3333))
        .ok_or("quota period")?
        .allow_burst(NonZeroU32::new(3).ok_or("burst")?);
    let api = ServiceBuilder::new()
        .layer(RateLimitLayer::keyed(quota, PeerIp::new()))
        .service(service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(respond(StatusCode::OK, "data"))
        }));
    let api_addr = serve(api).await?;

    // --- The client stack: retry > client rate limit > attempt header > hyper. ---
    let http: Client<HttpConnector, ReplayBody<Body>> =
        Client::builder(TokioExecutor::new()).build_http();
    let client = ServiceBuilder::new()
        .layer(
            RetryLayer::new()
                .max_attempts(4)
                .backoff(Duration::from_millis(50), Duration::from_secs(1))
                .deadline(Duration::from_secs(10))
                .attempt_timeout(Duration::from_secs(2)),
        )
        .layer(ClientRateLimitLayer::new(Quota::per_second(
            NonZeroU32::new(50).ok_or("rate")?,
        )))
        .map_request(|mut req: Request<ReplayBody<Body>>| {
            // Inner layers see the attempt number (a signer would re-sign here).
            if let Some(attempt) = req.extensions().get::<Attempt>().copied() {
                req.headers_mut()
                    .insert("x-attempt", HeaderValue::from(attempt.number()));
            }
            req
        })
        .service(http);

    let call = |method: Method, addr: SocketAddr, path: &str, key: Option<&str>| {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let req = req.body(Body::from("{\"item\":42}"));
        let client = client.clone();
        async move {
            let started = Instant::now();
            let res = match req {
                Ok(req) => client.oneshot(req).await,
                Err(e) => Err(e.into()),
            };
            (res, started.elapsed())
        }
    };

    // How many requests the flaky server saw on `path`.
    let served = |path: &str| {
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .copied()
            .unwrap_or(0)
    };

    println!("1. GET /flaky: 503, 503 with Retry-After: 1, then 200");
    let (res, took) = call(Method::GET, flaky_addr, "/flaky", None).await;
    let status = res?.status();
    println!("   -> {status} after {took:.1?}\n");
    check(status == StatusCode::OK, "1: /flaky ends in 200")?;
    check(served("/flaky") == 3, "1: /flaky took three attempts")?;
    check(
        took >= Duration::from_secs(1),
        "1: Retry-After: 1 was waited",
    )?;

    println!("2. POST /orders without an Idempotency-Key: sent once, never replayed");
    let (res, _) = call(Method::POST, flaky_addr, "/orders", None).await;
    let status = res?.status();
    println!("   -> {status}\n");
    check(status == StatusCode::BAD_GATEWAY, "2: the 502 comes back")?;
    check(served("/orders") == 1, "2: the POST was sent once")?;

    println!("3. POST /orders with an Idempotency-Key: the buffered body is replayed");
    let (res, _) = call(Method::POST, flaky_addr, "/orders", Some("order-7f3a")).await;
    let status = res?.status();
    println!("   -> {status}\n");
    check(status == StatusCode::OK, "3: the replayed POST succeeds")?;
    check(served("/orders") == 3, "3: the POST was replayed once")?;

    println!("4. GET /login: 401 is a security rejection, final at once");
    let (res, _) = call(Method::GET, flaky_addr, "/login", None).await;
    let status = res?.status();
    println!("   -> {status}\n");
    check(status == StatusCode::UNAUTHORIZED, "4: the 401 comes back")?;
    check(served("/login") == 1, "4: the 401 was not retried")?;

    println!("5. GET /down through a circuit breaker until it opens (500s feed it, 401s never)");
    let guarded = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .layer(
            CircuitBreakerLayer::builder()
                .minimum_calls(4)
                .failure_rate(0.5)
                .open_duration(Duration::from_secs(30))
                .build(),
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>());
    let mut fast_failures = 0;
    for i in 1..=5 {
        let path = if i == 1 { "/login" } else { "/down" };
        let req = Request::get(format!("http://{flaky_addr}{path}")).body(Body::default())?;
        let before = served("/down");
        match guarded.clone().oneshot(req).await {
            Ok(res) => println!("   GET {path} -> {}", res.status()),
            Err(err) if err.is::<CircuitOpen>() => {
                println!("   GET {path} -> fails fast: {err}");
                check(
                    served("/down") == before,
                    "5: an open circuit sends nothing",
                )?;
                fast_failures += 1;
            }
            Err(err) => return Err(format!("5: GET {path} failed: {err}").into()),
        }
    }
    check(fast_failures > 0, "5: the 500s opened the circuit")?;

    println!("\n6. Five quick GETs to the rate-limited API (3 per 10 s per client IP)");
    let limited_client = ServiceBuilder::new()
        .layer(RetryLayer::new().max_attempts(1))
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>());
    let mut statuses = Vec::new();
    for i in 1..=5 {
        let req = Request::get(format!("http://{api_addr}/data")).body(Body::default())?;
        let res = limited_client.clone().oneshot(req).await?;
        statuses.push(res.status());
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            check(
                res.headers().contains_key("retry-after"),
                "6: a 429 says when to come back",
            )?;
        }
        let h = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        println!(
            "   GET {i} -> {} (RateLimit-Remaining {}, RateLimit-Reset {}, Retry-After {})",
            res.status(),
            h("ratelimit-remaining"),
            h("ratelimit-reset"),
            h("retry-after"),
        );
    }
    check(
        statuses
            == [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS,
                StatusCode::TOO_MANY_REQUESTS,
            ],
        "6: three requests pass, then 429",
    )?;
    Ok(())
}

/// `Err(step)` unless `ok`: the example fails with the step whose outcome differed.
fn check(ok: bool, step: &str) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {step}").into())
    }
}
