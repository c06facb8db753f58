//! Threat: retries that weaken security — a client that retries a pin or certificate failure
//! (hammering an interceptor, or hoping a flaky check lets one handshake through), or replays
//! a non-idempotent request that already reached the server (a payment sent twice). Defence:
//! the retry layer's `RetryLayer` in the preset client stack classifies deny-by-default: any
//! `rustls::Error` in the chain is final, errors after the request was sent are final, and a
//! `POST` without `Idempotency-Key` is sent once. Counted on real TLS servers on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use portcullis::pin::{PinFailure, PinPolicy, PinnedTls};
use portcullis::retry::retry::{ReplayBody, RetryLayer};
use rustls::CertificateError;
use testkit::pki::{Authority, LeafSpec, TestPki};
use testkit::server::{TestServer, server_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::support::{Logs, rustls_error};

/// Five attempts with short backoff: a wrong retry has every chance to show.
fn retry() -> RetryLayer {
    RetryLayer::new()
        .max_attempts(5)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
}

fn pinned(roots: &[&Authority], pins: [String; 2]) -> PinnedTls {
    PinnedTls::builder(
        PinPolicy::builder()
            .pin("localhost", &[&pins[0], &pins[1]])
            .unwrap()
            .build()
            .unwrap(),
    )
    .root_certificates(roots.iter().map(|a| a.cert()))
    .unwrap()
    .build()
    .unwrap()
}

/// Sends `req` through the preset client stack with the retry step over `tls`.
async fn send(
    tls: &PinnedTls,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, tower::BoxError> {
    portcullis::client::builder()
        .pinned(tls.clone())
        .retry(retry())
        .build::<ReplayBody<Full<Bytes>>>()
        .unwrap()
        .oneshot(req)
        .await
}

fn get(url: String) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

/// Waits (bounded) for the server to count `n` failed handshakes, then a little longer for a
/// wrong retry to show.
async fn settle(server: &TestServer, n: usize) {
    for _ in 0..200 {
        if server.counters().handshake_failures.load(Ordering::SeqCst) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_pin_failure_is_never_retried() {
    let logs = Logs::default();
    let _guard = logs.install();
    let pki = TestPki::new();
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    let other = TestPki::named("Other");
    let tls = pinned(&[&pki.root], [other.root.spki_pin(), other.leaf.spki_pin()]);

    let err = send(&tls, get(server.url("/"))).await.unwrap_err();
    let failure = PinFailure::find(&*err).unwrap_or_else(|| panic!("not a pin failure: {err}"));
    assert_eq!(failure.host(), "localhost");
    settle(&server, 1).await;
    assert_eq!(
        server.accepted(),
        1,
        "one connection, one handshake attempt"
    );
    assert_eq!(
        server.counters().handshake_failures.load(Ordering::SeqCst),
        1
    );
    assert_eq!(server.requests(), 0);
    assert_eq!(
        logs.failure_reasons("retry.final"),
        ["tls or certificate failure is never retried"]
    );
}

#[tokio::test]
async fn certificate_failures_are_never_retried() {
    let logs = Logs::default();
    let _guard = logs.install();
    let pki = TestPki::new();
    let stranger = TestPki::named("Stranger");
    let cases = [
        (
            "expired",
            pki.intermediate.issue(&LeafSpec::server().expired()),
            &pki.root,
        ),
        (
            "another host's",
            pki.intermediate
                .issue(&LeafSpec::server().with_names(&["api.other.test"])),
            &pki.root,
        ),
        (
            "unknown issuer",
            pki.intermediate.issue_leaf(),
            &stranger.root,
        ),
    ];
    for (what, leaf, trusted) in cases {
        logs.clear();
        let server = TestServer::https(server_config(pki.chain_for(&leaf), leaf.key_der())).await;
        // The leaf's key is even pinned: validation fails first, and for good.
        let tls = pinned(&[trusted], [leaf.spki_pin(), pki.root.spki_pin()]);
        let err = send(&tls, get(server.url("/"))).await.unwrap_err();
        let cert = match rustls_error(&*err) {
            Some(rustls::Error::InvalidCertificate(c)) => c,
            other => panic!("{what}: {other:?} ({err})"),
        };
        let expected = match what {
            "expired" => matches!(cert, CertificateError::ExpiredContext { .. }),
            "another host's" => matches!(cert, CertificateError::NotValidForNameContext { .. }),
            _ => matches!(cert, CertificateError::UnknownIssuer),
        };
        assert!(expected, "{what}: {cert:?}");
        settle(&server, 1).await;
        assert_eq!(server.accepted(), 1, "{what}: one handshake attempt");
        assert_eq!(server.requests(), 0, "{what}");
        assert_eq!(
            logs.failure_reasons("retry.final"),
            ["tls or certificate failure is never retried"],
            "{what}"
        );
    }
}

/// A TLS server answering every request with `status`, counting the requests.
async fn answering(pki: &TestPki, status: StatusCode) -> TestServer {
    TestServer::https_with(
        server_config(pki.server_chain(), pki.leaf.key_der()),
        move |_req| async move {
            let mut res = testkit::server::hello();
            *res.status_mut() = status;
            res
        },
    )
    .await
}

fn post(url: String, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::post(url).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.body(Full::from("{\"pay\":100}")).unwrap()
}

#[tokio::test]
async fn a_post_that_reached_the_server_is_never_sent_again() {
    let logs = Logs::default();
    let _guard = logs.install();
    let pki = TestPki::new();
    let tls = pinned(&[&pki.root], [pki.leaf.spki_pin(), pki.root.spki_pin()]);

    // The server answers 503 (transient for a GET): the POST is not repeated.
    let busy = answering(&pki, StatusCode::SERVICE_UNAVAILABLE).await;
    let res = send(&tls, post(busy.url("/payments"), None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.requests(), 1, "the payment was sent once");
    let skipped: Vec<String> = logs
        .events()
        .into_iter()
        .filter(|e| e["event.action"] == "retry.disabled")
        .map(|e| e["event.reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        skipped,
        ["method is not idempotent and has no idempotency-key"]
    );

    // The server reads the POST and drops the connection without an answer: the client
    // cannot know whether it was processed, so it reports the failure and sends nothing more.
    let dropping = DroppingServer::start(&pki).await;
    let err = send(&tls, post(dropping.url("/payments"), None))
        .await
        .unwrap_err();
    let hyper_err = std::iter::successors(Some(&*err as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .find_map(|e| e.downcast_ref::<hyper_util::client::legacy::Error>())
    .unwrap_or_else(|| panic!("{err:?}"));
    assert!(!hyper_err.is_connect(), "the request was sent: {err:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(dropping.requests(), 1, "the payment was sent once");
}

#[tokio::test]
async fn control_idempotent_requests_are_retried_on_503() {
    let pki = TestPki::new();
    let tls = pinned(&[&pki.root], [pki.leaf.spki_pin(), pki.root.spki_pin()]);
    let busy = answering(&pki, StatusCode::SERVICE_UNAVAILABLE).await;
    let res = send(&tls, get(busy.url("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.requests(), 5, "a GET: five attempts");
    send(&tls, post(busy.url("/payments"), Some("pay-7f3a")))
        .await
        .unwrap();
    assert_eq!(busy.requests(), 10, "a keyed POST: five attempts");
}

/// A TLS server (HTTP/1.1 only) that reads each request head, counts it, and closes the
/// connection without answering.
struct DroppingServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DroppingServer {
    async fn start(pki: &TestPki) -> Self {
        let mut config = server_config(pki.server_chain(), pki.leaf.key_der());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        seen.extend_from_slice(&buf[..n]);
                        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            counter.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            port,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for DroppingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
