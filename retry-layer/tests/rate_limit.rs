//! Rate limits through real tower stacks on a paused clock: 429 answers and headers, shared
//! state across clones, keys from peers, trusted proxies and verified identities, missing
//! keys, and the client side (wait or fail fast).
#![allow(clippy::type_complexity)] // test helpers return (service, call log) pairs

mod common;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use portcullis_retry::rate_limit::{
    ClientRateLimitLayer, ExtensionKey, IpNet, MissingKey, MissingRateLimitKey, PeerAddr, PeerIp,
    Quota, RateLimitLayer, RateLimited, RequestHead,
};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

fn quota(burst: u32, per: Duration) -> Quota {
    Quota::with_period(per / burst)
        .unwrap()
        .allow_burst(NonZeroU32::new(burst).unwrap())
}

fn ok_service() -> (
    impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = service_fn(move |_req: Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new("ok".to_string())) }
    });
    (svc, calls)
}

fn from(peer: &str) -> Request<()> {
    let mut req = Request::get("http://api.test/items").body(()).unwrap();
    let addr = SocketAddr::new(peer.parse::<IpAddr>().unwrap(), 40000);
    req.extensions_mut().insert(PeerAddr(addr));
    req
}

fn via_proxy(proxy: &str, xff: &str) -> Request<()> {
    let mut req = from(proxy);
    req.headers_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    req
}

