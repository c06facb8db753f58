//! Both preset stacks with every step enabled, over real TLS (mutual, pinned) on loopback:
//! `client::builder()` against `server::builder()` served by `serve_tls`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::attest::{
    MemoryReplayCache, SignLayer, SigningKey, StaticKeys, VerifiedSignature, VerifySignatureLayer,
};
use portcullis::audit::{Auditor, MemorySink};
use portcullis::pin::{PeerIdentity, PinPolicy, PinnedPeer, PinnedTls};
use portcullis::retry::rate_limit::{
    ClientRateLimitLayer, ExtensionKey, PeerAddr, PeerIp, Quota, RateLimitLayer,
};
use portcullis::retry::retry::RetryLayer;
use portcullis::token::require::{Algorithm, JwtValidator, VerificationKey};
use portcullis::token::token::{RefreshError, TokenResponse, TokenSet};
use portcullis::token::{
    BearerLayer, MemoryStore, RequireBearerLayer, TokenSource, VerifiedClaims,
};
use testkit::pki::{Authority, LeafSpec, TestPki};
use tower::{ServiceExt, service_fn};
use tracing_subscriber::layer::SubscriberExt as _;

const SECRET: [u8; 32] = [9; 32];

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn jwt(sub: &str, n: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &serde_json::json!({
            "iss": "https://login.test", "aud": "orders", "sub": sub, "jti": format!("t{n}"),
            "iat": now, "exp": now + 300, "scope": "orders:read",
        }),
        &jsonwebtoken::EncodingKey::from_secret(&SECRET),
    )
    .unwrap()
}

#[tokio::test]
async fn full_client_stack_against_full_server_stack_over_mutual_pinned_tls() {
    testkit::install_default_provider();
    let records = MemorySink::new(1000);
    let auditor = Auditor::builder().sink(records.clone()).build().unwrap();
    // Current-thread runtime: the collector sees the events of both sides.
    let _guard =
        testkit::subscriber::set_default(tracing_subscriber::registry().with(auditor.collector()));

    // --- Server: every step of the preset stack, served with mTLS by serve_tls. ---
    let pki = TestPki::new();
    let clients = Authority::root("Device CA");
    let device_cert = clients.issue(&LeafSpec::client("device-1.devices.test"));
    let device_key = SigningKey::generate_ed25519("device-1").unwrap();
    let validator = JwtValidator::builder()
        .issuer("https://login.test")
        .audience("orders")
        .key(VerificationKey::hmac(Algorithm::HS256, &SECRET).unwrap())
        .build()
        .unwrap();
    let server = portcullis::server::builder()
        .identity_rate_limit(RateLimitLayer::keyed(
            Quota::per_minute(nz(1)).allow_burst(nz(3)),
            ExtensionKey::new(|c: &VerifiedClaims| c.subject().map(str::to_owned)),
        ))
        .require_bearer(RequireBearerLayer::new(validator).scopes(["orders:read"]))
        .verify_signatures(
            VerifySignatureLayer::builder(
                StaticKeys::new().with("device-1", device_key.verifying_key()),
            )
            .replay_cache(MemoryReplayCache::new(1000))
            .build()
            .unwrap(),
        )
        .pre_auth_rate_limit(RateLimitLayer::keyed(
            Quota::per_second(nz(50)).allow_burst(nz(50)),
            PeerIp::new(),
        ))
        .mtls_identity(portcullis::server::RequireClientIdentityLayer::new())
        .audit(auditor.server_layer())
        .service(service_fn(|req: Request<Full<Bytes>>| async move {
            let ext = req.extensions();
            let body = format!(
                "mtls={} key={} sub={} peer={} peer_addr={}",
                ext.get::<PeerIdentity>()
                    .map(|p| p.sans().join(","))
                    .unwrap_or_default(),
                ext.get::<VerifiedSignature>()
                    .map(|s| s.keyid().to_owned())
                    .unwrap_or_default(),
                ext.get::<VerifiedClaims>()
                    .and_then(|c| c.subject().map(str::to_owned))
                    .unwrap_or_default(),
                ext.get::<SocketAddr>()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default(),
                ext.get::<PeerAddr>().is_some(),
            );
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }));
    let config = testkit::server::mtls_server_config(
        pki.server_chain(),
        pki.leaf.key_der(),
        clients.root_store(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = tokio::spawn(portcullis::server::serve_tls(
        listener,
        Arc::new(config),
        server,
    ));

    // --- Client: every step of the preset stack over pinned mTLS. ---
    let refreshes = Arc::new(AtomicUsize::new(0));
    let counter = refreshes.clone();
    let source = TokenSource::builder(
        move |_rt: secrecy::SecretString| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Ok::<_, RefreshError>(
                    TokenResponse::new(jwt("alice", n), Some(Duration::from_secs(300)))
                        .with_refresh_token(format!("rt-{n}")),
                )
            }
        },
        MemoryStore::new(),
    )
    .load()
    .await
    .unwrap();
    source
        .seed(TokenSet::from_refresh_token("rt-0"))
        .await
        .unwrap();
    let policy = PinPolicy::builder()
        .pin(
            "localhost",
            &[&pki.intermediate.spki_pin(), &pki.root.spki_pin()],
        )
        .unwrap()
        .build()
        .unwrap();
    let tls = PinnedTls::builder(policy)
        .root_certificates([pki.root.cert()])
        .unwrap()
        .client_auth_cert(vec![device_cert.cert.clone()], device_cert.key_der())
        .build()
        .unwrap();
    let client = portcullis::client::builder()
        .pinned(tls.clone())
        .audit(auditor.client_layer())
        .rate_limit(ClientRateLimitLayer::new(
            Quota::per_second(nz(100)).allow_burst(nz(100)),
        ))
        .retry(RetryLayer::new().max_attempts(2))
        .tokens(BearerLayer::new(source))
        .sign(SignLayer::new(device_key))
        .build::<Full<Bytes>>()
        .unwrap();

    let url = format!("https://localhost:{port}/orders");
    let get = || Request::get(&url).body(Full::new(Bytes::new())).unwrap();
    let res = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let check = res
        .extensions()
        .get::<PinnedPeer>()
        .and_then(PinnedPeer::check)
        .cloned()
        .expect("the pinned connection's proof reaches the caller");
    assert_eq!(
        check.matched_pin().map(ToString::to_string),
        Some(pki.intermediate.spki_pin())
    );
    assert_eq!(check.position().map(|p| p.as_str()), Some("intermediate"));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        "mtls=DNS:device-1.devices.test key=device-1 sub=alice peer=127.0.0.1 peer_addr=true"
    );
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);

    // Outermost on both sides, the audit layer recorded the request with its events.
    let requests = records.with_action("http.request");
    assert_eq!(
        requests.len(),
        2,
        "one server and one client record: {requests:?}"
    );
    let server_record = requests
        .iter()
        .find(|r| r["client.address"] == "127.0.0.1")
        .expect("server record");
    assert_eq!(server_record["url.path"], "/orders");
    assert_eq!(server_record["http.response.status_code"], 200);
    let actions: Vec<String> = server_record["portcullis.events"]
        .as_array()
        .map(|evs| {
            evs.iter()
                .filter_map(|e| e["event.action"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        actions.iter().any(|a| a == "signature.verify"),
        "server record events: {actions:?}"
    );

    // Order: the per-identity limit sits under authentication, so the burst is counted for
    // alice and answered 429 with Retry-After (quota: 3, one used above).
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let res = client.clone().oneshot(get()).await.unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.headers().contains_key(http::header::RETRY_AFTER));
        }
        statuses.push(res.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );

    // Under the pre-auth limit, unauthenticated requests stop at signature verification:
    // a raw pinned client (no signing, no token) gets 401 and the stable reason.
    let raw: portcullis::client::PinnedClient =
        Client::builder(TokioExecutor::new()).build(tls.connector());
    let res = raw.request(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["portcullis-reason"], "missing_signature");

    serving.abort();
}

