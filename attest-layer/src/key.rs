//! Signature algorithms and key material (RFC 9421 §3.3).

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair, ParsedPublicKey,
};
use aws_lc_rs::{constant_time, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use secrecy::{ExposeSecret, SecretSlice};
use zeroize::Zeroizing;

use crate::error::{KeyError, Redacted};

/// An RFC 9421 signature algorithm from the HTTP Signature Algorithms registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// `ed25519`: EdDSA over Curve25519 (RFC 9421 §3.3.6).
    Ed25519,
    /// `ecdsa-p256-sha256`: ECDSA over P-256 with SHA-256, `r || s` encoding (§3.3.4).
    EcdsaP256Sha256,
    /// `hmac-sha256`: HMAC with SHA-256 and a shared secret (§3.3.3).
    HmacSha256,
}

impl Algorithm {
    /// Every algorithm this crate implements.
    pub const ALL: [Algorithm; 3] = [Self::Ed25519, Self::EcdsaP256Sha256, Self::HmacSha256];

    /// The registry name, as it appears in the `alg` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Self::HmacSha256 => "hmac-sha256",
        }
    }

    /// Looks an algorithm up by its registry name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether the algorithm is symmetric (a shared secret).
    pub fn is_symmetric(self) -> bool {
        matches!(self, Self::HmacSha256)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a signing key's secret bytes come from: a keyring, a secure enclave export, a file.
///
/// The bytes are a PKCS#8 DER private key (ed25519, P-256) or the raw HMAC secret. Closures
/// `Fn(&str) -> Result<SecretSlice<u8>, KeyError>` implement it, so a `SecretStore` of the
/// token layer plugs in with one line.
pub trait SecretSource: Send + Sync {
    /// Loads the secret stored under `name`.
    ///
    /// # Errors
    /// When the store cannot be read or holds nothing under `name`.
    fn load(&self, name: &str) -> Result<SecretSlice<u8>, KeyError>;
}

impl<F> SecretSource for F
where
    F: Fn(&str) -> Result<SecretSlice<u8>, KeyError> + Send + Sync,
{
    fn load(&self, name: &str) -> Result<SecretSlice<u8>, KeyError> {
        self(name)
    }
}

#[allow(
    clippy::large_enum_variant,
    reason = "held once behind an Arc; boxing adds a pointer chase per signature"
)]
enum SigningInner {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
    Hmac(hmac::Key),
}

/// A private signing key (or HMAC secret) with its `keyid`. Cheap to clone.
///
/// `Debug` shows the key id and algorithm only, never key material.
#[derive(Clone)]
pub struct SigningKey {
    keyid: Arc<str>,
    alg: Algorithm,
    inner: Arc<SigningInner>,
    public: VerifyingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("keyid", &self.keyid)
            .field("alg", &self.alg)
            .field("secret", &Redacted)
            .finish()
    }
}

fn rejected(alg: Algorithm, e: impl fmt::Display) -> KeyError {
    KeyError::Rejected {
        alg: alg.as_str(),
        reason: e.to_string(),
    }
}

