//! Runs the `axum_adopt` example as an adopter would: its files (certificate chain and key,
//! client keys, issuer JWKS) are written to a temporary directory, then a pinned client that
//! signs its requests talks to it over TLS on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::attest::{DpopLayer, SignLayer, SigningKey};
use portcullis::pin::{PinPolicy, PinnedTls};
use portcullis::token::require::{Algorithm, Jwk, JwkSet};
use serde_json::{Value, json};
use testkit::pki::{Authority, LeafSpec, TestPki};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

#[allow(
    dead_code,
    reason = "main() is the example's entry point; the test calls run()"
)]
#[path = "../axum_adopt.rs"]
mod axum_adopt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ISSUER: &str = "https://login.example";
const AUDIENCE: &str = "orders-api";

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("portcullis-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The issuer's signing key and its kid.
struct Issuer {
    key: jsonwebtoken::EncodingKey,
}

impl Issuer {
    fn token(&self, subject: &str, extra: Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": subject,
            "iat": now, "exp": now + 300, "scope": "orders:read",
        });
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("login-1".into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

struct Files {
    dir: TempDir,
    config: axum_adopt::Config,
    pki: TestPki,
    issuer: Issuer,
    device: SigningKey,
}

/// Writes what an operator would deploy: PEM chain and key, the clients' JWKS, the issuer's.
fn deploy(name: &str, origin: &str) -> Files {
    testkit::install_default_provider();
    let dir = TempDir::new(name);
    let pki = TestPki::named("Orders API");
    let login = testkit::pki::self_signed(&LeafSpec::client("login.example"));
    let issuer_key = jsonwebtoken::EncodingKey::from_ec_der(login.key.secret_pkcs8_der());
    let mut jwk = Jwk::from_encoding_key(&issuer_key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("login-1".into());
    let device = SigningKey::generate_ed25519("device-1").unwrap();
    let config = axum_adopt::Config {
        tls_chain: dir.write(
            "chain.pem",
            pki.leaf.cert_pem() + &pki.intermediate.cert_pem(),
        ),
        tls_key: dir.write("key.pem", pki.leaf.key_pem()),
        client_keys: dir.write(
            "clients.jwks.json",
            json!({ "keys": [device.public_jwk().unwrap()] }).to_string(),
        ),
        issuer_jwks: dir.write(
            "issuer.jwks.json",
            serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap(),
        ),
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        origin: origin.into(),
        audit_log: dir.0.join("audit.jsonl"),
    };
    Files {
        dir,
        config,
        pki,
        issuer: Issuer { key: issuer_key },
        device,
    }
}

async fn send<S>(
    client: &S,
    url: &str,
    authorization: Option<String>,
) -> Result<(StatusCode, String, String), BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>> + Clone,
    S::Error: Into<BoxError>,
{
    let mut req = Request::get(url);
    if let Some(value) = authorization {
        req = req.header(header::AUTHORIZATION, value);
    }
    let res = client
        .clone()
        .oneshot(req.body(Full::new(Bytes::new()))?)
        .await
        .map_err(Into::into)?;
    let status = res.status();
    let challenge = res
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((
        status,
        challenge,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// The example loaded from files answers a pinned, signing client: 200 with a valid token,
/// 401 without one, 401 for a DPoP-bound token sent as Bearer (200 with its proof), 401 for
/// an unsigned request and for a token whose key is not in the JWKS file; one audit line per
/// request.
#[tokio::test]
async fn the_adoptable_axum_server_runs_from_files() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let origin = format!("https://localhost:{port}");
    let files = deploy("adopt", &origin);
    let server = tokio::spawn(axum_adopt::run(files.config.clone(), listener));

    let backup = Authority::root("Orders API Backup (offline)");
    let policy = PinPolicy::builder()
        .pin(
            "localhost",
            &[&files.pki.intermediate.spki_pin(), &backup.spki_pin()],
        )
        .unwrap()
        .build()
        .unwrap();
    let tls = PinnedTls::builder(policy)
        .root_certificates([files.pki.root.cert()])
        .unwrap()
        .build()
        .unwrap();
    let client = portcullis::client::builder()
        .pinned(tls.clone())
        .sign(SignLayer::new(files.device.clone()))
        .build::<Full<Bytes>>()
        .unwrap();
    let url = format!("{origin}/orders");
    let alice = files.issuer.token("alice", json!({}));
    let mut sent = 0;

    let (status, _, body) = send(&client, &url, Some(format!("Bearer {alice}")))
        .await
        .unwrap();
    sent += 1;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&body["user"], &body["signed_by"]),
        (&json!("alice"), &json!("device-1"))
    );

    let (status, challenge, _) = send(&client, &url, None).await.unwrap();
    sent += 1;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.starts_with("Bearer"), "{challenge}");

    // A token bound to carol's DPoP key, stolen and replayed as a plain bearer token.
    let carol_dpop =
        DpopLayer::new(SigningKey::generate_ecdsa_p256("carol-phone").unwrap()).unwrap();
    let carol = files
        .issuer
        .token("carol", json!({ "cnf": { "jkt": carol_dpop.jkt() } }));
    let (status, challenge, _) = send(&client, &url, Some(format!("Bearer {carol}")))
        .await
        .unwrap();
    sent += 1;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.starts_with("DPoP"), "{challenge}");
    let phone = tower::ServiceBuilder::new()
        .layer(carol_dpop)
        .service(client.clone());
    let (status, _, body) = send(&phone, &url, Some(format!("DPoP {carol}")))
        .await
        .unwrap();
    sent += 1;
    assert_eq!(status, StatusCode::OK, "bound token with its proof: {body}");

    // The signature layer is on: the same valid token, unsigned, is refused.
    let unsigned: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(tls.connector());
    let (status, _, _) = send(&unsigned, &url, Some(format!("Bearer {alice}")))
        .await
        .unwrap();
    sent += 1;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The issuer JWKS is static: a token from a key not in the file is refused.
    let rogue = Issuer {
        key: jsonwebtoken::EncodingKey::from_ec_der(
            testkit::pki::self_signed(&LeafSpec::client("login.example"))
                .key
                .secret_pkcs8_der(),
        ),
    };
    let (status, challenge, _) = send(
        &client,
        &url,
        Some(format!("Bearer {}", rogue.token("alice", json!({})))),
    )
    .await
    .unwrap();
    sent += 1;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.contains("invalid_token"), "{challenge}");

    // One audit line per request in the audit log file.
    let log = files.config.audit_log.clone();
    let mut lines = 0;
    for _ in 0..50 {
        lines = audit_lines(&log);
        if lines >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines, sent, "audit lines in {}", log.display());
    assert!(
        !server.is_finished(),
        "the server stopped: {:?}",
        server.await
    );
    server.abort();
    drop(files.dir);
}

fn audit_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .filter(|l| l.contains("\"http.request\""))
                .count()
        })
        .unwrap_or(0)
}

/// A wrong file stops the example before it serves anything, with an error naming the file.
#[tokio::test]
async fn a_missing_or_wrong_file_stops_the_start_naming_the_file() {
    let files = deploy("adopt-bad", "https://localhost:1");

    let mut config = files.config.clone();
    config.issuer_jwks = files.dir.write(
        "issuer.jwks.json.bad",
        "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = axum_adopt::run(config, listener)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("issuer.jwks.json.bad") && err.contains("key #0"),
        "{err}"
    );

    let mut config = files.config.clone();
    config.tls_key = files
        .dir
        .write("other-key.pem", TestPki::new().leaf.key_pem());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = axum_adopt::run(config, listener)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.is_empty(), "{err}");

    let mut config = files.config.clone();
    config.client_keys = files.dir.0.join("missing.jwks.json");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = axum_adopt::run(config, listener)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.jwks.json"), "{err}");
}
