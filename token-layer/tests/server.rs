//! Server half: RequireBearerLayer validates JWTs (EdDSA, ES256, RS256, HS256) and refuses
//! expired, not-yet-valid, wrong-audience, wrong-issuer, wrong-algorithm, too-long-lived and
//! denied tokens, enforces per-route scopes and follows JWKS key rotation.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use jsonwebtoken::{EncodingKey, Header, jwk::Jwk, jwk::JwkSet};
use portcullis_token::require::{
    Algorithm, JtiDenyList, Jwks, JwtValidator, RequireBearerLayer, ScopeTable, VerificationKey,
    VerifiedClaims,
};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt, service_fn};

const ISS: &str = "https://issuer.test";
/// The RFC 7638 §3.1 example key's thumbprint.
const JKT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
const AUD: &str = "orders-api";

struct Signer {
    alg: Algorithm,
    kid: String,
    enc: EncodingKey,
    verify: VerificationKey,
    jwk: Option<Jwk>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Signer {
    fn asymmetric(alg: Algorithm, kid: &str) -> Self {
        let (rc_alg, enc_fn): (&'static rcgen::SignatureAlgorithm, fn(&[u8]) -> EncodingKey) =
            match alg {
                Algorithm::EdDSA => (&rcgen::PKCS_ED25519, |p| {
                    EncodingKey::from_ed_pem(p).unwrap()
                }),
                Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, |p| {
                    EncodingKey::from_ec_pem(p).unwrap()
                }),
                Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, |p| {
                    EncodingKey::from_rsa_pem(p).unwrap()
                }),
                other => panic!("no test key for {other:?}"),
            };
        let kp = rcgen::KeyPair::generate_for(rc_alg).unwrap();
        let enc = enc_fn(kp.serialize_pem().as_bytes());
        let verify = VerificationKey::from_pem(alg, kp.public_key_pem().as_bytes())
            .unwrap()
            .with_kid(kid);
        let mut jwk = if alg == Algorithm::EdDSA {
            serde_json::from_value(json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw()),
            }))
            .unwrap()
        } else {
            Jwk::from_encoding_key(&enc, alg).unwrap()
        };
        jwk.common.key_id = Some(kid.into());
        Self {
            alg,
            kid: kid.into(),
            enc,
            verify,
            jwk: Some(jwk),
        }
    }

    fn hmac(kid: &str) -> Self {
        let secret = [7u8; 32];
        Self {
            alg: Algorithm::HS256,
            kid: kid.into(),
            enc: EncodingKey::from_secret(&secret),
            verify: VerificationKey::hmac(Algorithm::HS256, &secret)
                .unwrap()
                .with_kid(kid),
            jwk: None,
        }
    }

    fn sign(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.enc).unwrap()
    }

    fn good(&self) -> String {
        self.sign(json!({
            "iss": ISS, "aud": AUD, "sub": "user-42",
            "iat": now(), "exp": now() + 300,
            "scope": "orders:read profile",
            "jti": "tok-1",
        }))
    }

    /// A token bound to the DPoP key [`JKT`] (RFC 9449 `cnf.jkt`).
    fn bound(&self) -> String {
        self.sign(json!({
            "iss": ISS, "aud": AUD, "sub": "user-42",
            "iat": now(), "exp": now() + 300,
            "scope": "orders:read profile",
            "cnf": {"jkt": JKT},
            "jti": "tok-2",
        }))
    }
}

fn app() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(|req: Request<Full<Bytes>>| async move {
        let claims = req
            .extensions()
            .get::<VerifiedClaims>()
            .expect("claims in extensions");
        let body = format!(
            "{}|{}|{}",
            claims.subject().unwrap_or("-"),
            claims.confirmation_jkt().unwrap_or("-"),
            claims.scopes().join(",")
        );
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    })
}

fn validator(keys: &[&Signer]) -> JwtValidator {
    let mut b = JwtValidator::builder().issuer(ISS).audience(AUD);
    for k in keys {
        b = b.key(k.verify.clone());
    }
    b.build().unwrap()
}

