//! Threat: forged or doctored access tokens — `alg: none`, HS256 signed with the server's
//! RSA or EC *public* key as the HMAC secret (the key-confusion attack, with the key's PEM,
//! DER and raw bytes as real attacks try), expired tokens, tokens for another audience or
//! issuer, a `kid` naming a key the server does not have, a key embedded in the header, and
//! the claims of one genuine token under the signature of another. Defence: the token layer's
//! `RequireBearerLayer` with a `JwtValidator` (static keys): each key verifies exactly one
//! algorithm, HMAC only with a configured secret, `exp`/`iss`/`aud` required. Every forgery gets
//! `401` with `error="invalid_token"` (the reason is not leaked to the client) and a
//! `bearer.validate` failure event naming it. Tokens are made by `jsonwebtoken` and sent over
//! TLS to the preset server stack.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::token::require::{JwtValidator, VerificationKey};
use portcullis::token::{RequireBearerLayer, VerifiedClaims};
use serde_json::{Value, json};
use tower::service_fn;

use crate::support::{Logs, Serving};

const ISS: &str = "https://login.test";
const AUD: &str = "orders";
const INVALID_TOKEN: &str = "Bearer realm=\"api\", error=\"invalid_token\"";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": now(), "exp": now() + 300})
}

/// An issuer key made by rcgen: its private key for jsonwebtoken and every public encoding
/// a confused verifier might use as an HMAC secret.
struct IssuerKey {
    alg: Algorithm,
    kid: &'static str,
    encoding: EncodingKey,
    verification: VerificationKey,
    public_encodings: Vec<(&'static str, Vec<u8>)>,
}

impl IssuerKey {
    fn new(alg: Algorithm, kid: &'static str) -> Self {
        let pair = match alg {
            // RSA key generation is slow in unoptimised builds: the openssl binary makes it.
            Algorithm::RS256 => {
                rcgen::KeyPair::from_pem(&RSA_KEYS[usize::from(kid == "attacker")]).unwrap()
            }
            Algorithm::ES256 => {
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
            }
            other => panic!("no test key for {other:?}"),
        };
        let private = pair.serialize_pem();
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
        };
        let pem = pair.public_key_pem();
        let verification = VerificationKey::from_pem(alg, pem.as_bytes())
            .unwrap()
            .with_kid(kid);
        let public_encodings = vec![
            ("public key PEM", pem.clone().into_bytes()),
            (
                "SubjectPublicKeyInfo DER",
                rcgen::PublicKeyData::subject_public_key_info(&pair),
            ),
            (
                "raw public key (PKCS#1 / EC point)",
                pair.public_key_raw().to_vec(),
            ),
        ];
        Self {
            alg,
            kid,
            encoding,
            verification,
            public_encodings,
        }
    }

    fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    fn genuine(&self, sub: &str) -> String {
        self.sign(Some(self.kid), &claims(sub))
    }
}

/// Two 2048-bit RSA private keys (PKCS#8 PEM), the issuer's and the attacker's, made once per
/// run by `openssl genpkey` (RSA key generation is slow in unoptimised builds).
static RSA_KEYS: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
    let spawn = || {
        std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cannot run openssl genpkey (install openssl)")
    };
    [spawn(), spawn()].map(|child| {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl genpkey failed");
        String::from_utf8(out.stdout).unwrap()
    })
});

/// A compact JWS with any header and an HMAC-SHA256 tag made with `secret` (HS256 by
/// jsonwebtoken), as an attacker holding only public material would make it.
fn hs256_with(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// The preset server stack with only the bearer step, over TLS; counts what reaches the app.
struct Api {
    serving: Serving,
    client: portcullis::client::PinnedClient,
    reached: Arc<AtomicUsize>,
}

async fn api(keys: Vec<VerificationKey>) -> Api {
    let mut validator = JwtValidator::builder().issuer(ISS).audience(AUD);
    for k in keys {
        validator = validator.key(k);
    }
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let stack = portcullis::server::builder()
        .require_bearer(RequireBearerLayer::new(validator.build().unwrap()))
        .service(service_fn(move |req: Request<hyper::body::Incoming>| {
            counter.fetch_add(1, Ordering::SeqCst);
            let sub = req
                .extensions()
                .get::<VerifiedClaims>()
                .and_then(|c| c.subject().map(str::to_owned))
                .unwrap_or_default();
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(sub)))) }
        }));
    let serving = Serving::start(stack).await;
    Api {
        client: serving.client(),
        serving,
        reached,
    }
}

