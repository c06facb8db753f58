//! Secret stores, short-lived token rotation, bearer injection and bearer validation for tower.
//!
//! * [`secret`]: an async [`SecretStore`] trait with an in-memory store, an AES-256-GCM
//!   encrypted file store (key from the OS keyring or an Argon2id passphrase; crash-safe
//!   writes) and the OS keyring itself (Linux kernel keyutils, Keychain, Credential Manager).
//! * [`token`]: a [`TokenSource`] that refreshes ahead of expiry with exactly one refresh in
//!   flight, rotates refresh tokens atomically in its store, backs off after failures and
//!   stops with a typed "re-authentication required" error on `invalid_grant`. The built-in
//!   [`OAuthRefresh`] grant rides on any tower HTTP client (the pinned one).
//! * [`bearer`]: [`BearerLayer`], the client half: `Authorization: Bearer` marked sensitive,
//!   one replay after a `401 invalid_token` when the body could be buffered.
//! * [`require`]: [`RequireBearerLayer`], the server half: JWT validation (EdDSA, ES256,
//!   RS256, HS256; static keys, a JWKS file or a background-refreshed JWKS), `exp`/`nbf`/`iss`/`aud`,
//!   maximum lifetime, `jti` deny list, RFC 6750 challenges and per-route scopes. Verified
//!   claims ([`VerifiedClaims`], with the DPoP `cnf.jkt`) land in request extensions.
//!
//! Security events go to `tracing` under the `portcullis::token` target with ECS field names
//! (`event.action` = `token.refresh`, `bearer.replay`, `bearer.validate`, `jwks.refresh`...).
//! No token, refresh token, passphrase or stored value ever reaches a log, `Debug`, `Display`
//! or error message.
//!
//! # Example
//!
//! A client stack that injects a rotating token, talking to a server stack that validates it:
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use portcullis_token::{
//!     MemoryStore, RequireBearerLayer, ServiceBuilderExt, TokenSource, VerifiedClaims,
//!     bearer::ReplayBody,
//!     require::{Algorithm, JwtValidator, VerificationKey},
//!     token::{RefreshError, TokenResponse, TokenSet},
//! };
//! use secrecy::SecretString;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let secret = [42u8; 32];
//! let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
//! let mint = move |sub: &str| {
//!     let claims = serde_json::json!({
//!         "iss": "https://login.example", "aud": "orders", "sub": sub,
//!         "iat": now, "exp": now + 300, "scope": "orders:read",
//!     });
//!     jsonwebtoken::encode(
//!         &jsonwebtoken::Header::new(Algorithm::HS256),
//!         &claims,
//!         &jsonwebtoken::EncodingKey::from_secret(&secret),
//!     )
//!     .unwrap()
//! };
//!
//! // Server: validate every request.
//! let validator = JwtValidator::builder()
//!     .issuer("https://login.example")
//!     .audience("orders")
//!     .key(VerificationKey::hmac(Algorithm::HS256, &secret)?)
//!     .build()?;
//! let server = ServiceBuilder::new()
//!     .layer(RequireBearerLayer::new(validator).scopes(["orders:read"]))
//!     .service(service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
//!         let who = req.extensions().get::<VerifiedClaims>().and_then(|c| c.subject()).unwrap_or("-").to_owned();
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who))))
//!     }));
//!
//! // Client: a token source that refreshes through a (here in-process) token endpoint.
//! let refresher = move |_refresh_token: SecretString| async move {
//!     Ok::<_, RefreshError>(
//!         TokenResponse::new(mint("alice"), Some(Duration::from_secs(300)))
//!             .with_refresh_token("rotated-refresh-token"),
//!     )
//! };
//! let source = TokenSource::builder(refresher, MemoryStore::new()).load().await?;
//! source.seed(TokenSet::from_refresh_token("first-refresh-token")).await?;
//! let client = ServiceBuilder::new().bearer_tokens(source).service(server);
//!
//! let resp = client.oneshot(Request::new(Full::new(Bytes::new()))).await?;
//! assert_eq!(resp.status(), StatusCode::OK);
//! assert_eq!(resp.into_body().collect().await?.to_bytes(), "alice");
//! # Ok(())
//! # }
//! ```

pub mod bearer;
mod builder;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod header;
pub mod require;
pub mod secret;
pub mod token;

pub use bearer::{Bearer, BearerLayer};
pub use builder::ServiceBuilderExt;
pub use require::{JwtValidator, RequireBearerLayer, VerifiedClaims};
pub use secret::{FileKey, FileStore, KeyringStore, MemoryStore, SecretStore, SecretValue};
pub use token::{AccessToken, OAuthRefresh, Refresh, TokenSource};

/// Boxed error used by the layers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
