//! Threat: one signing key sends fresh nonces faster than they expire, fills the replay cache
//! and the verifier then refuses every client (a global kill switch). Defence: the replay
//! cache's room is partitioned per source (the key id for signatures); a key over its share
//! is refused alone with `429 replay_quota_exceeded`, in memory and in Redis shared by
//! replicas, while other keys are served.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::attest::{
    MemoryReplayCache, RedisReplayCache, ReplayCache, SignLayer, SigningKey, StaticKeys,
    VerifiedSignature, VerifySignatureLayer,
};
use portcullis::client::PinnedClient;
use portcullis::pin::{PinPolicy, PinnedTls};
use testkit::pki::TestPki;
use testkit::redis::RedisServer;
use testkit::server::TestServer;
use tower::{Layer, ServiceExt, service_fn};

/// Requests the attacker sends: more than the whole cache in the memory case.
const FLOOD: usize = 70;
/// A cache this small gives each key a share of `64 / 32 = 2` live nonces by default.
const CAPACITY: usize = 64;

fn keys() -> (SigningKey, SigningKey, StaticKeys) {
    let mallory = SigningKey::generate_ed25519("mallory").unwrap();
    let alice = SigningKey::generate_ed25519("alice").unwrap();
    let known = StaticKeys::new()
        .with(mallory.keyid(), mallory.verifying_key())
        .with(alice.keyid(), alice.verifying_key());
    (mallory, alice, known)
}

/// A verifying HTTPS server on loopback; the app answers with the verified key id.
async fn replica(pki: &TestPki, known: StaticKeys, cache: impl ReplayCache) -> TestServer {
    let layer = VerifySignatureLayer::builder(known)
        .replay_cache(cache)
        .build()
        .unwrap();
    let app = service_fn(|req: Request<Full<Bytes>>| async move {
        let who = req.extensions().get::<VerifiedSignature>().unwrap().keyid();
        Ok::<_, Infallible>(Response::new(Full::from(who.to_owned())))
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

/// Signs a fresh request (new nonce) for `server` and sends it: (status, reason, body).
async fn send(
    client: &PinnedClient,
    key: &SigningKey,
    server: &TestServer,
    n: usize,
) -> (u16, String, String) {
    let slot = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let capture = service_fn(move |req: Request<Full<Bytes>>| {
        *out.lock().unwrap() = Some(req);
        async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
    });
    let url = format!("https://localhost:{}/v1/transfer", server.port());
    let req = Request::post(url)
        .body(Full::<Bytes>::from(format!("{{\"n\":{n}}}")))
        .unwrap();
    SignLayer::new(key.clone())
        .layer(capture)
        .oneshot(req)
        .await
        .unwrap();
    let signed = slot.lock().unwrap().take().unwrap();
    let res = client.request(signed).await.unwrap();
    let status = res.status().as_u16();
    let reason = res
        .headers()
        .get("portcullis-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, reason, String::from_utf8_lossy(&body).into_owned())
}

/// Mallory floods the replicas in turn, then Alice (and Mallory again) call them.
async fn attack(servers: &[TestServer], pki: &TestPki, mallory: &SigningKey, alice: &SigningKey) {
    let client = client(pki);
    let mut mallory_outcomes = Vec::new();
    for n in 0..FLOOD {
        let server = &servers[n % servers.len()];
        let (status, reason, _) = send(&client, mallory, server, n).await;
        mallory_outcomes.push((status, reason));
    }
    // Alice uses her whole share (2), across the replicas, after the flood.
    for n in 0..2 {
        let server = &servers[n % servers.len()];
        assert_eq!(
            send(&client, alice, server, 1000 + n).await,
            (200, String::new(), "alice".to_owned()),
            "alice's request {n} is served despite mallory's flood"
        );
    }
    let accepted = mallory_outcomes.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(accepted, 2, "mallory gets her share and no more");
    assert!(
        mallory_outcomes[accepted..]
            .iter()
            .all(|(s, r)| *s == 429 && r == "replay_quota_exceeded"),
        "the rest of the flood is refused with a typed reason: {mallory_outcomes:?}"
    );
    let (status, reason, _) = send(&client, mallory, &servers[0], FLOOD).await;
    assert_eq!((status, reason.as_str()), (429, "replay_quota_exceeded"));
}

#[tokio::test]
async fn one_key_flooding_the_memory_cache_is_refused_alone() {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let (mallory, alice, known) = keys();
    let server = replica(&pki, known, MemoryReplayCache::new(CAPACITY)).await;
    attack(&[server], &pki, &mallory, &alice).await;
}

#[tokio::test]
async fn one_key_flooding_replicas_sharing_redis_is_refused_alone() {
    testkit::install_default_provider();
    let redis = RedisServer::start();
    let pki = TestPki::new();
    let (mallory, alice, known) = keys();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let cache = RedisReplayCache::connect(&redis.url())
            .await
            .unwrap()
            .capacity(CAPACITY);
        servers.push(replica(&pki, known.clone(), cache).await);
    }
    // The flood alternates between the replicas: the share is counted once, in Redis.
    attack(&servers, &pki, &mallory, &alice).await;
}
