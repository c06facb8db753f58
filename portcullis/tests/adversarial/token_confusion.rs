//! Token confusion against the bearer server stack: another kind of JWT signed by the same
//! issuer (logout token, security event, DPoP-typed JWT) passed off as an access token, `HEAD`
//! used to reach a `GET`-protected route without its scope, and a JWKS fetched in the clear or
//! from an issuer that goes silent. Defences: `JwtValidator`'s `typ` check (and
//! `require_access_token_typ()`), `ScopeTable` GET rules covering HEAD, `Jwks::from_uri`
//! refusing non-https URIs and bounding every fetch. Attacked over real TLS on loopback with
//! tokens encoded by `jsonwebtoken` from `rcgen` keys.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::pin::{PinPolicy, PinnedTls};
use portcullis::token::RequireBearerLayer;
use portcullis::token::require::{
    Jwks, JwksError, JwksUriError, JwtValidator, ScopeTable, VerificationKey, danger,
};
use testkit::pki::TestPki;
use tower::service_fn;

const ISS: &str = "https://login.test";
const AUD: &str = "orders";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The issuer's ES256 signing key (rcgen), its verification key and JWK.
struct Issuer {
    encoding: EncodingKey,
    verify: VerificationKey,
    jwk: Jwk,
}

fn issuer(kid: &str) -> Issuer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let verify = VerificationKey::from_pem(Algorithm::ES256, pair.public_key_pem().as_bytes())
        .unwrap()
        .with_kid(kid);
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    Issuer {
        encoding,
        verify,
        jwk,
    }
}

impl Issuer {
    /// A JWT with valid `iss`, `aud` and lifetime, typed `typ`, carrying `scope`.
    fn sign(&self, typ: Option<&str>, scope: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = self.jwk.common.key_id.clone();
        header.typ = typ.map(str::to_owned);
        let claims = serde_json::json!({
            "iss": ISS, "aud": AUD, "sub": "alice", "iat": now(), "exp": now() + 300,
            "scope": scope, "jti": format!("j-{}", next_id()),
        });
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

fn next_id() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The bearer server stack over TLS on loopback; the handler counts the requests it serves.
struct Served {
    origin: String,
    client: portcullis::client::PinnedClient,
    handled: Arc<AtomicUsize>,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// A pinned client config for `localhost` served by `pki`.
fn pinned(pki: &TestPki) -> PinnedTls {
    let policy = PinPolicy::builder()
        .pin(
            "localhost",
            &[&pki.intermediate.spki_pin(), &pki.root.spki_pin()],
        )
        .unwrap()
        .build()
        .unwrap();
    PinnedTls::builder(policy)
        .root_certificates([pki.root.cert()])
        .unwrap()
        .build()
        .unwrap()
}

async fn serve(layer: RequireBearerLayer) -> Served {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let stack = portcullis::server::builder()
        .require_bearer(layer)
        .service(service_fn(move |_req: Request<hyper::body::Incoming>| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("secret report")))) }
        }));
    let config = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
    let serving = tokio::spawn(portcullis::server::serve_tls(
        listener,
        Arc::new(config),
        stack,
    ));
    let tls = pinned(&pki);
    Served {
        origin,
        client: Client::builder(TokioExecutor::new()).build(tls.connector()),
        handled,
        serving,
    }
}

fn validator(keys: &Issuer) -> portcullis::token::require::JwtValidatorBuilder {
    JwtValidator::builder()
        .issuer(ISS)
        .audience(AUD)
        .key(keys.verify.clone())
}

async fn send(served: &Served, method: Method, path: &str, token: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", served.origin))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = served.client.request(req).await.unwrap();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (res.status(), challenge)
}

