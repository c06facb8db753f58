//! Real TLS handshakes on loopback with certificates minted at test time.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_pin::{
    ConnectError, Mode, Pin, PinEntry, PinFailure, PinPolicy, PinReport, PinnedConnector,
    PinnedPeer, PinnedTls, Position,
};
use rustls::CertificateError;
use testkit::pki::{Authority, LeafSpec, TestPki, self_signed};
use testkit::server::{TestServer, server_config};
use time::{Duration, OffsetDateTime};

type HttpClient = Client<PinnedConnector, Empty<Bytes>>;

fn pin(s: &str) -> Pin {
    s.parse().expect("test pin")
}

fn policy(pattern: &str, pins: &[String]) -> PinPolicy {
    let pins: Vec<&str> = pins.iter().map(String::as_str).collect();
    PinPolicy::builder()
        .pin(pattern, &pins)
        .expect("pins")
        .build()
        .expect("policy")
}

/// A pin that no certificate here has: a backup that keeps the two-pin rule satisfied.
fn unused_pin() -> String {
    Authority::root("Offline Backup").spki_pin()
}

fn tls_for(pki: &TestPki, policy: PinPolicy) -> PinnedTls {
    PinnedTls::builder(policy)
        .root_certificates([pki.root.cert()])
        .expect("root")
        .build()
        .expect("pinned tls")
}

fn client(tls: &PinnedTls) -> HttpClient {
    Client::builder(TokioExecutor::new()).build(tls.connector())
}

async fn get(
    client: &HttpClient,
    url: &str,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    client
        .request(Request::get(url).body(Empty::new()).unwrap())
        .await
}

async fn serve(pki: &TestPki) -> TestServer {
    TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await
}

fn matched(res: &Response<Incoming>) -> (Pin, Position) {
    let peer = res.extensions().get::<PinnedPeer>().expect("pinned peer");
    let check = peer.check().expect("full handshake");
    (
        *check.matched_pin().expect("matched"),
        check.position().unwrap(),
    )
}

fn pin_failure(err: &hyper_util::client::legacy::Error) -> &PinFailure {
    PinFailure::find(err).unwrap_or_else(|| panic!("expected a pin failure, got {err:?}"))
}

fn cert_error(err: &(dyn std::error::Error + 'static)) -> CertificateError {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>() {
            return c.clone();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(rustls::Error::InvalidCertificate(c)) =
                io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return c.clone();
        }
        cur = e.source();
    }
    panic!("no certificate error in {err:?}");
}

#[tokio::test]
async fn leaf_pin_matches() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let tls = tls_for(
        &pki,
        policy("localhost", &[pki.leaf.spki_pin(), unused_pin()]),
    );
    let res = get(&client(&tls), &server.url("/")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(matched(&res), (pin(&pki.leaf.spki_pin()), Position::Leaf));
}

#[tokio::test]
async fn intermediate_pin_matches() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let tls = tls_for(
        &pki,
        policy("localhost", &[pki.intermediate.spki_pin(), unused_pin()]),
    );
    let res = get(&client(&tls), &server.url("/")).await.unwrap();
    assert_eq!(
        matched(&res),
        (pin(&pki.intermediate.spki_pin()), Position::Intermediate)
    );
}

#[tokio::test]
async fn root_pin_matches_when_server_omits_root() {
    let pki = TestPki::new();
    assert_eq!(
        pki.server_chain().len(),
        2,
        "server sends leaf and intermediate only"
    );
    let server = serve(&pki).await;
    let tls = tls_for(
        &pki,
        policy("localhost", &[pki.root.spki_pin(), unused_pin()]),
    );
    let res = get(&client(&tls), &server.url("/")).await.unwrap();
    assert_eq!(matched(&res), (pin(&pki.root.spki_pin()), Position::Root));
}

#[tokio::test]
async fn root_certificate_fingerprint_pin_matches() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let fp = testkit::pki::colon_hex(&sha256(pki.root.cert().as_ref()));
    let tls = tls_for(&pki, policy("localhost", &[fp.clone(), unused_pin()]));
    let res = get(&client(&tls), &server.url("/")).await.unwrap();
    assert_eq!(matched(&res), (pin(&fp), Position::Root));
    assert!(!matched(&res).0.is_spki());
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