async fn call(
    layer: RequireBearerLayer,
    method: Method,
    path: &str,
    auth: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    ServiceBuilder::new()
        .layer(layer)
        .service(app())
        .oneshot(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

fn challenge(resp: &Response<Full<Bytes>>) -> String {
    resp.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .to_owned()
}

const INVALID: &str = "Bearer realm=\"api\", error=\"invalid_token\"";

#[tokio::test]
async fn accepts_eddsa_es256_rs256_and_hs256_tokens_and_exposes_typed_claims() {
    for signer in [
        Signer::asymmetric(Algorithm::EdDSA, "ed"),
        Signer::asymmetric(Algorithm::ES256, "ec"),
        Signer::asymmetric(Algorithm::RS256, "rsa"),
        Signer::hmac("hs"),
    ] {
        let layer = RequireBearerLayer::new(validator(&[&signer]));
        let resp = call(
            layer,
            Method::GET,
            "/orders",
            Some(&format!("Bearer {}", signer.good())),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{:?}", signer.alg);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "user-42|-|orders:read,profile");
    }
}

/// Sends `token` under `scheme`, with `proof` in the extensions as a DPoP verifier outside
/// this layer would leave it.
async fn call_with_proof(
    layer: RequireBearerLayer,
    scheme: &str,
    token: &str,
    proof: Option<portcullis_core::VerifiedDpop>,
) -> Response<Full<Bytes>> {
    let mut req = Request::get("/orders")
        .header(header::AUTHORIZATION, format!("{scheme} {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    if let Some(p) = proof {
        req.extensions_mut().insert(p);
    }
    ServiceBuilder::new()
        .layer(layer)
        .service(app())
        .oneshot(req)
        .await
        .unwrap()
}

fn verified_proof(jkt: &str, token: &str) -> portcullis_core::VerifiedDpop {
    // ath computed independently of the layer: base64url(SHA-256(token)).
    let ath = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ));
    portcullis_core::VerifiedDpop::new(
        jkt.into(),
        Some(ath),
        "j-1".into(),
        now(),
        "https://api.test/orders".into(),
    )
}

#[tokio::test]
async fn dpop_bound_tokens_need_the_dpop_scheme_and_a_proof_by_their_key() {
    let s = Signer::asymmetric(Algorithm::ES256, "ec");
    let layer = RequireBearerLayer::new(validator(&[&s]));
    let bound = s.bound();
    let reason_of = |resp: &Response<Full<Bytes>>| challenge(resp);

    let ok = call_with_proof(
        layer.clone(),
        "DPoP",
        &bound,
        Some(verified_proof(JKT, &bound)),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let body = ok.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("user-42|{JKT}|orders:read,profile"));
    let ok = call_with_proof(
        layer.clone(),
        "dpop",
        &bound,
        Some(verified_proof(JKT, &bound)),
    )
    .await;
    assert_eq!(
        ok.status(),
        StatusCode::OK,
        "the scheme is case-insensitive"
    );

    let cases = [
        ("Bearer", None, "sent as Bearer"),
        (
            "Bearer",
            Some(verified_proof(JKT, &bound)),
            "sent as Bearer",
        ),
        // No DPoP verifier outside this layer: fail closed.
        ("DPoP", None, "no verified DPoP proof"),
        (
            "DPoP",
            Some(verified_proof("another-key-thumbprint", &bound)),
            "not the key",
        ),
        (
            "DPoP",
            Some(verified_proof(JKT, "another-token")),
            "ath is not the hash",
        ),
    ];
    for (scheme, proof, want) in cases {
        let resp = call_with_proof(layer.clone(), scheme, &bound, proof).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{want}");
        let c = reason_of(&resp);
        assert!(
            c.starts_with("DPoP realm=\"api\", error=\"invalid_token\"") && c.contains(want),
            "{want}: {c}"
        );
    }

    // An unbound token is accepted as Bearer, refused as DPoP, and refused as Bearer when
    // only bound tokens are accepted.
    let unbound = s.good();
    let resp = call_with_proof(
        layer.clone(),
        "DPoP",
        &unbound,
        Some(verified_proof(JKT, &unbound)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&resp).contains("no cnf.jkt"));
    let strict = layer.clone().require_dpop();
    let resp = call_with_proof(strict.clone(), "Bearer", &unbound, None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&resp).contains("only DPoP-bound tokens"));
    let resp = call(strict, Method::GET, "/orders", None).await;
    assert_eq!(challenge(&resp), "DPoP realm=\"api\"");
}

#[tokio::test]
async fn missing_and_malformed_credentials_get_rfc6750_answers() {
    let s = Signer::hmac("hs");
    let layer = RequireBearerLayer::new(validator(&[&s])).realm("orders");
    let resp = call(layer.clone(), Method::GET, "/", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&resp), "Bearer realm=\"orders\"");
    let resp = call(layer.clone(), Method::GET, "/", Some("Basic dXNlcjpwYXNz")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&resp), "Bearer realm=\"orders\"");
    for bad in [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer ab=c",
        "Bearer tok\u{e9}n",
    ] {
        let resp = call(layer.clone(), Method::GET, "/", Some(bad)).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(
            challenge(&resp),
            "Bearer realm=\"orders\", error=\"invalid_request\""
        );
    }
    let resp = call(layer, Method::GET, "/", Some("Bearer not.a.jwt")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&resp),
        "Bearer realm=\"orders\", error=\"invalid_token\""
    );
}

