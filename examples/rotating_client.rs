//! Rotating client: a local OAuth token endpoint issues 2-second JWT access tokens and
//! rotates the refresh token on every use; an API on loopback validates each request with
//! `RequireBearerLayer`; the client injects tokens with `BearerLayer` from a `TokenSource`
//! persisted in an encrypted file store. Requests keep flowing while tokens rotate in the
//! background; then a stolen refresh token is replayed, the endpoint revokes the family, and
//! the client stops with "re-authentication required" instead of looping.
//!
//! Run: `cargo run -p portcullis-examples --example rotating_client`

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use portcullis_token::{
    BearerLayer, FileKey, FileStore, RequireBearerLayer, TokenSource, VerifiedClaims,
    bearer::ReplayBody,
    require::{Algorithm, JwtValidator, VerificationKey},
    secret::KdfParams,
    token::{ClientAuth, OAuthRefresh, TokenError, TokenSet},
};
use testkit::server::TestServer;
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};

const ISSUER: &str = "http://127.0.0.1/issuer";
const AUDIENCE: &str = "orders-api";
const SIGNING_SECRET: [u8; 32] = [0x5e; 32];
const ACCESS_LIFETIME_S: u64 = 2;

/// The token endpoint's memory: the live refresh token of the one session, and every
/// refresh token it already rotated away (reuse of one of those means theft).
#[derive(Default)]
struct Issuer {
    live: Option<String>,
    used: Vec<String>,
    issued: u32,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    resp
}

async fn token_endpoint(
    issuer: Arc<Mutex<Issuer>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form = String::from_utf8_lossy(&body).into_owned();
    let field = |name: &str| {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
    };
    let presented = field("refresh_token").unwrap_or_default();
    let mut st = issuer.lock().unwrap();
    if field("grant_type").as_deref() != Some("refresh_token")
        || st.live.as_deref() != Some(presented.as_str())
    {
        if st.used.contains(&presented) {
            // A rotated-away refresh token came back: someone copied it. Revoke the session.
            st.live = None;
            println!("  [token endpoint] reuse of an old refresh token detected: session revoked");
        }
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_grant"}"#.into(),
        );
    }
    st.issued += 1;
    let n = st.issued;
    st.used.push(presented);
    let rotated = format!("rt-{n}");
    st.live = Some(rotated.clone());
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": "orders:read",
        "iat": now(), "exp": now() + ACCESS_LIFETIME_S, "jti": format!("at-{n}"),
    });
    let access = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&SIGNING_SECRET),
    )
    .unwrap();
    println!("  [token endpoint] issued access token #{n}, rotated the refresh token");
    json(
        StatusCode::OK,
        format!(
            r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":{ACCESS_LIFETIME_S},"refresh_token":"{rotated}"}}"#
        ),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    run().await
}

/// Runs the example (also run by `tests/examples.rs`); fails with the step that differed.
pub(crate) async fn run() -> Result<(), BoxError> {
    // --- Token endpoint. ---
    let issuer = Arc::new(Mutex::new(Issuer {
        live: Some("rt-0-initial".into()),
        ..Default::default()
    }));
    let i = issuer.clone();
    let endpoint = TestServer::http_with(move |req| token_endpoint(i.clone(), req)).await;
    let token_url = format!("http://127.0.0.1:{}/oauth/token", endpoint.port());

    // --- API: every request must carry a valid, short-lived token with the right scope. ---
    let validator = JwtValidator::builder()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .key(VerificationKey::hmac(Algorithm::HS256, &SIGNING_SECRET)?)
        .max_lifetime(Duration::from_secs(60))
        .leeway(Duration::from_secs(0))
        .build()?;
    let api_stack = ServiceBuilder::new()
        .layer(RequireBearerLayer::new(validator).scopes(["orders:read"]))
        .service(service_fn(|req: Request<Incoming>| async move {
            let claims = req.extensions().get::<VerifiedClaims>().cloned();
            let who = claims
                .as_ref()
                .and_then(|c| c.subject())
                .unwrap_or("-")
                .to_owned();
            let jti = claims
                .as_ref()
                .and_then(|c| c.jti())
                .unwrap_or("-")
                .to_owned();
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(format!(
                "orders for {who} (token {jti})"
            )))))
        }));
    let api = TestServer::http_with(move |req| {
        let svc = api_stack.clone();
        async move {
            svc.oneshot(req)
                .await
                .unwrap_or_else(|_| json(StatusCode::INTERNAL_SERVER_ERROR, String::new()))
        }
    })
    .await;
    let api_url = format!("http://127.0.0.1:{}/orders", api.port());

    // --- Client: tokens persisted in an encrypted file, refreshed ahead of expiry. ---
    let dir =
        std::env::temp_dir().join(format!("portcullis-rotating-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key =
        FileKey::passphrase("example passphrase").with_kdf_params(KdfParams::new(19 * 1024, 2, 1)?);
    let store = FileStore::open(dir.join("tokens.pcs"), key).await?;
    let refresher = OAuthRefresh::new(
        Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>(),
        token_url.parse()?,
        ClientAuth::Public {
            client_id: "orders-mobile".into(),
        },
    );
    let source = TokenSource::builder(refresher, store)
        .refresh_margin(Duration::from_millis(1200))
        .min_validity(Duration::from_millis(300))
        .load()
        .await?;
    // After the user signed in, the app holds a refresh token.
    source
        .seed(TokenSet::from_refresh_token("rt-0-initial"))
        .await?;
    let client = ServiceBuilder::new()
        .layer(BearerLayer::new(source.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());

    println!("sending 14 requests, 400 ms apart, with {ACCESS_LIFETIME_S}-second access tokens:");
    for n in 1..=14 {
        let resp = client
            .clone()
            .oneshot(Request::get(api_url.as_str()).body(Full::new(Bytes::new()))?)
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        println!("request {n:2}: {status} {}", String::from_utf8_lossy(&body));
        assert_eq!(
            status,
            StatusCode::OK,
            "every request must pass while tokens rotate"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let issued = issuer.lock().unwrap().issued;
    println!(
        "{issued} refreshes for 14 requests: rotation ran ahead of expiry, one refresh at a time"
    );
    assert!(issued >= 2);

    // An attacker replays a refresh token copied before it was rotated.
    let stolen = issuer
        .lock()
        .unwrap()
        .used
        .last()
        .cloned()
        .unwrap_or_default();
    let attacker = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let form = format!("grant_type=refresh_token&refresh_token={stolen}&client_id=orders-mobile");
    let resp = attacker
        .request(
            Request::post(token_url.as_str())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form)))?,
        )
        .await?;
    println!("attacker replaying an old refresh token: {}", resp.status());

    // The client's next refresh is refused; it stops and asks for a new login.
    tokio::time::sleep(Duration::from_secs(ACCESS_LIFETIME_S)).await;
    match source.token().await {
        Err(TokenError::ReauthenticationRequired) => {
            println!("client: re-authentication required (stored tokens cleared), no retry loop")
        }
        other => return Err(format!("expected re-authentication, got {other:?}").into()),
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