#[tokio::test]
async fn mismatch_is_refused_before_any_request_byte() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let (a, b) = (unused_pin(), unused_pin());
    let tls = tls_for(&pki, policy("localhost", &[a.clone(), b.clone()]));
    let err = get(&client(&tls), &server.url("/secret"))
        .await
        .unwrap_err();
    let failure = pin_failure(&err);
    assert_eq!(failure.host(), "localhost");
    assert_eq!(failure.mode(), Mode::Enforce);
    assert_eq!(server.requests(), 0, "no request reached the server");

    // OkHttp-style message: the verified chain's pins and subjects, then the configured pins.
    let msg = failure.to_string();
    assert!(
        msg.starts_with("certificate pinning failure for localhost!"),
        "{msg}"
    );
    assert!(msg.contains(&format!("{}: ", pki.leaf.spki_pin())), "{msg}");
    assert!(
        msg.contains(&format!("{}: ", pki.intermediate.spki_pin())),
        "{msg}"
    );
    assert!(msg.contains(&format!("{}: ", pki.root.spki_pin())), "{msg}");
    assert!(msg.contains("CN=Portcullis Test Intermediate CA"), "{msg}");
    assert!(msg.contains("(trust anchor)"), "{msg}");
    assert!(
        msg.contains(&"Pinned certificates for localhost".to_string()),
        "{msg}"
    );
    assert!(msg.contains(&a) && msg.contains(&b), "{msg}");
    // The error chain's messages carry the same text.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut found = false;
    while let Some(e) = cur {
        found |= e
            .to_string()
            .contains("certificate pinning failure for localhost!");
        cur = e.source();
    }
    assert!(found, "{err:?}");
}

