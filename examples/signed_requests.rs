//! Signed requests end to end: a hyper server on loopback verifies RFC 9421 signatures and
//! `Content-Digest`, a hyper client signs every request; a replay and a tampered request are
//! refused.
//!
//! Run: `cargo run -p portcullis-examples --example signed_requests`

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis_attest::{
    MemoryReplayCache, ServiceBuilderExt, SigningKey, StaticKeys, VerifiedSignature,
    VerifySignatureLayer,
};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};

type Body = Full<Bytes>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    run().await
}

/// Runs the example (also run by `tests/examples.rs`); fails with the step that differed.
pub(crate) async fn run() -> Result<(), BoxError> {
    // The device key lives on the client; the server knows its public half by key id.
    let device_key = SigningKey::generate_ed25519("device-42")?;
    let keys = StaticKeys::new().with("device-42", device_key.verifying_key());

    // --- Server: verify before the application runs. ---
    let verify = VerifySignatureLayer::builder(keys)
        .replay_cache(MemoryReplayCache::new(10_000))
        .default_scheme("http")
        .build()?;
    let app = service_fn(|req: Request<Body>| async move {
        let proof = req.extensions().get::<VerifiedSignature>().cloned();
        let body = match req.into_body().collect().await {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        };
        let who = proof.map(|p| p.keyid().to_owned()).unwrap_or_default();
        Ok::<_, std::convert::Infallible>(Response::new(Body::from(format!(
            "accepted from {who}: {}",
            String::from_utf8_lossy(&body)
        ))))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = ServiceBuilder::new()
                .verify_signatures(verify.clone())
                .service(app);
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });

    // --- Client: sign every request; keep a copy of what went on the wire. ---
    let hyper_client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let wire: Arc<Mutex<Vec<Request<Body>>>> = Arc::default();
    let tap = wire.clone();
    let transport = service_fn(move |req: Request<Body>| {
        if let Ok(mut t) = tap.lock() {
            t.push(copy(&req));
        }
        let c = hyper_client.clone();
        async move { c.request(req).await.map_err(BoxError::from) }
    });
    let client = ServiceBuilder::new()
        .sign_requests(device_key)
        .service(transport);

    let url = format!("http://{addr}/v1/transfer");
    let res = client
        .clone()
        .oneshot(
            Request::post(&url)
                .header("content-type", "application/json")
                .body(Body::from("{\"to\":\"bob\",\"amount\":10}"))?,
        )
        .await?;
    let (status, _, body) = read(res).await?;
    println!("signed request   -> {status} {body}");
    assert_eq!(status, StatusCode::OK);

    let raw = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let sent = wire
        .lock()
        .map_err(|_| "tap poisoned")?
        .pop()
        .ok_or("nothing sent")?;

    // An attacker replays the exact bytes.
    let (status, reason_replay, _) = read(raw.request(copy(&sent)).await?).await?;
    println!("replayed request -> {status} reason={reason_replay}");
    assert_eq!(
        (status, reason_replay.as_str()),
        (StatusCode::UNAUTHORIZED, "replayed")
    );

    // An attacker changes the amount (one body byte) and keeps the signature.
    let mut tampered = copy(&sent);
    *tampered.body_mut() = Body::from("{\"to\":\"bob\",\"amount\":90}");
    let (status, reason_tamper, _) = read(raw.request(tampered).await?).await?;
    println!("tampered request -> {status} reason={reason_tamper}");
    assert_eq!(
        (status, reason_tamper.as_str()),
        (StatusCode::UNAUTHORIZED, "digest_mismatch")
    );

    // And a request nobody signed.
    let (status, reason_unsigned, _) = read(
        raw.request(Request::post(&url).body(Body::from("{}"))?)
            .await?,
    )
    .await?;
    println!("unsigned request -> {status} reason={reason_unsigned}");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

fn copy(req: &Request<Body>) -> Request<Body> {
    let mut r = Request::new(req.body().clone());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.headers_mut() = req.headers().clone();
    r
}

async fn read(
    res: Response<hyper::body::Incoming>,
) -> Result<(StatusCode, String, String), BoxError> {
    let status = res.status();
    let reason = res
        .headers()
        .get("portcullis-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, reason, String::from_utf8_lossy(&body).into_owned()))
}
