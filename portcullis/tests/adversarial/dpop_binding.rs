//! Token theft and proof replay against DPoP (RFC 9449): the preset server stack (verify DPoP →
//! require bearer) over real TLS on loopback, attacked with tokens and proofs made by an
//! independent JOSE implementation (`jsonwebtoken`'s encoder and RFC 7638 thumbprint, keys from
//! `rcgen`), never by our own `DpopLayer`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::attest::VerifyDpopLayer;
use portcullis::attest::dpop::DpopNonces;
use portcullis::pin::{PinPolicy, PinnedTls};
use portcullis::token::require::{JwtValidator, VerificationKey};
use portcullis::token::{RequireBearerLayer, VerifiedClaims};
use sha2::Digest as _;
use testkit::pki::TestPki;
use tower::service_fn;

const SECRET: [u8; 32] = [7; 32];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A device key made by rcgen, with its public JWK and RFC 7638 thumbprint from jsonwebtoken.
struct DeviceKey {
    encoding: EncodingKey,
    jwk: Jwk,
    jkt: String,
}

fn device_key() -> DeviceKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
    let jkt = jwk.thumbprint(ThumbprintHash::SHA256).unwrap();
    DeviceKey { encoding, jwk, jkt }
}

/// An HS256 access token from the authorization server, bound to `jkt` when given.
fn access_token(sub: &str, jkt: Option<&str>) -> String {
    let mut claims = serde_json::json!({
        "iss": "https://login.test", "aud": "orders", "sub": sub,
        "iat": now(), "exp": now() + 300, "scope": "orders:read",
    });
    if let Some(jkt) = jkt {
        claims["cnf"] = serde_json::json!({ "jkt": jkt });
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&SECRET),
    )
    .unwrap()
}

/// `ath`, computed here with `sha2`: base64url(SHA-256(token)).
fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A DPoP proof JWS, encoded by jsonwebtoken with the public JWK in its header.
fn proof(key: &DeviceKey, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some("dpop+jwt".into());
    header.jwk = Some(key.jwk.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn proof_claims(htm: &str, htu: &str, token: Option<&str>) -> serde_json::Value {
    let mut c = serde_json::json!({
        "jti": format!("{}-{}", now(), rand_id()), "htm": htm, "htu": htu, "iat": now(),
    });
    if let Some(t) = token {
        c["ath"] = ath(t).into();
    }
    c
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

struct Served {
    origin: String,
    client: portcullis::client::PinnedClient,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// The preset server stack with a DPoP step (proof optional, so plain bearer clients work)
/// and the bearer step, served over TLS; `nonces` turns on server nonces.
async fn serve(nonces: Option<DpopNonces>) -> Served {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let origin = format!("https://localhost:{port}");
    let mut dpop = VerifyDpopLayer::builder()
        .origin(origin.clone())
        .proof_optional();
    if let Some(n) = nonces {
        dpop = dpop.require_nonce(n);
    }
    let validator = JwtValidator::builder()
        .issuer("https://login.test")
        .audience("orders")
        .key(VerificationKey::hmac(Algorithm::HS256, &SECRET).unwrap())
        .build()
        .unwrap();
    let stack = portcullis::server::builder()
        .verify_dpop(dpop.build().unwrap())
        .require_bearer(RequireBearerLayer::new(validator))
        .service(service_fn(
            |req: Request<hyper::body::Incoming>| async move {
                let sub = req
                    .extensions()
                    .get::<VerifiedClaims>()
                    .and_then(|c| c.subject().map(str::to_owned))
                    .unwrap_or_default();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(sub))))
            },
        ));
    let config = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
    let serving = tokio::spawn(portcullis::server::serve_tls(
        listener,
        Arc::new(config),
        stack,
    ));
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
        .build()
        .unwrap();
    Served {
        origin,
        client: Client::builder(TokioExecutor::new()).build(tls.connector()),
        serving,
    }
}

struct Answer {
    status: StatusCode,
    reason: String,
    challenge: String,
    nonce: Option<String>,
    body: String,
}

async fn send(served: &Served, method: &str, path: &str, headers: &[(&str, String)]) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", served.origin));
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let res = served
        .client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let header = |n: &str| res.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    Answer {
        status: res.status(),
        reason: header("portcullis-reason").unwrap_or_default(),
        challenge: header("www-authenticate").unwrap_or_default(),
        nonce: header("dpop-nonce"),
        body: String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec())
            .unwrap(),
    }
}

#[tokio::test]
async fn a_bound_token_with_its_proof_is_accepted_and_a_replayed_proof_refused() {
    let s = serve(None).await;
    let key = device_key();
    let token = access_token("alice", Some(&key.jkt));
    let htu = format!("{}/orders", s.origin);
    let p = proof(&key, proof_claims("GET", &htu, Some(&token)));
    let headers = [
        ("authorization", format!("DPoP {token}")),
        ("dpop", p.clone()),
    ];
    let ok = send(&s, "GET", "/orders?page=2", &headers).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.challenge);
    assert_eq!(ok.body, "alice");
    let replay = send(&s, "GET", "/orders", &headers).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.reason, "dpop_replayed");
}