#[tokio::test]
async fn rogue_ca_in_client_trust_store_is_refused_by_the_pin() {
    let real = TestPki::new();
    let rogue = TestPki::named("Corporate Proxy");
    // The proxy presents its own chain for localhost.
    let server = serve(&rogue).await;
    // The user installed the proxy CA: standard validation alone would accept it.
    let tls = PinnedTls::builder(policy(
        "localhost",
        &[real.intermediate.spki_pin(), real.root.spki_pin()],
    ))
    .root_certificates([real.root.cert(), rogue.root.cert()])
    .unwrap()
    .build()
    .unwrap();
    let err = get(&client(&tls), &server.url("/")).await.unwrap_err();
    let failure = pin_failure(&err);
    assert!(failure.to_string().contains("Corporate Proxy Root CA"));
    assert_eq!(server.requests(), 0);

    // Control: without a pin for the host, the same client accepts the proxy.
    let unpinned = PinnedTls::builder(PinPolicy::empty())
        .root_certificates([real.root.cert(), rogue.root.cert()])
        .unwrap()
        .build()
        .unwrap();
    let res = get(&client(&unpinned), &server.url("/")).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn appended_unrelated_pinned_certificate_is_refused() {
    let real = TestPki::new();
    let rogue = TestPki::named("Attacker");
    // The attacker's server appends the real (pinned) intermediate to its own chain.
    let mut chain = rogue.server_chain();
    chain.push(real.intermediate.cert());
    chain.push(real.root.cert());
    let server = TestServer::https(server_config(chain, rogue.leaf.key_der())).await;
    let tls = PinnedTls::builder(policy(
        "localhost",
        &[real.intermediate.spki_pin(), real.root.spki_pin()],
    ))
    .root_certificates([real.root.cert(), rogue.root.cert()])
    .unwrap()
    .build()
    .unwrap();
    let err = get(&client(&tls), &server.url("/")).await.unwrap_err();
    let failure = pin_failure(&err);
    // The verified chain in the message is the attacker's, not what was appended.
    let chain: Vec<Pin> = failure.chain().iter().map(|l| l.spki_pin).collect();
    assert_eq!(
        chain,
        [
            pin(&rogue.leaf.spki_pin()),
            pin(&rogue.intermediate.spki_pin()),
            pin(&rogue.root.spki_pin())
        ],
        "{failure}"
    );
    assert!(!chain.contains(&pin(&real.intermediate.spki_pin())));
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn invalid_certificates_are_refused_even_when_their_key_is_pinned() {
    let pki = TestPki::new();
    let cases = [
        (
            "expired",
            pki.intermediate.issue(&LeafSpec::server().expired()),
        ),
        (
            "not yet valid",
            pki.intermediate.issue(&LeafSpec::server().not_yet_valid()),
        ),
        (
            "wrong host",
            pki.intermediate
                .issue(&LeafSpec::server().with_names(&["other.example.com"])),
        ),
        ("self-signed", self_signed(&LeafSpec::server())),
    ];
    for (what, leaf) in cases {
        let chain = if what == "self-signed" {
            vec![leaf.cert.clone()]
        } else {
            pki.chain_for(&leaf)
        };
        let server = TestServer::https(server_config(chain, leaf.key_der())).await;
        let tls = tls_for(&pki, policy("localhost", &[leaf.spki_pin(), unused_pin()]));
        let err = get(&client(&tls), &server.url("/")).await.unwrap_err();
        assert!(
            PinFailure::find(&err).is_none(),
            "{what}: not a pin failure"
        );
        let cert_err = cert_error(&err);
        let ok = match what {
            "expired" => matches!(cert_err, CertificateError::ExpiredContext { .. }),
            "not yet valid" => matches!(cert_err, CertificateError::NotValidYetContext { .. }),
            "wrong host" => matches!(cert_err, CertificateError::NotValidForNameContext { .. }),
            _ => matches!(cert_err, CertificateError::UnknownIssuer),
        };
        assert!(ok, "{what}: unexpected {cert_err:?}");
        assert_eq!(server.requests(), 0, "{what}");
    }
}

#[tokio::test]
async fn backup_pin_takes_over_after_key_rotation() {
    let pki = TestPki::new();
    // The backup key exists (offline) before rotation; its pin ships in the app.
    let backup_leaf = pki.intermediate.issue_leaf();
    let p = policy("localhost", &[pki.leaf.spki_pin(), backup_leaf.spki_pin()]);
    let tls = tls_for(&pki, p);

    let before = serve(&pki).await;
    let res = get(&client(&tls), &before.url("/")).await.unwrap();
    assert_eq!(matched(&res).0, pin(&pki.leaf.spki_pin()));

    // The server rotates to the backup key.
    let after = TestServer::https(server_config(
        pki.chain_for(&backup_leaf),
        backup_leaf.key_der(),
    ))
    .await;
    let res = get(&client(&tls), &after.url("/")).await.unwrap();
    assert_eq!(
        matched(&res),
        (pin(&backup_leaf.spki_pin()), Position::Leaf)
    );
}

type Collected<T> = Arc<Mutex<Vec<T>>>;

fn collecting_tls(
    pki: &TestPki,
    policy: PinPolicy,
) -> (PinnedTls, Collected<PinFailure>, Collected<PinReport>) {
    let violations = Arc::new(Mutex::new(Vec::new()));
    let reports = Arc::new(Mutex::new(Vec::new()));
    let (v, r) = (violations.clone(), reports.clone());
    let tls = PinnedTls::builder(policy)
        .root_certificates([pki.root.cert()])
        .unwrap()
        .on_violation(move |f| v.lock().unwrap().push(f.clone()))
        .on_report(move |rep| r.lock().unwrap().push(rep.clone()))
        .build()
        .unwrap();
    (tls, violations, reports)
}

#[tokio::test]
async fn expired_policy_entry_reports_but_does_not_block() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let entry = PinEntry::new("localhost", [pin(&unused_pin()), pin(&unused_pin())])
        .unwrap()
        .expires(OffsetDateTime::now_utc() - Duration::days(1));
    let p = PinPolicy::builder().entry(entry).build().unwrap();
    let (tls, violations, reports) = collecting_tls(&pki, p);
    let res = get(&client(&tls), &server.url("/")).await.unwrap();
    assert_eq!(res.status(), 200);
    let v = violations.lock().unwrap();
    assert_eq!(v.len(), 1, "the violation is still reported");
    assert!(v[0].entry_expired());
    assert_eq!(v[0].mode(), Mode::ReportOnly);
    assert!(!reports.lock().unwrap()[0].enforced);
}

#[tokio::test]
async fn report_only_passes_and_reports_once_per_distinct_violation() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let entry = PinEntry::new("localhost", [pin(&unused_pin()), pin(&unused_pin())])
        .unwrap()
        .report_only()
        .report_uri("https://reports.example.com/pkp");
    let p = PinPolicy::builder().entry(entry).build().unwrap();
    let (tls, violations, reports) = collecting_tls(&pki, p);
    // Two fresh clients: two handshakes with the same violation.
    for _ in 0..2 {
        let res = get(&client(&tls), &server.url("/")).await.unwrap();
        assert_eq!(res.status(), 200);
        let peer = res.extensions().get::<PinnedPeer>().unwrap();
        let check = peer
            .check()
            .expect("a reported connection carries the check of its handshake");
        assert_eq!(check.mode(), Some(Mode::ReportOnly));
        assert!(check.matched_pin().is_none());
    }
    assert!(!violations.lock().unwrap().is_empty());
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "identical reports are deduplicated");
    let r = &reports[0];
    assert_eq!(r.hostname, "localhost");
    assert_eq!(r.port, Some(server.port()));
    assert_eq!(r.noted_hostname, "localhost");
    assert_eq!(r.validated_certificate_chain[0], pki.leaf.spki_pin());
    assert_eq!(r.validated_certificate_chain.len(), 3);
    assert_eq!(r.known_pins.len(), 2);
    assert_eq!(
        r.report_uri.as_deref(),
        Some("https://reports.example.com/pkp")
    );
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["hostname"], "localhost");
    assert!(json["date-time"].as_str().unwrap().starts_with("20"));
    assert_eq!(json["known-pins"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn runtime_policy_swap_retires_old_sessions_and_connections() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let good = || policy("localhost", &[pki.leaf.spki_pin(), unused_pin()]);
    let tls = tls_for(&pki, good());
    let client = client(&tls);

    let res = get(&client, &server.url("/")).await.unwrap();
    res.into_body().collect().await.unwrap();
    let res = get(&client, &server.url("/")).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(
        server.handshakes(),
        1,
        "keep-alive reuses the pinned connection"
    );

    // Swap to a policy the server does not satisfy: the pooled connection must not be reused.
    tls.set_policy(policy("localhost", &[unused_pin(), unused_pin()]));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let err = get(&client, &server.url("/")).await.unwrap_err();
    pin_failure(&err);
    assert_eq!(
        server.accepted(),
        2,
        "a new handshake was made under the new policy"
    );

    // Swap back: a full handshake again (no resumed session from before either swap).
    tls.set_policy(good());
    let res = get(&client, &server.url("/")).await.unwrap();
    let peer = res.extensions().get::<PinnedPeer>().unwrap();
    assert!(!peer.resumed());
    assert_eq!(peer.generation(), 2);
    assert!(peer.matched_pin().is_some());
}

#[tokio::test]
async fn sessions_resume_within_a_policy_and_not_across_a_swap() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let good = policy("localhost", &[pki.leaf.spki_pin(), unused_pin()]);
    let tls = tls_for(&pki, good.clone());
    // No pooling: every request makes a new TLS connection.
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(tls.connector());
    let mut peers = Vec::new();
    for _ in 0..3 {
        let res = get(&client, &server.url("/")).await.unwrap();
        peers.push(res.extensions().get::<PinnedPeer>().unwrap().clone());
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(server.handshakes(), 3);
    assert!(!peers[0].resumed());
    assert!(peers[1].resumed() && peers[2].resumed(), "{peers:?}");
    // A resumed connection still shows the pin its session was verified with.
    assert_eq!(peers[2].matched_pin(), peers[0].matched_pin());

    tls.set_policy(good);
    let res = get(&client, &server.url("/")).await.unwrap();
    let peer = res.extensions().get::<PinnedPeer>().unwrap();
    assert!(!peer.resumed(), "no session survives a policy swap");
    assert!(peer.matched_pin().is_some(), "the pin was checked again");
}

#[tokio::test]
async fn http_scheme_is_refused() {
    let pki = TestPki::new();
    let tls = tls_for(&pki, PinPolicy::empty());
    let err = tls
        .connector()
        .connect("http://127.0.0.1:9/".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::InsecureScheme(ref s) if s == "http"),
        "{err}"
    );
    assert!(err.to_string().contains("only speaks https://"));
    // Through hyper-util's client too, and through the hyper-rustls connector.
    let err = get(&client(&tls), "http://127.0.0.1:9/").await.unwrap_err();
    assert!(format!("{err:?}").contains("InsecureScheme"), "{err:?}");
    let rustls_client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(tls.https_connector());
    let err = rustls_client
        .request(
            Request::get("http://127.0.0.1:9/")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("scheme"), "{err:?}");
}