#[tokio::test]
async fn a_logout_token_security_event_or_dpop_typed_jwt_is_not_an_access_token() {
    let keys = issuer("as-1");
    let s = serve(RequireBearerLayer::new(validator(&keys).build().unwrap())).await;
    for typ in [
        "logout+jwt",
        "secevent+jwt",
        "dpop+jwt",
        "application/logout+jwt",
    ] {
        // Same issuer key, same iss and aud, fresh: only the type says what it is.
        let token = keys.sign(Some(typ), "orders:read");
        let (status, challenge) = send(&s, Method::GET, "/orders", &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{typ}");
        assert_eq!(
            challenge, "Bearer realm=\"api\", error=\"invalid_token\"",
            "{typ}"
        );
    }
    assert_eq!(
        s.handled.load(Ordering::SeqCst),
        0,
        "no confused token got in"
    );
    for typ in [None, Some("JWT"), Some("at+jwt")] {
        let (status, _) = send(&s, Method::GET, "/orders", &keys.sign(typ, "")).await;
        assert_eq!(status, StatusCode::OK, "{typ:?}");
    }

    // With RFC 9068 access tokens required, an ID-token-shaped `JWT` is refused too.
    let strict = serve(RequireBearerLayer::new(
        validator(&keys).require_access_token_typ().build().unwrap(),
    ))
    .await;
    for typ in [None, Some("JWT"), Some("dpop+jwt")] {
        let (status, _) = send(&strict, Method::GET, "/orders", &keys.sign(typ, "")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{typ:?}");
    }
    assert_eq!(strict.handled.load(Ordering::SeqCst), 0);
    let (status, _) = send(
        &strict,
        Method::GET,
        "/orders",
        &keys.sign(Some("at+jwt"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn head_cannot_reach_a_get_protected_route_without_its_scope() {
    let keys = issuer("as-1");
    let table = ScopeTable::new().route_method(Method::GET, "/reports", ["reports:read"]);
    let s = serve(RequireBearerLayer::new(validator(&keys).build().unwrap()).routes(table)).await;
    let weak = keys.sign(Some("at+jwt"), "orders:read");
    for method in [Method::HEAD, Method::GET] {
        let (status, challenge) = send(&s, method.clone(), "/reports/q3", &weak).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method}");
        assert!(
            challenge.contains("error=\"insufficient_scope\", scope=\"reports:read\""),
            "{method}: {challenge}"
        );
    }
    assert_eq!(
        s.handled.load(Ordering::SeqCst),
        0,
        "the GET handler never ran"
    );
    let strong = keys.sign(Some("at+jwt"), "reports:read");
    let (status, _) = send(&s, Method::HEAD, "/reports/q3", &strong).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.handled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_jwks_in_the_clear_is_refused_and_a_silent_issuer_fails_closed_in_bounded_time() {
    testkit::install_default_provider();
    let keys = issuer("as-1");
    let pki = TestPki::new();
    let tls = pinned(&pki);
    let jwks_client =
        || Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(tls.connector());

    // Keys fetched over http could be swapped by anyone on the path: refused at build time,
    // and the loopback escape hatch refuses a remote host.
    let refused = Jwks::from_uri(
        jwks_client(),
        "http://login.test/jwks.json".parse().unwrap(),
    );
    assert!(
        matches!(refused, Err(JwksUriError::NotHttps { .. })),
        "{refused:?}"
    );
    let refused = danger::jwks_from_loopback_http(
        jwks_client(),
        "http://login.test/jwks.json".parse().unwrap(),
    );
    assert!(
        matches!(refused, Err(JwksUriError::NotLoopback { .. })),
        "{refused:?}"
    );

    // Over https through the pinned client, the key set works end to end.
    let body = serde_json::to_string(&JwkSet {
        keys: vec![keys.jwk.clone()],
    })
    .unwrap();
    let issuer_server = testkit::server::TestServer::https_with(
        testkit::server::server_config(pki.server_chain(), pki.leaf.key_der()),
        move |_req| {
            let body = body.clone();
            async move { Response::new(Full::new(Bytes::from(body))) }
        },
    )
    .await;
    let jwks = Jwks::from_uri(
        jwks_client(),
        issuer_server.url("/jwks.json").parse().unwrap(),
    )
    .unwrap();
    assert_eq!(jwks.refresh().await.unwrap(), 1);
    let s = serve(RequireBearerLayer::new(
        JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .jwks(jwks)
            .build()
            .unwrap(),
    ))
    .await;
    let (status, _) = send(&s, Method::GET, "/orders", &keys.sign(Some("at+jwt"), "")).await;
    assert_eq!(status, StatusCode::OK);

    // An issuer that accepts the connection and never answers (not even the TLS handshake).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let timeout = Duration::from_millis(300);
    let jwks = Jwks::from_uri(
        jwks_client(),
        format!("https://localhost:{port}/jwks.json")
            .parse()
            .unwrap(),
    )
    .unwrap()
    .fetch_timeout(timeout)
    .min_refetch_interval(Duration::ZERO);
    let s = serve(RequireBearerLayer::new(
        JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .jwks(jwks.clone())
            .build()
            .unwrap(),
    ))
    .await;
    let bound = Duration::from_secs(10);
    let answer = tokio::time::timeout(
        bound,
        send(&s, Method::GET, "/orders", &keys.sign(Some("at+jwt"), "")),
    )
    .await
    .expect("the server must answer by itself");
    assert_eq!(answer.0, StatusCode::UNAUTHORIZED);
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the issuer took the connection"
    );
    let refreshed = tokio::time::timeout(bound, jwks.refresh())
        .await
        .expect("the fetch must end by itself");
    assert!(
        matches!(refreshed, Err(JwksError::Timeout(t)) if t == timeout),
        "{refreshed:?}"
    );
    assert_eq!(s.handled.load(Ordering::SeqCst), 0);
    silent.abort();
}