#[tokio::test]
async fn a_bound_token_sent_as_bearer_is_refused_with_or_without_a_proof() {
    let s = serve(None).await;
    let key = device_key();
    let token = access_token("alice", Some(&key.jkt));
    let stolen = send(
        &s,
        "GET",
        "/orders",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(stolen.status, StatusCode::UNAUTHORIZED);
    assert!(
        stolen.challenge.starts_with("DPoP ") && stolen.challenge.contains("invalid_token"),
        "{}",
        stolen.challenge
    );
    assert!(
        stolen.challenge.contains("sent as Bearer"),
        "{}",
        stolen.challenge
    );

    // Even with the holder's valid proof, the Bearer scheme is refused for a bound token.
    let htu = format!("{}/orders", s.origin);
    let p = proof(&key, proof_claims("GET", &htu, Some(&token)));
    let res = send(
        &s,
        "GET",
        "/orders",
        &[("authorization", format!("Bearer {token}")), ("dpop", p)],
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(
        res.challenge.contains("sent as Bearer"),
        "{}",
        res.challenge
    );
}

#[tokio::test]
async fn a_proof_by_the_attackers_own_key_is_refused_for_a_token_bound_to_another() {
    let s = serve(None).await;
    let holder = device_key();
    let attacker = device_key();
    let token = access_token("alice", Some(&holder.jkt));
    let htu = format!("{}/orders", s.origin);
    // A perfectly valid proof (right htm, htu, ath, fresh iat and jti) by the wrong key.
    let p = proof(&attacker, proof_claims("GET", &htu, Some(&token)));
    let res = send(
        &s,
        "GET",
        "/orders",
        &[("authorization", format!("DPoP {token}")), ("dpop", p)],
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(
        res.challenge.contains("not the key the token is bound to"),
        "{}",
        res.challenge
    );
}

#[tokio::test]
async fn wrong_htu_htm_ath_or_a_stale_iat_is_refused_with_the_dpop_challenge() {
    let s = serve(None).await;
    let key = device_key();
    let token = access_token("alice", Some(&key.jkt));
    let htu = format!("{}/orders", s.origin);
    let auth = ("authorization", format!("DPoP {token}"));
    let cases = [
        (
            "htu of another resource server, with its Host",
            proof_claims("GET", "https://other.example/orders", Some(&token)),
            Some("other.example"),
            "dpop_htu_mismatch",
        ),
        (
            "htu of another path",
            proof_claims("GET", &format!("{}/admin", s.origin), Some(&token)),
            None,
            "dpop_htu_mismatch",
        ),
        (
            "htm POST for a GET",
            proof_claims("POST", &htu, Some(&token)),
            None,
            "dpop_htm_mismatch",
        ),
        (
            "ath of another token",
            proof_claims("GET", &htu, Some("another-token")),
            None,
            "dpop_ath_mismatch",
        ),
        (
            "no ath",
            proof_claims("GET", &htu, None),
            None,
            "dpop_ath_mismatch",
        ),
        (
            "iat ten minutes old",
            {
                let mut c = proof_claims("GET", &htu, Some(&token));
                c["iat"] = (now() - 600).into();
                c
            },
            None,
            "dpop_stale_iat",
        ),
    ];
    for (what, claims, host, want) in cases {
        let mut headers = vec![auth.clone(), ("dpop", proof(&key, claims))];
        if let Some(h) = host {
            headers.push(("host", h.to_owned()));
        }
        let res = send(&s, "GET", "/orders", &headers).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(res.reason, want, "{what}");
        assert!(
            res.challenge
                .starts_with("DPoP error=\"invalid_dpop_proof\", algs=\"ES256"),
            "{what}: {}",
            res.challenge
        );
    }
    // The scheme says DPoP and no proof comes with it.
    let res = send(&s, "GET", "/orders", &[auth]).await;
    assert_eq!(res.reason, "dpop_missing");
}

#[tokio::test]
async fn unbound_bearer_tokens_still_work_and_an_unbound_token_cannot_pose_as_dpop() {
    let s = serve(None).await;
    let token = access_token("bob", None);
    let res = send(
        &s,
        "GET",
        "/orders",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body, "bob");

    let key = device_key();
    let htu = format!("{}/orders", s.origin);
    let p = proof(&key, proof_claims("GET", &htu, Some(&token)));
    let res = send(
        &s,
        "GET",
        "/orders",
        &[("authorization", format!("DPoP {token}")), ("dpop", p)],
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.challenge.contains("no cnf.jkt"), "{}", res.challenge);
}

#[tokio::test]
async fn a_server_nonce_is_demanded_then_accepted() {
    let nonces = DpopNonces::new(
        &secrecy::SecretSlice::from(vec![3u8; 32]),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let s = serve(Some(nonces)).await;
    let key = device_key();
    let token = access_token("alice", Some(&key.jkt));
    let htu = format!("{}/orders", s.origin);
    let auth = ("authorization", format!("DPoP {token}"));
    let first = send(
        &s,
        "GET",
        "/orders",
        &[
            auth.clone(),
            ("dpop", proof(&key, proof_claims("GET", &htu, Some(&token)))),
        ],
    )
    .await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert_eq!(first.reason, "use_dpop_nonce");
    assert!(first.challenge.starts_with("DPoP error=\"use_dpop_nonce\""));
    let nonce = first.nonce.expect("DPoP-Nonce header");
    let mut claims = proof_claims("GET", &htu, Some(&token));
    claims["nonce"] = nonce.into();
    let second = send(&s, "GET", "/orders", &[auth, ("dpop", proof(&key, claims))]).await;
    assert_eq!(second.status, StatusCode::OK);
}
