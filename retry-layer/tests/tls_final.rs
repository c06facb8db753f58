//! Security failures from a real TLS server on loopback are final: a client that does not
//! trust the server's certificate makes exactly one handshake, however many attempts the
//! retry layer allows. The controls show the same client does retry transient failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_retry::classify::is_security_failure;
use portcullis_retry::retry::{ReplayBody, RetryLayer};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use testkit::pki::{LeafSpec, TestPki};
use testkit::server::{TestServer, server_config};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

type Body = ReplayBody<Full<Bytes>>;

/// A plain rustls + hyper client: one TCP connection and one TLS handshake per call.
fn tls_client(
    port: u16,
    roots: RootCertStore,
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Incoming>, Error = BoxError> + Clone {
    testkit::install_default_provider();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    service_fn(move |req: Request<Body>| {
        let connector = connector.clone();
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
            let name = ServerName::try_from("localhost")?;
            let tls = connector.connect(name, tcp).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            Ok::<_, BoxError>(sender.send_request(req).await?)
        }
    })
}

fn retry() -> RetryLayer {
    RetryLayer::new()
        .max_attempts(5)
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
}

fn get(server: &TestServer) -> Request<Full<Bytes>> {
    Request::get(server.url("/"))
        .header("host", "localhost")
        .body(Full::default())
        .unwrap()
}

/// Waits (bounded) until the server has seen `n` failed handshakes.
async fn wait_for_failures(server: &TestServer, n: usize) {
    for _ in 0..200 {
        if server.counters().handshake_failures.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn certificate_failure_from_a_real_tls_server_is_never_retried() {
    let pki = TestPki::new();
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    // The client trusts another CA: the server's chain fails verification (UnknownIssuer).
    let stranger = TestPki::named("Stranger");
    let calls = Arc::new(AtomicUsize::new(0));
    let client = ServiceBuilder::new().layer(retry()).service(tls_client(
        server.port(),
        stranger.root_store(),
        calls.clone(),
    ));

    let err = client.oneshot(get(&server)).await.unwrap_err();
    assert!(
        is_security_failure(&*err),
        "a rustls error is in the chain: {err}"
    );
    wait_for_failures(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await; // room for a (wrong) retry to show
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt");
    assert_eq!(server.accepted(), 1, "one TCP connection");
    assert_eq!(
        server.counters().handshake_failures.load(Ordering::SeqCst),
        1,
        "one handshake"
    );
    assert_eq!(server.handshakes(), 0);
    assert_eq!(server.requests(), 0, "no request byte reached the server");
}

#[tokio::test]
async fn expired_certificate_is_never_retried() {
    let pki = TestPki::new();
    let expired = pki.intermediate.issue(&LeafSpec::server().expired());
    let server = TestServer::https(server_config(pki.chain_for(&expired), expired.key_der())).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let client = ServiceBuilder::new().layer(retry()).service(tls_client(
        server.port(),
        pki.root_store(),
        calls.clone(),
    ));
    let err = client.oneshot(get(&server)).await.unwrap_err();
    assert!(is_security_failure(&*err), "{err}");
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
    wait_for_failures(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn control_trusted_server_answering_503_is_retried_with_a_handshake_each_time() {
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
    let calls = Arc::new(AtomicUsize::new(0));
    let client = ServiceBuilder::new()
        .layer(retry().max_attempts(3))
        .service(tls_client(server.port(), pki.root_store(), calls.clone()));
    let res = client.oneshot(get(&server)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(server.handshakes(), 3, "three attempts, three handshakes");
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn connection_refused_before_any_byte_is_retried() {
    // A port that was free a moment ago: nothing listens there.
    let port = testkit::free_port();
    let calls = Arc::new(AtomicUsize::new(0));
    let client = ServiceBuilder::new()
        .layer(retry().max_attempts(3))
        .service(tls_client(port, RootCertStore::empty(), calls.clone()));
    let err = client
        .oneshot(
            Request::get("https://localhost/")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap_err();
    let io = err.downcast_ref::<std::io::Error>().expect("io error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn hyper_util_connect_error_is_retried() {
    // hyper-util's legacy client reports a refused connection as a connect error (nothing
    // was sent): transient.
    let port = testkit::free_port();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |req: Request<Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let http = http.clone();
        async move { http.request(req).await.map_err(BoxError::from) }
    });
    let client = ServiceBuilder::new()
        .layer(retry().max_attempts(3))
        .service(inner);
    let err = client
        .oneshot(
            Request::get(format!("http://127.0.0.1:{port}/"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap_err();
    let connect = err
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .expect("hyper-util error");
    assert!(connect.is_connect(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
