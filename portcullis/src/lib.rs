//! Composable `tower` middleware for pinned, token-protected, signed, rate-limited and audited
//! HTTP: the facade over the Portcullis layers, and preset client and server stacks.
//!
//! Each layer crate is re-exported under its short name ([`pin`], [`token`], [`attest`],
//! [`retry`], [`audit`]) and can be used on its own. [`client::builder`] and
//! [`server::builder`] stack them in the order that keeps each protection intact:
//!
//! ```text
//! client: audit → rate limit → retry → bearer token → sign (RFC 9421) → pinned hyper client
//! server: audit → pre-auth rate limit → [mTLS identity] → verify signature → require bearer
//!         → per-identity rate limit → your service
//! ```
//!
//! Retry sits above signing, so every attempt is signed afresh; the bearer layer sits above
//! signing, so `authorization` is covered by the signature; rate limiting sits above retry on
//! the client, so retries count against the quota. Every step is optional.
//!
//! On the server, [`server::serve_tls`] runs a stack over rustls with the peer address and
//! the mTLS [`PeerIdentity`](pin::PeerIdentity) in each request's extensions, handshake
//! timeouts, and [`server::RotatingCert`] to rotate the server key without a restart.
//!
//! The whole story runs in one command, on loopback with certificates minted at start-up:
//! `cargo run --release --example demo` (pinning, a man in the middle refused, backup-pin
//! rotation, token rotation, replay and tamper refusals, safe retries, rate limits and the
//! anomalies the audit layer raises). The `portcullis` binary's `request` subcommand sends
//! one request through the client stack from the shell, like curl.
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use portcullis::attest::{ServiceBuilderExt as _, SigningKey, StaticKeys, VerifySignatureLayer};
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let key = SigningKey::generate_ed25519("device-1")?;
//! let keys = StaticKeys::new().with("device-1", key.verifying_key());
//!
//! let server = portcullis::server::builder()
//!     .verify_signatures(VerifySignatureLayer::builder(keys).build()?)
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
//!     }));
//! let client = portcullis::client::builder()
//!     .sign(portcullis::attest::SignLayer::new(key))
//!     .service(server);
//!
//! let res = client
//!     .oneshot(Request::post("https://api.example.com/orders").body(Full::new(Bytes::from("{}")))?)
//!     .await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

pub use portcullis_attest as attest;
pub use portcullis_audit as audit;
pub use portcullis_pin as pin;
pub use portcullis_retry as retry;
pub use portcullis_token as token;

// Foreign types that appear in public signatures, so that no user adds a crate only to name
// ours (and gets the same version).
pub use rustls;
pub use rustls_pki_types as pki_types;
pub use secrecy;

pub mod client;
pub mod server;