impl Api {
    /// Sends `token` as a bearer token; returns the status, the challenge and the body.
    async fn send(&self, token: &str) -> (StatusCode, String, String) {
        let req = Request::get(self.serving.url("/orders"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::default())
            .unwrap();
        let res = self.client.request(req).await.unwrap();
        let challenge = res
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            challenge,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// Sends each forgery and checks the answer and the server's stated reason.
    async fn assert_refused(&self, logs: &Logs, cases: Vec<(String, String, &str)>) {
        for (what, token, reason) in cases {
            logs.clear();
            let before = self.reached.load(Ordering::SeqCst);
            let (status, challenge, body) = self.send(&token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(challenge, INVALID_TOKEN, "{what}: the reason is not leaked");
            assert_eq!(body, "", "{what}");
            assert_eq!(
                logs.failure_reasons("bearer.validate"),
                [reason],
                "{what}: the server's security event"
            );
            assert_eq!(self.reached.load(Ordering::SeqCst), before, "{what}");
        }
    }
}

#[tokio::test]
async fn alg_none_and_hs256_with_the_public_keys_bytes_are_refused() {
    let logs = Logs::default();
    let _guard = logs.install();
    let (rsa, ec) = (
        IssuerKey::new(Algorithm::RS256, "rsa-1"),
        IssuerKey::new(Algorithm::ES256, "ec-1"),
    );
    let api = api(vec![rsa.verification.clone(), ec.verification.clone()]).await;
    let admin = claims("admin");

    let mut cases = Vec::new();
    // Unsigned, or with a signature part someone made up.
    for (alg, signature) in [("none", ""), ("None", ""), ("NONE", "c2ln"), ("nOnE", "")] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": rsa.kid});
        let token = format!("{}.{}.{signature}", b64(&header), b64(&admin));
        cases.push((format!("alg {alg}"), token, "algorithm_not_allowed"));
    }
    for key in [&rsa, &ec] {
        for (encoding, bytes) in &key.public_encodings {
            for kid in [Some(key.kid), None] {
                cases.push((
                    format!("HS256 keyed with the {:?} {encoding}, kid {kid:?}", key.alg),
                    hs256_with(bytes, kid, &admin),
                    "algorithm_not_allowed",
                ));
            }
        }
    }
    api.assert_refused(&logs, cases).await;

    // Control: the genuine tokens of both keys pass.
    for key in [&rsa, &ec] {
        let (status, _, body) = api.send(&key.genuine("alice")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
    }
}

#[tokio::test]
async fn key_confusion_is_refused_even_where_an_hmac_secret_is_also_configured() {
    // A server that takes HS256 too (its own secret): the forged HS256 token names the RSA
    // key's kid, or none, and is still refused; the genuine HMAC token passes.
    let logs = Logs::default();
    let _guard = logs.install();
    let rsa = IssuerKey::new(Algorithm::RS256, "rsa-1");
    let ec = IssuerKey::new(Algorithm::ES256, "ec-1");
    let secret = [0x5a_u8; 32];
    let hmac = VerificationKey::hmac(Algorithm::HS256, &secret)
        .unwrap()
        .with_kid("hs-1");
    let api = api(vec![
        rsa.verification.clone(),
        ec.verification.clone(),
        hmac,
    ])
    .await;
    let admin = claims("admin");
    let mut cases = Vec::new();
    for key in [&rsa, &ec] {
        for (encoding, bytes) in &key.public_encodings {
            cases.push((
                format!("HS256 with the {:?} {encoding}, its kid", key.alg),
                hs256_with(bytes, Some(key.kid), &admin),
                "unknown_key",
            ));
            cases.push((
                format!("HS256 with the {:?} {encoding}, no kid", key.alg),
                hs256_with(bytes, None, &admin),
                "bad_signature",
            ));
            cases.push((
                format!("HS256 with the {:?} {encoding}, the HMAC kid", key.alg),
                hs256_with(bytes, Some("hs-1"), &admin),
                "bad_signature",
            ));
        }
    }
    api.assert_refused(&logs, cases).await;
    let (status, _, body) = api
        .send(&hs256_with(&secret, Some("hs-1"), &claims("svc")))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "svc"));
}

#[tokio::test]
async fn expired_wrong_audience_wrong_issuer_and_unknown_kid_are_refused() {
    let logs = Logs::default();
    let _guard = logs.install();
    let rsa = IssuerKey::new(Algorithm::RS256, "rsa-1");
    let api = api(vec![rsa.verification.clone()]).await;
    let t = now();
    let with = |patch: Value| {
        let mut c = claims("alice");
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let attacker = IssuerKey::new(Algorithm::RS256, "attacker");
    let cases = vec![
        (
            "expired two minutes ago (beyond the 30 s leeway)".to_owned(),
            rsa.sign(
                Some(rsa.kid),
                &with(json!({"iat": t - 600, "exp": t - 120})),
            ),
            "expired",
        ),
        (
            "for another audience".to_owned(),
            rsa.sign(Some(rsa.kid), &with(json!({"aud": "billing"}))),
            "wrong_audience",
        ),
        (
            "from another issuer".to_owned(),
            rsa.sign(Some(rsa.kid), &with(json!({"iss": "https://evil.test"}))),
            "wrong_issuer",
        ),
        (
            "kid of a key the server does not have".to_owned(),
            attacker.sign(Some("attacker"), &claims("admin")),
            "unknown_key",
        ),
        (
            "another RSA key claiming the server key's kid".to_owned(),
            attacker.sign(Some(rsa.kid), &claims("admin")),
            "bad_signature",
        ),
    ];
    api.assert_refused(&logs, cases).await;
}

#[tokio::test]
async fn embedded_header_keys_and_swapped_or_stripped_signatures_are_refused() {
    let logs = Logs::default();
    let _guard = logs.install();
    let rsa = IssuerKey::new(Algorithm::RS256, "rsa-1");
    let api = api(vec![rsa.verification.clone()]).await;
    let attacker = IssuerKey::new(Algorithm::RS256, "attacker");

    // CVE-2018-0114 style: the attacker's own key in the header's `jwk`, signed by it.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(rsa.kid.into());
    header.jwk = Some(Jwk::from_encoding_key(&attacker.encoding, Algorithm::RS256).unwrap());
    let embedded = jsonwebtoken::encode(&header, &claims("admin"), &attacker.encoding).unwrap();
    // ...or a `jku` pointing at the attacker's key set.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(rsa.kid.into());
    header.jku = Some("https://evil.test/jwks.json".into());
    let jku = jsonwebtoken::encode(&header, &claims("admin"), &attacker.encoding).unwrap();

    // Two genuine tokens; the claims of one under the header and signature of the other.
    let alice = rsa.genuine("alice");
    let admin = rsa.sign(
        Some(rsa.kid),
        &json!({"iss": ISS, "aud": AUD, "sub": "admin", "iat": now(), "exp": now() + 300, "scope": "admin"}),
    );
    let a: Vec<&str> = alice.split('.').collect();
    let b: Vec<&str> = admin.split('.').collect();
    let swapped = format!("{}.{}.{}", a[0], b[1], a[2]);
    let stripped = format!("{}.{}.", b[0], b[1]);
    // The payload re-encoded with padding-free base64 of an edited JSON, signature kept.
    let mut edited: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(a[1]).unwrap()).unwrap();
    edited["sub"] = "admin".into();
    let doctored = format!("{}.{}.{}", a[0], b64(&edited), a[2]);

    let cases = vec![
        (
            "attacker's key embedded as jwk".to_owned(),
            embedded,
            "bad_signature",
        ),
        (
            "attacker's key set named by jku".to_owned(),
            jku,
            "bad_signature",
        ),
        (
            "claims of another genuine token".to_owned(),
            swapped,
            "bad_signature",
        ),
        (
            "payload edited, signature kept".to_owned(),
            doctored,
            "bad_signature",
        ),
        ("signature stripped".to_owned(), stripped, "bad_signature"),
    ];
    api.assert_refused(&logs, cases).await;

    // Control: both genuine tokens pass untouched.
    for (token, sub) in [(&alice, "alice"), (&admin, "admin")] {
        let (status, _, body) = api.send(token).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, sub));
    }
}
