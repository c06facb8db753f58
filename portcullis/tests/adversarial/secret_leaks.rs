//! Threat: secrets leaking into places with weaker protection than the secret store — access
//! and refresh tokens, the OAuth client secret, the store passphrase, request-signing and
//! token-signing keys showing up in `tracing` output, audit records, `Debug` output or error
//! messages (which end up in log aggregators, crash reports and screenshots). Defence: every
//! layer keeps secrets in `secrecy`/`zeroize` types with redacted `Debug`, marks
//! `Authorization` sensitive, and never puts a credential in an event, a record or an error
//! (token layer `TokenSource`/`BearerLayer`/`OAuthRefresh`/`FileStore`, attest layer
//! `SignLayer`/`VerifySignatureLayer`, audit layer). Shown with a full request through the
//! preset client stack over pinned TLS — a refresh, a rejected token replayed after a
//! rotation, then a revoked refresh token — against the preset server stack, with every
//! `tracing` event at every level captured and searched for each secret in every encoding.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::attest::{SignLayer, SigningKey, StaticKeys, VerifySignatureLayer};
use portcullis::audit::{Auditor, MemorySink};
use portcullis::retry::retry::RetryLayer;
use portcullis::token::require::{Algorithm, JtiDenyList, JwtValidator, VerificationKey};
use portcullis::token::secret::{FileKey, FileStore, KdfParams};
use portcullis::token::token::{ClientAuth, OAuthRefresh, TokenSet};
use portcullis::token::{BearerLayer, RequireBearerLayer, TokenSource, VerifiedClaims};
use secrecy::SecretSlice;
use testkit::server::{TestServer, server_config};
use tower::{ServiceExt, service_fn};
use tracing_subscriber::layer::SubscriberExt as _;

use crate::support::{Logs, Serving, TempDir};

const RT1: &str = "RT1-SECRET-6a1f0c";
const RT2: &str = "RT2-SECRET-93be7d";
const RT3: &str = "RT3-SECRET-0d44e2";
const CLIENT_SECRET: &str = "CS-SECRET-5f0a11";
const PASSPHRASE: &str = "PASS-SECRET-correct-horse";
const JWT_SECRET: [u8; 32] = *b"JWT-SECRET-0123456789abcdefghijk";
const SIGNING_SECRET: [u8; 32] = *b"SIG-SECRET-0123456789abcdefghijk";

fn access_token(jti: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &serde_json::json!({
            "iss": "https://login.test", "aud": "orders", "sub": "alice", "jti": jti,
            "iat": now, "exp": now + 300,
        }),
        &jsonwebtoken::EncodingKey::from_secret(&JWT_SECRET),
    )
    .unwrap()
}

/// Every form a secret could leak in: as is, and its bytes in hex and base64 (both
/// alphabets); for a JWT also its signature alone.
fn forms(secret: &[u8]) -> Vec<String> {
    let mut out = vec![
        String::from_utf8_lossy(secret).into_owned(),
        secret.iter().map(|b| format!("{b:02x}")).collect(),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ];
    if let Some(sig) = std::str::from_utf8(secret)
        .ok()
        .and_then(|s| s.rsplit_once('.'))
    {
        out.push(sig.1.to_owned());
    }
    out
}

/// The token endpoint over TLS: RT1 → AT1 + RT2, RT2 → AT2 + RT3, RT3 → `invalid_grant`
/// echoing every secret it can (a careless server).
async fn token_endpoint(pki: &testkit::pki::TestPki, at1: String, at2: String) -> TestServer {
    TestServer::https_with(
        server_config(pki.server_chain(), pki.leaf.key_der()),
        move |req: Request<hyper::body::Incoming>| {
            let (at1, at2) = (at1.clone(), at2.clone());
            async move {
                let form = req.into_body().collect().await.unwrap().to_bytes();
                let form = String::from_utf8_lossy(&form).into_owned();
                assert!(form.contains(CLIENT_SECRET), "client_secret_post");
                let (status, body) = if form.contains(RT1) {
                    (200, serde_json::json!({"access_token": at1, "token_type": "Bearer", "expires_in": 300, "refresh_token": RT2}))
                } else if form.contains(RT2) {
                    (200, serde_json::json!({"access_token": at2, "token_type": "Bearer", "expires_in": 300, "refresh_token": RT3}))
                } else {
                    (400, serde_json::json!({"error": "invalid_grant", "error_description": format!("{RT3} was revoked; {at2} {CLIENT_SECRET}")}))
                };
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap()
            }
        },
    )
    .await
}