#[tokio::test]
async fn legacy_tls_versions_are_refused() {
    use testkit::legacy::{LegacyTlsServer, LegacyVersion};
    let pki = TestPki::new();
    let tls = tls_for(&pki, PinPolicy::empty());
    for version in [LegacyVersion::Tls10, LegacyVersion::Tls11] {
        let server = LegacyTlsServer::start(version, &pki.leaf, &pki.intermediate.cert_pem());
        let uri = format!("https://localhost:{}/", server.port())
            .parse()
            .unwrap();
        let err = tls.connector().connect(uri).await.unwrap_err();
        let rustls_err = err
            .tls_error()
            .unwrap_or_else(|| panic!("{version:?}: {err}"));
        assert!(
            matches!(
                rustls_err,
                rustls::Error::PeerIncompatible(_)
                    | rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)
                    | rustls::Error::InvalidMessage(_)
            ),
            "{version:?}: {rustls_err:?}"
        );
    }
}

#[tokio::test]
async fn tls12_and_13_with_post_quantum_key_exchange_by_default() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let tls = tls_for(
        &pki,
        policy("localhost", &[pki.leaf.spki_pin(), unused_pin()]),
    );
    let config = tls.client_config();
    // Only AEAD suites with forward secrecy are offered.
    for suite in &config.crypto_provider().cipher_suites {
        let name = format!("{:?}", suite.suite());
        assert!(
            name.starts_with("TLS13_")
                || name.contains("ECDHE") && (name.contains("GCM") || name.contains("CHACHA20")),
            "{name}"
        );
    }
    let stream = tls
        .connector()
        .connect(server.url("/").parse().unwrap())
        .await
        .unwrap();
    let conn = stream.tls_connection();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        conn.negotiated_key_exchange_group().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );

    // TLS 1.3 only: a TLS 1.2-only server is refused.
    let mut tls12 = server_config(pki.server_chain(), pki.leaf.key_der());
    tls12 = rebuild_tls12_only(tls12, &pki);
    let old = TestServer::https(tls12).await;
    let only13 = PinnedTls::builder(policy("localhost", &[pki.leaf.spki_pin(), unused_pin()]))
        .root_certificates([pki.root.cert()])
        .unwrap()
        .tls13_only()
        .build()
        .unwrap();
    let err = only13
        .connector()
        .connect(old.url("/").parse().unwrap())
        .await
        .unwrap_err();
    // Refused on the version, before any certificate is looked at.
    assert_eq!(old.accepted(), 1);
    assert_eq!(old.handshakes(), 0);
    let rustls_err = err.tls_error().unwrap_or_else(|| panic!("{err}"));
    assert!(
        matches!(
            rustls_err,
            rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)
        ),
        "{rustls_err:?}"
    );
    // The default accepts TLS 1.2 (still pinned).
    let s = tls
        .connector()
        .connect(old.url("/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        s.tls_connection().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert!(s.peer().matched_pin().is_some());
}

fn rebuild_tls12_only(_: rustls::ServerConfig, pki: &TestPki) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.server_chain(), pki.leaf.key_der())
        .unwrap()
}

