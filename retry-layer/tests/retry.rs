//! Retry semantics on a paused clock: backoff bounds, budgets, Retry-After, idempotency,
//! body replay, deadlines and final (security) outcomes.
#![allow(clippy::type_complexity)] // test helpers return (service, call log) pairs

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use portcullis_retry::retry::{Attempt, AttemptTimedOut, DeadlineExceeded, ReplayBody, RetryLayer};
use tokio::time::Instant;
use tower::retry::budget::TpsBudget;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

type Req<B> = Request<ReplayBody<B>>;

#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    attempt: u32,
    body: Bytes,
    idempotency_key: Option<String>,
}

/// An upstream answering with `script[n]` on call `n` (then the last entry), recording calls.
fn scripted<B>(
    script: Vec<Response<()>>,
) -> (
    impl Service<Req<B>, Response = Response<()>, Error = Infallible, Future: Send> + Clone,
    Arc<Mutex<Vec<Call>>>,
)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    let script = Arc::new(script);
    let svc = service_fn(move |req: Req<B>| {
        let log = log.clone();
        let script = script.clone();
        async move {
            let attempt = req.extensions().get::<Attempt>().map_or(0, |a| a.number());
            let idempotency_key = req
                .headers()
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_string());
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let n = {
                let mut calls = log.lock().unwrap();
                calls.push(Call {
                    at: Instant::now(),
                    attempt,
                    body,
                    idempotency_key,
                });
                calls.len() - 1
            };
            let template = &script[n.min(script.len() - 1)];
            let mut res = Response::new(());
            *res.status_mut() = template.status();
            *res.headers_mut() = template.headers().clone();
            Ok::<_, Infallible>(res)
        }
    });
    (svc, calls)
}

fn status(code: u16) -> Response<()> {
    Response::builder().status(code).body(()).unwrap()
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://api.test/items")
        .body(Full::default())
        .unwrap()
}

