//! Server half: RequireBearerLayer validates JWTs (EdDSA, ES256, RS256, HS256) and refuses
//! expired, not-yet-valid, wrong-audience, wrong-issuer, wrong-algorithm, wrong-type,
//! too-long-lived and denied tokens, enforces per-route scopes (GET rules cover HEAD) and
//! follows JWKS key rotation over https only, with bounded fetches.

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
    Algorithm, DEFAULT_FETCH_TIMEOUT, JtiDenyList, Jwks, JwksError, JwksUriError, JwtValidator,
    RequireBearerLayer, ScopeTable, ValidationError, VerificationKey, VerifiedClaims, danger,
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
    /// The public key as an attacker finds it published: PEM text, SPKI DER, and the raw key
    /// inside the SPKI (PKCS#1 `RSAPublicKey` DER for RSA, the curve point for EC), which is
    /// what a PEM-loaded verification key holds in memory.
    public: Option<PublicKeyBytes>,
}

struct PublicKeyBytes {
    pem: String,
    spki_der: Vec<u8>,
    raw: Vec<u8>,
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
            public: Some(PublicKeyBytes {
                pem: kp.public_key_pem(),
                spki_der: rcgen::PublicKeyData::subject_public_key_info(&kp),
                raw: kp.public_key_raw().to_vec(),
            }),
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
            public: None,
        }
    }

    fn sign(&self, claims: serde_json::Value) -> String {
        self.sign_typed(Some("JWT"), claims)
    }

    /// Signs with header `typ` set to `typ` (or left out).
    fn sign_typed(&self, typ: Option<&str>, claims: serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &self.enc).unwrap()
    }

    fn good_claims() -> serde_json::Value {
        json!({
            "iss": ISS, "aud": AUD, "sub": "user-42",
            "iat": now(), "exp": now() + 300,
            "scope": "orders:read profile",
            "jti": "tok-1",
        })
    }

    fn good(&self) -> String {
        self.sign(Self::good_claims())
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
async fn refuses_alg_none_forged_and_tampered_tokens() {
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
    // An HS256 key next to the RSA key still verifies its own tokens.
    let hs = Signer::hmac("hs");
    let both = RequireBearerLayer::new(validator(&[&rsa, &hs]));
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

/// The HS/RS (and HS/EC) key confusion: the attacker takes the server's *public* key as it is
/// published (PEM text, SPKI DER, or the raw key a PEM-loaded key holds in memory) and uses its
/// bytes as an HS256 secret. A validator that let the token's `alg` pick how a key is used
/// would accept these; each forgery is first shown to verify under exactly that mistake.
#[tokio::test]
async fn refuses_hs256_tokens_forged_with_the_public_keys_pem_or_der_bytes() {
    let t = now();
    let claims = json!({"iss": ISS, "aud": AUD, "iat": t, "exp": t + 300, "sub": "admin"});
    let mut naive = jsonwebtoken::Validation::new(Algorithm::HS256);
    naive.set_issuer(&[ISS]);
    naive.set_audience(&[AUD]);
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let signer = Signer::asymmetric(alg, "pub");
        let public = signer.public.as_ref().unwrap();
        let hs = Signer::hmac("hs");
        let set = JwkSet {
            keys: vec![signer.jwk.clone().unwrap()],
        };
        let jwks = Jwks::from_fetcher(move || {
            let set = set.clone();
            async move { Ok(set) }
        });
        jwks.refresh().await.unwrap();
        let validators = [
            ("the public key alone", validator(&[&signer])),
            (
                "the public key next to an HMAC key",
                validator(&[&signer, &hs]),
            ),
            (
                "a JWKS, with HS256 among the accepted algorithms",
                JwtValidator::builder()
                    .issuer(ISS)
                    .audience(AUD)
                    .jwks(jwks)
                    .algorithms([alg, Algorithm::HS256])
                    .build()
                    .unwrap(),
            ),
        ];
        let secrets: [(&str, &[u8]); 4] = [
            ("PEM", public.pem.as_bytes()),
            ("PEM, trimmed", public.pem.trim_end().as_bytes()),
            ("SPKI DER", &public.spki_der),
            ("raw key DER", &public.raw),
        ];
        for (form, secret) in secrets {
            for kid in [Some("pub"), None] {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = kid.map(str::to_owned);
                let forged =
                    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
                        .unwrap();
                let what = format!("{alg:?} key, HS256 forged with its {form}, kid {kid:?}");
                assert!(
                    jsonwebtoken::decode::<serde_json::Value>(
                        &forged,
                        &jsonwebtoken::DecodingKey::from_secret(secret),
                        &naive
                    )
                    .is_ok(),
                    "{what}: the forgery must pass a validator that uses the public key bytes as an HMAC secret"
                );
                for (name, v) in &validators {
                    let refused = v.validate(&forged);
                    assert!(
                        matches!(
                            refused,
                            Err(ValidationError::AlgorithmNotAllowed(_)
                                | ValidationError::UnknownKey
                                | ValidationError::BadSignature)
                        ),
                        "{what}, {name}: {refused:?}"
                    );
                    let resp = call(
                        RequireBearerLayer::new(v.clone()),
                        Method::GET,
                        "/",
                        Some(&format!("Bearer {forged}")),
                    )
                    .await;
                    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}, {name}");
                    assert_eq!(challenge(&resp), INVALID, "{what}, {name}");
                }
            }
        }
        // The genuine key still verifies through every validator.
        for (name, v) in &validators {
            assert!(v.validate(&signer.good()).is_ok(), "{alg:?}, {name}");
        }
    }
}

