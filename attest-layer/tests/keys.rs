//! Key loading (PEM, JWK, secret sources), resolvers (static, JWKS, rotation) and redaction.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_attest::{
    Algorithm, JwksKeys, KeyError, KeyResolver, RotatingKeys, SigningKey, StaticKeys, VerifyingKey,
};
use secrecy::SecretSlice;

/// RFC 9421 B.1.4 `test-key-ed25519` as a private JWK.
const ED25519_JWK: &str = r#"{"kty":"OKP","crv":"Ed25519","kid":"test-key-ed25519","d":"n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU","x":"JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"}"#;
const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";

#[test]
fn pem_and_jwk_of_the_same_key_sign_identically() {
    let a = SigningKey::from_pem("k", ED25519_PRIVATE).unwrap();
    let b = SigningKey::from_jwk(None, ED25519_JWK).unwrap();
    assert_eq!(b.keyid(), "test-key-ed25519");
    assert_eq!(a.sign(b"m").unwrap(), b.sign(b"m").unwrap());
    assert_eq!(
        a.public_jwk().unwrap()["x"],
        "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"
    );
}

#[test]
fn p256_jwk_round_trips_through_public_jwk() {
    let k = SigningKey::generate_ecdsa_p256("ec").unwrap();
    let jwk = k.public_jwk().unwrap();
    let v = VerifyingKey::from_jwk(&jwk).unwrap();
    assert_eq!(v.algorithm(), Algorithm::EcdsaP256Sha256);
    let sig = k.sign(b"hello").unwrap();
    assert_eq!(sig.len(), 64, "r || s");
    assert!(v.verify(b"hello", &sig));
    assert!(!v.verify(b"hellO", &sig));
}

#[test]
fn bad_key_material_gives_typed_errors() {
    assert!(matches!(
        SigningKey::from_pem("k", "not pem"),
        Err(KeyError::Pem(_))
    ));
    assert!(matches!(
        SigningKey::hmac_sha256("k", &SecretSlice::from(vec![1u8; 16])),
        Err(KeyError::ShortSecret(16))
    ));
    assert!(matches!(
        SigningKey::from_jwk(Some("k"), r#"{"kty":"RSA"}"#),
        Err(KeyError::Jwk(_))
    ));
    assert!(matches!(
        SigningKey::from_jwk(Some("k"), "{"),
        Err(KeyError::Jwk(_))
    ));
    assert!(VerifyingKey::from_raw_public(Algorithm::Ed25519, &[0u8; 5]).is_err());
}

#[test]
fn a_device_key_loads_from_a_secret_source() {
    // A store keyed by name, as the token layer's SecretStore would be.
    let doc =
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .unwrap();
    let bytes = doc.as_ref().to_vec();
    let source = move |name: &str| -> Result<SecretSlice<u8>, KeyError> {
        if name == "device-key" {
            Ok(SecretSlice::from(bytes.clone()))
        } else {
            Err(KeyError::Source(format!("no secret named {name}")))
        }
    };
    let k = SigningKey::from_source("dev-1", Algorithm::Ed25519, &source, "device-key").unwrap();
    assert!(k.verifying_key().verify(b"m", &k.sign(b"m").unwrap()));
    assert!(matches!(
        SigningKey::from_source("dev-1", Algorithm::Ed25519, &source, "nope"),
        Err(KeyError::Source(_))
    ));
}

#[test]
fn debug_output_never_shows_secrets() {
    let secret = vec![0xABu8; 32];
    let k = SigningKey::hmac_sha256("hm", &SecretSlice::from(secret.clone())).unwrap();
    let shown = format!("{k:?} {:?}", k.verifying_key());
    assert!(shown.contains("redacted"), "{shown}");
    assert!(!shown.to_lowercase().contains("abab"), "{shown}");
    assert!(!shown.contains(&URL_SAFE_NO_PAD.encode(&secret)), "{shown}");
    let ed = SigningKey::from_pem("k", ED25519_PRIVATE).unwrap();
    assert!(!format!("{ed:?}").contains("n4Ni"), "the seed never shows");
}

#[test]
fn jwks_documents_resolve_by_kid_and_skip_unknown_kinds() {
    let a = SigningKey::generate_ed25519("a").unwrap();
    let b = SigningKey::generate_ecdsa_p256("b").unwrap();
    let doc = serde_json::json!({"keys": [a.public_jwk().unwrap(), b.public_jwk().unwrap(), {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}]});
    let jwks = JwksKeys::from_json(&doc.to_string()).unwrap();
    assert_eq!(jwks.skipped(), 1);
    assert_eq!(
        jwks.resolve("b").unwrap().algorithm(),
        Algorithm::EcdsaP256Sha256
    );
    assert!(
        jwks.resolve("a")
            .unwrap()
            .verify(b"m", &a.sign(b"m").unwrap())
    );
    assert!(jwks.resolve("r").is_none());
    assert!(JwksKeys::from_json("{\"nokeys\":1}").is_err());
}

#[tokio::test(start_paused = true)]
async fn rotation_keeps_the_old_key_for_the_overlap_only() {
    let old = SigningKey::generate_ed25519("2025-01").unwrap();
    let new = SigningKey::generate_ed25519("2025-02").unwrap();
    let keys = RotatingKeys::new(StaticKeys::new().with(old.keyid(), old.verifying_key()));
    assert!(keys.resolve("2025-02").is_none());
    keys.rotate(
        StaticKeys::new().with(new.keyid(), new.verifying_key()),
        Duration::from_secs(600),
    );
    assert!(keys.resolve("2025-02").is_some());
    assert!(keys.resolve("2025-01").is_some(), "in the overlap");
    tokio::time::advance(Duration::from_secs(601)).await;
    assert!(keys.resolve("2025-01").is_none(), "overlap over");
    assert!(keys.resolve("2025-02").is_some());
}
