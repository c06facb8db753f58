//! Placed below a retry layer, every attempt is signed afresh: new `created`, new `nonce`.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use portcullis_attest::params::parse_signature_input;
use portcullis_attest::{SignLayer, SigningKey, TokioClock};
use tower::retry::Policy;
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[derive(Clone)]
struct RetryOnce(usize);

impl<E> Policy<Request<Full<Bytes>>, Response<Full<Bytes>>, E> for RetryOnce {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Request<Full<Bytes>>,
        res: &mut Result<Response<Full<Bytes>>, E>,
    ) -> Option<Self::Future> {
        let failed = matches!(res, Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE);
        if failed && self.0 > 0 {
            self.0 -= 1;
            Some(tokio::time::sleep(Duration::from_secs(2)))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(req.method().clone())
            .uri(req.uri().clone());
        for (k, v) in req.headers() {
            b = b.header(k, v);
        }
        b.body(req.body().clone()).ok()
    }
}

#[tokio::test(start_paused = true)]
async fn every_retry_carries_a_new_created_and_nonce() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let transport = service_fn(move |req: Request<Full<Bytes>>| {
        let s = s.clone();
        async move {
            let mut s = s.lock().unwrap();
            s.push(
                req.headers()["signature-input"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
            let status = if s.len() == 1 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        }
    });
    let key = SigningKey::generate_ed25519("k").unwrap();
    let client = ServiceBuilder::new()
        .retry(RetryOnce(1))
        .layer(SignLayer::new(key).clock(TokioClock::starting_at(1_700_000_000)))
        .service(transport);
    let res = client
        .oneshot(
            Request::post("http://a.example/pay")
                .body(Full::from("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "one retry");
    let first = &parse_signature_input(&[&seen[0]]).unwrap()[0].1;
    let second = &parse_signature_input(&[&seen[1]]).unwrap()[0].1;
    assert_eq!(first.created().unwrap(), Some(1_700_000_000));
    assert_eq!(
        second.created().unwrap(),
        Some(1_700_000_002),
        "signed after the 2 s backoff"
    );
    assert_ne!(first.nonce().unwrap(), second.nonce().unwrap());
    assert!(first.nonce().unwrap().unwrap().len() >= 22, "128-bit nonce");
}