#[tokio::test]
async fn hyper_rustls_connector_and_plain_rustls_config_enforce_pins() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let bad = tls_for(&pki, policy("localhost", &[unused_pin(), unused_pin()]));
    let good = tls_for(
        &pki,
        policy("localhost", &[pki.root.spki_pin(), unused_pin()]),
    );

    let c: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(good.https_connector());
    let res = c
        .request(Request::get(server.url("/")).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let c: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(bad.https_connector());
    let err = c
        .request(Request::get(server.url("/")).body(Empty::new()).unwrap())
        .await
        .unwrap_err();
    assert!(PinFailure::find(&err).is_some(), "{err:?}");

    // A bare rustls config (what reqwest and tonic take).
    let connector = tokio_rustls::TlsConnector::from(Arc::new(bad.client_config()));
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let err = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(PinFailure::find(&err).is_some(), "{err:?}");
}

#[tokio::test]
async fn require_pinned_layer_exposes_the_pin_and_fails_closed() {
    use portcullis_pin::RequirePinnedLayer;
    use tower::{Service, ServiceBuilder, ServiceExt};
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let tls = tls_for(
        &pki,
        policy("localhost", &[pki.leaf.spki_pin(), unused_pin()]),
    );
    use portcullis_pin::ServiceBuilderExt as _;
    let mut svc = ServiceBuilder::new()
        .require_pin_match()
        .service(client(&tls));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::get(server.url("/")).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert!(
        res.extensions()
            .get::<PinnedPeer>()
            .unwrap()
            .matched_pin()
            .is_some()
    );

    // A plain hyper-rustls client leaves no PinnedPeer: the layer refuses its responses.
    let plain: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(tls.https_connector());
    let err = ServiceBuilder::new()
        .layer(RequirePinnedLayer::new())
        .service(plain)
        .oneshot(Request::get(server.url("/")).body(Empty::new()).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("did not come over a pinned connection")
    );

    // An unpinned host passes `new()` but not `require_match()`.
    let unpinned = tls_for(&pki, PinPolicy::empty());
    let err = ServiceBuilder::new()
        .layer(RequirePinnedLayer::new().require_match())
        .service(client(&unpinned))
        .oneshot(Request::get(server.url("/")).body(Empty::new()).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no matching pin"));
}

#[tokio::test]
async fn match_callback_and_tracing_event_fire() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let tls = PinnedTls::builder(policy("localhost", &[pki.leaf.spki_pin(), unused_pin()]))
        .root_certificates([pki.root.cert()])
        .unwrap()
        .on_match(move |c| s.lock().unwrap().push(c.clone()))
        .build()
        .unwrap();
    let logs = capture_logs();
    let _guard = testkit::subscriber::set_default(logs.subscriber());
    get(&client(&tls), &server.url("/")).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].position(), Some(Position::Leaf));
    let text = logs.text();
    assert!(text.contains("portcullis::pin"), "{text}");
    assert!(text.contains("\"outcome\":\"match\""), "{text}");
    assert!(
        text.contains(&format!("\"matched_pin\":\"{}\"", pki.leaf.spki_pin())),
        "{text}"
    );
    assert!(text.contains("\"position\":\"leaf\""), "{text}");
    assert!(text.contains("\"mode\":\"enforce\""), "{text}");
}

