//! RFC 9421 Appendix B test vectors: signature bases and signatures byte for byte.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, Method, Uri};
use portcullis_attest::params::{
    parse_signature, parse_signature_input, serialize_signature, serialize_signature_input,
};
use portcullis_attest::{
    Algorithm, Component, RequestParts, SignatureParams, SigningKey, VerifyingKey,
};
use secrecy::SecretSlice;

/// RFC 9421 B.1.4 `test-key-ed25519` (private, PKCS#8).
pub const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
/// RFC 9421 B.1.4 `test-key-ed25519` (public, SPKI).
pub const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";
/// RFC 9421 B.1.3 `test-key-ecc-p256` (public, SPKI).
const P256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf\nw0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==\n-----END PUBLIC KEY-----\n";
/// RFC 9421 B.1.5 `test-shared-secret` (base64).
const SHARED_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
const CONTENT_DIGEST: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

/// The `test-request` of RFC 9421 B.2, as a server sees it (origin-form target, `Host`).
fn test_request() -> (Method, Uri, HeaderMap) {
    let mut h = HeaderMap::new();
    h.insert("host", "example.com".parse().unwrap());
    h.insert("date", "Tue, 20 Apr 2021 02:07:55 GMT".parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("content-digest", CONTENT_DIGEST.parse().unwrap());
    h.insert("content-length", "18".parse().unwrap());
    (Method::POST, "/foo?param=Value&Pet=dog".parse().unwrap(), h)
}

fn comps(names: &[&str]) -> Vec<Component> {
    names.iter().map(|n| Component::new(n).unwrap()).collect()
}

#[test]
fn b22_selective_components_base_matches_rfc() {
    let (m, u, h) = test_request();
    let mut c = comps(&["@authority", "content-digest"]);
    c.push(Component::query_param("Pet").unwrap());
    let p = SignatureParams::new(c)
        .with_created(1618884473)
        .unwrap()
        .with_keyid("test-key-rsa-pss")
        .unwrap()
        .with_tag("header-example")
        .unwrap();
    let base = p
        .signature_base(&RequestParts::new(&m, &u, &h, "https"))
        .unwrap();
    assert_eq!(
        base,
        format!(
            "\"@authority\": example.com\n\"content-digest\": {CONTENT_DIGEST}\n\"@query-param\";name=\"Pet\": dog\n\"@signature-params\": (\"@authority\" \"content-digest\" \"@query-param\";name=\"Pet\");created=1618884473;keyid=\"test-key-rsa-pss\";tag=\"header-example\""
        )
    );
}

#[test]
fn b23_full_coverage_base_matches_rfc() {
    let (m, u, h) = test_request();
    let p = SignatureParams::new(comps(&[
        "date",
        "@method",
        "@path",
        "@query",
        "@authority",
        "content-type",
        "content-digest",
        "content-length",
    ]))
    .with_created(1618884473)
    .unwrap()
    .with_keyid("test-key-rsa-pss")
    .unwrap();
    let base = p
        .signature_base(&RequestParts::new(&m, &u, &h, "https"))
        .unwrap();
    assert_eq!(
        base,
        format!(
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@query\": ?param=Value&Pet=dog\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-digest\": {CONTENT_DIGEST}\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@query\" \"@authority\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-rsa-pss\""
        )
    );
}

#[test]
fn b25_hmac_sha256_base_and_signature_match_rfc() {
    let (m, u, h) = test_request();
    let p = SignatureParams::new(comps(&["date", "@authority", "content-type"]))
        .with_created(1618884473)
        .unwrap()
        .with_keyid("test-shared-secret")
        .unwrap();
    let base = p
        .signature_base(&RequestParts::new(&m, &u, &h, "https"))
        .unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@authority\": example.com\n\"content-type\": application/json\n\"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
    );
    let secret = SecretSlice::from(STANDARD.decode(SHARED_SECRET).unwrap());
    let key = SigningKey::hmac_sha256("test-shared-secret", &secret).unwrap();
    let sig = key.sign(base.as_bytes()).unwrap();
    assert_eq!(
        serialize_signature("sig-b25", &sig).unwrap(),
        "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
    );
    assert_eq!(
        serialize_signature_input("sig-b25", &p).unwrap(),
        "sig-b25=(\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
    );
    assert!(key.verifying_key().verify(base.as_bytes(), &sig));
}

#[test]
fn b26_ed25519_base_and_signature_match_rfc() {
    let (m, u, h) = test_request();
    let p = SignatureParams::new(comps(&[
        "date",
        "@method",
        "@path",
        "@authority",
        "content-type",
        "content-length",
    ]))
    .with_created(1618884473)
    .unwrap()
    .with_keyid("test-key-ed25519")
    .unwrap();
    let base = p
        .signature_base(&RequestParts::new(&m, &u, &h, "https"))
        .unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    );
    let key = SigningKey::from_pem("test-key-ed25519", ED25519_PRIVATE).unwrap();
    assert_eq!(key.algorithm(), Algorithm::Ed25519);
    let sig = key.sign(base.as_bytes()).unwrap();
    assert_eq!(
        serialize_signature("sig-b26", &sig).unwrap(),
        "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
    );
    let public = VerifyingKey::from_public_pem(ED25519_PUBLIC).unwrap();
    assert!(public.verify(base.as_bytes(), &sig));
}

