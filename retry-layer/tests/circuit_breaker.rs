//! Circuit breaker transitions on a paused clock: closed, open, half-open, closed again; and
//! security rejections that never trip it, hand-made and from real TLS handshakes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use portcullis_retry::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

/// Status 0 means "fail with a connection reset", 1 "fail with a TLS certificate error".
#[derive(Clone)]
struct Upstream {
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
}

impl Upstream {
    fn new(status: u16) -> Self {
        Self {
            status: Arc::new(AtomicU16::new(status)),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn service(
        &self,
    ) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone {
        let me = self.clone();
        service_fn(move |_req: Request<()>| {
            me.calls.fetch_add(1, Ordering::SeqCst);
            let status = me.status.load(Ordering::SeqCst);
            async move {
                match status {
                    0 => Err(
                        Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
                            as BoxError,
                    ),
                    1 => Err(Box::new(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
                    )) as BoxError),
                    s => Ok(Response::builder().status(s).body(()).unwrap()),
                }
            }
        })
    }
}

fn breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .minimum_calls(4)
        .window(Duration::from_secs(10))
        .open_duration(Duration::from_secs(5))
        .probes(2)
        .build()
}

async fn call<S>(svc: &mut S) -> Result<Response<()>, BoxError>
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError>,
{
    svc.ready().await?.call(Request::new(())).await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn breaker_opens_half_opens_and_closes() {
    let up = Upstream::new(503);
    let mut svc = ServiceBuilder::new().layer(breaker()).service(up.service());
    assert_eq!(svc.state(), CircuitState::Closed);
    for _ in 0..4 {
        assert_eq!(call(&mut svc).await.unwrap().status(), 503);
    }
    assert_eq!(svc.state(), CircuitState::Open);

    // Open: fail fast, the upstream sees nothing.
    let err = call(&mut svc).await.unwrap_err();
    let open = err
        .downcast_ref::<CircuitOpen>()
        .expect("circuit open error");
    assert_eq!(open.retry_in(), Duration::from_secs(5));
    assert!(err.to_string().contains("circuit open"));
    assert_eq!(up.calls(), 4);

    // After the open duration: half-open lets the probes through.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(svc.state(), CircuitState::HalfOpen);
    up.set(200);
    assert_eq!(call(&mut svc).await.unwrap().status(), 200);
    assert_eq!(
        svc.state(),
        CircuitState::HalfOpen,
        "one of two probes done"
    );
    assert_eq!(call(&mut svc).await.unwrap().status(), 200);
    assert_eq!(svc.state(), CircuitState::Closed);
    assert_eq!(up.calls(), 6);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failed_probe_reopens() {
    let up = Upstream::new(0); // connection resets: transport failures
    let mut svc = ServiceBuilder::new().layer(breaker()).service(up.service());
    for _ in 0..4 {
        call(&mut svc).await.unwrap_err();
    }
    assert_eq!(svc.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(5)).await;
    up.set(502);
    assert_eq!(call(&mut svc).await.unwrap().status(), 502);
    assert_eq!(svc.state(), CircuitState::Open);
    assert!(call(&mut svc).await.unwrap_err().is::<CircuitOpen>());
    assert_eq!(up.calls(), 5);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn security_rejections_never_trip_the_breaker() {
    let up = Upstream::new(401);
    let mut svc = ServiceBuilder::new().layer(breaker()).service(up.service());
    for status in [401, 403, 1] {
        up.set(status);
        for _ in 0..20 {
            let _ = call(&mut svc).await;
        }
    }
    assert_eq!(svc.state(), CircuitState::Closed);
    assert_eq!(up.calls(), 60, "every call reached the upstream");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failure_rate_below_threshold_keeps_it_closed() {
    let up = Upstream::new(200);
    let mut svc = ServiceBuilder::new().layer(breaker()).service(up.service());
    for i in 0..30 {
        up.set(if i % 3 == 2 { 500 } else { 200 });
        call(&mut svc).await.unwrap();
    }
    assert_eq!(svc.state(), CircuitState::Closed);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn old_failures_slide_out_of_the_window() {
    let up = Upstream::new(503);
    let mut svc = ServiceBuilder::new().layer(breaker()).service(up.service());
    for _ in 0..3 {
        call(&mut svc).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    // Three fresh failures alone are under the minimum of four calls.
    for _ in 0..3 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(svc.state(), CircuitState::Closed);
    call(&mut svc).await.unwrap();
    assert_eq!(svc.state(), CircuitState::Open);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn clones_share_one_breaker() {
    let up = Upstream::new(503);
    let layer = breaker();
    let mut a = ServiceBuilder::new()
        .layer(layer.clone())
        .service(up.service());
    let mut b = a.clone();
    for _ in 0..2 {
        call(&mut a).await.unwrap();
        call(&mut b).await.unwrap();
    }
    assert_eq!(a.state(), CircuitState::Open);
    assert!(call(&mut b).await.unwrap_err().is::<CircuitOpen>());
    let mut c = ServiceBuilder::new().layer(layer).service(up.service());
    assert!(
        call(&mut c).await.unwrap_err().is::<CircuitOpen>(),
        "same layer, same breaker"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn per_authority_breakers_isolate_a_failing_host() {
    // Host a answers 503, host b 200.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let upstream = service_fn(move |req: Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        let status = if req.uri().host() == Some("a.test") {
            503
        } else {
            200
        };
        async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
    });
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(4)
        .open_duration(Duration::from_secs(5))
        .build_per_authority();
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream);
    let to = |host: &str| Request::get(format!("https://{host}/")).body(()).unwrap();
    for _ in 0..4 {
        svc.ready().await.unwrap().call(to("a.test")).await.unwrap();
    }
    let a: http::uri::Authority = "a.test".parse().unwrap();
    let b: http::uri::Authority = "b.test".parse().unwrap();
    assert_eq!(svc.state_of(&a), CircuitState::Open);
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(to("a.test"))
            .await
            .unwrap_err()
            .is::<CircuitOpen>()
    );
    for _ in 0..10 {
        let res = svc.ready().await.unwrap().call(to("b.test")).await.unwrap();
        assert_eq!(
            res.status(),
            200,
            "a failing host does not open the circuit for another"
        );
    }
    assert_eq!(svc.state_of(&b), CircuitState::Closed);
    assert_eq!(calls.load(Ordering::SeqCst), 14);
}

/// A hyper HTTP/1.1 client over real TLS (tokio-rustls, rustls' own verifier) that dials
/// `addr` for every call (a fresh connection and handshake each time) and trusts only `roots`.
fn tls_client(
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    service_fn(move |req: Request<()>| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            let tls = connector.connect(name, tcp).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            let req = req.map(|()| http_body_util::Empty::<bytes::Bytes>::new());
            let res = sender.send_request(req).await?;
            Ok::<_, BoxError>(res.map(|_| ()))
        }
    })
}

/// The certificate error of a failed handshake, found in `err` or its sources.
fn certificate_error(err: &(dyn std::error::Error + 'static)) -> Option<rustls::CertificateError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>() {
            return Some(c.clone());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(rustls::Error::InvalidCertificate(c)) =
                io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(c.clone());
        }
        cur = e.source();
    }
    None
}

#[tokio::test]
async fn real_tls_certificate_failures_never_trip_the_breaker() {
    use testkit::pki::TestPki;
    use testkit::server::{TestServer, server_config};

    testkit::install_default_provider();
    let pki = TestPki::new();
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    // Control: a client that trusts the server's root gets its answers through the breaker.
    let mut trusting = ServiceBuilder::new()
        .layer(breaker())
        .service(tls_client(server.addr(), pki.root_store()));
    assert_eq!(call(&mut trusting).await.unwrap().status(), 200);

    // A client that trusts another CA: every handshake fails on the certificate.
    let other = TestPki::named("Other");
    let mut svc = ServiceBuilder::new()
        .layer(breaker())
        .service(tls_client(server.addr(), other.root_store()));
    for i in 0..20 {
        let err = call(&mut svc).await.unwrap_err();
        assert!(!err.is::<CircuitOpen>(), "call {i} failed fast: {err}");
        assert_eq!(
            certificate_error(&*err),
            Some(rustls::CertificateError::UnknownIssuer),
            "call {i}: {err:?}"
        );
        assert!(portcullis_retry::classify::is_security_failure(&*err));
    }
    assert_eq!(svc.state(), CircuitState::Closed);
    assert_eq!(
        server.accepted(),
        21,
        "every call reached the server and failed in its own handshake"
    );
    assert_eq!(
        server.requests(),
        1,
        "only the control's request was served"
    );

    // Control: real transport failures (a port nobody listens on) do open it.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut refused = ServiceBuilder::new()
        .layer(breaker())
        .service(tls_client(closed, pki.root_store()));
    for _ in 0..4 {
        let err = call(&mut refused).await.unwrap_err();
        assert!(
            portcullis_retry::classify::is_transport_error(&*err),
            "{err:?}"
        );
    }
    assert_eq!(refused.state(), CircuitState::Open);
    assert!(call(&mut refused).await.unwrap_err().is::<CircuitOpen>());
}