/// Other kinds of JWT signed by the same issuer (logout tokens, security events) and DPoP
/// proofs never pass for an access token; RFC 9068 `at+jwt` can be required.
#[tokio::test]
async fn refuses_proofs_and_other_jwt_types_and_can_require_at_jwt() {
    let s = Signer::asymmetric(Algorithm::ES256, "ec");
    let default = validator(&[&s]);
    let strict = JwtValidator::builder()
        .issuer(ISS)
        .audience(AUD)
        .key(s.verify.clone())
        .require_access_token_typ()
        .build()
        .unwrap();
    let claims = Signer::good_claims();
    let refused_by_both = [
        "dpop+jwt",
        "application/dpop+jwt",
        "DPoP+JWT",
        "secevent+jwt",
        "logout+jwt",
        "application/logout+jwt",
        "kb+jwt",
        "token-introspection+jwt",
        "oauth-authz-req+jwt",
    ];
    for typ in refused_by_both {
        let tok = s.sign_typed(Some(typ), claims.clone());
        for (name, v) in [("default", &default), ("at+jwt required", &strict)] {
            let refused = v.validate(&tok);
            assert!(
                matches!(
                    refused,
                    Err(ValidationError::WrongType { seen: Some(_), .. })
                ),
                "{typ}, {name}: {refused:?}"
            );
        }
        let resp = call(
            RequireBearerLayer::new(default.clone()),
            Method::GET,
            "/",
            Some(&format!("Bearer {tok}")),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{typ}");
        assert_eq!(challenge(&resp), INVALID, "{typ}: the reason must not leak");
    }
    for typ in [Some("at+jwt"), Some("application/at+jwt"), Some("AT+JWT")] {
        let tok = s.sign_typed(typ, claims.clone());
        assert!(default.validate(&tok).is_ok(), "{typ:?}, default");
        assert!(strict.validate(&tok).is_ok(), "{typ:?}, at+jwt required");
    }
    for typ in [None, Some("JWT"), Some("jwt")] {
        let tok = s.sign_typed(typ, claims.clone());
        assert!(default.validate(&tok).is_ok(), "{typ:?}, default");
        assert!(
            matches!(
                strict.validate(&tok),
                Err(ValidationError::WrongType {
                    at_jwt_required: true,
                    ..
                })
            ),
            "{typ:?}, at+jwt required"
        );
    }
    // An issuer's own access-token type can be named.
    let custom = JwtValidator::builder()
        .issuer(ISS)
        .audience(AUD)
        .key(s.verify.clone())
        .accept_typ("application/vnd.issuer.at+jwt")
        .build()
        .unwrap();
    let tok = s.sign_typed(Some("vnd.issuer.at+jwt"), claims.clone());
    assert!(custom.validate(&tok).is_ok());
    assert!(default.validate(&tok).is_err());
    assert!(
        custom
            .validate(&s.sign_typed(Some("dpop+jwt"), claims))
            .is_err()
    );
}

/// Routers run the GET handler for HEAD: a scope required for GET is required for HEAD.
#[tokio::test]
async fn head_on_a_get_protected_route_needs_the_get_scope() {
    let s = Signer::asymmetric(Algorithm::EdDSA, "ed");
    let table = ScopeTable::new().route_method(Method::GET, "/reports", ["reports:read"]);
    let layer = RequireBearerLayer::new(validator(&[&s])).routes(table);
    let without = format!("Bearer {}", s.good());
    for method in [Method::GET, Method::HEAD] {
        let resp = call(layer.clone(), method.clone(), "/reports/q3", Some(&without)).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{method}");
        assert_eq!(
            challenge(&resp),
            "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"reports:read\"",
            "{method}"
        );
    }
    let with = s.sign(
        json!({"iss": ISS, "aud": AUD, "iat": now(), "exp": now() + 60, "scope": "reports:read"}),
    );
    let resp = call(
        layer.clone(),
        Method::HEAD,
        "/reports/q3",
        Some(&format!("Bearer {with}")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The GET rule does not spill onto other methods.
    let resp = call(layer, Method::DELETE, "/reports/q3", Some(&without)).await;
    assert_eq!(resp.status(), StatusCode::OK);
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
    let jwks = danger::jwks_from_loopback_http(
        client,
        format!("http://127.0.0.1:{}/jwks.json", server.port())
            .parse()
            .unwrap(),
    )
    .unwrap();
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

fn http_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>()
}

#[test]
fn jwks_uris_must_be_https_and_plain_http_is_a_named_loopback_only_opt_in() {
    let uri = |s: &str| s.parse::<http::Uri>().unwrap();
    for (plain, scheme) in [
        ("http://issuer.example/jwks.json", Some("http")),
        ("http://127.0.0.1:8080/jwks.json", Some("http")),
        ("ws://issuer.example/jwks.json", Some("ws")),
        ("/jwks.json", None),
    ] {
        let refused = Jwks::from_uri(http_client(), uri(plain)).unwrap_err();
        match &refused {
            JwksUriError::NotHttps { seen } => assert_eq!(seen.as_deref(), scheme, "{plain}"),
            JwksUriError::NoHost => assert_eq!(scheme, None, "{plain}"),
            other => panic!("{plain}: {other:?}"),
        }
        assert!(refused.to_string().contains("https"), "{refused}");
    }
    assert!(Jwks::from_uri(http_client(), uri("https://issuer.example/jwks.json")).is_ok());
    assert!(Jwks::from_uri(http_client(), uri("HTTPS://issuer.example/jwks.json")).is_ok());

    for loopback in [
        "http://127.0.0.1:8080/jwks.json",
        "http://127.0.0.2/jwks.json",
        "http://[::1]:8080/jwks.json",
        "http://localhost:8080/jwks.json",
        "http://LOCALHOST/jwks.json",
        "https://issuer.example/jwks.json",
    ] {
        assert!(
            danger::jwks_from_loopback_http(http_client(), uri(loopback)).is_ok(),
            "{loopback}"
        );
    }
    for remote in [
        "http://issuer.example/jwks.json",
        "http://10.0.0.1/jwks.json",
        "http://[::2]/jwks.json",
        "http://127.0.0.1.evil.example/jwks.json",
        "http://localhost.evil.example/jwks.json",
        "http://0.0.0.0/jwks.json",
    ] {
        assert!(
            matches!(
                danger::jwks_from_loopback_http(http_client(), uri(remote)),
                Err(JwksUriError::NotLoopback { .. })
            ),
            "{remote}"
        );
    }
    assert!(matches!(
        danger::jwks_from_loopback_http(http_client(), uri("ftp://127.0.0.1/jwks.json")),
        Err(JwksUriError::NotHttps { .. })
    ));
}

/// A JWKS endpoint that accepts the TCP connection and never answers: the fetch ends with a
/// timeout, the token with the key it would have brought is refused, and both in bounded time.
#[tokio::test]
async fn a_silent_jwks_server_times_out_and_validation_fails_closed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(stream); // Read nothing, answer nothing, never close.
        }
    });
    let timeout = Duration::from_millis(300);
    let jwks = danger::jwks_from_loopback_http(
        http_client(),
        format!("http://127.0.0.1:{port}/jwks.json")
            .parse()
            .unwrap(),
    )
    .unwrap()
    .fetch_timeout(timeout);
    let bound = Duration::from_secs(10);
    let refreshed = tokio::time::timeout(bound, jwks.refresh())
        .await
        .expect("the fetch must end by itself");
    assert!(
        matches!(refreshed, Err(JwksError::Timeout(t)) if t == timeout),
        "{refreshed:?}"
    );
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the server took the connection"
    );

    // A token with a kid the silent issuer would have served: the refetch it triggers times
    // out too, and the token is refused.
    let jwks = jwks.min_refetch_interval(Duration::ZERO);
    let layer = RequireBearerLayer::new(
        JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .jwks(jwks)
            .build()
            .unwrap(),
    );
    let signer = Signer::asymmetric(Algorithm::ES256, "new");
    let resp = tokio::time::timeout(
        bound,
        call(
            layer,
            Method::GET,
            "/",
            Some(&format!("Bearer {}", signer.good())),
        ),
    )
    .await
    .expect("validation must end by itself");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&resp), INVALID);
    assert!(
        accepted.load(Ordering::SeqCst) >= 2,
        "the refetch reached the server"
    );
    silent.abort();
}

