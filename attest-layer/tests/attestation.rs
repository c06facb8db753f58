//! Device attestation: the App Check style JWT verifier, per-route modes and the client hook.

use std::convert::Infallible;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use portcullis_attest::attestation::AttestationError;
use portcullis_attest::{
    AttachAttestationLayer, AttestationLayer, AttestationMode, AttestationVerifier, AttestedDevice,
    JwtAttestationVerifier, MemoryReplayCache, SigningKey,
};
use secrecy::SecretString;
use tower::{Layer, Service, ServiceExt, service_fn};

const NOW: u64 = 1_700_000_000;
const PROJECT: &str = "123456789";
const APP: &str = "1:123456789:android:abcdef";

struct Issuer {
    key: SigningKey,
}

impl Issuer {
    fn new(kid: &str) -> Self {
        Self {
            key: SigningKey::generate_ecdsa_p256(kid).unwrap(),
        }
    }

    fn jwks(&self) -> String {
        serde_json::json!({"keys": [self.key.public_jwk().unwrap()]}).to_string()
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.key.keyid()});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

fn claims() -> serde_json::Value {
    serde_json::json!({
        "iss": format!("https://firebaseappcheck.googleapis.com/{PROJECT}"),
        "aud": [format!("projects/{PROJECT}"), "projects/my-project-id"],
        "sub": APP,
        "iat": NOW - 10,
        "exp": NOW + 3600,
    })
}

fn verifier(issuer: &Issuer) -> JwtAttestationVerifier {
    JwtAttestationVerifier::firebase_app_check(PROJECT, &issuer.jwks())
        .unwrap()
        .allowed_apps([APP])
        .clock(|| NOW)
}

#[test]
fn a_valid_token_attests_the_app() {
    let issuer = Issuer::new("k1");
    let device = verifier(&issuer).verify(&issuer.token(claims())).unwrap();
    assert_eq!(device.app_id(), APP);
    assert_eq!(device.expires_at(), NOW + 3600);
}

#[test]
fn expired_wrong_audience_wrong_issuer_and_unknown_apps_are_refused() {
    let issuer = Issuer::new("k1");
    let v = verifier(&issuer);
    let with = |k: &str, val: serde_json::Value| {
        let mut c = claims();
        c[k] = val;
        v.verify(&issuer.token(c)).unwrap_err()
    };
    assert_eq!(
        with("exp", (NOW - 1).into()),
        AttestationError::Expired {
            exp: NOW - 1,
            now: NOW
        }
    );
    assert_eq!(
        with("exp", (NOW - 1).into()).as_str(),
        "attestation_expired"
    );
    assert!(matches!(
        with("aud", serde_json::json!(["projects/999"])),
        AttestationError::WrongAudience { .. }
    ));
    assert!(matches!(
        with("aud", "projects/999".into()),
        AttestationError::WrongAudience { .. }
    ));
    assert!(matches!(
        with("iss", "https://evil.example/123456789".into()),
        AttestationError::WrongIssuer { .. }
    ));
    assert_eq!(
        with("sub", "1:123456789:ios:other".into()),
        AttestationError::AppNotAllowed("1:123456789:ios:other".into())
    );
    assert_eq!(
        with("iat", (NOW + 600).into()),
        AttestationError::NotYetValid
    );
}

#[test]
fn forged_tokens_are_refused() {
    let issuer = Issuer::new("k1");
    let v = verifier(&issuer);
    // Signed by another key under the same kid.
    let mallory = Issuer::new("k1");
    assert_eq!(
        v.verify(&mallory.token(claims())).unwrap_err(),
        AttestationError::InvalidSignature
    );
    // A valid token with its claims swapped.
    let good = issuer.token(claims());
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut c = claims();
    c["sub"] = "1:123456789:android:evil".into();
    parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
    assert_eq!(
        v.verify(&parts.join(".")).unwrap_err(),
        AttestationError::InvalidSignature
    );
    // An unknown kid, HS256 with a guessable secret, and garbage.
    assert!(matches!(
        v.verify(&Issuer::new("k9").token(claims())),
        Err(AttestationError::UnknownKey(_))
    ));
    let hs_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
    let hs_input = format!(
        "{hs_header}.{}",
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"secret"),
        hs_input.as_bytes(),
    );
    let hs = format!("{hs_input}.{}", URL_SAFE_NO_PAD.encode(tag));
    assert!(matches!(
        v.verify(&hs),
        Err(AttestationError::UnsupportedAlg(_))
    ));
    assert!(matches!(
        v.verify("a.b"),
        Err(AttestationError::Malformed(_))
    ));
}

fn app()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone {
    service_fn(|req: Request<Full<Bytes>>| async move {
        let app = req
            .extensions()
            .get::<AttestedDevice>()
            .map(|d| d.app_id().to_owned())
            .unwrap_or_else(|| "unattested".into());
        Ok::<_, Infallible>(Response::new(Full::from(app)))
    })
}

