//! An axum 0.8 `Router` behind the Portcullis server stack, served over TLS on 127.0.0.1 with
//! `portcullis::server::serve_tls`, called by a pinned hyper client that signs its requests.
//!
//! Stack (outermost first): audit → pre-auth rate limit by peer IP → RFC 9421 signature
//! verification → DPoP proof verification (RFC 9449) → bearer JWT validation with per-route
//! scopes and DPoP binding → per-identity rate limit → the axum router, whose handler reads
//! the verified claims from the request extensions.
//!
//! The example checks what a user would see and exits non-zero when anything differs:
//! `200` with a valid token, `401` without one (or with a forged one, or unsigned), `403` on a
//! missing scope, `200` for a DPoP-bound token with its device's proof and `401` for the same
//! token stolen and sent as `Bearer`, `429` after a burst (per identity first, then per peer
//! IP before any verification work), one audit record per request and the anomalies the
//! detector raised.
//!
//! ```sh
//! cargo run -p portcullis-examples --example axum_server
//! ```

use std::error::Error;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::attest::{
    DpopLayer, SignLayer, SigningKey, StaticKeys, VerifiedSignature, VerifyDpopLayer,
    VerifySignatureLayer,
};
use portcullis::audit::{AnomalyKind, Auditor, DetectorConfig, MemorySink, Threshold};
use portcullis::pin::{PinPolicy, PinnedTls};
use portcullis::retry::rate_limit::{ExtensionKey, PeerIp, Quota, RateLimitLayer};
use portcullis::token::require::{Algorithm, JwtValidator, ScopeTable, VerificationKey};
use portcullis::token::{RequireBearerLayer, VerifiedClaims};
use serde_json::{Value, json};
use testkit::pki::{Authority, LeafSpec, TestPki};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

type BoxError = Box<dyn Error + Send + Sync>;

/// Requests per hour (all in one burst) one peer IP may send before any verification work.
const PER_IP_BURST: u32 = 30;
/// Requests per hour (all in one burst) one verified identity may send.
const PER_IDENTITY_BURST: u32 = 5;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => {
            println!("\naxum_server: every check passed");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("\naxum_server: FAILED: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What the API answers on `GET /orders`: who called, proven by the token and the signature.
async fn list_orders(
    Extension(claims): Extension<VerifiedClaims>,
    Extension(signature): Extension<VerifiedSignature>,
) -> (Extension<VerifiedClaims>, Json<Value>) {
    let body = json!({
        "user": claims.subject(),
        "scopes": claims.scopes(),
        "signed_by": signature.keyid(),
        "orders": [],
    });
    // Hand the claims back in the response extensions: the audit layer reads the identity there.
    (Extension(claims), Json(body))
}

async fn admin_users(Extension(claims): Extension<VerifiedClaims>) -> String {
    format!("admin view for {}", claims.subject().unwrap_or("-"))
}

/// Mints ES256 access tokens like an authorization server would.
struct Issuer {
    key: jsonwebtoken::EncodingKey,
}

impl Issuer {
    fn token(&self, subject: &str, scope: &str) -> Result<String, BoxError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        self.sign(json!({
            "iss": "https://login.example", "aud": "orders-api", "sub": subject,
            "iat": now, "exp": now + 300, "scope": scope,
        }))
    }

    /// A token bound to a device key (RFC 9449 `cnf.jkt`): only that key's proofs make it work.
    fn bound_token(&self, subject: &str, scope: &str, jkt: &str) -> Result<String, BoxError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        self.sign(json!({
            "iss": "https://login.example", "aud": "orders-api", "sub": subject,
            "iat": now, "exp": now + 300, "scope": scope, "cnf": { "jkt": jkt },
        }))
    }

    fn sign(&self, claims: Value) -> Result<String, BoxError> {
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::ES256),
            &claims,
            &self.key,
        )?)
    }
}

/// One answer as the client saw it.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

async fn send<S>(client: &S, url: &str, token: Option<&str>) -> Result<Answer, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone,
    S::Error: Into<BoxError>,
{
    send_as(client, url, token.map(|t| format!("Bearer {t}"))).await
}

