//! Typed proofs that a verifying layer leaves in request extensions.

/// A DPoP proof (RFC 9449) verified on this request: signature with the embedded key, `typ`,
/// `alg`, `htm`, `htu` against the service's configured origin, `iat` window, `jti` replay and,
/// when the request carries an access token, `ath`.
///
/// Put in request extensions by the DPoP verifier (`portcullis_attest::dpop`); the token check
/// (`portcullis_token::require`) reads it to enforce a token's `cnf.jkt` binding.
///
/// # Security
/// Any code in the process can insert extensions: build one only after checking a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDpop {
    jkt: String,
    ath: Option<String>,
    jti: String,
    iat: u64,
    htu: String,
}

impl VerifiedDpop {
    /// A proof whose checks passed: the RFC 7638 thumbprint of its key, the `ath` it carried
    /// (already compared with the request's access token), its `jti`, `iat` (UNIX seconds) and
    /// the canonical `htu` it was checked against.
    pub fn new(jkt: String, ath: Option<String>, jti: String, iat: u64, htu: String) -> Self {
        Self {
            jkt,
            ath,
            jti,
            iat,
            htu,
        }
    }

    /// The RFC 7638 SHA-256 thumbprint of the proof key, base64url.
    pub fn jkt(&self) -> &str {
        &self.jkt
    }

    /// The `ath` claim (base64url SHA-256 of the access token), checked against the token the
    /// request carried; `None` when the request carried no access token.
    pub fn ath(&self) -> Option<&str> {
        self.ath.as_deref()
    }

    /// The proof's unique id.
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// When the proof was made (UNIX seconds).
    pub fn iat(&self) -> u64 {
        self.iat
    }

    /// The canonical URI the proof was checked against.
    pub fn htu(&self) -> &str {
        &self.htu
    }
}
