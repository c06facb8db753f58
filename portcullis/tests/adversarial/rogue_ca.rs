//! Threat: a man in the middle holding a certificate for the pinned host from another CA the
//! client trusts (a corporate TLS proxy, a mis-issuing or coerced public CA). Standard
//! validation accepts it. Defence: the pin layer's `PinPolicy` checks the pins on the verified
//! path in addition (`PinnedTls`, enforce mode): the handshake is refused with a `PinFailure`
//! whose OkHttp-style message lists the verified chain's pins and the configured ones, before
//! any request byte is sent. Tried against rustls and `openssl s_server` interceptors.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::pin::{Mode, PinFailure, PinPolicy, PinnedTls, Position};
use testkit::pki::TestPki;
use testkit::server::{TestServer, server_config};
use tower::ServiceExt;

use crate::support::OpensslServer;

/// The genuine site, the interceptor's CA (also trusted by the client), and the client: pins
/// on the genuine intermediate and root, trust in both roots.
struct Setup {
    real: TestPki,
    proxy: TestPki,
    tls: PinnedTls,
}

impl Setup {
    fn new() -> Self {
        let real = TestPki::named("Real Site");
        let proxy = TestPki::named("Intercepting Proxy");
        let policy = PinPolicy::builder()
            .pin(
                "localhost",
                &[&real.intermediate.spki_pin(), &real.root.spki_pin()],
            )
            .unwrap()
            .build()
            .unwrap();
        let tls = PinnedTls::builder(policy)
            .root_certificates([real.root.cert(), proxy.root.cert()])
            .unwrap()
            .build()
            .unwrap();
        Self { real, proxy, tls }
    }

    /// Checks `failure` is the refusal of the proxy's chain, with the message a user sees.
    fn assert_refused(&self, failure: &PinFailure) {
        assert_eq!(failure.host(), "localhost");
        assert_eq!(failure.pattern(), "localhost");
        assert_eq!(failure.mode(), Mode::Enforce);
        assert!(!failure.entry_expired());
        // The verified chain is the proxy's, leaf to trust anchor.
        let chain: Vec<(Position, String)> = failure
            .chain()
            .iter()
            .map(|l| (l.position, l.spki_pin.to_string()))
            .collect();
        assert_eq!(
            chain,
            [
                (Position::Leaf, self.proxy.leaf.spki_pin()),
                (Position::Intermediate, self.proxy.intermediate.spki_pin()),
                (Position::Root, self.proxy.root.spki_pin()),
            ]
        );
        let pins: Vec<String> = failure.pins().iter().map(ToString::to_string).collect();
        assert_eq!(
            pins,
            [self.real.intermediate.spki_pin(), self.real.root.spki_pin()]
        );

        let msg = failure.to_string();
        let want = format!(
            "certificate pinning failure for localhost!\n  \
             Peer certificate chain (verified):\n    \
             {}: O=Portcullis Test, CN=localhost\n    \
             {}: O=Portcullis Test, CN=Intercepting Proxy Intermediate CA\n    \
             {}: O=Portcullis Test, CN=Intercepting Proxy Root CA (trust anchor)\n  \
             Pinned certificates for localhost (pattern localhost, position any):\n    \
             {}\n    \
             {}",
            self.proxy.leaf.spki_pin(),
            self.proxy.intermediate.spki_pin(),
            self.proxy.root.spki_pin(),
            self.real.intermediate.spki_pin(),
            self.real.root.spki_pin(),
        );
        assert_eq!(msg, want);
    }
}

#[tokio::test]
async fn another_trusted_cas_certificate_is_refused_with_the_pin_failure() {
    let s = Setup::new();
    let mitm = TestServer::https(server_config(
        s.proxy.server_chain(),
        s.proxy.leaf.key_der(),
    ))
    .await;

    // The connector: the typed error.
    let err = s
        .tls
        .connector()
        .connect(mitm.url("/").parse().unwrap())
        .await
        .unwrap_err();
    s.assert_refused(err.pin_failure().expect("a pin failure"));
    assert!(
        err.to_string()
            .starts_with("TLS handshake failed: certificate pinning failure for localhost!"),
        "{err}"
    );

    // The preset client stack: the same failure in the error's source chain.
    let client = portcullis::client::builder()
        .pinned(s.tls.clone())
        .build::<Full<Bytes>>()
        .unwrap();
    let err = client
        .oneshot(
            Request::post(mitm.url("/transfer"))
                .body(Full::from("amount=100"))
                .unwrap(),
        )
        .await
        .unwrap_err();
    s.assert_refused(PinFailure::find(&err).expect("a pin failure in the source chain"));

    assert_eq!(mitm.handshakes(), 0, "no handshake completed");
    assert_eq!(
        mitm.requests(),
        0,
        "no request byte reached the interceptor"
    );
}

#[tokio::test]
async fn an_openssl_interceptor_is_refused_the_same_way() {
    let s = Setup::new();
    for version in ["-tls1_3", "-tls1_2"] {
        let mitm = OpensslServer::start(&s.proxy.leaf, &[s.proxy.intermediate.cert()], &[version]);
        let err = s.tls.connector().connect(mitm.uri()).await.unwrap_err();
        s.assert_refused(
            err.pin_failure()
                .unwrap_or_else(|| panic!("{version}: expected a pin failure, got {err}")),
        );
    }
}

#[tokio::test]
async fn control_the_genuine_site_passes_and_unpinned_trust_alone_would_accept_the_proxy() {
    let s = Setup::new();
    let genuine =
        TestServer::https(server_config(s.real.server_chain(), s.real.leaf.key_der())).await;
    let client: portcullis::client::PinnedClient =
        Client::builder(TokioExecutor::new()).build(s.tls.connector());
    let res = client
        .request(
            Request::get(genuine.url("/"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Without the pin the same trust store accepts the interceptor: the pin is the defence.
    let mitm = TestServer::https(server_config(
        s.proxy.server_chain(),
        s.proxy.leaf.key_der(),
    ))
    .await;
    let unpinned = PinnedTls::builder(PinPolicy::empty())
        .root_certificates([s.real.root.cert(), s.proxy.root.cert()])
        .unwrap()
        .build()
        .unwrap();
    let client: portcullis::client::PinnedClient =
        Client::builder(TokioExecutor::new()).build(unpinned.connector());
    let res = client
        .request(Request::get(mitm.url("/")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