#[tokio::test]
async fn expiry_warning_event_is_emitted_once_as_the_date_approaches() {
    let pki = TestPki::new();
    let server = serve(&pki).await;
    let entry = PinEntry::new("localhost", [pin(&pki.leaf.spki_pin()), pin(&unused_pin())])
        .unwrap()
        .expires(OffsetDateTime::now_utc() + Duration::days(3));
    let p = PinPolicy::builder()
        .entry(entry)
        .expiry_warning(Duration::days(7))
        .build()
        .unwrap();
    let tls = tls_for(&pki, p);
    let logs = capture_logs();
    let _guard = testkit::subscriber::set_default(logs.subscriber());
    for _ in 0..2 {
        get(&client(&tls), &server.url("/")).await.unwrap();
    }
    let text = logs.text();
    assert_eq!(text.matches("tls.pin.expiry_warning").count(), 1, "{text}");
}

/// An HTTP/1.1 mTLS server on loopback whose client certificates go through `verifier`; it
/// answers with the verified [`PeerIdentity`](portcullis_pin::PeerIdentity) as
/// `pin|subject|sans`, and hands each refused handshake's error to the test.
struct MtlsServer {
    url: String,
    refused: tokio::sync::mpsc::UnboundedReceiver<std::io::Error>,
    task: tokio::task::JoinHandle<()>,
}

impl MtlsServer {
    async fn start(
        verifier: Arc<portcullis_pin::PinnedClientVerifier>,
        server_pki: &TestPki,
    ) -> Self {
        use hyper_util::rt::TokioIo;
        use portcullis_pin::{PeerIdentity, PeerIdentityLayer};
        use tower::ServiceBuilder;

        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(server_pki.server_chain(), server_pki.leaf.key_der())
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (refused_tx, refused) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let refused_tx = refused_tx.clone();
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = refused_tx.send(e);
                            return;
                        }
                    };
                    let svc = ServiceBuilder::new()
                        .layer(PeerIdentityLayer::from_connection(tls.get_ref().1))
                        .service(tower::service_fn(|req: Request<Incoming>| async move {
                            let id = req.extensions().get::<PeerIdentity>().cloned();
                            let body = match id {
                                Some(id) => format!(
                                    "{}|{}|{}",
                                    id.spki_pin(),
                                    id.subject(),
                                    id.sans().join(",")
                                ),
                                None => "anonymous".into(),
                            };
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::Full::new(Bytes::from(body)),
                            ))
                        }));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            TokioIo::new(tls),
                            hyper_util::service::TowerToHyperService::new(svc),
                        )
                        .await;
                });
            }
        });
        Self {
            url: format!("https://localhost:{}/", addr.port()),
            refused,
            task,
        }
    }

    /// The error of the next refused handshake (waits up to 10 s for it).
    async fn next_refusal(&mut self) -> std::io::Error {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.refused.recv())
            .await
            .expect("the server refused a handshake")
            .expect("server running")
    }
}

impl Drop for MtlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client that trusts `server_pki` and presents `leaf` (issued by `client_ca`).
fn mtls_client(
    server_pki: &TestPki,
    client_ca: &Authority,
    leaf: &testkit::pki::Issued,
) -> HttpClient {
    let tls = PinnedTls::builder(PinPolicy::empty())
        .root_certificates([server_pki.root.cert()])
        .unwrap()
        .client_auth_cert(vec![leaf.cert.clone(), client_ca.cert()], leaf.key_der())
        .build()
        .unwrap();
    client(&tls)
}

/// The rustls error inside an I/O error (what tokio-rustls returns for a failed handshake).
fn rustls_error(io: &std::io::Error) -> &rustls::Error {
    io.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {io:?}"))
}

/// The TLS alert the peer sent, found in `err` or its sources (inside I/O errors too).
fn alert_received(err: &(dyn std::error::Error + 'static)) -> Option<rustls::AlertDescription> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(rustls::Error::AlertReceived(a)) = e.downcast_ref::<rustls::Error>() {
            return Some(*a);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(rustls::Error::AlertReceived(a)) =
                io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(*a);
        }
        cur = e.source();
    }
    None
}

