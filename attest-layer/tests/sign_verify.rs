//! Signing and verification end to end through the tower layers: round trips, the tamper
//! matrix, freshness, keys, algorithms, body caps and replays.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{app, duplicate, outcome, sign};
use http::Request;
use http_body_util::Full;
use portcullis_attest::{
    Algorithm, Component, DigestAlgorithm, MemoryReplayCache, SignError, SignLayer, SigningKey,
    StaticKeys, VerifySignatureLayer,
};
use secrecy::SecretSlice;
use tower::{Layer, ServiceExt};

const NOW: u64 = 1_700_000_000;

fn keys() -> (SigningKey, SigningKey, SigningKey) {
    let ed = SigningKey::generate_ed25519("ed").unwrap();
    let ec = SigningKey::generate_ecdsa_p256("ec").unwrap();
    let hm = SigningKey::hmac_sha256("hm", &SecretSlice::from(vec![7u8; 32])).unwrap();
    (ed, ec, hm)
}

fn server_keys(list: &[&SigningKey]) -> StaticKeys {
    list.iter().fold(StaticKeys::new(), |k, s| {
        k.with(s.keyid(), s.verifying_key())
    })
}

fn post(body: &'static str) -> Request<Full<Bytes>> {
    Request::post("http://api.example.com:8443/v1/orders?id=7&x=y")
        .header("content-type", "application/json")
        .header("authorization", "Bearer abc")
        .body(Full::from(body))
        .unwrap()
}

fn verifier(keys: StaticKeys) -> VerifySignatureLayer {
    VerifySignatureLayer::builder(keys)
        .clock(|| NOW)
        .build()
        .unwrap()
}

async fn verify(layer: &VerifySignatureLayer, req: Request<Full<Bytes>>) -> (u16, String, String) {
    let res = layer.layer(app()).oneshot(req).await.unwrap();
    outcome(res).await
}