#[tokio::test]
async fn no_secret_reaches_tracing_audit_records_debug_or_errors() {
    let records = MemorySink::new(1000);
    let auditor = Auditor::builder().sink(records.clone()).build().unwrap();
    let logs = Logs::default();
    let subscriber = tracing_subscriber::registry()
        .with(auditor.collector())
        .with(logs.layer())
        .with(tracing_subscriber::filter::LevelFilter::TRACE);
    let _guard = testkit::subscriber::set_default(subscriber);
    let mut seen: Vec<String> = Vec::new();

    let (at1, at2) = (access_token("t1"), access_token("t2"));

    // --- The API: audit → verify signature → require bearer, over TLS. ---
    let signing =
        SigningKey::hmac_sha256("device-1", &SecretSlice::from(SIGNING_SECRET.to_vec())).unwrap();
    let deny = JtiDenyList::new();
    deny.deny("t1"); // the first access token is refused: the client must rotate and replay
    let validator = JwtValidator::builder()
        .issuer("https://login.test")
        .audience("orders")
        .key(VerificationKey::hmac(Algorithm::HS256, &JWT_SECRET).unwrap())
        .deny_list(deny.clone())
        .build()
        .unwrap();
    let verify =
        VerifySignatureLayer::builder(StaticKeys::new().with("device-1", signing.verifying_key()))
            .build()
            .unwrap();
    seen.push(format!("{validator:?} {verify:?}"));
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let api = Serving::start(
        portcullis::server::builder()
            .audit(auditor.server_layer())
            .verify_signatures(verify)
            .require_bearer(RequireBearerLayer::new(validator))
            .service(service_fn(move |req: Request<Full<Bytes>>| {
                counter.fetch_add(1, Ordering::SeqCst);
                let sub = req
                    .extensions()
                    .get::<VerifiedClaims>()
                    .and_then(|c| c.subject().map(str::to_owned))
                    .unwrap_or_default();
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(sub)))) }
            })),
    )
    .await;

    // --- The client: a token source in a passphrase file store, refreshed over pinned TLS. ---
    let endpoint = token_endpoint(&api.pki, at1.clone(), at2.clone()).await;
    let oauth_client: portcullis::client::PinnedClient =
        Client::builder(TokioExecutor::new()).build(api.tls.connector());
    let refresher = OAuthRefresh::new(
        oauth_client,
        endpoint.url("/token").parse().unwrap(),
        ClientAuth::Post {
            client_id: "mobile-app".into(),
            client_secret: CLIENT_SECRET.into(),
        },
    );
    let dir = TempDir::new("leaks");
    let file_key = FileKey::passphrase(PASSPHRASE)
        .with_kdf_params(portcullis::token::secret::danger::insecure_kdf_params());
    seen.push(format!("{file_key:?} {refresher:?} {signing:?}"));
    let store = FileStore::open(dir.path().join("tokens.pcs"), file_key)
        .await
        .unwrap();
    let source = TokenSource::builder(refresher, store.clone())
        .load()
        .await
        .unwrap();
    source
        .seed(TokenSet::from_refresh_token(RT1))
        .await
        .unwrap();
    let client = portcullis::client::builder()
        .pinned(api.tls.clone())
        .audit(auditor.client_layer())
        .retry(RetryLayer::new())
        .tokens(BearerLayer::new(source.clone()))
        .sign(SignLayer::new(signing.clone()))
        .build::<Full<Bytes>>()
        .unwrap();
    seen.push(format!("{client:?} {source:?} {store:?}"));

    // 1. Refresh (RT1), AT1 refused by the API, rotation (RT2), replay with AT2: accepted.
    let order = || {
        Request::post(api.url("/orders"))
            .header("content-type", "application/json")
            .body(Full::from("{\"sku\":42}"))
            .unwrap()
    };
    let res = client.clone().oneshot(order()).await.unwrap();
    seen.push(format!("{res:?}"));
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "alice");
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    assert_eq!(
        endpoint.requests(),
        2,
        "two refreshes: RT1, then RT2 after the 401"
    );

    // 2. AT2 revoked too; the refresh with RT3 meets invalid_grant: re-authentication.
    deny.deny("t2");
    let outcome = client.clone().oneshot(order()).await;
    let text = match &outcome {
        Ok(res) => format!("{res:?}"),
        Err(err) => format!("{err} {err:?}"),
    };
    seen.push(text);
    let err = source.token().await.unwrap_err();
    assert!(err.requires_reauthentication(), "{err:?}");
    seen.push(format!("{err} {err:?} {source:?}"));
    assert_eq!(endpoint.requests(), 3);

    // Everything the operator could see: tracing output, audit records, Debug, errors.
    let log = logs.text();
    for action in [
        "token.refresh",
        "bearer.validate",
        "signature.verify",
        "http.request",
    ] {
        assert!(log.contains(action), "{action} was captured: {log}");
    }
    let audit = serde_json::to_string(&records.entries()).unwrap();
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("access token 1", at1.clone().into_bytes()),
        ("access token 2", at2.clone().into_bytes()),
        ("refresh token 1", RT1.into()),
        ("refresh token 2", RT2.into()),
        ("refresh token 3", RT3.into()),
        ("client secret", CLIENT_SECRET.into()),
        ("store passphrase", PASSPHRASE.into()),
        ("JWT secret", JWT_SECRET.to_vec()),
        ("signing secret", SIGNING_SECRET.to_vec()),
    ];
    secrets.push(("marker", b"SECRET".to_vec()));
    for (what, secret) in &secrets {
        for form in forms(secret) {
            assert!(
                !log.contains(&form),
                "{what} ({form}) in tracing output:\n{log}"
            );
            assert!(
                !audit.contains(&form),
                "{what} ({form}) in audit records:\n{audit}"
            );
            for text in &seen {
                assert!(!text.contains(&form), "{what} ({form}) in {text}");
            }
        }
    }
}