#[tokio::test]
async fn server_requires_the_client_certificate_and_client_requires_pinned_tls() {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let clients = Authority::root("Device CA");
    let config = testkit::server::mtls_server_config(
        pki.server_chain(),
        pki.leaf.key_der(),
        clients.root_store(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app = portcullis::server::builder().service(service_fn(move |_req: Request<_>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    }));
    let serving = tokio::spawn(portcullis::server::serve_tls(
        listener,
        Arc::new(config),
        app,
    ));
    let client_with = |cert: Option<&testkit::pki::Issued>| {
        let mut tls = PinnedTls::builder(PinPolicy::builder().build().unwrap())
            .root_certificates([pki.root.cert()])
            .unwrap();
        if let Some(leaf) = cert {
            tls = tls.client_auth_cert(vec![leaf.cert.clone(), clients.cert()], leaf.key_der());
        }
        portcullis::client::builder()
            .pinned(tls.build().unwrap())
            .build::<Full<Bytes>>()
            .unwrap()
    };
    let req = || {
        Request::get(format!("https://localhost:{port}/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // Without a client certificate the handshake fails: the server asks for the certificate
    // it did not get (TLS 1.3 `certificate_required`), and the request never runs.
    let err = client_with(None).oneshot(req()).await.unwrap_err();
    assert!(
        refused_with_alert(&err, rustls::AlertDescription::CertificateRequired),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // Control: the same client with a certificate from the trusted device CA gets through.
    let device = clients.issue(&LeafSpec::client("device-7.example.com"));
    let res = client_with(Some(&device)).oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A preset client never falls back to unpinned TLS.
    let err = portcullis::client::builder()
        .build::<Full<Bytes>>()
        .unwrap_err();
    assert!(err.to_string().contains("needs pinned TLS"), "{err}");
    serving.abort();
}

#[tokio::test(start_paused = true)]
async fn serve_tls_drops_a_client_that_never_finishes_the_handshake() {
    use tokio::io::AsyncReadExt as _;
    testkit::install_default_provider();
    let pki = TestPki::new();
    let config = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = portcullis::server::builder().service(service_fn(|_req: Request<_>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    let serving = tokio::spawn(portcullis::server::serve_tls(
        listener,
        Arc::new(config),
        app,
    ));

    // A slowloris client: connects and never sends a ClientHello.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tcp.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "the server closes the connection");
    assert!(started.elapsed() >= portcullis::server::HANDSHAKE_TIMEOUT);
    serving.abort();
}

#[tokio::test]
async fn rotating_cert_switches_new_connections_to_the_backup_key() {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let backup = pki.intermediate.issue_leaf();
    let cert =
        portcullis::server::RotatingCert::new(pki.server_chain(), pki.leaf.key_der()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = portcullis::server::builder().service(service_fn(|_req: Request<_>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    let serving = tokio::spawn(portcullis::server::serve_tls(
        listener,
        Arc::new(cert.server_config()),
        app,
    ));
    let policy = PinPolicy::builder()
        .pin("localhost", &[&pki.leaf.spki_pin(), &backup.spki_pin()])
        .unwrap()
        .build()
        .unwrap();
    // A new client per request: each one makes a full handshake.
    let matched = || async {
        let tls = PinnedTls::builder(policy.clone())
            .root_certificates([pki.root.cert()])
            .unwrap()
            .build()
            .unwrap();
        let client = portcullis::client::builder()
            .pinned(tls)
            .build::<Full<Bytes>>()
            .unwrap();
        let req = Request::get(format!("https://localhost:{port}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = client.oneshot(req).await.unwrap();
        res.extensions()
            .get::<PinnedPeer>()
            .and_then(|p| p.matched_pin())
            .map(ToString::to_string)
    };
    assert_eq!(matched().await, Some(pki.leaf.spki_pin()));

    // A key that does not match the certificate is refused and the old pair stays.
    let stranger = pki.intermediate.issue_leaf();
    assert!(
        cert.rotate(pki.chain_for(&backup), stranger.key_der())
            .is_err()
    );
    assert_eq!(cert.generation(), 0);
    assert_eq!(matched().await, Some(pki.leaf.spki_pin()));

    cert.rotate(pki.chain_for(&backup), backup.key_der())
        .unwrap();
    assert_eq!(cert.generation(), 1);
    assert_eq!(matched().await, Some(backup.spki_pin()));
    serving.abort();
}

#[tokio::test]
async fn mtls_identity_step_refuses_missing_and_unlisted_client_certificates() {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let devices = Authority::root("Device CA");
    let allowed = devices.issue(&LeafSpec::client("device-1.devices.test"));
    let unlisted = devices.issue(&LeafSpec::client("device-2.devices.test"));
    // Client certificates are optional at the TLS level; the stack decides.
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(devices.root_store()))
        .allow_unauthenticated()
        .build()
        .unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server_chain(), pki.leaf.key_der())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let app =
        portcullis::server::builder()
            .mtls_identity(portcullis::server::RequireClientIdentityLayer::new().allow(
                |id: &PeerIdentity| id.sans().iter().any(|s| s == "DNS:device-1.devices.test"),
            ))
            .service(service_fn(move |_req: Request<_>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
            }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = tokio::spawn(portcullis::server::serve_tls(
        listener,
        Arc::new(config),
        app,
    ));

    let call = |cert: Option<&testkit::pki::Issued>| {
        let mut builder = PinnedTls::builder(PinPolicy::builder().build().unwrap())
            .root_certificates([pki.root.cert()])
            .unwrap();
        if let Some(c) = cert {
            builder = builder.client_auth_cert(vec![c.cert.clone()], c.key_der());
        }
        let client = portcullis::client::builder()
            .pinned(builder.build().unwrap())
            .build::<Full<Bytes>>()
            .unwrap();
        let req = Request::get(format!("https://localhost:{port}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        async move {
            let res = client.oneshot(req).await.unwrap();
            let reason = res
                .headers()
                .get("portcullis-reason")
                .map(|v| v.to_str().unwrap().to_owned());
            (res.status(), reason)
        }
    };
    assert_eq!(
        call(None).await,
        (
            StatusCode::FORBIDDEN,
            Some("missing_client_certificate".into())
        )
    );
    assert_eq!(
        call(Some(&unlisted)).await,
        (StatusCode::FORBIDDEN, Some("client_not_allowed".into()))
    );
    assert_eq!(reached.load(Ordering::SeqCst), 0);
    assert_eq!(call(Some(&allowed)).await, (StatusCode::OK, None));
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    serving.abort();
}

/// Whether the peer refused the connection with `alert`: a `rustls::Error::AlertReceived` in
/// `err` or its sources (inside I/O errors too). Over HTTP/2, h2 keeps only the kind and the
/// message of the I/O errors it sees, so there the rustls error survives as its message.
fn refused_with_alert(
    err: &(dyn std::error::Error + 'static),
    alert: rustls::AlertDescription,
) -> bool {
    let message = rustls::Error::AlertReceived(alert).to_string();
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(rustls::Error::AlertReceived(a)) = e.downcast_ref::<rustls::Error>() {
            return *a == alert;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && (inner.to_string() == message || refused_with_alert(inner, alert))
        {
            return true;
        }
        cur = e.source();
    }
    false
}