#[tokio::test]
async fn each_algorithm_round_trips_and_the_proof_reaches_the_app() {
    let (ed, ec, hm) = keys();
    let layer = verifier(server_keys(&[&ed, &ec, &hm]));
    for key in [ed, ec, hm] {
        let alg = key.algorithm();
        let signed = sign(
            &SignLayer::new(key.clone()).clock(|| NOW),
            post("{\"n\":1}"),
        )
        .await
        .unwrap();
        let input = signed.headers()["signature-input"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(input.starts_with("sig1=(\"@method\" \"@authority\" \"@path\" \"@query\" \"content-digest\" \"content-type\" \"authorization\");created=1700000000;expires=1700000300;nonce="), "{input}");
        assert!(
            input.contains(&format!(";keyid=\"{}\";alg=\"{}\"", key.keyid(), alg)),
            "{input}"
        );
        assert!(
            signed.headers()["content-digest"]
                .to_str()
                .unwrap()
                .starts_with("sha-256=:")
        );
        let (status, reason, body) = verify(&layer, signed).await;
        assert_eq!(
            (status, reason.as_str(), body),
            (200, "", format!("{}:{{\"n\":1}}", key.keyid())),
            "{alg}"
        );
    }
}

#[tokio::test]
async fn a_get_without_body_is_signed_without_content_digest() {
    let (ed, ..) = keys();
    let req = Request::get("http://127.0.0.1:9/health")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let signed = sign(&SignLayer::new(ed.clone()).clock(|| NOW), req)
        .await
        .unwrap();
    assert!(signed.headers().get("content-digest").is_none());
    assert_eq!(verify(&verifier(server_keys(&[&ed])), signed).await.0, 200);
}

#[tokio::test]
async fn sha512_content_digest_is_verified_too() {
    let (ed, ..) = keys();
    let signed = sign(
        &SignLayer::new(ed.clone())
            .digest(DigestAlgorithm::Sha512)
            .clock(|| NOW),
        post("abc"),
    )
    .await
    .unwrap();
    assert!(
        signed.headers()["content-digest"]
            .to_str()
            .unwrap()
            .starts_with("sha-512=:")
    );
    assert_eq!(verify(&verifier(server_keys(&[&ed])), signed).await.0, 200);
}

/// Applies `tamper` to a freshly signed request and returns the verifier's reason.
async fn tampered(tamper: impl FnOnce(&mut Request<Full<Bytes>>)) -> (u16, String) {
    let (ed, ..) = keys();
    let mut signed = sign(
        &SignLayer::new(ed.clone()).clock(|| NOW),
        post("{\"amount\":100}"),
    )
    .await
    .unwrap();
    tamper(&mut signed);
    let (s, r, _) = verify(&verifier(server_keys(&[&ed])), signed).await;
    (s, r)
}

#[tokio::test]
async fn tamper_matrix_every_change_is_refused() {
    let invalid = (401, "invalid_signature".to_owned());
    assert_eq!(
        tampered(|r| *r.method_mut() = http::Method::PUT).await,
        invalid,
        "method"
    );
    assert_eq!(
        tampered(
            |r| *r.uri_mut() = "http://evil.example.com:8443/v1/orders?id=7&x=y"
                .parse()
                .unwrap()
        )
        .await,
        invalid,
        "authority"
    );
    assert_eq!(
        tampered(
            |r| *r.uri_mut() = "http://api.example.com:8443/v1/refunds?id=7&x=y"
                .parse()
                .unwrap()
        )
        .await,
        invalid,
        "path"
    );
    assert_eq!(
        tampered(
            |r| *r.uri_mut() = "http://api.example.com:8443/v1/orders?id=8&x=y"
                .parse()
                .unwrap()
        )
        .await,
        invalid,
        "query"
    );
    assert_eq!(
        tampered(|r| {
            r.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
        })
        .await,
        invalid,
        "content-type"
    );
    assert_eq!(
        tampered(|r| {
            r.headers_mut()
                .insert("authorization", "Bearer xyz".parse().unwrap());
        })
        .await,
        invalid,
        "authorization"
    );
    assert_eq!(
        tampered(|r| *r.body_mut() = Full::from("{\"amount\":900}")).await,
        (401, "digest_mismatch".to_owned()),
        "one body byte"
    );
    assert_eq!(
        tampered(|r| {
            r.headers_mut().insert(
                "content-digest",
                "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:"
                    .parse()
                    .unwrap(),
            );
        })
        .await,
        invalid,
        "a rewritten digest breaks the signature"
    );
    assert_eq!(tampered(|_| ()).await, (200, String::new()), "untouched");
}

#[tokio::test]
async fn an_identical_replay_is_refused() {
    let (ed, ..) = keys();
    let layer = verifier(server_keys(&[&ed]));
    let signed = sign(&SignLayer::new(ed.clone()).clock(|| NOW), post("x"))
        .await
        .unwrap();
    let again = duplicate(&signed).await;
    assert_eq!(verify(&layer, signed).await.0, 200);
    let (status, reason, _) = verify(&layer, again).await;
    assert_eq!((status, reason.as_str()), (401, "replayed"));
}

#[tokio::test]
async fn replay_without_nonce_is_caught_by_the_signature_base() {
    let (ed, ..) = keys();
    let layer = VerifySignatureLayer::builder(server_keys(&[&ed]))
        .clock(|| NOW)
        .allow_missing_nonce()
        .build()
        .unwrap();
    let signed = sign(
        &SignLayer::new(ed.clone()).without_nonce().clock(|| NOW),
        post("x"),
    )
    .await
    .unwrap();
    let again = duplicate(&signed).await;
    assert_eq!(verify(&layer, signed).await.0, 200);
    assert_eq!(verify(&layer, again).await.1, "replayed");
}

#[tokio::test]
async fn a_second_ecdsa_signature_of_the_same_message_is_a_replay() {
    // ECDSA signatures are randomised: signing the same request twice gives two different
    // signature values over one signature base. Without a nonce, that base is the message.
    let (_, ec, _) = keys();
    let layer = VerifySignatureLayer::builder(server_keys(&[&ec]))
        .clock(|| NOW)
        .allow_missing_nonce()
        .build()
        .unwrap();
    let signer = SignLayer::new(ec.clone()).without_nonce().clock(|| NOW);
    let first = sign(&signer, post("x")).await.unwrap();
    let second = sign(&signer, post("x")).await.unwrap();
    assert_ne!(
        first.headers()["signature"],
        second.headers()["signature"],
        "two signatures of one base"
    );
    assert_eq!(verify(&layer, first).await.0, 200);
    let (status, reason, _) = verify(&layer, second).await;
    assert_eq!((status, reason.as_str()), (401, "replayed"));
}

async fn reason_with(signer: SignLayer, layer: &VerifySignatureLayer) -> String {
    let signed = sign(&signer, post("x")).await.unwrap();
    verify(layer, signed).await.1
}

#[tokio::test]
async fn freshness_created_and_expires_are_enforced() {
    let (ed, ..) = keys();
    let layer = verifier(server_keys(&[&ed]));
    let signer = || SignLayer::new(ed.clone());
    assert_eq!(
        reason_with(signer().clock(|| NOW - 301), &layer).await,
        "too_old"
    );
    assert_eq!(
        reason_with(signer().clock(|| NOW - 300).expires_in(None), &layer).await,
        "",
        "exactly max age is accepted"
    );
    assert_eq!(
        reason_with(signer().clock(|| NOW + 6), &layer).await,
        "created_in_future"
    );
    assert_eq!(
        reason_with(signer().clock(|| NOW + 5), &layer).await,
        "",
        "within the skew"
    );
    assert_eq!(
        reason_with(
            signer()
                .clock(|| NOW - 60)
                .expires_in(Some(Duration::from_secs(30))),
            &layer
        )
        .await,
        "expired"
    );
    assert_eq!(
        reason_with(signer().clock(|| NOW - 60).expires_in(None), &layer).await,
        ""
    );
}

#[tokio::test]
async fn keys_and_algorithms_unknown_mismatched_or_not_accepted_are_refused() {
    let (ed, ec, hm) = keys();
    let layer = verifier(server_keys(&[&ed]));
    assert_eq!(
        reason_with(SignLayer::new(ec.clone()).clock(|| NOW), &layer).await,
        "unknown_key"
    );

    // The server knows "hm" as an ed25519 key; the request claims hmac-sha256.
    let confused = VerifySignatureLayer::builder(StaticKeys::new().with("hm", ed.verifying_key()))
        .clock(|| NOW)
        .build()
        .unwrap();
    assert_eq!(
        reason_with(SignLayer::new(hm.clone()).clock(|| NOW), &confused).await,
        "algorithm_mismatch"
    );
    // Without the alg parameter the key still decides: the HMAC tag is checked as ed25519 and fails.
    assert_eq!(
        reason_with(
            SignLayer::new(hm.clone()).without_alg().clock(|| NOW),
            &confused
        )
        .await,
        "invalid_signature"
    );

    let asym_only = VerifySignatureLayer::builder(server_keys(&[&hm]))
        .algorithms([Algorithm::Ed25519, Algorithm::EcdsaP256Sha256])
        .clock(|| NOW)
        .build()
        .unwrap();
    assert_eq!(
        reason_with(SignLayer::new(hm).clock(|| NOW), &asym_only).await,
        "algorithm_not_accepted"
    );
}

#[tokio::test]
async fn missing_required_component_nonce_or_tag_is_refused() {
    let (ed, ..) = keys();
    let layer = verifier(server_keys(&[&ed]));
    let only_method = SignLayer::new(ed.clone())
        .components(vec![
            Component::new("@method").unwrap(),
            Component::new("content-digest").unwrap(),
        ])
        .clock(|| NOW);
    assert_eq!(reason_with(only_method, &layer).await, "missing_component");
    assert_eq!(
        reason_with(
            SignLayer::new(ed.clone()).without_nonce().clock(|| NOW),
            &layer
        )
        .await,
        "missing_nonce"
    );

    let tagged = VerifySignatureLayer::builder(server_keys(&[&ed]))
        .require_tag("app-1")
        .clock(|| NOW)
        .build()
        .unwrap();
    assert_eq!(
        reason_with(SignLayer::new(ed.clone()).clock(|| NOW), &tagged).await,
        "wrong_tag"
    );
    assert_eq!(
        reason_with(
            SignLayer::new(ed.clone()).tag("app-2").clock(|| NOW),
            &tagged
        )
        .await,
        "wrong_tag"
    );
    assert_eq!(
        reason_with(
            SignLayer::new(ed.clone()).tag("app-1").clock(|| NOW),
            &tagged
        )
        .await,
        ""
    );

    let needs_ct = VerifySignatureLayer::builder(server_keys(&[&ed]))
        .require_components(["@method", "@path", "content-type", "x-request-id"])
        .clock(|| NOW)
        .build()
        .unwrap();
    assert_eq!(
        reason_with(SignLayer::new(ed).clock(|| NOW), &needs_ct).await,
        "missing_component"
    );
}

#[tokio::test]
async fn a_body_without_covered_digest_is_refused() {
    let (ed, ..) = keys();
    let layer = verifier(server_keys(&[&ed]));
    let names = ["@method", "@authority", "@path", "@query"];
    let no_digest = SignLayer::new(ed.clone())
        .components(names.iter().map(|n| Component::new(n).unwrap()).collect())
        .clock(|| NOW);
    assert_eq!(
        reason_with(no_digest, &layer).await,
        "missing_content_digest"
    );
}

#[tokio::test]
async fn malformed_or_missing_signature_fields_are_refused_with_accept_signature() {
    let (ed, ..) = keys();
    let layer = verifier(server_keys(&[&ed]));
    let signed = sign(&SignLayer::new(ed.clone()).clock(|| NOW), post("x"))
        .await
        .unwrap();

    for (bad, want) in [
        ("sig1=(\"@method\" \"@path\"", "malformed_signature_input"),
        ("sig1=\"@method\"", "malformed_signature_input"),
        ("sig1=(\"@METHOD\");created=1", "malformed_signature_input"),
        ("sig1=(\"@status\");created=1", "malformed_signature_input"),
        (
            "sig1=(\"@method\");created=-4;keyid=\"ed\"",
            "malformed_signature_input",
        ),
        (
            "sig1=(\"@method\");created=\"yesterday\"",
            "malformed_signature_input",
        ),
    ] {
        let mut r = duplicate(&signed).await;
        r.headers_mut()
            .insert("signature-input", bad.parse().unwrap());
        let res = layer.layer(app()).oneshot(r).await.unwrap();
        assert_eq!(
            res.headers()["accept-signature"],
            "sig1=(\"@method\" \"@authority\" \"@path\" \"@query\");created;nonce"
        );
        assert_eq!(outcome(res).await.1, want, "{bad}");
    }
    let mut r = duplicate(&signed).await;
    r.headers_mut()
        .insert("signature", "sig1=\"not bytes\"".parse().unwrap());
    assert_eq!(verify(&layer, r).await.1, "malformed_signature");
    let mut r = duplicate(&signed).await;
    r.headers_mut().remove("signature");
    assert_eq!(verify(&layer, r).await.1, "missing_signature");
    let mut r = duplicate(&signed).await;
    r.headers_mut()
        .insert("signature", "other=:AAAA:".parse().unwrap());
    assert_eq!(verify(&layer, r).await.1, "malformed_signature");
}

#[tokio::test]
async fn over_cap_bodies_fail_on_the_client_and_are_refused_by_the_server() {
    let (ed, ..) = keys();
    let big = "x".repeat(2048);
    let req = Request::post("http://a.example/upload")
        .body(Full::from(big.clone()))
        .unwrap();
    let err = sign(
        &SignLayer::new(ed.clone()).max_body(1024).clock(|| NOW),
        req,
    )
    .await
    .unwrap_err();
    let err = err.downcast::<SignError>().expect("a SignError");
    assert!(
        matches!(*err, SignError::BodyTooLarge { limit: 1024 }),
        "{err}"
    );
    assert!(err.to_string().contains("1024"), "{err}");

    let req = Request::post("http://a.example/upload")
        .body(Full::from(big))
        .unwrap();
    let signed = sign(&SignLayer::new(ed.clone()).clock(|| NOW), req)
        .await
        .unwrap();
    let layer = VerifySignatureLayer::builder(server_keys(&[&ed]))
        .max_body(1024)
        .clock(|| NOW)
        .build()
        .unwrap();
    let (status, reason, _) = verify(&layer, signed).await;
    assert_eq!((status, reason.as_str()), (413, "body_too_large"));
}

#[tokio::test]
async fn the_replay_cache_failing_closed_answers_503() {
    // One entry in all: the second key finds the whole cache full (no reserve at this size).
    let (ed, ec, _) = keys();
    let cache = MemoryReplayCache::new(1);
    let layer = VerifySignatureLayer::builder(server_keys(&[&ed, &ec]))
        .replay_cache(cache)
        .clock(|| NOW)
        .build()
        .unwrap();
    let a = sign(&SignLayer::new(ed.clone()).clock(|| NOW), post("a"))
        .await
        .unwrap();
    let b = sign(&SignLayer::new(ec.clone()).clock(|| NOW), post("b"))
        .await
        .unwrap();
    assert_eq!(verify(&layer, a).await.0, 200);
    let (status, reason, _) = verify(&layer, b).await;
    assert_eq!((status, reason.as_str()), (503, "replay_cache_unavailable"));
}

#[tokio::test]
async fn a_key_over_its_replay_share_gets_429_and_the_other_keys_do_not() {
    let (ed, ec, _) = keys();
    let cache = MemoryReplayCache::new(1_000).per_partition(2);
    let layer = VerifySignatureLayer::builder(server_keys(&[&ed, &ec]))
        .replay_cache(cache.clone())
        .clock(|| NOW)
        .build()
        .unwrap();
    let flooder = SignLayer::new(ed.clone()).clock(|| NOW);
    for body in ["1", "2"] {
        let req = sign(&flooder, post(body)).await.unwrap();
        assert_eq!(verify(&layer, req).await.0, 200);
    }
    let third = sign(&flooder, post("3")).await.unwrap();
    let (status, reason, _) = verify(&layer, third).await;
    assert_eq!((status, reason.as_str()), (429, "replay_quota_exceeded"));
    assert_eq!(cache.partition_len("sig:ed"), 2);
    let other = sign(&SignLayer::new(ec.clone()).clock(|| NOW), post("4"))
        .await
        .unwrap();
    assert_eq!(verify(&layer, other).await.0, 200);
}

#[tokio::test]
async fn builder_refuses_nonsense() {
    let (ed, ..) = keys();
    assert!(
        VerifySignatureLayer::builder(server_keys(&[&ed]))
            .algorithms([])
            .build()
            .is_err()
    );
    assert!(
        VerifySignatureLayer::builder(server_keys(&[&ed]))
            .max_age(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(
        VerifySignatureLayer::builder(server_keys(&[&ed]))
            .require_components(["@nope"])
            .build()
            .is_err()
    );
    assert!(
        VerifySignatureLayer::builder(server_keys(&[&ed]))
            .label("Bad Label")
            .build()
            .is_err()
    );
}