fn layer() -> RetryLayer {
    RetryLayer::new()
        .max_attempts(4)
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn transient_statuses_are_retried_with_full_jitter_backoff_bounds() {
    let capture = common::Capture;
    let _guard = capture.install();
    let (svc, calls) = scripted(vec![status(503), status(502), status(504), status(200)]);
    let start = Instant::now();
    let res = ServiceBuilder::new()
        .layer(layer())
        .service(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(calls[0].at, start, "the first attempt is not delayed");
    // Delay n is at most min(max, base * 2^n): 100 ms, 200 ms, 400 ms.
    for (i, ceiling) in [100u64, 200, 400].into_iter().enumerate() {
        let gap = calls[i + 1].at - calls[i].at;
        assert!(gap <= Duration::from_millis(ceiling), "gap {i} = {gap:?}");
    }
    // Each retry is a `portcullis::retry` event in the audit schema.
    let retries: Vec<(String, String)> = capture
        .events()
        .into_iter()
        .filter(|e| {
            e.target == "portcullis::retry" && e.get("event.action") == Some("retry.attempt")
        })
        .map(|e| {
            (
                e.get("attempt").unwrap_or_default().to_owned(),
                e.get("http.response.status_code")
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [("2", "503"), ("3", "502"), ("4", "504")]
        .iter()
        .map(|(a, s)| (a.to_string(), s.to_string()))
        .collect();
    assert_eq!(retries, expected);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn jitter_spreads_delays_across_requests() {
    let mut gaps = Vec::new();
    for _ in 0..40 {
        let (svc, calls) = scripted(vec![status(503), status(200)]);
        ServiceBuilder::new()
            .layer(layer())
            .service(svc)
            .oneshot(get())
            .await
            .unwrap();
        let calls = calls.lock().unwrap();
        gaps.push(calls[1].at - calls[0].at);
    }
    assert!(gaps.iter().all(|g| *g <= Duration::from_millis(100)));
    gaps.sort();
    gaps.dedup();
    assert!(
        gaps.len() > 10,
        "full jitter gives distinct delays: {gaps:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn max_attempts_bounds_the_calls() {
    let (svc, calls) = scripted(vec![status(503)]);
    let res = ServiceBuilder::new()
        .layer(layer().max_attempts(3))
        .service(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_budget_stops_retries_once_spent() {
    // One retry in reserve (1 per second over a 1 s window), nothing earned from deposits.
    let budget = TpsBudget::new(Duration::from_secs(1), 1, 0.0);
    let (svc, calls) = scripted(vec![status(503)]);
    let mut client = ServiceBuilder::new()
        .layer(layer().max_attempts(5).budget(budget))
        .service(svc);
    // First request: one retry allowed by the reserve, then the budget says no.
    let res = client.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.lock().unwrap().len(), 2);
    // A clone shares the spent budget: no retry at all.
    let mut clone = client.clone();
    clone.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_after_seconds_is_honoured() {
    let busy = Response::builder()
        .status(429)
        .header("retry-after", "3")
        .body(())
        .unwrap();
    let (svc, calls) = scripted(vec![busy, status(200)]);
    let res = ServiceBuilder::new()
        .layer(layer())
        .service(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let calls = calls.lock().unwrap();
    let gap = calls[1].at - calls[0].at;
    // max(Retry-After, jittered backoff <= 100 ms) = 3 s.
    assert_eq!(gap, Duration::from_secs(3));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_after_http_date_is_honoured() {
    let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(6));
    let busy = Response::builder()
        .status(503)
        .header("retry-after", when)
        .body(())
        .unwrap();
    let (svc, calls) = scripted(vec![busy, status(200)]);
    let res = ServiceBuilder::new()
        .layer(layer())
        .service(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let calls = calls.lock().unwrap();
    let gap = calls[1].at - calls[0].at;
    // HTTP-dates have whole seconds: the wait is within (5 s, 6 s].
    assert!(
        gap > Duration::from_secs(5) && gap <= Duration::from_secs(6),
        "{gap:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn too_many_requests_with_retry_after_past_the_deadline_is_returned_at_once() {
    let busy = Response::builder()
        .status(429)
        .header("retry-after", "120")
        .body(())
        .unwrap();
    let (svc, calls) = scripted(vec![busy, status(200)]);
    let start = Instant::now();
    let res = ServiceBuilder::new()
        .layer(
            layer()
                .deadline(Duration::from_secs(10))
                .max_retry_after(Duration::from_secs(600)),
        )
        .service(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        res.headers()["retry-after"],
        "120",
        "the caller sees the server's answer"
    );
    assert_eq!(calls.lock().unwrap().len(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_after_above_the_cap_is_not_waited_for() {
    let busy = Response::builder()
        .status(503)
        .header("retry-after", "45")
        .body(())
        .unwrap();
    let (svc, calls) = scripted(vec![busy, status(200)]);
    let res = ServiceBuilder::new()
        .layer(
            layer()
                .deadline(Duration::from_secs(600))
                .max_retry_after(Duration::from_secs(30)),
        )
        .service(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn too_many_requests_and_request_timeout_are_transient() {
    let (svc, calls) = scripted(vec![status(429), status(408), status(200)]);
    let res = ServiceBuilder::new()
        .layer(layer())
        .service(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn unauthorized_and_forbidden_are_final() {
    for code in [401, 403, 500, 404] {
        let (svc, calls) = scripted(vec![status(code), status(200)]);
        let res = ServiceBuilder::new()
            .layer(layer())
            .service(svc)
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), code);
        assert_eq!(calls.lock().unwrap().len(), 1, "{code} must not be retried");
    }
}

fn post(body: &'static str) -> Request<Full<Bytes>> {
    Request::post("http://api.test/orders")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn post_without_idempotency_key_is_not_retried() {
    let capture = common::Capture;
    let _guard = capture.install();
    let (svc, calls) = scripted(vec![status(503), status(200)]);
    let res = ServiceBuilder::new()
        .layer(layer())
        .service(svc)
        .oneshot(post("pay 10"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.lock().unwrap().len(), 1);
    let events = capture.events();
    let ev = events
        .iter()
        .find(|e| e.get("event.action") == Some("retry.disabled"))
        .expect("a tracing event explains why");
    assert_eq!(ev.target, "portcullis::retry");
    assert!(ev.get("event.reason").unwrap().contains("idempotency-key"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn post_with_idempotency_key_is_retried_with_the_same_body_and_key() {
    let (svc, calls) = scripted(vec![status(503), status(200)]);
    let mut req = post("pay 10");
    req.headers_mut()
        .insert("idempotency-key", "order-42".parse().unwrap());
    let res = ServiceBuilder::new()
        .layer(layer())
        .service(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    for call in calls.iter() {
        assert_eq!(call.body, "pay 10");
        assert_eq!(call.idempotency_key.as_deref(), Some("order-42"));
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn added_idempotency_key_makes_post_retryable_with_one_key() {
    let (svc, calls) = scripted(vec![status(503), status(200)]);
    let res = ServiceBuilder::new()
        .layer(layer().add_idempotency_key())
        .service(svc)
        .oneshot(post("pay 10"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    let key = calls[0].idempotency_key.clone().expect("key added");
    assert_eq!(key.len(), 32);
    assert_eq!(calls[1].idempotency_key.as_deref(), Some(key.as_str()));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn streaming_body_is_sent_once_and_the_choice_is_logged() {
    let capture = common::Capture;
    let _guard = capture.install();
    let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"part1 "))),
        Ok(http_body::Frame::data(Bytes::from_static(b"part2"))),
    ];
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::put("http://api.test/blob").body(body).unwrap();
    let (svc, calls) = scripted(vec![status(503), status(200)]);
    let res = ServiceBuilder::new()
        .layer(layer())
        .service(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].body, "part1 part2",
        "the stream reached the server intact"
    );
    let events = capture.events();
    assert!(
        events
            .iter()
            .any(|e| e.get("event.action") == Some("retry.disabled")
                && e.get("event.reason").unwrap().contains("unknown length"))
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn body_over_the_cap_is_not_buffered_or_retried() {
    let (svc, calls) = scripted(vec![status(503), status(200)]);
    let req = Request::put("http://api.test/blob")
        .body(Full::new(Bytes::from(vec![b'x'; 2048])))
        .unwrap();
    let res = ServiceBuilder::new()
        .layer(layer().max_body_bytes(1024))
        .service(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body.len(), 2048);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn put_body_under_the_cap_is_replayed() {
    let (svc, calls) = scripted(vec![status(502), status(200)]);
    let req = Request::put("http://api.test/blob")
        .body(Full::new(Bytes::from("v=1")))
        .unwrap();
    ServiceBuilder::new()
        .layer(layer())
        .service(svc)
        .oneshot(req)
        .await
        .unwrap();
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.body == "v=1"));
}

/// An upstream that hangs for `hang` on its first `n` calls, then answers 200.
fn hanging(
    n: usize,
    hang: Duration,
) -> (
    impl Service<Req<Full<Bytes>>, Response = Response<()>, Error = Infallible> + Clone,
    Arc<Mutex<Vec<Instant>>>,
) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    let svc = service_fn(move |_req: Req<Full<Bytes>>| {
        let log = log.clone();
        async move {
            let k = {
                let mut l = log.lock().unwrap();
                l.push(Instant::now());
                l.len()
            };
            if k <= n {
                tokio::time::sleep(hang).await;
            }
            Ok::<_, Infallible>(Response::new(()))
        }
    });
    (svc, calls)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn attempt_timeout_is_transient() {
    let (svc, calls) = hanging(1, Duration::from_secs(3600));
    let start = Instant::now();
    let res = ServiceBuilder::new()
        .layer(layer().attempt_timeout(Duration::from_secs(2)))
        .service(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.lock().unwrap().len(), 2);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_millis(2100),
        "{took:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn overall_deadline_bounds_all_attempts() {
    let (svc, calls) = hanging(usize::MAX, Duration::from_secs(3600));
    let start = Instant::now();
    let err = ServiceBuilder::new()
        .layer(
            layer()
                .max_attempts(10)
                .attempt_timeout(Duration::from_secs(3))
                .deadline(Duration::from_secs(7)),
        )
        .service(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(took <= Duration::from_secs(7), "{took:?}");
    // Two 3 s attempts, then a third cut by the deadline (or refused before it starts).
    let n = calls.lock().unwrap().len();
    assert!((2..=3).contains(&n), "{n} attempts");
    assert!(
        err.is::<DeadlineExceeded>() || err.is::<AttemptTimedOut>(),
        "unexpected error: {err}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn unknown_errors_are_final() {
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let svc = service_fn(move |_req: Req<Full<Bytes>>| {
        *c.lock().unwrap() += 1;
        async { Err::<Response<()>, BoxError>("signature rejected by verifier".into()) }
    });
    let err = ServiceBuilder::new()
        .layer(layer())
        .service(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "signature rejected by verifier");
    assert_eq!(*calls.lock().unwrap(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn certificate_errors_in_the_chain_are_final() {
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let svc = service_fn(move |_req: Req<Full<Bytes>>| {
        *c.lock().unwrap() += 1;
        async {
            let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(std::io::Error::other("pin mismatch"))),
            ));
            // The shape hyper-rustls connectors produce: io::Error wrapping the rustls error.
            Err::<Response<()>, BoxError>(Box::new(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                tls,
            )))
        }
    });
    ServiceBuilder::new()
        .layer(layer())
        .service(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(*calls.lock().unwrap(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_attempt_disables_retries() {
    let (svc, calls) = scripted(vec![status(503), status(200)]);
    let res = ServiceBuilder::new()
        .layer(layer().max_attempts(1))
        .service(svc)
        .oneshot(
            Request::get("http://api.test/")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[derive(Debug)]
struct FlakyTransport;

impl std::fmt::Display for FlakyTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flaky transport")
    }
}

impl std::error::Error for FlakyTransport {}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn custom_transient_errors_never_override_security_failures() {
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let svc = service_fn(move |_req: Req<Full<Bytes>>| {
        let n = {
            let mut n = c.lock().unwrap();
            *n += 1;
            *n
        };
        async move {
            match n {
                1 => Err::<Response<()>, BoxError>(Box::new(FlakyTransport)),
                _ => Ok(Response::new(())),
            }
        }
    });
    let retry_all = layer().retry_errors_where(|_| true);
    let res = ServiceBuilder::new()
        .layer(retry_all.clone())
        .service(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(*calls.lock().unwrap(), 2, "the custom error was retried");

    let tls_calls = Arc::new(Mutex::new(0));
    let c = tls_calls.clone();
    let tls = service_fn(move |_req: Req<Full<Bytes>>| {
        *c.lock().unwrap() += 1;
        async {
            Err::<Response<()>, BoxError>(Box::new(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )))
        }
    });
    ServiceBuilder::new()
        .layer(retry_all)
        .service(tls)
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(*tls_calls.lock().unwrap(), 1, "a pin failure stays final");
}
