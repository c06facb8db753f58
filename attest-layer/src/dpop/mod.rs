//! DPoP (RFC 9449): proof-of-possession JWTs bound to each request.
//!
//! [`DpopLayer`] (client) adds a fresh `DPoP` proof to every request (`htm`, `htu`, `iat`,
//! `jti`, `ath` when an access token is sent, and the server's nonce), and retries once when
//! the server answers `use_dpop_nonce`. [`VerifyDpopLayer`] (server) checks the proof: `typ`,
//! an accepted asymmetric algorithm, the signature with the embedded public `jwk`, `htm`,
//! `htu` against the service's configured origins (never the request's `Host`), the `iat`
//! window, `jti` replay, server nonces, and `ath` whenever an access token comes with the
//! proof. It leaves a [`VerifiedDpop`] in the request's extensions.
//!
//! # Token binding
//! A token bound to a key (`cnf.jkt`, RFC 9449 §6) is checked against the proof by the token
//! layer inside this one (`portcullis_token::require::RequireBearerLayer`), which reads the
//! [`VerifiedDpop`]: a bound token is accepted only under the `DPoP` scheme with a proof by
//! that key, and refused as `Bearer`. Put [`VerifyDpopLayer`] *outside* the token check:
//!
//! ```text
//! ... → VerifyDpopLayer → RequireBearerLayer → service
//! ```
//!
//! # Example
//! ```
//! use portcullis_attest::VerifyDpopLayer;
//!
//! let layer = VerifyDpopLayer::builder()
//!     .origin("https://api.example.com")
//!     .proof_optional() // plain bearer clients too; bound tokens still need a proof
//!     .build()?;
//! # let _ = layer;
//! // Without an origin, htu could only be compared with the client's own Host header:
//! assert!(VerifyDpopLayer::builder().build().is_err());
//! # Ok::<(), portcullis_attest::dpop::DpopConfigError>(())
//! ```

mod client;
mod server;

pub use self::client::{DpopLayer, DpopResponseFuture, DpopService};
pub use self::server::{
    DpopConfigError, DpopNonces, DpopReason, NonceSource, VerifiedDpop, VerifyDpop,
    VerifyDpopFuture, VerifyDpopLayer, VerifyDpopLayerBuilder,
};

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Uri;

/// `ath`: base64url of the SHA-256 of the access token.
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// The RFC 7638 SHA-256 thumbprint of a public JWK (`OKP`, `EC` or `RSA`), base64url.
pub fn jwk_thumbprint(jwk: &serde_json::Value) -> Option<String> {
    let s = |k: &str| jwk.get(k).and_then(|v| v.as_str());
    let canonical = match s("kty")? {
        "OKP" => serde_json::json!({"crv": s("crv")?, "kty": "OKP", "x": s("x")?}),
        "EC" => serde_json::json!({"crv": s("crv")?, "kty": "EC", "x": s("x")?, "y": s("y")?}),
        "RSA" => serde_json::json!({"e": s("e")?, "kty": "RSA", "n": s("n")?}),
        _ => return None,
    };
    // serde_json's map is ordered by key, which is the RFC 7638 member order.
    let text = serde_json::to_string(&canonical).ok()?;
    Some(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, text.as_bytes())))
}

/// `htu`: the request URI without query and fragment, scheme and host lowercase.
pub(crate) fn htu(uri: &Uri, host: Option<&str>, default_scheme: &str) -> Option<String> {
    let scheme = uri
        .scheme_str()
        .unwrap_or(default_scheme)
        .to_ascii_lowercase();
    let authority = match uri.authority() {
        Some(a) => a.as_str().to_ascii_lowercase(),
        None => host?.trim().to_ascii_lowercase(),
    };
    let authority = match (scheme.as_str(), authority.as_str()) {
        ("https", a) if a.ends_with(":443") => a[..a.len() - 4].to_owned(),
        ("http", a) if a.ends_with(":80") => a[..a.len() - 3].to_owned(),
        _ => authority,
    };
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    Some(format!("{scheme}://{authority}{path}"))
}

/// Normalizes a received `htu` claim the same way for comparison.
pub(crate) fn normalize_htu(claim: &str) -> Option<String> {
    let uri: Uri = claim.parse().ok()?;
    uri.scheme()?;
    htu(&uri, None, "https")
}