#[test]
fn b24_ecdsa_p256_signature_from_rfc_verifies() {
    // B.2.4 signs a response; its base is given literally in the RFC.
    let base = "\"@status\": 200\n\"content-type\": application/json\n\"content-digest\": sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:\n\"content-length\": 23\n\"@signature-params\": (\"@status\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-ecc-p256\"";
    let sigs = parse_signature(&["sig-b24=:wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==:"]).unwrap();
    let key = VerifyingKey::from_public_pem(P256_PUBLIC).unwrap();
    assert_eq!(key.algorithm(), Algorithm::EcdsaP256Sha256);
    assert!(key.verify(base.as_bytes(), &sigs[0].1));
    assert!(!key.verify(base.replace("200", "201").as_bytes(), &sigs[0].1));
}

#[test]
fn rfc_signature_input_round_trips_through_the_parser() {
    let text = "sig-b22=(\"@authority\" \"content-digest\" \"@query-param\";name=\"Pet\");created=1618884473;keyid=\"test-key-rsa-pss\";tag=\"header-example\"";
    let parsed = parse_signature_input(&[text]).unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].0, "sig-b22");
    assert_eq!(parsed[0].1.created().unwrap(), Some(1618884473));
    assert_eq!(parsed[0].1.tag().unwrap(), Some("header-example"));
    assert_eq!(
        serialize_signature_input("sig-b22", &parsed[0].1).unwrap(),
        text
    );
}

mod common;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use portcullis_attest::{StaticKeys, VerifySignatureLayer};
use tower::{Layer, ServiceExt};

/// The RFC's `test-request` carrying the RFC's own `Signature-Input` and `Signature`.
fn rfc_signed_request(input: &str, signature: &str, date: &str) -> Request<Full<Bytes>> {
    Request::post("/foo?param=Value&Pet=dog")
        .header("host", "example.com")
        .header("date", date)
        .header("content-type", "application/json")
        .header("content-digest", CONTENT_DIGEST)
        .header("content-length", "18")
        .header("signature-input", input)
        .header("signature", signature)
        .body(Full::from("{\"hello\": \"world\"}"))
        .unwrap()
}

async fn verify_rfc(
    layer: &VerifySignatureLayer,
    req: Request<Full<Bytes>>,
) -> (u16, String, String) {
    common::outcome(layer.layer(common::app()).oneshot(req).await.unwrap()).await
}

#[tokio::test]
async fn rfc_b26_signed_request_verifies_through_the_layer() {
    let keys = StaticKeys::new().with(
        "test-key-ed25519",
        VerifyingKey::from_public_pem(ED25519_PUBLIC).unwrap(),
    );
    let layer = VerifySignatureLayer::builder(keys)
        .label("sig-b26")
        .require_components(["@method", "@path", "@authority", "date"])
        .allow_missing_nonce()
        .allow_unsigned_body()
        .clock(|| 1618884473 + 10)
        .build()
        .unwrap();
    let input = "sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";
    let sig = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
    let ok = verify_rfc(
        &layer,
        rfc_signed_request(input, sig, "Tue, 20 Apr 2021 02:07:55 GMT"),
    )
    .await;
    assert_eq!(
        ok,
        (
            200,
            String::new(),
            "test-key-ed25519:{\"hello\": \"world\"}".into()
        )
    );
    let bad = verify_rfc(
        &layer,
        rfc_signed_request(input, sig, "Tue, 20 Apr 2021 02:07:56 GMT"),
    )
    .await;
    assert_eq!((bad.0, bad.1.as_str()), (401, "invalid_signature"));
}

#[tokio::test]
async fn rfc_b25_signed_request_verifies_through_the_layer() {
    let secret = SecretSlice::from(STANDARD.decode(SHARED_SECRET).unwrap());
    let keys = StaticKeys::new().with(
        "test-shared-secret",
        VerifyingKey::hmac_sha256(&secret).unwrap(),
    );
    let layer = VerifySignatureLayer::builder(keys)
        .require_components(["@authority"])
        .allow_missing_nonce()
        .allow_unsigned_body()
        .clock(|| 1618884473)
        .build()
        .unwrap();
    let input = "sig-b25=(\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\"";
    let ok = verify_rfc(
        &layer,
        rfc_signed_request(
            input,
            "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
            "Tue, 20 Apr 2021 02:07:55 GMT",
        ),
    )
    .await;
    assert_eq!(ok.0, 200, "{ok:?}");
    let forged = verify_rfc(
        &layer,
        rfc_signed_request(
            input,
            "sig-b25=:qxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
            "Tue, 20 Apr 2021 02:07:55 GMT",
        ),
    )
    .await;
    assert_eq!(forged.1, "invalid_signature");
}