async fn status<S>(svc: &mut S, req: Request<()>) -> Response<String>
where
    S: Service<Request<()>, Response = Response<String>, Error = Infallible>,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn global_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let (svc, calls) = ok_service();
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(quota(2, Duration::from_secs(1))))
        .service(svc);
    let first = status(&mut svc, from("192.0.2.1")).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-limit"], "2");
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    let second = status(&mut svc, from("192.0.2.2")).await;
    assert_eq!(second.headers()["ratelimit-remaining"], "0");
    assert_eq!(second.headers()["ratelimit-reset"], "1");

    let refused = status(&mut svc, from("192.0.2.3")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["ratelimit-limit"], "2");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    assert_eq!(refused.headers()["ratelimit-reset"], "1");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the refused request never reached the service"
    );

    // One cell comes back every 500 ms.
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(
        status(&mut svc, from("192.0.2.3")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        status(&mut svc, from("192.0.2.3")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn limiter_is_clone_and_clones_share_state() {
    let layer = RateLimitLayer::keyed(quota(3, Duration::from_secs(60)), PeerIp::new());
    let (inner, _) = ok_service();
    let mut a = ServiceBuilder::new()
        .layer(layer.clone())
        .service(inner.clone());
    let mut b = a.clone();
    let mut c = ServiceBuilder::new().layer(layer.clone()).service(inner);
    assert_eq!(
        status(&mut a, from("198.51.100.4")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        status(&mut b, from("198.51.100.4")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        status(&mut c, from("198.51.100.4")).await.status(),
        StatusCode::OK
    );
    for svc in [&mut a, &mut b, &mut c] {
        assert_eq!(
            status(svc, from("198.51.100.4")).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(layer.limiter().len(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn keyed_by_peer_ip_gives_each_client_its_own_bucket() {
    let (inner, _) = ok_service();
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::keyed(
            quota(1, Duration::from_secs(60)),
            PeerIp::new(),
        ))
        .service(inner);
    assert_eq!(
        status(&mut svc, from("203.0.113.1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        status(&mut svc, from("203.0.113.2")).await.status(),
        StatusCode::OK
    );
    assert_eq!(status(&mut svc, from("::1")).await.status(), StatusCode::OK);
    assert_eq!(
        status(&mut svc, from("203.0.113.1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn spoofed_x_forwarded_for_from_untrusted_peer_is_ignored() {
    let capture = common::Capture;
    let _guard = capture.install();
    let (inner, calls) = ok_service();
    let extractor = PeerIp::new().trust_proxies(["10.0.0.0/8".parse::<IpNet>().unwrap()]);
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::keyed(
            quota(2, Duration::from_secs(60)),
            extractor,
        ))
        .service(inner);
    // An attacker rotates X-Forwarded-For on every request: still one bucket (its own IP).
    let mut codes = Vec::new();
    for i in 0..5 {
        let req = via_proxy("203.0.113.66", &format!("198.51.100.{i}"));
        codes.push(status(&mut svc, req).await.status().as_u16());
    }
    assert_eq!(codes, [200, 200, 429, 429, 429]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let refusal = capture
        .events()
        .into_iter()
        .find(|e| e.target == "portcullis::ratelimit")
        .expect("refusals are logged");
    assert_eq!(refusal.get("client.address"), Some("203.0.113.66"));
    assert_eq!(refusal.get("http.response.status_code"), Some("429"));

    // Through the trusted proxy, each forwarded client has its own bucket.
    for i in 0..5 {
        let req = via_proxy("10.1.2.3", &format!("198.51.100.{i}"));
        assert_eq!(status(&mut svc, req).await.status(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn missing_key_is_a_policy_choice_never_a_500() {
    let (inner, calls) = ok_service();
    let q = quota(2, Duration::from_secs(60));
    let no_peer = || Request::get("http://api.test/").body(()).unwrap();

    let mut reject = ServiceBuilder::new()
        .layer(RateLimitLayer::keyed(q, PeerIp::new()))
        .service(inner.clone());
    assert_eq!(
        status(&mut reject, no_peer()).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let mut shared = ServiceBuilder::new()
        .layer(RateLimitLayer::keyed(q, PeerIp::new()).missing_key(MissingKey::SharedBucket))
        .service(inner);
    let codes: Vec<u16> = [
        status(&mut shared, no_peer()).await,
        status(&mut shared, no_peer()).await,
        status(&mut shared, no_peer()).await,
    ]
    .iter()
    .map(|r| r.status().as_u16())
    .collect();
    assert_eq!(
        codes,
        [200, 200, 429],
        "all keyless requests share one bucket"
    );
}

#[derive(Clone)]
struct VerifiedSubject(String);

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn verified_identity_from_extensions_is_the_key() {
    let (inner, _) = ok_service();
    let key = ExtensionKey::new(|s: &VerifiedSubject| Some(s.0.clone()));
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::keyed(
            quota(1, Duration::from_secs(60)),
            key,
        ))
        .service(inner);
    let as_user = |user: &str, peer: &str| {
        let mut req = from(peer);
        req.extensions_mut().insert(VerifiedSubject(user.into()));
        req
    };
    assert_eq!(
        status(&mut svc, as_user("alice", "192.0.2.1"))
            .await
            .status(),
        200
    );
    // Same user from another address: same bucket.
    assert_eq!(
        status(&mut svc, as_user("alice", "192.0.2.2"))
            .await
            .status(),
        429
    );
    assert_eq!(
        status(&mut svc, as_user("bob", "192.0.2.1")).await.status(),
        200
    );
    // No verified identity: rejected.
    assert_eq!(status(&mut svc, from("192.0.2.1")).await.status(), 403);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn custom_closure_key() {
    let (inner, _) = ok_service();
    let by_tenant = |h: &RequestHead<'_>| {
        h.headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::keyed(
            quota(1, Duration::from_secs(60)),
            by_tenant,
        ))
        .service(inner);
    let tenant = |t: &str| Request::get("/").header("x-tenant", t).body(()).unwrap();
    assert_eq!(status(&mut svc, tenant("a")).await.status(), 200);
    assert_eq!(status(&mut svc, tenant("a")).await.status(), 429);
    assert_eq!(status(&mut svc, tenant("b")).await.status(), 200);
}

type ClientReq = Request<()>;

fn client_upstream() -> (
    impl Service<ClientReq, Response = Response<()>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static,
    Arc<std::sync::Mutex<Vec<Instant>>>,
) {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = log.clone();
    let svc = service_fn(move |_req: ClientReq| {
        l.lock().unwrap().push(Instant::now());
        async { Ok::<_, Infallible>(Response::new(())) }
    });
    (svc, log)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn client_side_waits_for_the_quota() {
    let (svc, log) = client_upstream();
    let mut client = ServiceBuilder::new()
        .layer(
            ClientRateLimitLayer::new(quota(1, Duration::from_secs(2)))
                .wait_up_to(Duration::from_secs(5)),
        )
        .service(svc);
    let start = Instant::now();
    for _ in 0..3 {
        client
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
    }
    let log = log.lock().unwrap();
    let offsets: Vec<Duration> = log.iter().map(|t| *t - start).collect();
    assert_eq!(
        offsets,
        [
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::from_secs(4)
        ]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn client_side_fails_fast_or_when_the_wait_is_too_long() {
    let (svc, log) = client_upstream();
    let mut fast = ServiceBuilder::new()
        .layer(ClientRateLimitLayer::new(quota(1, Duration::from_secs(2))).fail_fast())
        .service(svc.clone());
    fast.ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    let err: BoxError = fast
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    assert_eq!(limited.retry_after(), Duration::from_secs(2));
    assert!(err.to_string().contains("rate limit exceeded"));

    let mut patient = ServiceBuilder::new()
        .layer(
            ClientRateLimitLayer::new(quota(1, Duration::from_secs(60)))
                .wait_up_to(Duration::from_secs(5)),
        )
        .service(svc.clone());
    patient
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    let start = Instant::now();
    let err = patient
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap_err();
    assert!(err.is::<RateLimited>());
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no point waiting 60 s for a 5 s budget"
    );
    assert_eq!(log.lock().unwrap().len(), 2);

    let mut keyed = ServiceBuilder::new()
        .layer(ClientRateLimitLayer::keyed(
            quota(1, Duration::from_secs(1)),
            PeerIp::new(),
        ))
        .service(svc);
    let err = keyed
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap_err();
    assert!(err.is::<MissingRateLimitKey>());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn concurrent_waiters_are_spaced_by_the_quota() {
    let (svc, log) = client_upstream();
    let client = ServiceBuilder::new()
        .layer(ClientRateLimitLayer::new(quota(1, Duration::from_secs(1))))
        .service(svc);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = client.clone();
        tasks.push(tokio::spawn(
            async move { c.oneshot(Request::new(())).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut offsets: Vec<Duration> = log.lock().unwrap().iter().map(|t| *t - start).collect();
    offsets.sort();
    assert_eq!(offsets, [0, 1, 2, 3].map(Duration::from_secs));
}

#[tokio::test(start_paused = true)]
async fn stacked_limits_report_the_binding_quota() {
    // A generous per-peer limit over a strict global one: the headers describe the strict one.
    let (svc, _calls) = ok_service();
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::keyed(
            quota(30, Duration::from_secs(3600)),
            PeerIp::new(),
        ))
        .layer(RateLimitLayer::new(quota(2, Duration::from_secs(3600))))
        .service(svc);
    let first = status(&mut svc, from("192.0.2.1")).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-limit"], "2");
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    status(&mut svc, from("192.0.2.1")).await;
    let third = status(&mut svc, from("192.0.2.1")).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.headers()["ratelimit-limit"], "2");
    assert_eq!(third.headers()["ratelimit-remaining"], "0");
}