async fn call(layer: &AttestationLayer, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("x-firebase-appcheck", t.parse().unwrap());
    }
    let res = layer.layer(app()).oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let reason = res
        .headers()
        .get("portcullis-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, reason, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn routes_are_required_by_default_optional_report_only_or_off() {
    let issuer = Issuer::new("k1");
    let layer = AttestationLayer::builder(verifier(&issuer))
        .route("/public", AttestationMode::Off)
        .route("/beta", AttestationMode::Optional)
        .route("/beta/payments", AttestationMode::Required)
        .build();
    let good = issuer.token(claims());
    let mut exp = claims();
    exp["exp"] = (NOW - 5).into();
    let expired = issuer.token(exp);

    assert_eq!(
        call(&layer, "/api/orders", Some(&good)).await,
        (200, String::new(), APP.into())
    );
    assert_eq!(
        call(&layer, "/api/orders", None).await,
        (401, "attestation_missing".into(), String::new()),
        "fail closed by default"
    );
    assert_eq!(
        call(&layer, "/api/orders", Some(&expired)).await.1,
        "attestation_expired"
    );
    assert_eq!(
        call(&layer, "/public/status", None).await,
        (200, String::new(), "unattested".into())
    );
    assert_eq!(
        call(&layer, "/publicity", None).await.0,
        401,
        "prefixes match whole segments"
    );
    assert_eq!(
        call(&layer, "/beta/feature", Some(&expired)).await,
        (200, String::new(), "unattested".into()),
        "report only"
    );
    assert_eq!(call(&layer, "/beta/feature", Some(&good)).await.2, APP);
    assert_eq!(
        call(&layer, "/beta/payments/1", Some(&expired)).await.0,
        401,
        "the longest prefix wins"
    );
}

#[tokio::test]
async fn limited_use_tokens_are_consumed_once() {
    let issuer = Issuer::new("k1");
    let layer = AttestationLayer::builder(verifier(&issuer))
        .consume_jti(MemoryReplayCache::new(100))
        .clock(|| NOW)
        .build();
    let mut c = claims();
    c["jti"] = "one-time-1".into();
    let token = issuer.token(c);
    assert_eq!(call(&layer, "/pay", Some(&token)).await.0, 200);
    assert_eq!(
        call(&layer, "/pay", Some(&token)).await.1,
        "attestation_replayed"
    );
}

#[tokio::test]
async fn the_client_hook_attaches_the_platform_token_end_to_end() {
    let issuer = Issuer::new("k1");
    let token = issuer.token(claims());
    let server = AttestationLayer::builder(verifier(&issuer))
        .build()
        .layer(app());
    let client =
        AttachAttestationLayer::new(move || Some(SecretString::from(token.clone()))).layer(server);
    let res = client
        .oneshot(Request::get("/api").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let server = AttestationLayer::builder(verifier(&issuer))
        .build()
        .layer(app());
    let res = AttachAttestationLayer::new(())
        .layer(server)
        .oneshot(Request::get("/api").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no token from the platform: refused");
    assert_eq!(
        res.headers()["www-authenticate"],
        "Attestation realm=\"api\", error=\"attestation_missing\"",
        "every 401 carries a challenge"
    );
}

/// An App Check style issuer whose tokens are encoded by `jsonwebtoken` (not by this crate),
/// with an ES256 key minted by `rcgen` through testkit.
struct JoseIssuer {
    key: jsonwebtoken::EncodingKey,
    jwks: String,
}

impl JoseIssuer {
    fn new() -> Self {
        let pem = testkit::pki::Authority::root("attestation issuer")
            .issue_leaf()
            .key_pem();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        jwk.common.key_id = Some("jose-1".into());
        let jwks = serde_json::json!({"keys": [jwk]}).to_string();
        Self { key, jwks }
    }

    fn token(&self, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("jose-1".into());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    fn layer(&self) -> portcullis_attest::attestation::AttestationLayerBuilder {
        let verifier = JwtAttestationVerifier::firebase_app_check(PROJECT, &self.jwks)
            .unwrap()
            .allowed_apps([APP])
            .clock(|| NOW);
        AttestationLayer::builder(verifier).clock(|| NOW)
    }
}

#[tokio::test]
async fn consuming_refuses_tokens_without_a_jti_which_could_be_replayed_until_they_expire() {
    let issuer = JoseIssuer::new();
    let plain = issuer.token(&claims());
    let layer = issuer
        .layer()
        .consume_jti(MemoryReplayCache::new(100))
        .build();
    assert_eq!(
        call(&layer, "/pay", Some(&plain)).await,
        (401, "attestation_jti_missing".into(), String::new())
    );
    assert_eq!(
        call(&layer, "/pay", Some(&plain)).await.1,
        "attestation_jti_missing"
    );

    // The same token, twice, with a jti: the second is a replay.
    let mut c = claims();
    c["jti"] = "limited-use-7".into();
    let limited = issuer.token(&c);
    assert_eq!(
        call(&layer, "/pay", Some(&limited)).await,
        (200, String::new(), APP.into())
    );
    assert_eq!(
        call(&layer, "/pay", Some(&limited)).await,
        (401, "attestation_replayed".into(), String::new())
    );

    // Tokens without a jti pass unconsumed only through the named opt-in.
    let relaxed = issuer
        .layer()
        .allow_missing_jti()
        .consume_jti(MemoryReplayCache::new(100))
        .build();
    assert_eq!(call(&relaxed, "/pay", Some(&plain)).await.0, 200);
    assert_eq!(call(&relaxed, "/pay", Some(&plain)).await.0, 200);
    // Without consumption, a jti is not asked for.
    assert_eq!(
        call(&issuer.layer().build(), "/pay", Some(&plain)).await.0,
        200
    );
    assert_eq!(
        AttestationError::MissingJti.as_str(),
        "attestation_jti_missing"
    );
}
