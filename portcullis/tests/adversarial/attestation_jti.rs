//! Threat: a device attestation token captured once (from a log, a proxy, a compromised
//! device) is replayed from elsewhere. With `consume_jti`, limited-use tokens work once, but
//! a token that carries no `jti` used to pass unconsumed and could be replayed until it
//! expired. Defence: when consuming, the attestation layer requires a `jti` and refuses
//! tokens without one (`401 attestation_jti_missing`); a token with one is accepted once,
//! across replicas sharing Redis. Tokens are made by `jsonwebtoken`, keys by `rcgen`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::attest::{
    AttestationLayer, AttestedDevice, JwtAttestationVerifier, RedisReplayCache,
};
use portcullis::client::PinnedClient;
use portcullis::pin::{PinPolicy, PinnedTls};
use testkit::pki::TestPki;
use testkit::redis::RedisServer;
use testkit::server::TestServer;
use tower::{Layer, ServiceExt, service_fn};

const PROJECT: &str = "424242";
const APP: &str = "1:424242:android:0ddba11";

/// The attestation service: its signing key and JWKS.
struct Platform {
    key: EncodingKey,
    jwks: String,
}

fn platform() -> Platform {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("appcheck-1".into());
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    Platform { key, jwks }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An App Check style token for `APP`, with `jti` when given.
fn token(platform: &Platform, jti: Option<&str>) -> String {
    let mut claims = serde_json::json!({
        "iss": format!("https://firebaseappcheck.googleapis.com/{PROJECT}"),
        "aud": [format!("projects/{PROJECT}")],
        "sub": APP,
        "iat": now() - 5,
        "exp": now() + 3600,
    });
    if let Some(jti) = jti {
        claims["jti"] = jti.into();
    }
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("appcheck-1".into());
    jsonwebtoken::encode(&header, &claims, &platform.key).unwrap()
}

/// A replica: HTTPS on loopback, attestation required, tokens consumed in the shared Redis.
async fn replica(pki: &TestPki, platform: &Platform, redis: &RedisServer) -> TestServer {
    let verifier = JwtAttestationVerifier::firebase_app_check(PROJECT, &platform.jwks)
        .unwrap()
        .allowed_apps([APP]);
    let cache = RedisReplayCache::connect(&redis.url()).await.unwrap();
    let layer = AttestationLayer::builder(verifier)
        .consume_jti(cache)
        .build();
    let app = service_fn(|req: Request<Incoming>| async move {
        let app = req.extensions().get::<AttestedDevice>().unwrap().app_id();
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(app.to_owned())))
    });
    let config = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
    TestServer::https_with(config, move |req: Request<Incoming>| {
        let svc = layer.layer(app);
        async move {
            match svc.oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            }
        }
    })
    .await
}

fn client(pki: &TestPki) -> PinnedClient {
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
    Client::builder(TokioExecutor::new()).build(tls.connector())
}

/// Sends `token` to `server`: (status, reason, body).
async fn send(client: &PinnedClient, server: &TestServer, token: &str) -> (u16, String, String) {
    let req = Request::post(server.url("/v1/payments"))
        .header("x-firebase-appcheck", token)
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let reason = res
        .headers()
        .get("portcullis-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, reason, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_token_without_jti_is_refused_and_a_limited_use_token_works_once_across_replicas() {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let platform = platform();
    let redis = RedisServer::start();
    let a = replica(&pki, &platform, &redis).await;
    let b = replica(&pki, &platform, &redis).await;
    let client = client(&pki);

    // A valid, correctly signed token with no jti: it could not be consumed, so it is refused.
    let reusable = token(&platform, None);
    for server in [&a, &b, &a] {
        assert_eq!(
            send(&client, server, &reusable).await,
            (401, "attestation_jti_missing".into(), String::new())
        );
    }

    // A limited-use token: accepted once, its replay refused on the other replica.
    let limited = token(&platform, Some("7c6f5c1e-limited"));
    assert_eq!(
        send(&client, &a, &limited).await,
        (200, String::new(), APP.into())
    );
    assert_eq!(
        send(&client, &b, &limited).await,
        (401, "attestation_replayed".into(), String::new())
    );
}
