//! Error types shared by the signing and verifying halves.

use std::fmt;

/// A boxed error, as used by tower middleware.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The PEM text held no key of a supported kind.
    #[error("invalid pem key: {0}; expected a PKCS#8 or SEC1 private key or an SPKI public key")]
    Pem(String),
    /// The key bytes were rejected by the crypto library.
    #[error("key rejected for {alg}: {reason}")]
    Rejected {
        /// The algorithm the key was meant for.
        alg: &'static str,
        /// What the crypto library said.
        reason: String,
    },
    /// The JWK could not be used.
    #[error("invalid jwk: {0}")]
    Jwk(String),
    /// A key source (secure storage, keyring) failed.
    #[error("key source failed: {0}")]
    Source(String),
    /// An HMAC secret is shorter than 32 bytes.
    #[error("hmac secret is {0} bytes; expected at least 32")]
    ShortSecret(usize),
    /// Signing failed in the crypto library.
    #[error("signing failed for key {keyid}")]
    Sign {
        /// The key that failed.
        keyid: String,
    },
}

/// Why a structured signature header or component could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// `Signature-Input` is not a valid structured-field dictionary of inner lists.
    #[error("malformed signature-input: {0}")]
    SignatureInput(String),
    /// `Signature` is not a valid structured-field dictionary of byte sequences.
    #[error("malformed signature: {0}")]
    Signature(String),
    /// A covered component identifier is not valid.
    #[error("invalid component {component:?}: {reason}")]
    Component {
        /// The component as written.
        component: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A covered component is not present on the message.
    #[error("covered component {0:?} is not present on the request")]
    MissingComponent(String),
    /// `Content-Digest` is not a valid structured-field dictionary of byte sequences.
    #[error("malformed content-digest: {0}")]
    ContentDigest(String),
}

/// Why a client-side signing step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The request body is larger than the configured cap, so it was not sent.
    #[error(
        "request body exceeds the signing cap of {limit} bytes; raise `max_body` or stream unsigned on purpose"
    )]
    BodyTooLarge {
        /// The configured cap in bytes.
        limit: usize,
    },
    /// The request body failed while it was read.
    #[error("request body failed while hashing: {0}")]
    Body(BoxError),
    /// A covered component could not be put into the signature base.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The key could not sign.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A header value could not be built.
    #[error("could not build the {0} header value")]
    HeaderValue(&'static str),
}

/// Why a builder's configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A short redacted rendering for secrets in `Debug` output.
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
