//! Server half: [`RequireBearerLayer`] validates JWT access tokens on every request and
//! enforces per-route scopes.
//!
//! Answers (RFC 6750 §3): no credentials → `401` with `WWW-Authenticate: Bearer realm=".."`;
//! a malformed `Authorization` header → `400 invalid_request`; a token that fails any check →
//! `401 invalid_token` (the reason goes to a security event, never to the client); a valid
//! token without the route's scopes → `403 insufficient_scope`. On success the request
//! carries [`VerifiedClaims`] in its extensions.
//!
//! # DPoP-bound tokens (RFC 9449)
//! Tokens are accepted as `Authorization: Bearer` and as `Authorization: DPoP`. Binding is
//! always enforced: a token with `cnf.jkt` is accepted only under the `DPoP` scheme, with a
//! proof verified by a DPoP verifier *outside* this layer (`portcullis_attest::dpop`, which
//! leaves a [`VerifiedDpop`](portcullis_core::VerifiedDpop)) whose key thumbprint is the
//! token's `cnf.jkt` and whose `ath` is the token's hash. A bound token sent as `Bearer`, a
//! bound token with no verified proof, and an unbound token sent as `DPoP` are refused with
//! `401` and `WWW-Authenticate: DPoP error="invalid_token"`.
//! [`RequireBearerLayer::require_dpop`] accepts only bound tokens.
//!
//! # Token types, routes and keys
//! Only access tokens pass: a header `typ` other than absent, `JWT` or `at+jwt` (a DPoP
//! proof, a logout or security event token) is refused, and
//! [`JwtValidatorBuilder::require_access_token_typ`] accepts `at+jwt` alone (RFC 9068).
//! A [`ScopeTable`] rule for `GET` also covers `HEAD`. A [`Jwks`] is fetched over `https` only
//! (plain http to a loopback test issuer through [`danger::jwks_from_loopback_http`]), each
//! fetch bounded by [`Jwks::fetch_timeout`], with no lock held while it runs.
//! A static set loads once from a file or text ([`Jwks::from_file`], [`Jwks::from_json`]) and
//! never fetches; single keys load from PEM, DER, a JWK or an HMAC secret
//! ([`VerificationKey`]). [`JwkSet`], [`Jwk`] and [`Algorithm`] are re-exported from
//! `jsonwebtoken` so no other crate is needed to name them.

mod claims;
pub mod danger;
mod future;
mod keys;
mod layer;
mod scopes;
mod service;
mod validator;

pub use self::claims::VerifiedClaims;
pub use self::future::ResponseFuture;
pub use self::keys::{
    DEFAULT_FETCH_TIMEOUT, Jwks, JwksError, JwksLoadError, JwksRefreshHandle, JwksUriError,
    KeyError, VerificationKey,
};
pub use self::layer::RequireBearerLayer;
pub use self::scopes::ScopeTable;
pub use self::service::RequireBearer;
pub use self::validator::{
    BuildError, DenyList, JtiDenyList, JwtValidator, JwtValidatorBuilder, ValidationError,
};
pub use jsonwebtoken::Algorithm;
pub use jsonwebtoken::jwk::{Jwk, JwkSet};