#[tokio::test]
async fn refuses_expired_not_yet_valid_wrong_audience_and_wrong_issuer() {
    let s = Signer::asymmetric(Algorithm::ES256, "ec");
    let layer = RequireBearerLayer::new(validator(&[&s]));
    let t = now();
    let cases = [
        (
            "expired",
            json!({"iss": ISS, "aud": AUD, "iat": t - 600, "exp": t - 120}),
        ),
        (
            "not yet valid",
            json!({"iss": ISS, "aud": AUD, "iat": t, "nbf": t + 600, "exp": t + 900}),
        ),
        (
            "issued in the future",
            json!({"iss": ISS, "aud": AUD, "iat": t + 600, "exp": t + 900}),
        ),
        (
            "wrong audience",
            json!({"iss": ISS, "aud": "billing-api", "iat": t, "exp": t + 300}),
        ),
        ("no audience", json!({"iss": ISS, "iat": t, "exp": t + 300})),
        (
            "wrong issuer",
            json!({"iss": "https://evil.test", "aud": AUD, "iat": t, "exp": t + 300}),
        ),
        ("no exp", json!({"iss": ISS, "aud": AUD, "iat": t})),
        (
            "too long lifetime",
            json!({"iss": ISS, "aud": AUD, "iat": t, "exp": t + 7200}),
        ),
        (
            "too long without iat",
            json!({"iss": ISS, "aud": AUD, "exp": t + 86400}),
        ),
    ];
    for (name, claims) in cases {
        let resp = call(
            layer.clone(),
            Method::GET,
            "/",
            Some(&format!("Bearer {}", s.sign(claims))),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            challenge(&resp),
            INVALID,
            "{name}: the reason must not leak"
        );
        assert!(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
    }
    // Leeway covers small skew; the max lifetime is configurable.
    let layer = RequireBearerLayer::new(
        JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .key(s.verify.clone())
            .max_lifetime(Duration::from_secs(3 * 3600))
            .build()
            .unwrap(),
    );
    let tok = s
        .sign(json!({"iss": ISS, "aud": [AUD, "other"], "iat": t, "exp": t + 7200, "nbf": t + 10}));
    let resp = call(layer, Method::GET, "/", Some(&format!("Bearer {tok}"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn refuses_alg_none_and_hmac_rsa_key_confusion() {
    let rsa = Signer::asymmetric(Algorithm::RS256, "rsa");
    let layer = RequireBearerLayer::new(validator(&[&rsa]));
    let t = now();
    let claims = json!({"iss": ISS, "aud": AUD, "iat": t, "exp": t + 300, "sub": "admin"});
    // alg: none, unsigned.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let resp = call(
        layer.clone(),
        Method::GET,
        "/",
        Some(&format!("Bearer {none}")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&resp), INVALID);
    // HS256 signed with the RSA *public* key as the HMAC secret (the classic confusion).
    let rsa_pub_pem = {
        let jwk = rsa.jwk.as_ref().unwrap();
        serde_json::to_vec(jwk).unwrap()
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa".into());
    let forged =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&rsa_pub_pem)).unwrap();
    let resp = call(
        layer.clone(),
        Method::GET,
        "/",
        Some(&format!("Bearer {forged}")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A token signed by another RSA key with the same kid.
    let other = Signer::asymmetric(Algorithm::RS256, "rsa");
    let resp = call(
        layer.clone(),
        Method::GET,
        "/",
        Some(&format!("Bearer {}", other.good())),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A tampered payload on a genuine token.
    let good = rsa.good();
    let mut parts: Vec<&str> = good.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(
        json!({"iss": ISS, "aud": AUD, "iat": t, "exp": t + 300, "sub": "root"}).to_string(),
    );
    parts[1] = &evil;
    let resp = call(
        layer,
        Method::GET,
        "/",
        Some(&format!("Bearer {}", parts.join("."))),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Even with an HS256 key configured next to the RSA key, a forged HS256 token naming the
    // RSA kid (or no kid) is refused: each key verifies exactly one algorithm.
    let hs = Signer::hmac("hs");
    let both = RequireBearerLayer::new(validator(&[&rsa, &hs]));
    let resp = call(
        both.clone(),
        Method::GET,
        "/",
        Some(&format!("Bearer {forged}")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let forged_no_kid = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&rsa_pub_pem),
    )
    .unwrap();
    let resp = call(
        both.clone(),
        Method::GET,
        "/",
        Some(&format!("Bearer {forged_no_kid}")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = call(
        both,
        Method::GET,
        "/",
        Some(&format!("Bearer {}", hs.good())),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // HMAC keys are refused from a JWKS altogether.
    assert!(
        VerificationKey::from_jwk(
            &Jwk::from_encoding_key(&EncodingKey::from_secret(&[1; 32]), Algorithm::HS256).unwrap()
        )
        .is_err()
    );
}

#[tokio::test]
async fn per_route_scopes_and_roles_answer_403_insufficient_scope() {
    let s = Signer::asymmetric(Algorithm::EdDSA, "ed");
    let table = ScopeTable::new()
        .route("/orders", ["orders:read"])
        .route_method(Method::POST, "/orders", ["orders:write"])
        .route_roles("/admin", ["admin"]);
    let layer = RequireBearerLayer::new(validator(&[&s]))
        .scopes(["profile"])
        .routes(table);
    let auth = format!("Bearer {}", s.good());
    assert_eq!(
        call(layer.clone(), Method::GET, "/orders/7", Some(&auth))
            .await
            .status(),
        StatusCode::OK
    );
    let resp = call(layer.clone(), Method::POST, "/orders", Some(&auth)).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&resp),
        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"profile orders:write\""
    );
    assert_eq!(
        call(layer.clone(), Method::GET, "/admin", Some(&auth))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    // Segment boundary: /ordersX is not under /orders.
    assert_eq!(
        call(layer.clone(), Method::POST, "/ordersX", Some(&auth))
            .await
            .status(),
        StatusCode::OK
    );
    let admin = s.sign(json!({"iss": ISS, "aud": AUD, "iat": now(), "exp": now() + 60, "scope": "profile", "roles": ["admin"]}));
    assert_eq!(
        call(
            layer,
            Method::GET,
            "/admin/users",
            Some(&format!("Bearer {admin}"))
        )
        .await
        .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn denied_jti_is_refused() {
    let s = Signer::hmac("hs");
    let deny = JtiDenyList::new();
    let layer = RequireBearerLayer::new(
        JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .key(s.verify.clone())
            .deny_list(deny.clone())
            .build()
            .unwrap(),
    );
    let auth = format!("Bearer {}", s.good());
    assert_eq!(
        call(layer.clone(), Method::GET, "/", Some(&auth))
            .await
            .status(),
        StatusCode::OK
    );
    deny.deny("tok-1");
    assert_eq!(
        call(layer, Method::GET, "/", Some(&auth)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn validator_refuses_to_build_without_issuer_audience_or_keys() {
    let s = Signer::hmac("hs");
    assert!(
        JwtValidator::builder()
            .audience(AUD)
            .key(s.verify.clone())
            .build()
            .is_err()
    );
    assert!(
        JwtValidator::builder()
            .issuer(ISS)
            .key(s.verify.clone())
            .build()
            .is_err()
    );
    assert!(
        JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .build()
            .is_err()
    );
    assert!(VerificationKey::hmac(Algorithm::HS256, b"short").is_err());
    assert!(VerificationKey::hmac(Algorithm::RS256, &[0; 32]).is_err());
}

#[tokio::test(start_paused = true)]
async fn jwks_key_rotation_with_overlap_and_rate_limited_refetch() {
    let k1 = Signer::asymmetric(Algorithm::ES256, "k1");
    let k2 = Signer::asymmetric(Algorithm::EdDSA, "k2");
    let doc = Arc::new(Mutex::new(JwkSet {
        keys: vec![k1.jwk.clone().unwrap()],
    }));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (d, f) = (doc.clone(), fetches.clone());
    let jwks = Jwks::from_fetcher(move || {
        let set = d.lock().unwrap().clone();
        f.fetch_add(1, Ordering::SeqCst);
        async move { Ok(set) }
    })
    .overlap(Duration::from_secs(600))
    .min_refetch_interval(Duration::from_secs(30));
    assert_eq!(jwks.refresh().await.unwrap(), 1);
    let layer = RequireBearerLayer::new(
        JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .jwks(jwks.clone())
            .build()
            .unwrap(),
    );
    let t1 = format!("Bearer {}", k1.good());
    let t2 = format!("Bearer {}", k2.good());
    assert_eq!(
        call(layer.clone(), Method::GET, "/", Some(&t1))
            .await
            .status(),
        StatusCode::OK
    );

    // The issuer publishes k2 and starts signing with it: the unknown kid triggers a refetch.
    tokio::time::advance(Duration::from_secs(31)).await;
    doc.lock().unwrap().keys.push(k2.jwk.clone().unwrap());
    assert_eq!(
        call(layer.clone(), Method::GET, "/", Some(&t2))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 2);

    // Forged kids do not hammer the issuer: at most one refetch per interval.
    let forged = Signer::asymmetric(Algorithm::ES256, "forged");
    for _ in 0..20 {
        let resp = call(
            layer.clone(),
            Method::GET,
            "/",
            Some(&format!("Bearer {}", forged.good())),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2);

    // k1 leaves the document: still accepted during the overlap, refused after it.
    doc.lock().unwrap().keys.remove(0);
    jwks.refresh().await.unwrap();
    assert_eq!(
        call(layer.clone(), Method::GET, "/", Some(&t1))
            .await
            .status(),
        StatusCode::OK
    );
    tokio::time::advance(Duration::from_secs(601)).await;
    jwks.refresh().await.unwrap();
    assert_eq!(
        call(layer.clone(), Method::GET, "/", Some(&t1))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(layer, Method::GET, "/", Some(&t2)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn jwks_fetched_over_real_http_and_refreshed_in_the_background() {
    let k1 = Signer::asymmetric(Algorithm::RS256, "r1");
    let body = serde_json::to_string(&JwkSet {
        keys: vec![k1.jwk.clone().unwrap()],
    })
    .unwrap();
    let server =
        testkit::server::TestServer::http_with(move |_req: Request<hyper::body::Incoming>| {
            let body = body.clone();
            async move { Response::new(Full::new(Bytes::from(body))) }
        })
        .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let jwks = Jwks::from_uri(
        client,
        format!("http://127.0.0.1:{}/jwks.json", server.port())
            .parse()
            .unwrap(),
    );
    let handle = jwks.spawn_refresh(Duration::from_secs(3600));
    let layer = RequireBearerLayer::new(
        JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .jwks(jwks)
            .build()
            .unwrap(),
    );
    // The first background refresh runs at once; wait for it (bounded).
    let auth = format!("Bearer {}", k1.good());
    let mut status = StatusCode::UNAUTHORIZED;
    for _ in 0..200 {
        status = call(layer.clone(), Method::GET, "/", Some(&auth))
            .await
            .status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, StatusCode::OK);
    assert!(server.requests() >= 1);
    drop(handle);
}