/// Sends `GET url` with `authorization` as the whole `Authorization` value.
async fn send_as<S>(
    client: &S,
    url: &str,
    authorization: Option<String>,
) -> Result<Answer, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone,
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
    let headers = res.headers().clone();
    let body = res.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn expect(step: &str, answer: &Answer, want: StatusCode) -> Result<(), BoxError> {
    let challenge = answer
        .headers
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(|v| format!(" ({v})"))
        .unwrap_or_default();
    println!("   {step}: {}{challenge}", answer.status);
    if answer.status == want {
        Ok(())
    } else {
        Err(format!(
            "{step}: expected {want}, got {} {:?}",
            answer.status, answer.body
        )
        .into())
    }
}

fn header_str<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Runs the example; `Err` says which check failed.
pub(crate) async fn run() -> Result<(), BoxError> {
    testkit::install_default_provider();

    // --- Keys and certificates, all minted now. ---
    let api = TestPki::named("Orders API");
    let backup = Authority::root("Orders API Backup (offline)");
    let login = testkit::pki::self_signed(&LeafSpec::client("login.example"));
    let issuer = Issuer {
        key: jsonwebtoken::EncodingKey::from_ec_der(login.key.secret_pkcs8_der()),
    };
    let device_key = SigningKey::generate_ed25519("device-1")?;
    // Carol's phone holds a DPoP key; her access token is bound to it.
    let carol_dpop = DpopLayer::new(SigningKey::generate_ecdsa_p256("carol-phone")?)?;

    // --- Audit: records in memory, anomalies collected by a hook. ---
    let records = MemorySink::new(1_000);
    let anomalies: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = anomalies.clone();
    let auditor = Auditor::builder()
        .sink(records.clone())
        .detector(
            DetectorConfig::new()
                .threshold(
                    AnomalyKind::UnauthorizedBurst,
                    Threshold::new(5, std::time::Duration::from_secs(60)),
                )
                .threshold(
                    AnomalyKind::RateLimitedBurst,
                    Threshold::new(3, std::time::Duration::from_secs(60)),
                ),
        )
        .on_anomaly(move |a: &portcullis::audit::Anomaly| {
            if let Ok(mut seen) = seen.lock() {
                seen.push(format!("{} on {}", a.kind(), a.subject()));
            }
        })
        .tracing_records(false)
        .build()?;
    let subscriber = tracing_subscriber::registry().with(auditor.collector());
    let _tracing = tracing::subscriber::set_default(subscriber);

    // --- The server: an axum router in the Portcullis server stack. ---
    let validator = JwtValidator::builder()
        .issuer("https://login.example")
        .audience("orders-api")
        .key(VerificationKey::from_pem(
            Algorithm::ES256,
            testkit::pki::pem("PUBLIC KEY", &login.spki).as_bytes(),
        )?)
        .build()?;
    let scopes = ScopeTable::new()
        .route("/orders", ["orders:read"])
        .route("/admin", ["admin"]);
    let per_ip = Quota::per_hour(NonZeroU32::new(PER_IP_BURST).ok_or("zero quota")?);
    let per_identity = Quota::per_hour(NonZeroU32::new(PER_IDENTITY_BURST).ok_or("zero quota")?);

    // DPoP's htu is checked against the service's own public origin, never the Host header.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = Router::new()
        .route("/orders", get(list_orders))
        .route("/admin/users", get(admin_users));
    let stack = portcullis::server::builder()
        .audit(auditor.server_layer().identity(|ext: &http::Extensions| {
            ext.get::<VerifiedClaims>()
                .and_then(|c| c.subject())
                .map(str::to_owned)
        }))
        .pre_auth_rate_limit(RateLimitLayer::keyed(per_ip, PeerIp::new()))
        .verify_signatures(
            VerifySignatureLayer::builder(
                StaticKeys::new().with("device-1", device_key.verifying_key()),
            )
            .build()?,
        )
        .verify_dpop(
            VerifyDpopLayer::builder()
                .origin(format!("https://localhost:{port}"))
                .proof_optional() // plain bearer clients too; bound tokens still need a proof
                .build()?,
        )
        .require_bearer(RequireBearerLayer::new(validator).routes(scopes))
        .identity_rate_limit(RateLimitLayer::keyed(
            per_identity,
            ExtensionKey::new(|c: &VerifiedClaims| c.subject().map(str::to_owned)),
        ))
        .service(app);

    let config = Arc::new(testkit::server::server_config(
        api.server_chain(),
        api.leaf.key_der(),
    ));
    let server = tokio::spawn(portcullis::server::serve_tls(listener, config, stack));
    let url = |path: &str| format!("https://localhost:{port}{path}");

    // --- The client: pinned TLS (intermediate + offline backup key), signed requests. ---
    let policy = PinPolicy::builder()
        .pin(
            "localhost",
            &[&api.intermediate.spki_pin(), &backup.spki_pin()],
        )?
        .build()?;
    let tls = PinnedTls::builder(policy)
        .root_certificates([api.root.cert()])?
        .build()?;
    let client = portcullis::client::builder()
        .pinned(tls.clone())
        .sign(SignLayer::new(device_key))
        .build::<Full<Bytes>>()?;
    let unsigned: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(tls.connector());

    let alice = issuer.token("alice", "orders:read")?;
    let bob = issuer.token("bob", "orders:read")?;
    let mut sent = 0usize;

    println!("axum server with the Portcullis stack on {}", url("/"));

    println!("\n1. GET /orders, signed, with alice's token");
    let ok = send(&client, &url("/orders"), Some(&alice)).await?;
    sent += 1;
    expect("valid token", &ok, StatusCode::OK)?;
    println!("   body: {}", ok.body);
    let body: Value = serde_json::from_str(&ok.body)?;
    if body["user"] != "alice" || body["signed_by"] != "device-1" {
        return Err(format!("the handler did not see the verified claims: {body}").into());
    }

    println!("\n2. GET /orders, signed, without a token");
    let none = send(&client, &url("/orders"), None).await?;
    sent += 1;
    expect("no token", &none, StatusCode::UNAUTHORIZED)?;
    if !header_str(&none, "www-authenticate").starts_with("Bearer") {
        return Err("401 without a Bearer challenge".into());
    }

    println!("\n3. GET /orders, signed, with a token from another issuer key");
    let rogue_issuer = Issuer {
        key: jsonwebtoken::EncodingKey::from_ec_der(
            testkit::pki::self_signed(&LeafSpec::client("login.example"))
                .key
                .secret_pkcs8_der(),
        ),
    };
    let forged = send(
        &client,
        &url("/orders"),
        Some(&rogue_issuer.token("alice", "orders:read admin")?),
    )
    .await?;
    sent += 1;
    expect("forged token", &forged, StatusCode::UNAUTHORIZED)?;
    if !header_str(&forged, "www-authenticate").contains("invalid_token") {
        return Err("forged token refused without error=\"invalid_token\"".into());
    }

    println!("\n4. GET /admin/users with alice's token (scope orders:read only)");
    let scope = send(&client, &url("/admin/users"), Some(&alice)).await?;
    sent += 1;
    expect("missing scope", &scope, StatusCode::FORBIDDEN)?;
    if !header_str(&scope, "www-authenticate").contains("insufficient_scope") {
        return Err("403 without error=\"insufficient_scope\"".into());
    }

    println!("\n5. GET /orders with alice's valid token, but not signed");
    let plain = send(&unsigned, &url("/orders"), Some(&alice)).await?;
    sent += 1;
    expect("unsigned request", &plain, StatusCode::UNAUTHORIZED)?;

    println!("\n6. carol's DPoP-bound token, with a proof from her phone's key, then stolen");
    let jkt = carol_dpop.jkt().to_owned();
    let carol = issuer.bound_token("carol", "orders:read", &jkt)?;
    let phone = tower::ServiceBuilder::new()
        .layer(carol_dpop)
        .service(client.clone());
    let bound = send_as(&phone, &url("/orders"), Some(format!("DPoP {carol}"))).await?;
    sent += 1;
    expect("bound token with its proof", &bound, StatusCode::OK)?;
    let stolen = send(&client, &url("/orders"), Some(&carol)).await?;
    sent += 1;
    expect(
        "the same token stolen, sent as Bearer",
        &stolen,
        StatusCode::UNAUTHORIZED,
    )?;
    if !header_str(&stolen, "www-authenticate").starts_with("DPoP") {
        return Err("a stolen bound token refused without a DPoP challenge".into());
    }

    println!(
        "\n7. alice bursts: the per-identity limit ({PER_IDENTITY_BURST}/hour) answers 429, bob still passes"
    );
    let mut statuses = Vec::new();
    for _ in 1..PER_IDENTITY_BURST {
        statuses.push(send(&client, &url("/orders"), Some(&alice)).await?.status);
        sent += 1;
    }
    let limited = send(&client, &url("/orders"), Some(&alice)).await?;
    sent += 1;
    println!("   burst: {statuses:?}");
    if statuses.iter().any(|s| *s != StatusCode::OK) {
        return Err(format!("alice's quota ran out early: {statuses:?}").into());
    }
    expect("alice, over quota", &limited, StatusCode::TOO_MANY_REQUESTS)?;
    println!("   retry-after: {}s", header_str(&limited, "retry-after"));
    if header_str(&limited, "retry-after").is_empty() {
        return Err("429 without Retry-After".into());
    }
    let other = send(&client, &url("/orders"), Some(&bob)).await?;
    sent += 1;
    expect("bob, same peer IP", &other, StatusCode::OK)?;

    println!(
        "\n8. an unauthenticated flood from 127.0.0.1: the pre-auth limit ({PER_IP_BURST}/hour) answers 429 before any verification"
    );
    let mut unauthorized = 0;
    let flood = loop {
        let answer = send(&client, &url("/orders"), None).await?;
        sent += 1;
        match answer.status {
            StatusCode::UNAUTHORIZED if sent <= PER_IP_BURST as usize => unauthorized += 1,
            _ => break answer,
        }
    };
    println!("   {unauthorized} x 401, then:");
    expect("flood", &flood, StatusCode::TOO_MANY_REQUESTS)?;
    if sent != PER_IP_BURST as usize + 1 {
        return Err(format!(
            "pre-auth limit hit after {sent} requests, expected {}",
            PER_IP_BURST + 1
        )
        .into());
    }
    let blocked = send(&client, &url("/orders"), Some(&bob)).await?;
    sent += 1;
    expect(
        "bob, same peer IP, now limited",
        &blocked,
        StatusCode::TOO_MANY_REQUESTS,
    )?;

    // --- What the audit layer recorded. ---
    auditor.flush();
    let requests = records.with_action("http.request");
    println!("\n9. audit: {} request records", requests.len());
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    for r in &requests {
        *by_status
            .entry(r["http.response.status_code"].to_string())
            .or_default() += 1;
    }
    println!("   by status: {by_status:?}");
    let alice_ok = requests
        .iter()
        .filter(|r| r["user.id"] == "alice" && r["http.response.status_code"] == 200)
        .count();
    println!("   200 records with user.id alice: {alice_ok}");
    if requests.len() != sent {
        return Err(format!("{} audit records for {sent} requests", requests.len()).into());
    }
    if alice_ok != PER_IDENTITY_BURST as usize {
        return Err(format!(
            "{alice_ok} records of alice's accepted requests, expected {PER_IDENTITY_BURST}"
        )
        .into());
    }
    let raised = anomalies.lock().map(|a| a.clone()).unwrap_or_default();
    println!("   anomalies: {raised:?}");
    for kind in ["unauthorized_burst", "rate_limited_burst"] {
        if !raised.iter().any(|a| a.starts_with(kind)) {
            return Err(format!("the detector raised no {kind} anomaly").into());
        }
    }

    server.abort();
    Ok(())
}