/// A fetch that hangs holds no lock: a validation that needs the JWKS meanwhile waits for it at
/// most the fetch timeout, and the next fetch brings the key.
#[tokio::test(start_paused = true)]
async fn a_hung_jwks_fetch_does_not_block_validations_beyond_the_timeout() {
    let k1 = Signer::asymmetric(Algorithm::ES256, "k1");
    let set = JwkSet {
        keys: vec![k1.jwk.clone().unwrap()],
    };
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let jwks = Jwks::from_fetcher(move || {
        let first = f.fetch_add(1, Ordering::SeqCst) == 0;
        let set = set.clone();
        async move {
            if first {
                // The issuer took the request and went silent.
                std::future::pending::<()>().await;
            }
            Ok(set)
        }
    })
    .min_refetch_interval(Duration::ZERO);
    let layer = RequireBearerLayer::new(
        JwtValidator::builder()
            .issuer(ISS)
            .audience(AUD)
            .jwks(jwks.clone())
            .build()
            .unwrap(),
    );
    let started = tokio::time::Instant::now();
    let background = tokio::spawn({
        let jwks = jwks.clone();
        async move { jwks.refresh().await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "the hung fetch is in flight"
    );

    // A token with a kid not installed yet, while the fetch hangs.
    let auth = format!("Bearer {}", k1.good());
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        call(layer.clone(), Method::GET, "/", Some(&auth)),
    )
    .await
    .expect("a hung fetch must not block validation");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        started.elapsed() <= DEFAULT_FETCH_TIMEOUT,
        "decided within the fetch timeout: {:?}",
        started.elapsed()
    );
    let hung = background.await.unwrap();
    assert!(
        matches!(hung, Err(JwksError::Timeout(t)) if t == DEFAULT_FETCH_TIMEOUT),
        "{hung:?}"
    );
    assert_eq!(started.elapsed(), DEFAULT_FETCH_TIMEOUT);

    // The next validation fetches again, and the issuer answers this time.
    let resp = call(layer, Method::GET, "/", Some(&auth)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}