impl SigningKey {
    /// Generates a fresh ed25519 key.
    ///
    /// ```
    /// use portcullis_attest::{Algorithm, SigningKey};
    ///
    /// let key = SigningKey::generate_ed25519("device-1")?;
    /// assert_eq!((key.keyid(), key.algorithm()), ("device-1", Algorithm::Ed25519));
    /// let signature = key.sign(b"signature base")?;
    /// assert!(key.verifying_key().verify(b"signature base", &signature));
    /// # Ok::<(), portcullis_attest::KeyError>(())
    /// ```
    ///
    /// # Errors
    /// When the system random generator fails.
    pub fn generate_ed25519(keyid: impl Into<Arc<str>>) -> Result<Self, KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| rejected(Algorithm::Ed25519, e))?;
        Self::from_pkcs8_der(keyid, Algorithm::Ed25519, doc.as_ref())
    }

    /// Generates a fresh ECDSA P-256 key.
    ///
    /// ```
    /// use portcullis_attest::{Algorithm, SigningKey};
    ///
    /// let key = SigningKey::generate_ecdsa_p256("device-1")?;
    /// assert_eq!(key.algorithm(), Algorithm::EcdsaP256Sha256);
    /// // Publish the public half (for a JWKS the server loads):
    /// assert_eq!(key.public_jwk().unwrap()["crv"], "P-256");
    /// # Ok::<(), portcullis_attest::KeyError>(())
    /// ```
    ///
    /// # Errors
    /// When the system random generator fails.
    pub fn generate_ecdsa_p256(keyid: impl Into<Arc<str>>) -> Result<Self, KeyError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|e| rejected(Algorithm::EcdsaP256Sha256, e))?;
        Self::from_pkcs8_der(keyid, Algorithm::EcdsaP256Sha256, doc.as_ref())
    }

    /// An `hmac-sha256` key from a shared secret of at least 32 bytes.
    ///
    /// ```
    /// use portcullis_attest::{KeyError, SigningKey};
    /// use secrecy::SecretSlice;
    ///
    /// let secret = SecretSlice::from(b"a shared secret of at least 32 bytes".to_vec());
    /// let key = SigningKey::hmac_sha256("backend-1", &secret)?;
    /// assert!(key.public_jwk().is_none()); // nothing to publish
    /// let short = SecretSlice::from(b"short".to_vec());
    /// assert!(matches!(SigningKey::hmac_sha256("backend-1", &short), Err(KeyError::ShortSecret(5))));
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    /// [`KeyError::ShortSecret`] for a secret under 32 bytes.
    pub fn hmac_sha256(
        keyid: impl Into<Arc<str>>,
        secret: &SecretSlice<u8>,
    ) -> Result<Self, KeyError> {
        let bytes = secret.expose_secret();
        if bytes.len() < 32 {
            return Err(KeyError::ShortSecret(bytes.len()));
        }
        let verify = VerifyingKey::hmac_sha256(secret)?;
        Ok(Self {
            keyid: keyid.into(),
            alg: Algorithm::HmacSha256,
            inner: Arc::new(SigningInner::Hmac(hmac::Key::new(hmac::HMAC_SHA256, bytes))),
            public: verify,
        })
    }

    /// A key from PKCS#8 DER bytes (ed25519 or P-256), or the raw secret for `hmac-sha256`.
    ///
    /// ```
    /// use base64::Engine as _;
    /// use portcullis_attest::{Algorithm, SigningKey};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // `openssl genpkey -algorithm ed25519 -outform DER`
    /// let der = base64::engine::general_purpose::STANDARD
    ///     .decode("MC4CAQAwBQYDK2VwBCIEIOuWJSgUpvrw2Z5LDb9KTe+UfInAvlwOd8e0Si+9c6mw")?;
    /// let key = SigningKey::from_pkcs8_der("device-1", Algorithm::Ed25519, &der)?;
    /// assert_eq!(key.algorithm(), Algorithm::Ed25519);
    /// // The bytes must be a key for the algorithm asked for.
    /// assert!(SigningKey::from_pkcs8_der("device-1", Algorithm::EcdsaP256Sha256, &der).is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// When the bytes are not a valid key for `alg`.
    pub fn from_pkcs8_der(
        keyid: impl Into<Arc<str>>,
        alg: Algorithm,
        der: &[u8],
    ) -> Result<Self, KeyError> {
        let keyid = keyid.into();
        match alg {
            Algorithm::Ed25519 => {
                let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| rejected(alg, e))?;
                let public = VerifyingKey::from_raw_public(alg, kp.public_key().as_ref())?;
                Ok(Self {
                    keyid,
                    alg,
                    inner: Arc::new(SigningInner::Ed25519(kp)),
                    public,
                })
            }
            Algorithm::EcdsaP256Sha256 => {
                let kp = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| rejected(alg, e))?;
                let public = VerifyingKey::from_raw_public(alg, kp.public_key().as_ref())?;
                Ok(Self {
                    keyid,
                    alg,
                    inner: Arc::new(SigningInner::Ecdsa(kp)),
                    public,
                })
            }
            Algorithm::HmacSha256 => Self::hmac_sha256(keyid, &SecretSlice::from(der.to_vec())),
        }
    }

    /// A key from PEM text: `PRIVATE KEY` (PKCS#8, ed25519 or P-256) or `EC PRIVATE KEY` (SEC1, P-256).
    ///
    /// ```
    /// use portcullis_attest::{Algorithm, KeyError, SigningKey};
    ///
    /// // `openssl genpkey -algorithm ed25519`; in a service, `std::fs::read_to_string(path)?`.
    /// let pem = "-----BEGIN PRIVATE KEY-----
    /// MC4CAQAwBQYDK2VwBCIEIOuWJSgUpvrw2Z5LDb9KTe+UfInAvlwOd8e0Si+9c6mw
    /// -----END PRIVATE KEY-----";
    /// let key = SigningKey::from_pem("device-1", pem)?;
    /// assert_eq!(key.algorithm(), Algorithm::Ed25519);
    /// assert!(matches!(SigningKey::from_pem("device-1", "not pem"), Err(KeyError::Pem(_))));
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    /// When the PEM holds no private key of a supported kind.
    pub fn from_pem(keyid: impl Into<Arc<str>>, pem: &str) -> Result<Self, KeyError> {
        let keyid = keyid.into();
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        let bytes = Zeroizing::new(der.secret_der().to_vec());
        match der {
            PrivateKeyDer::Pkcs8(_) => {
                Self::from_pkcs8_der(keyid.clone(), Algorithm::Ed25519, &bytes)
                    .or_else(|_| Self::from_pkcs8_der(keyid, Algorithm::EcdsaP256Sha256, &bytes))
            }
            PrivateKeyDer::Sec1(_) => {
                Self::from_pkcs8_der(keyid, Algorithm::EcdsaP256Sha256, &bytes)
            }
            _ => Err(KeyError::Pem(
                "RSA keys are not supported; use ed25519 or ecdsa-p256".into(),
            )),
        }
    }

    /// A key from a private JWK: `OKP`/`Ed25519`, `EC`/`P-256` or `oct` (HMAC). The `kid`
    /// member names the key unless `keyid` is given.
    ///
    /// ```
    /// use portcullis_attest::{Algorithm, KeyError, SigningKey};
    ///
    /// let jwk = r#"{"kty":"OKP","crv":"Ed25519","kid":"device-1",
    ///     "d":"65YlKBSm-vDZnksNv0pN75R8icC-XA53x7RKL71zqbA",
    ///     "x":"0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT_mU"}"#;
    /// let key = SigningKey::from_jwk(None, jwk)?;
    /// assert_eq!((key.keyid(), key.algorithm()), ("device-1", Algorithm::Ed25519));
    /// // A public JWK (no "d") is no signing key.
    /// let public = key.public_jwk().unwrap().to_string();
    /// assert!(matches!(SigningKey::from_jwk(None, &public), Err(KeyError::Jwk(_))));
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    /// When the JSON is not a supported private JWK.
    pub fn from_jwk(keyid: Option<&str>, jwk: &str) -> Result<Self, KeyError> {
        let j: serde_json::Value =
            serde_json::from_str(jwk).map_err(|e| KeyError::Jwk(e.to_string()))?;
        let field = |name: &str| -> Result<Zeroizing<Vec<u8>>, KeyError> {
            let s = j
                .get(name)
                .and_then(|v| v.as_str())
                .ok_or_else(|| KeyError::Jwk(format!("missing member {name:?}")))?;
            URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .map(Zeroizing::new)
                .map_err(|_| KeyError::Jwk(format!("member {name:?} is not base64url")))
        };
        let kid: Arc<str> = match keyid {
            Some(k) => k.into(),
            None => j
                .get("kid")
                .and_then(|v| v.as_str())
                .ok_or_else(|| KeyError::Jwk("no keyid given and no kid member".into()))?
                .into(),
        };
        match (
            j.get("kty").and_then(|v| v.as_str()),
            j.get("crv").and_then(|v| v.as_str()),
        ) {
            (Some("OKP"), Some("Ed25519")) => {
                let (d, x) = (field("d")?, field("x")?);
                let kp = Ed25519KeyPair::from_seed_and_public_key(&d, &x)
                    .map_err(|e| rejected(Algorithm::Ed25519, e))?;
                let public = VerifyingKey::from_raw_public(Algorithm::Ed25519, &x)?;
                Ok(Self {
                    keyid: kid,
                    alg: Algorithm::Ed25519,
                    inner: Arc::new(SigningInner::Ed25519(kp)),
                    public,
                })
            }
            (Some("EC"), Some("P-256")) => {
                let (d, x, y) = (field("d")?, field("x")?, field("y")?);
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let kp = EcdsaKeyPair::from_private_key_and_public_key(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &d,
                    &point,
                )
                .map_err(|e| rejected(Algorithm::EcdsaP256Sha256, e))?;
                let public = VerifyingKey::from_raw_public(Algorithm::EcdsaP256Sha256, &point)?;
                Ok(Self {
                    keyid: kid,
                    alg: Algorithm::EcdsaP256Sha256,
                    inner: Arc::new(SigningInner::Ecdsa(kp)),
                    public,
                })
            }
            (Some("oct"), _) => Self::hmac_sha256(kid, &SecretSlice::from(field("k")?.to_vec())),
            (kty, crv) => Err(KeyError::Jwk(format!(
                "unsupported kty/crv {kty:?}/{crv:?}; expected OKP/Ed25519, EC/P-256 or oct"
            ))),
        }
    }

    /// An ed25519 key from its raw 32-byte seed (the private key as libsodium, OpenSSH and
    /// most HSM exports hold it).
    ///
    /// ```
    /// use portcullis_attest::{Algorithm, KeyError, SigningKey};
    /// use secrecy::SecretSlice;
    ///
    /// let seed = SecretSlice::from(vec![7u8; 32]);
    /// let key = SigningKey::from_ed25519_seed("device-1", &seed)?;
    /// assert_eq!(key.algorithm(), Algorithm::Ed25519);
    /// let short = SecretSlice::from(vec![7u8; 31]);
    /// assert!(matches!(SigningKey::from_ed25519_seed("device-1", &short), Err(KeyError::Rejected { .. })));
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    /// [`KeyError::Rejected`] when the seed is not 32 bytes.
    pub fn from_ed25519_seed(
        keyid: impl Into<Arc<str>>,
        seed: &SecretSlice<u8>,
    ) -> Result<Self, KeyError> {
        let seed = seed.expose_secret();
        if seed.len() != 32 {
            return Err(rejected(
                Algorithm::Ed25519,
                format_args!("seed is {} bytes, expected 32", seed.len()),
            ));
        }
        let kp = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| rejected(Algorithm::Ed25519, e))?;
        let public = VerifyingKey::from_raw_public(Algorithm::Ed25519, kp.public_key().as_ref())?;
        Ok(Self {
            keyid: keyid.into(),
            alg: Algorithm::Ed25519,
            inner: Arc::new(SigningInner::Ed25519(kp)),
            public,
        })
    }

    /// Loads the key named `name` from a secret source (a keyring, secure storage).
    ///
    /// ```
    /// use portcullis_attest::{Algorithm, KeyError, SigningKey};
    /// use secrecy::SecretSlice;
    ///
    /// // Any `Fn(&str) -> Result<SecretSlice<u8>, KeyError>` is a source.
    /// let keyring = |name: &str| match name {
    ///     "device-key" => Ok(SecretSlice::from(vec![9u8; 32])),
    ///     other => Err(KeyError::Source(format!("no entry {other:?}"))),
    /// };
    /// let key = SigningKey::from_source("backend-1", Algorithm::HmacSha256, &keyring, "device-key")?;
    /// assert_eq!(key.algorithm(), Algorithm::HmacSha256);
    /// assert!(SigningKey::from_source("backend-1", Algorithm::HmacSha256, &keyring, "missing").is_err());
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    /// When the source fails or its bytes are not a key for `alg`.
    pub fn from_source(
        keyid: impl Into<Arc<str>>,
        alg: Algorithm,
        source: &dyn SecretSource,
        name: &str,
    ) -> Result<Self, KeyError> {
        let secret = source.load(name)?;
        Self::from_pkcs8_der(keyid, alg, secret.expose_secret())
    }

    /// The key id sent in the `keyid` parameter.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The matching verification key (the public key; for HMAC the same secret).
    pub fn verifying_key(&self) -> VerifyingKey {
        self.public.clone()
    }

    /// The public key as a JWK (`OKP` or `EC`), with `kid`; `None` for HMAC keys.
    pub fn public_jwk(&self) -> Option<serde_json::Value> {
        self.public.public_jwk(Some(&self.keyid))
    }

    /// Signs `message` (a signature base).
    ///
    /// # Errors
    /// When the crypto library fails.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let err = || KeyError::Sign {
            keyid: self.keyid.to_string(),
        };
        match &*self.inner {
            SigningInner::Ed25519(kp) => kp
                .try_sign(message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| err()),
            SigningInner::Ecdsa(kp) => kp
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| err()),
            SigningInner::Hmac(k) => Ok(hmac::sign(k, message).as_ref().to_vec()),
        }
    }
}

