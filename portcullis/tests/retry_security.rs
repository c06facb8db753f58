//! A pin failure is final for the retry layer: a pinned hyper-util client behind
//! `portcullis_retry::retry::Retry` makes exactly one handshake with a server whose key is
//! not pinned, however many attempts it allows (counted on the real TLS server). The control
//! shows the same stack retries a 503 with a handshake per attempt.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::service::Service as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyper_util::service::TowerToHyperService;
use portcullis_pin::{PinPolicy, PinnedTls};
use portcullis_retry::classify::is_security_failure;
use portcullis_retry::retry::{ReplayBody, Retry};
use testkit::pki::TestPki;
use testkit::server::{TestServer, server_config};

type Body = ReplayBody<Full<Bytes>>;

/// A retrying client (default `Retry`: 3 attempts) over a pinned hyper-util client that
/// dials `server` and opens a fresh connection (and handshake) for every attempt.
fn pinned_retrying_client(
    server: &TestServer,
    pki: &TestPki,
    pins: &[&str],
) -> TowerToHyperService<Retry<Client<portcullis_pin::PinnedConnector, Body>>> {
    let policy = PinPolicy::builder()
        .pin("localhost", pins)
        .unwrap()
        .build()
        .unwrap();
    let tls = PinnedTls::builder(policy)
        .root_certificates([pki.root.cert()])
        .unwrap()
        .build()
        .unwrap();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(tls.connector().connect_to(server.addr()));
    TowerToHyperService::new(Retry::new(client))
}

fn get(server: &TestServer) -> Request<Full<Bytes>> {
    Request::get(server.url("/")).body(Full::default()).unwrap()
}

#[tokio::test]
async fn pin_failure_is_never_retried() {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    // The chain is valid (the client trusts the root); only the pins are someone else's.
    let other = TestPki::named("Other");
    let (pin, backup) = (other.root.spki_pin(), other.leaf.spki_pin());
    let client = pinned_retrying_client(&server, &pki, &[&pin, &backup]);

    let err = client.call(get(&server)).await.unwrap_err();
    assert!(
        is_security_failure(&*err),
        "a rustls error is in the chain: {err}"
    );
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    let mut pin_failure = false;
    while let Some(e) = source {
        if let Some(connect) = e.downcast_ref::<portcullis_pin::ConnectError>() {
            pin_failure |= connect.pin_failure().is_some();
        }
        source = e.source();
    }
    assert!(
        pin_failure,
        "it failed on the pins, not on something else: {err:?}"
    );
    // Give a wrong retry every chance to show up, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.accepted(),
        1,
        "exactly one connection and handshake attempt"
    );
    assert_eq!(server.handshakes(), 0);
    assert_eq!(server.requests(), 0, "no request reached the server");
}

#[tokio::test]
async fn control_matching_pin_and_503_is_retried_with_a_handshake_each_attempt() {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let server = TestServer::https_with(
        server_config(pki.server_chain(), pki.leaf.key_der()),
        |_req| async {
            let mut res = testkit::server::hello();
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res
        },
    )
    .await;
    let (pin, backup) = (pki.root.spki_pin(), pki.leaf.spki_pin());
    let client = pinned_retrying_client(&server, &pki, &[&pin, &backup]);

    let res = client.call(get(&server)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        server.requests(),
        3,
        "the default Retry makes three attempts"
    );
    assert_eq!(server.handshakes(), 3, "each on a fresh, pinned handshake");
}
