//! Threat: a signed request changed on its way (a compromised proxy or TLS-terminating
//! middlebox, a malicious SDK hook): its method, path, query, authority, a covered header or
//! its body rewritten, its signature moved onto another request, or a signature that is not
//! fresh (`created` in the future, `expires` passed, too old) or made by a key the server does
//! not know. Defence: the attest layer's `VerifySignatureLayer` (RFC 9421, the preset server
//! stack's `verify_signatures` step) rebuilds the signature base from what arrived and checks
//! the covered `Content-Digest` against the body before the service runs: `401` with the
//! reason in `portcullis-reason` and an `Accept-Signature` hint. The requests are signed by
//! `SignLayer`, then edited byte by byte and written raw over TLS to `serve_tls`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use portcullis::attest::{
    SignLayer, SigningKey, StaticKeys, VerifiedSignature, VerifySignatureLayer,
};
use sha2::Digest as _;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt, service_fn};

use crate::support::{RawResponse, Serving};

const BODY: &str = "{\"amount\":100,\"to\":\"alice\"}";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The preset server stack verifying signatures by `device-1`, over TLS; counts requests
/// that reach the app.
struct Api {
    serving: Serving,
    reached: Arc<AtomicUsize>,
}

async fn api(key: &SigningKey) -> Api {
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let verify =
        VerifySignatureLayer::builder(StaticKeys::new().with("device-1", key.verifying_key()))
            .build()
            .unwrap();
    let stack = portcullis::server::builder()
        .verify_signatures(verify)
        .service(service_fn(move |req: Request<Full<Bytes>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            let keyid = req
                .extensions()
                .get::<VerifiedSignature>()
                .map(|s| s.keyid().to_owned())
                .unwrap_or_default();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let text = format!("{keyid}:{}", String::from_utf8_lossy(&body));
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            }
        }));
    Api {
        serving: Serving::start(stack).await,
        reached,
    }
}

/// Signs `req` with `signer` and returns it as it would leave the client.
async fn sign(signer: &SignLayer, req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let wire = service_fn(move |req: Request<Full<Bytes>>| {
        *s.lock().unwrap() = Some(req);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    signer
        .layer(BoxCloneService::new(wire))
        .oneshot(req)
        .await
        .unwrap();
    seen.lock().unwrap().take().expect("one request sent")
}

/// The HTTP/1.1 bytes of `req` (its body read), as a client writes them.
async fn to_wire(req: Request<Full<Bytes>>) -> String {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let mut out = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\n",
        parts.method,
        parts.uri.path_and_query().unwrap(),
        parts.uri.authority().unwrap()
    );
    for (name, value) in &parts.headers {
        out.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    out.push_str(std::str::from_utf8(&body).unwrap());
    out
}

fn transfer(api: &Api, method: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(api.serving.url(path))
        .header("content-type", "application/json")
        .header("authorization", "Bearer opaque-token-1")
        .body(Full::from(BODY))
        .unwrap()
}

fn replace(wire: &str, from: &str, to: &str) -> String {
    assert!(wire.contains(from), "{from:?} not in\n{wire}");
    wire.replacen(from, to, 1)
}

fn content_digest(body: &str) -> String {
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body.as_bytes()))
    )
}

impl Api {
    async fn send(&self, wire: &str) -> RawResponse {
        self.serving
            .raw(wire.as_bytes())
            .await
            .expect("the server answers")
    }

    /// Sends each attack and checks the answer the client gets.
    async fn assert_refused(&self, cases: Vec<(&str, String, &str)>) {
        for (what, wire, reason) in cases {
            let before = self.reached.load(Ordering::SeqCst);
            let res = self.send(&wire).await;
            assert_eq!(
                (res.status, res.header("portcullis-reason")),
                (401, reason),
                "{what}"
            );
            assert!(
                res.header("accept-signature").starts_with("sig1=("),
                "{what}: {:?}",
                res.headers
            );
            assert_eq!(
                self.reached.load(Ordering::SeqCst),
                before,
                "{what}: app ran"
            );
        }
    }
}