#[allow(
    clippy::large_enum_variant,
    reason = "held once behind an Arc; boxing adds a pointer chase per verification"
)]
enum VerifyInner {
    Public(ParsedPublicKey),
    Hmac(hmac::Key),
}

/// A key that verifies signatures: a public key, or the shared secret for `hmac-sha256`.
///
/// The key decides the algorithm: a signature is only ever checked with the algorithm
/// bound to its key, whatever the message's `alg` parameter says.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    inner: Arc<VerifyInner>,
    /// The raw public key (ed25519 32 bytes, P-256 uncompressed point); empty for HMAC.
    raw: Arc<[u8]>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("VerifyingKey");
        d.field("alg", &self.alg);
        if self.alg.is_symmetric() {
            d.field("secret", &Redacted);
        } else {
            d.field("public", &URL_SAFE_NO_PAD.encode(&self.raw));
        }
        d.finish()
    }
}

impl VerifyingKey {
    /// A public key from raw bytes: 32 bytes for ed25519, an uncompressed or SPKI P-256 point.
    ///
    /// ```
    /// use portcullis_attest::{Algorithm, KeyError, SigningKey, VerifyingKey};
    ///
    /// let device = SigningKey::generate_ed25519("device-1")?;
    /// let jwk = device.public_jwk().unwrap();
    /// # use base64::Engine as _;
    /// # let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    /// // `raw`: the 32 public key bytes, as a device enrolment message carries them.
    /// let key = VerifyingKey::from_raw_public(Algorithm::Ed25519, &raw)?;
    /// assert!(key.verify(b"base", &device.sign(b"base")?));
    /// assert!(VerifyingKey::from_raw_public(Algorithm::EcdsaP256Sha256, &raw).is_err());
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    /// When the bytes are not a valid public key for `alg`, or `alg` is symmetric.
    pub fn from_raw_public(alg: Algorithm, bytes: &[u8]) -> Result<Self, KeyError> {
        let verification: &'static dyn signature::VerificationAlgorithm = match alg {
            Algorithm::Ed25519 => &ED25519,
            Algorithm::EcdsaP256Sha256 => &ECDSA_P256_SHA256_FIXED,
            Algorithm::HmacSha256 => return Err(rejected(alg, "hmac keys have no public half")),
        };
        let parsed = ParsedPublicKey::new(verification, bytes).map_err(|e| rejected(alg, e))?;
        let raw: Arc<[u8]> = match alg {
            Algorithm::Ed25519 if bytes.len() == 32 => Arc::from(bytes),
            Algorithm::EcdsaP256Sha256 if bytes.len() == 65 => Arc::from(bytes),
            // SPKI: the key sits at the end of the BIT STRING.
            Algorithm::Ed25519 if bytes.len() > 32 => Arc::from(&bytes[bytes.len() - 32..]),
            Algorithm::EcdsaP256Sha256 if bytes.len() > 65 => Arc::from(&bytes[bytes.len() - 65..]),
            _ => return Err(rejected(alg, "unexpected public key length")),
        };
        Ok(Self {
            alg,
            inner: Arc::new(VerifyInner::Public(parsed)),
            raw,
        })
    }

    /// A public key from `PUBLIC KEY` PEM (SPKI); the algorithm is read from the key.
    ///
    /// ```
    /// use portcullis_attest::{Algorithm, KeyError, VerifyingKey};
    ///
    /// // `openssl pkey -pubout`; in a service, `std::fs::read_to_string(path)?`.
    /// let pem = "-----BEGIN PUBLIC KEY-----
    /// MCowBQYDK2VwAyEA0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT/mU=
    /// -----END PUBLIC KEY-----";
    /// let key = VerifyingKey::from_public_pem(pem)?;
    /// assert_eq!(key.algorithm(), Algorithm::Ed25519);
    /// assert!(VerifyingKey::from_public_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    /// When the PEM is not an ed25519 or P-256 public key.
    pub fn from_public_pem(pem: &str) -> Result<Self, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        Self::from_public_der(der.as_ref())
    }

    /// A public key from `SubjectPublicKeyInfo` DER (`openssl pkey -pubout -outform DER`); the
    /// algorithm is read from the key.
    ///
    /// ```
    /// use base64::Engine as _;
    /// use portcullis_attest::{Algorithm, VerifyingKey};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let der = base64::engine::general_purpose::STANDARD
    ///     .decode("MCowBQYDK2VwAyEA0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT/mU=")?;
    /// let key = VerifyingKey::from_public_der(&der)?;
    /// assert_eq!(key.algorithm(), Algorithm::Ed25519);
    /// // The bare key without its SPKI wrapping is refused (use `from_raw_public`).
    /// assert!(VerifyingKey::from_public_der(&der[12..]).is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`KeyError::Rejected`] when the DER is not an ed25519 or P-256 SPKI public key.
    pub fn from_public_der(der: &[u8]) -> Result<Self, KeyError> {
        // A bare key is not SPKI: `from_raw_public` would take it, this loader must not.
        if der.len() <= 32 || der.first() != Some(&0x30) {
            return Err(KeyError::Rejected {
                alg: "spki",
                reason: "not a DER SubjectPublicKeyInfo (SEQUENCE); expected an ed25519 or \
                         P-256 public key"
                    .into(),
            });
        }
        Self::from_raw_public(Algorithm::Ed25519, der)
            .or_else(|_| Self::from_raw_public(Algorithm::EcdsaP256Sha256, der))
            .map_err(|_| KeyError::Rejected {
                alg: "spki",
                reason: "not an ed25519 or P-256 SubjectPublicKeyInfo".into(),
            })
    }

    /// An `hmac-sha256` verification key from the shared secret.
    ///
    /// ```
    /// use portcullis_attest::{KeyError, SigningKey, VerifyingKey};
    /// use secrecy::SecretSlice;
    ///
    /// let secret = SecretSlice::from(b"a shared secret of at least 32 bytes".to_vec());
    /// let key = VerifyingKey::hmac_sha256(&secret)?;
    /// let tag = SigningKey::hmac_sha256("backend-1", &secret)?.sign(b"base")?;
    /// assert!(key.verify(b"base", &tag));
    /// assert!(!key.verify(b"other base", &tag));
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    /// [`KeyError::ShortSecret`] for a secret under 32 bytes.
    pub fn hmac_sha256(secret: &SecretSlice<u8>) -> Result<Self, KeyError> {
        let bytes = secret.expose_secret();
        if bytes.len() < 32 {
            return Err(KeyError::ShortSecret(bytes.len()));
        }
        Ok(Self {
            alg: Algorithm::HmacSha256,
            inner: Arc::new(VerifyInner::Hmac(hmac::Key::new(hmac::HMAC_SHA256, bytes))),
            raw: Arc::from(&[][..]),
        })
    }

    /// A public key from a public JWK (`OKP`/`Ed25519` or `EC`/`P-256`).
    ///
    /// ```
    /// use portcullis_attest::{Algorithm, KeyError, VerifyingKey};
    ///
    /// let jwk = serde_json::json!({
    ///     "kty": "OKP", "crv": "Ed25519", "x": "0XpkPdYR44JljMsQ8JBGw0iXxgJNF3YG6VkE8sXT_mU",
    /// });
    /// let key = VerifyingKey::from_jwk(&jwk)?;
    /// assert_eq!(key.algorithm(), Algorithm::Ed25519);
    /// // A JWKS file of device keys: `JwksKeys::from_json(&std::fs::read_to_string(path)?)`.
    /// let rsa = serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
    /// assert!(matches!(VerifyingKey::from_jwk(&rsa), Err(KeyError::Jwk(_))));
    /// # Ok::<(), KeyError>(())
    /// ```
    ///
    /// # Errors
    /// When the JWK is not a supported public key.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, KeyError> {
        let field = |name: &str| -> Result<Vec<u8>, KeyError> {
            let s = jwk
                .get(name)
                .and_then(|v| v.as_str())
                .ok_or_else(|| KeyError::Jwk(format!("missing member {name:?}")))?;
            URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .map_err(|_| KeyError::Jwk(format!("member {name:?} is not base64url")))
        };
        match (
            jwk.get("kty").and_then(|v| v.as_str()),
            jwk.get("crv").and_then(|v| v.as_str()),
        ) {
            (Some("OKP"), Some("Ed25519")) => {
                Self::from_raw_public(Algorithm::Ed25519, &field("x")?)
            }
            (Some("EC"), Some("P-256")) => {
                let mut point = vec![4u8];
                point.extend_from_slice(&field("x")?);
                point.extend_from_slice(&field("y")?);
                Self::from_raw_public(Algorithm::EcdsaP256Sha256, &point)
            }
            (kty, crv) => Err(KeyError::Jwk(format!(
                "unsupported kty/crv {kty:?}/{crv:?}; expected OKP/Ed25519 or EC/P-256"
            ))),
        }
    }

    /// The algorithm bound to this key.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The public key as a JWK; `None` for HMAC keys.
    pub fn public_jwk(&self, kid: Option<&str>) -> Option<serde_json::Value> {
        let mut v = match self.alg {
            Algorithm::Ed25519 => {
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(&self.raw)})
            }
            Algorithm::EcdsaP256Sha256 => serde_json::json!({
                "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&self.raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&self.raw[33..65]),
            }),
            Algorithm::HmacSha256 => return None,
        };
        if let (Some(kid), Some(obj)) = (kid, v.as_object_mut()) {
            obj.insert("kid".into(), kid.into());
        }
        Some(v)
    }

    /// Verifies `signature` over `message`; HMAC tags are compared in constant time.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &*self.inner {
            VerifyInner::Public(k) => k.verify_sig(message, signature).is_ok(),
            VerifyInner::Hmac(k) => {
                let expected = hmac::sign(k, message);
                constant_time::verify_slices_are_equal(expected.as_ref(), signature).is_ok()
            }
        }
    }
}
