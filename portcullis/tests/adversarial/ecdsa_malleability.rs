//! Threat: with `allow_missing_nonce()`, an attacker who captured an ECDSA P-256 signed
//! request sends it again with the signature's mirror `(r, n - s)`, which verifies too, and
//! gets it accepted a second time. Defence: replays are keyed on a SHA-256 of the algorithm,
//! the key id and the signature base (the signed message), never on the signature bytes.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::attest::{SignLayer, SigningKey, StaticKeys, VerifySignatureLayer};
use portcullis::client::PinnedClient;
use portcullis::pin::{PinPolicy, PinnedTls};
use testkit::pki::TestPki;
use testkit::server::TestServer;
use tower::{Layer, ServiceExt, service_fn};

/// The order of the P-256 group (SEC 2, FIPS 186-4 D.1.2.3), big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `n - s` for a 32-byte big-endian `s` with `0 < s < n`: schoolbook subtraction with borrow.
fn n_minus(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0u16;
    for i in (0..32).rev() {
        let sub = u16::from(s[i]) + borrow;
        let top = u16::from(P256_N[i]);
        if top >= sub {
            out[i] = (top - sub) as u8;
            borrow = 0;
        } else {
            out[i] = (top + 256 - sub) as u8;
            borrow = 1;
        }
    }
    assert_eq!(borrow, 0, "s is below n");
    out
}

/// The `Signature` field `sig1=:r || s:` rewritten as `sig1=:r || (n - s):`.
fn mirrored(field: &HeaderValue) -> HeaderValue {
    let text = field.to_str().unwrap();
    let b64 = text
        .strip_prefix("sig1=:")
        .and_then(|t| t.strip_suffix(':'))
        .unwrap();
    let sig = STANDARD.decode(b64).unwrap();
    assert_eq!(sig.len(), 64, "ecdsa-p256-sha256 is r || s, 32 bytes each");
    let (r, s) = sig.split_at(32);
    let mut twin = r.to_vec();
    twin.extend_from_slice(&n_minus(s));
    assert_ne!(twin, sig);
    HeaderValue::from_str(&format!("sig1=:{}:", STANDARD.encode(twin))).unwrap()
}

#[test]
fn the_byte_subtraction_is_right() {
    let mut one = [0u8; 32];
    one[31] = 1;
    let mut n_minus_one = P256_N;
    n_minus_one[31] -= 1;
    assert_eq!(n_minus(&one), n_minus_one);
    assert_eq!(n_minus(&n_minus_one), one);
    let mut borrow = [0u8; 32];
    borrow[0] = 0x01; // 2^248: every lower byte borrows
    let twice = n_minus(&n_minus(&borrow));
    assert_eq!(twice, borrow);
}

async fn server(pki: &TestPki, key: &SigningKey) -> TestServer {
    let layer =
        VerifySignatureLayer::builder(StaticKeys::new().with(key.keyid(), key.verifying_key()))
            .allow_missing_nonce()
            .build()
            .unwrap();
    let app = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::from("transferred")))
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

/// Signs `body` for `server` without a nonce: the request as it goes on the wire.
async fn capture(key: &SigningKey, server: &TestServer, body: &str) -> Request<Full<Bytes>> {
    let slot = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let capture = service_fn(move |req: Request<Full<Bytes>>| {
        *out.lock().unwrap() = Some(req);
        async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
    });
    let url = format!("https://localhost:{}/v1/transfer", server.port());
    let req = Request::post(url)
        .body(Full::<Bytes>::from(body.to_owned()))
        .unwrap();
    SignLayer::new(key.clone())
        .without_nonce()
        .layer(capture)
        .oneshot(req)
        .await
        .unwrap();
    slot.lock().unwrap().take().unwrap()
}

/// The captured request and its copy carrying the mirrored signature.
fn with_twin(signed: Request<Full<Bytes>>) -> (Request<Full<Bytes>>, Request<Full<Bytes>>) {
    let mut twin = Request::builder()
        .method(signed.method().clone())
        .uri(signed.uri().clone())
        .body(signed.body().clone())
        .unwrap();
    *twin.headers_mut() = signed.headers().clone();
    let field = mirrored(&signed.headers()["signature"]);
    twin.headers_mut().insert("signature", field);
    (signed, twin)
}

async fn send(client: &PinnedClient, req: Request<Full<Bytes>>) -> (u16, String) {
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let reason = res
        .headers()
        .get("portcullis-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = res.into_body().collect().await;
    (status, reason)
}

#[tokio::test]
async fn a_mirrored_ecdsa_signature_does_not_replay_a_request() {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let key = SigningKey::generate_ecdsa_p256("device-ec").unwrap();
    let server = server(&pki, &key).await;
    let client = client(&pki);

    // The victim's request goes through; the attacker sends its mirrored twin afterwards.
    let (original, twin) = with_twin(capture(&key, &server, "{\"to\":\"mallory\"}").await);
    assert_eq!(send(&client, original).await, (200, String::new()));
    assert_eq!(
        send(&client, twin).await,
        (401, "replayed".into()),
        "the (r, n - s) twin of an accepted signature is the same message: a replay"
    );

    // The twin is a valid signature (the check above is replay detection, not a bad
    // signature): delivered first, it is the one accepted and the original is the replay.
    let (original, twin) = with_twin(capture(&key, &server, "{\"to\":\"carol\"}").await);
    assert_eq!(send(&client, twin).await, (200, String::new()));
    assert_eq!(send(&client, original).await, (401, "replayed".into()));
    assert_eq!(server.requests(), 4);
}
