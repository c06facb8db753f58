//! Threat: a client that forges `X-Forwarded-For`, `Forwarded`, `X-Real-IP` and friends to
//! pick a fresh rate-limit bucket for every request (credential stuffing past a per-IP
//! limit), or, behind a real proxy, prepends forged hops to the proxy's header. Defence: the
//! retry layer's `RateLimitLayer` keyed by `PeerIp` as the preset server stack's pre-auth
//! limit (`serve_tls` puts the TCP peer in every request): forwarding headers are read only
//! from configured trusted proxies, and then only up to the nearest untrusted hop. The limit
//! keeps binding the real peer: `429` with `Retry-After`, and a rate-limit event naming it.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use portcullis::retry::rate_limit::{IpNet, PeerIp, Quota, RateLimitLayer};
use tower::service_fn;

use crate::support::{Logs, Serving};

const BURST: u32 = 3;

/// The preset stack with a per-IP pre-auth limit of [`BURST`] requests a minute.
async fn api(peers: PeerIp) -> (Serving, Arc<AtomicUsize>) {
    let n = NonZeroU32::new;
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let stack = portcullis::server::builder()
        .pre_auth_rate_limit(RateLimitLayer::keyed(
            Quota::per_minute(n(1).unwrap()).allow_burst(n(BURST).unwrap()),
            peers,
        ))
        .service(service_fn(move |_req: Request<hyper::body::Incoming>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
        }));
    (Serving::start(stack).await, reached)
}

/// Headers an attacker rotates, a different claimed address on every request.
fn spoofed(i: usize) -> Vec<(&'static str, String)> {
    let ip = format!("203.0.113.{}", i + 1);
    match i % 5 {
        0 => vec![("x-forwarded-for", ip)],
        1 => vec![("forwarded", format!("for={ip};proto=https"))],
        2 => vec![("x-real-ip", ip.clone()), ("true-client-ip", ip)],
        3 => vec![
            ("x-forwarded-for", format!("{ip}, 10.0.0.{i}")),
            ("x-forwarded-for", format!("[2001:db8::{i}]:443")),
        ],
        _ => vec![
            ("x-forwarded-for", "unknown, ::ffff:127.0.0.1".to_owned()),
            ("cf-connecting-ip", ip),
        ],
    }
}

/// Sends ten requests with `headers(i)`; returns the statuses.
async fn burst(
    serving: &Serving,
    headers: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> Vec<StatusCode> {
    let client = serving.client();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let mut req = Request::get(serving.url("/login"));
        for (name, value) in headers(i) {
            req = req.header(name, value);
        }
        let res = client
            .request(req.body(Full::default()).unwrap())
            .await
            .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.headers().contains_key("retry-after"), "{res:?}");
            assert_eq!(res.headers()["ratelimit-remaining"], "0");
        }
        statuses.push(res.status());
    }
    statuses
}

fn limited_after_burst() -> Vec<StatusCode> {
    let mut want = vec![StatusCode::OK; BURST as usize];
    want.resize(10, StatusCode::TOO_MANY_REQUESTS);
    want
}

#[tokio::test]
async fn forged_forwarding_headers_from_an_untrusted_peer_do_not_change_the_bucket() {
    let logs = Logs::default();
    let _guard = logs.install();
    // Only a proxy network the peer is not in is trusted.
    let (serving, reached) =
        api(PeerIp::new().trust_proxies(["10.0.0.0/8".parse::<IpNet>().unwrap()])).await;
    assert_eq!(burst(&serving, spoofed).await, limited_after_burst());
    assert_eq!(reached.load(Ordering::SeqCst), BURST as usize);

    let refusals: Vec<_> = logs
        .events()
        .into_iter()
        .filter(|e| e["event.action"] == "rate_limit.check" && e["event.outcome"] == "failure")
        .collect();
    // The statuses above count the refusals; the captured events name whom they refused. (A
    // scoped subscriber in a multi-threaded test binary can miss an event whose callsite
    // another test registered first, so the count of events is not asserted.)
    assert!(
        !refusals.is_empty() && refusals.len() <= 10 - BURST as usize,
        "{} refusal events",
        refusals.len()
    );
    for e in refusals {
        assert_eq!(e["event.reason"], "quota exhausted");
        assert_eq!(
            e["client.address"], "127.0.0.1",
            "the real peer, not a claim"
        );
        assert_eq!(e["http.response.status_code"], 429);
    }
}

#[tokio::test]
async fn hops_forged_in_front_of_a_trusted_proxys_header_do_not_change_the_bucket() {
    // The server sits behind a proxy on 127.0.0.1 that appends the address it saw
    // (198.51.100.7, the attacker); the attacker writes whatever it likes before it,
    // trusted-looking addresses included.
    let (serving, reached) =
        api(PeerIp::new().trust_proxies([IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))]))
            .await;
    let forged = |i: usize| {
        let claim = match i % 3 {
            0 => format!("203.0.113.{i}"),
            1 => "127.0.0.1".to_owned(),
            _ => format!("10.1.2.{i}, 127.0.0.1"),
        };
        vec![("x-forwarded-for", format!("{claim}, 198.51.100.7"))]
    };
    assert_eq!(burst(&serving, forged).await, limited_after_burst());
    assert_eq!(reached.load(Ordering::SeqCst), BURST as usize);
}

#[tokio::test]
async fn control_a_trusted_proxys_header_does_select_the_client() {
    // From a trusted proxy, distinct real clients get distinct buckets: the header is read,
    // so the refusals above come from the trust rule, not from a header that is never used.
    let (serving, reached) =
        api(PeerIp::new().trust_proxies([IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))]))
            .await;
    let distinct = |i: usize| vec![("x-forwarded-for", format!("198.51.100.{}", i + 1))];
    assert_eq!(burst(&serving, distinct).await, vec![StatusCode::OK; 10]);
    assert_eq!(reached.load(Ordering::SeqCst), 10);
}