#[tokio::test]
async fn every_covered_part_changed_in_transit_is_refused() {
    let key = SigningKey::generate_ed25519("device-1").unwrap();
    let api = api(&key).await;
    let signer = SignLayer::new(key);
    let fresh = || async {
        to_wire(sign(&signer, transfer(&api, "POST", "/v1/transfers?id=7&dry=no")).await).await
    };
    let authority = format!("host: localhost:{}", api.serving.port);
    let tampered_body = BODY.replace("100", "900");

    // Each case signs afresh (a new nonce), so nothing is refused as a replay.
    let mut cases = Vec::new();
    cases.push((
        "method",
        replace(&fresh().await, "POST ", "PUT "),
        "invalid_signature",
    ));
    cases.push((
        "path",
        replace(&fresh().await, "/v1/transfers?", "/v1/refunds?"),
        "invalid_signature",
    ));
    cases.push((
        "query",
        replace(&fresh().await, "id=7", "id=8"),
        "invalid_signature",
    ));
    cases.push((
        "query parameter appended",
        replace(&fresh().await, "dry=no", "dry=no&admin=1"),
        "invalid_signature",
    ));
    cases.push((
        "authority",
        replace(&fresh().await, &authority, "host: evil.test"),
        "invalid_signature",
    ));
    cases.push((
        "covered content-type",
        replace(
            &fresh().await,
            "content-type: application/json",
            "content-type: text/plain",
        ),
        "invalid_signature",
    ));
    cases.push((
        "covered authorization",
        replace(
            &fresh().await,
            "Bearer opaque-token-1",
            "Bearer opaque-token-2",
        ),
        "invalid_signature",
    ));
    cases.push((
        "body (Content-Digest mismatch)",
        replace(&fresh().await, BODY, &tampered_body),
        "digest_mismatch",
    ));
    let wire = fresh().await;
    let rewritten = replace(
        &replace(&wire, BODY, &tampered_body),
        &content_digest(BODY),
        &content_digest(&tampered_body),
    );
    cases.push((
        "body and a matching Content-Digest",
        rewritten,
        "invalid_signature",
    ));
    api.assert_refused(cases).await;

    // Control: untouched, and with a header the signature does not cover added, it passes.
    for wire in [
        fresh().await,
        replace(
            &fresh().await,
            "connection: close",
            "x-note: hi\r\nconnection: close",
        ),
    ] {
        let res = api.send(&wire).await;
        assert_eq!(res.status, 200, "{:?}", res.headers);
        assert_eq!(res.body, format!("device-1:{BODY}").as_bytes());
    }
}

#[tokio::test]
async fn a_signature_moved_onto_another_request_is_refused() {
    let key = SigningKey::generate_ed25519("device-1").unwrap();
    let api = api(&key).await;
    let signer = SignLayer::new(key);
    let small = to_wire(sign(&signer, transfer(&api, "POST", "/v1/transfers?id=1")).await).await;
    let big = to_wire(sign(&signer, transfer(&api, "POST", "/v1/payouts?id=2")).await).await;
    let field = |wire: &str, name: &str| -> String {
        wire.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_owned()
    };
    let moved = replace(
        &replace(
            &big,
            &field(&big, "signature-input:"),
            &field(&small, "signature-input:"),
        ),
        &field(&big, "signature:"),
        &field(&small, "signature:"),
    );
    api.assert_refused(vec![(
        "signature of another request",
        moved,
        "invalid_signature",
    )])
    .await;
}

#[tokio::test]
async fn stale_future_and_unknown_key_signatures_are_refused() {
    let key = SigningKey::generate_ed25519("device-1").unwrap();
    let api = api(&key).await;
    let signed = |signer: SignLayer| {
        let req = transfer(&api, "POST", "/v1/transfers?id=9");
        async move { to_wire(sign(&signer, req).await).await }
    };
    let t = now();
    let stranger = SigningKey::generate_ed25519("device-2").unwrap();
    let impostor = SigningKey::generate_ed25519("device-1").unwrap();
    let cases = vec![
        (
            "created ten minutes in the future",
            signed(SignLayer::new(key.clone()).clock(move || t + 600)).await,
            "created_in_future",
        ),
        (
            "expires passed",
            signed(
                SignLayer::new(key.clone())
                    .clock(move || t - 120)
                    .expires_in(Some(Duration::from_secs(60))),
            )
            .await,
            "expired",
        ),
        (
            "created longer ago than the maximum age, no expires",
            signed(
                SignLayer::new(key.clone())
                    .clock(move || t - 600)
                    .expires_in(None),
            )
            .await,
            "too_old",
        ),
        (
            "keyid the server does not know",
            signed(SignLayer::new(stranger)).await,
            "unknown_key",
        ),
        (
            "another key under a known keyid",
            signed(SignLayer::new(impostor)).await,
            "invalid_signature",
        ),
    ];
    api.assert_refused(cases).await;
}