async fn body_text(res: Response<Incoming>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn mtls_peer_pin_accepted_and_refused() {
    use portcullis_pin::PinnedClientVerifier;

    let server_pki = TestPki::new();
    let client_ca = Authority::root("Device CA");
    let device = client_ca.issue(&LeafSpec::client("device-42.example.com"));
    let stranger = client_ca.issue(&LeafSpec::client("stranger.example.com"));

    let verifier = PinnedClientVerifier::builder([pin(&device.spki_pin()), pin(&unused_pin())])
        .root_certificates([client_ca.cert()])
        .build()
        .unwrap();
    let mut server = MtlsServer::start(verifier, &server_pki).await;

    let res = get(&mtls_client(&server_pki, &client_ca, &device), &server.url)
        .await
        .unwrap();
    let body = body_text(res).await;
    assert!(body.starts_with(&device.spki_pin()), "{body}");
    assert!(body.contains("CN=device-42.example.com"), "{body}");
    assert!(body.contains("DNS:device-42.example.com"), "{body}");

    // A client whose certificate is valid (same CA) but whose key is not pinned.
    let err = get(
        &mtls_client(&server_pki, &client_ca, &stranger),
        &server.url,
    )
    .await
    .unwrap_err();
    // The server refused it on the pins: the failure names the stranger's key and the pins.
    let refused = server.next_refusal().await;
    let failure = PinFailure::find(&refused)
        .unwrap_or_else(|| panic!("expected a pin failure, got {refused:?}"));
    assert_eq!(
        failure.chain().first().map(|l| l.spki_pin),
        Some(pin(&stranger.spki_pin())),
        "{failure}"
    );
    assert!(failure.pins().contains(&pin(&device.spki_pin())));
    // And the client was told so (rustls answers a verifier's own error with this alert).
    assert_eq!(
        alert_received(&err),
        Some(rustls::AlertDescription::CertificateUnknown),
        "{err:?}"
    );
}

#[tokio::test]
async fn mtls_revoked_client_certificate_is_refused_when_crls_are_given() {
    use portcullis_pin::PinnedClientVerifier;

    let server_pki = TestPki::new();
    let client_ca = Authority::root("Device CA");
    let device = client_ca.issue(&LeafSpec::client("device-1.example.com").with_serial(0x0101));
    let stolen = client_ca.issue(&LeafSpec::client("device-2.example.com").with_serial(0x0202));
    // The CA key is pinned: every device of the fleet passes the pins, so a stolen device
    // certificate can only be refused by revoking it.
    let pins = [pin(&client_ca.spki_pin()), pin(&unused_pin())];
    let verifier = |crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>| {
        PinnedClientVerifier::builder(pins)
            .root_certificates([client_ca.cert()])
            .crls(crls)
            .build()
            .unwrap()
    };

    // Control: without a CRL the stolen certificate is accepted.
    let open = MtlsServer::start(verifier(Vec::new()), &server_pki).await;
    let res = get(&mtls_client(&server_pki, &client_ca, &stolen), &open.url)
        .await
        .unwrap();
    assert!(body_text(res).await.contains("CN=device-2.example.com"));
    drop(open);

    let mut server = MtlsServer::start(verifier(vec![client_ca.crl(&[0x0202])]), &server_pki).await;
    // The revoked certificate is refused with the revocation reason, on both sides.
    let err = get(&mtls_client(&server_pki, &client_ca, &stolen), &server.url)
        .await
        .unwrap_err();
    let refused = server.next_refusal().await;
    assert!(
        matches!(
            rustls_error(&refused),
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        ),
        "{refused:?}"
    );
    assert_eq!(
        alert_received(&err),
        Some(rustls::AlertDescription::CertificateRevoked),
        "{err:?}"
    );
    // A certificate the CRL does not list passes, with its identity.
    let res = get(&mtls_client(&server_pki, &client_ca, &device), &server.url)
        .await
        .unwrap();
    let body = body_text(res).await;
    assert!(body.starts_with(&device.spki_pin()), "{body}");
    assert!(body.contains("CN=device-1.example.com"), "{body}");

    // A CRL from another CA covers nothing of the client's chain: status unknown, refused.
    let other_ca = Authority::root("Other CA");
    let mut unknown = MtlsServer::start(verifier(vec![other_ca.crl(&[])]), &server_pki).await;
    get(&mtls_client(&server_pki, &client_ca, &device), &unknown.url)
        .await
        .unwrap_err();
    let refused = unknown.next_refusal().await;
    assert!(
        matches!(
            rustls_error(&refused),
            rustls::Error::InvalidCertificate(CertificateError::UnknownRevocationStatus)
        ),
        "{refused:?}"
    );

    // An unparsable CRL is a build error, not a verifier that accepts everyone.
    let err = PinnedClientVerifier::builder(pins)
        .root_certificates([client_ca.cert()])
        .crls([rustls_pki_types::CertificateRevocationListDer::from(vec![
            0x30, 0x03, 1, 2, 3,
        ])])
        .build()
        .unwrap_err();
    assert!(
        matches!(err, portcullis_pin::BuildError::InvalidCrl(_)),
        "{err:?}"
    );
}

struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let buf = self.0.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || LogWriter(buf.clone()))
            .finish()
    }
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn capture_logs() -> Logs {
    Logs(Arc::new(Mutex::new(Vec::new())))
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn revoked_certificate_is_refused_when_crls_are_given() {
    let pki = TestPki::new();
    let leaf = pki
        .intermediate
        .issue(&LeafSpec::server().with_serial(0x1234_5678));
    let server = TestServer::https(server_config(pki.chain_for(&leaf), leaf.key_der())).await;
    let pins = [leaf.spki_pin(), unused_pin()];
    let build = |crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>| {
        PinnedTls::builder(policy("localhost", &pins))
            .root_certificates([pki.root.cert()])
            .unwrap()
            .crls(crls)
            .build()
            .unwrap()
    };
    // A CRL that revokes another serial: accepted.
    // Every certificate of the chain but the root needs a CRL from its issuer.
    let ok = build(vec![pki.intermediate.crl(&[1]), pki.root.crl(&[])]);
    // Without the root's CRL, the intermediate's status is unknown: refused by default.
    let unknown = build(vec![pki.intermediate.crl(&[1])]);
    let err = get(&client(&unknown), &server.url("/")).await.unwrap_err();
    assert!(
        matches!(cert_error(&err), CertificateError::UnknownRevocationStatus),
        "{err:?}"
    );
    assert_eq!(
        get(&client(&ok), &server.url("/")).await.unwrap().status(),
        200
    );
    // A CRL that revokes this leaf: refused, even though its key is pinned.
    let revoked = build(vec![
        pki.intermediate.crl(&[0x1234_5678]),
        pki.root.crl(&[]),
    ]);
    let err = get(&client(&revoked), &server.url("/")).await.unwrap_err();
    assert!(
        matches!(cert_error(&err), CertificateError::Revoked),
        "{err:?}"
    );
}

#[tokio::test]
async fn cross_signed_chain_pin_matches_on_any_valid_path() {
    // A new root, cross-signed by the old one: servers send leaf, intermediate and the
    // cross-certificate; clients may trust either root.
    let old_root = Authority::root("Old Root");
    let new_root = Authority::root("New Root");
    let issuing = new_root.intermediate("Issuing CA");
    let leaf = issuing.issue_leaf();
    let cross = old_root.cross_sign(&new_root);
    let chain = vec![leaf.cert.clone(), issuing.cert(), cross];
    let server = TestServer::https(server_config(chain, leaf.key_der())).await;

    for (trusted, pinned, what) in [
        // The client trusts both: the first path found (to the new root) lacks the old root's
        // pin, so path building goes on and finds the path through the cross-certificate.
        (
            vec![new_root.cert(), old_root.cert()],
            old_root.spki_pin(),
            "old root",
        ),
        (
            vec![new_root.cert(), old_root.cert()],
            new_root.spki_pin(),
            "new root",
        ),
        // An old client that only trusts the old root.
        (vec![old_root.cert()], old_root.spki_pin(), "old root only"),
    ] {
        let tls = PinnedTls::builder(policy("localhost", &[pinned.clone(), unused_pin()]))
            .root_certificates(trusted)
            .unwrap()
            .build()
            .unwrap();
        let res = get(&client(&tls), &server.url("/"))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(matched(&res), (pin(&pinned), Position::Root), "{what}");
    }

    // A client that only trusts the new root cannot satisfy a pin on the old one.
    let tls = PinnedTls::builder(policy("localhost", &[old_root.spki_pin(), unused_pin()]))
        .root_certificates([new_root.cert()])
        .unwrap()
        .build()
        .unwrap();
    let err = get(&client(&tls), &server.url("/")).await.unwrap_err();
    pin_failure(&err);
}

#[test]
fn mtls_verifier_reports_pin_rule_errors_as_policy_errors() {
    use portcullis_pin::{BuildError, PinnedClientVerifier, PolicyError};
    let ca = Authority::root("Device CA");
    let err = PinnedClientVerifier::builder([pin(&unused_pin())])
        .root_certificates([ca.cert()])
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::Policy(PolicyError::BackupPinRequired { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("invalid pins:"), "{err}");
    // With the named opt-out, one pin is accepted.
    PinnedClientVerifier::builder([pin(&unused_pin())])
        .root_certificates([ca.cert()])
        .allow_single_pin()
        .build()
        .unwrap();
    // A root that is not a certificate is still a root error.
    let err = PinnedClientVerifier::builder([pin(&unused_pin()), pin(&unused_pin())])
        .root_certificates([rustls_pki_types::CertificateDer::from(vec![1, 2, 3])])
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::InvalidRoot(_)), "{err:?}");
}
