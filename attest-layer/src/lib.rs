//! RFC 9421 request signing and verification, replay protection, device attestation and DPoP
//! as `tower` layers.
//!
//! "Verify explicitly": every request proves who sent it ([`SignLayer`] /
//! [`VerifySignatureLayer`], RFC 9421 HTTP Message Signatures), that it was not altered
//! (RFC 9530 `Content-Digest`, hashed while the body streams in, before the inner service
//! sees it) and that it is fresh (`created`, `expires`, `nonce` and a [`ReplayCache`] that
//! several replicas can share through Redis). [`DpopLayer`] / [`VerifyDpopLayer`] bind
//! access tokens to a device key (RFC 9449), and [`AttestationLayer`] checks platform device
//! attestation per route.
//!
//! | Layer | Side | What it does |
//! |---|---|---|
//! | [`SignLayer`] | client | `Content-Digest`, `Signature-Input`, `Signature` on each call |
//! | [`VerifySignatureLayer`] | server | verifies, puts [`VerifiedSignature`] in extensions, 401 + reason otherwise |
//! | [`DpopLayer`] | client | `DPoP` proof per request, server nonce retry |
//! | [`VerifyDpopLayer`] | server | proof checks, `htu` against configured origins, `jti` replay, `ath`, server nonces; leaves the proof for the token's `cnf.jkt` check |
//! | [`AttachAttestationLayer`] | client | attaches the platform's attestation token |
//! | [`AttestationLayer`] | server | required / optional / off per route |
//!
//! Algorithms: `ed25519`, `ecdsa-p256-sha256`, `hmac-sha256` (constant-time compare), all
//! with aws-lc-rs. The key decides the algorithm, never the message. The `redis` feature
//! adds [`RedisReplayCache`](crate::replay).
//!
//! # Example
//!
//! A client stack that signs, talking to a server stack that verifies; an identical replay
//! is refused with `401` and the stable reason `replayed`.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use portcullis_attest::{
//!     ServiceBuilderExt, SigningKey, StaticKeys, VerifiedSignature, VerifySignatureLayer,
//! };
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let device_key = SigningKey::generate_ed25519("device-42")?;
//!
//! // Server: verify, then the application sees the typed proof.
//! let keys = StaticKeys::new().with("device-42", device_key.verifying_key());
//! let server = ServiceBuilder::new()
//!     .verify_signatures(VerifySignatureLayer::builder(keys).build()?)
//!     .service(service_fn(|req: Request<Full<Bytes>>| async move {
//!         let who = req.extensions().get::<VerifiedSignature>().map(|v| v.keyid().to_owned());
//!         Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(who.unwrap_or_default())))
//!     }));
//!
//! // Client: sign; the "network" here keeps a copy of what was sent, for the replay.
//! let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
//! let wire = sent.clone();
//! let network = server.clone();
//! let client = ServiceBuilder::new()
//!     .sign_requests(device_key)
//!     .service(service_fn(move |req: Request<Full<Bytes>>| {
//!         wire.lock().unwrap().push((req.method().clone(), req.uri().clone(), req.headers().clone(), req.body().clone()));
//!         network.clone().oneshot(req)
//!     }));
//!
//! let req = Request::post("https://api.example.com/v1/transfer").body(Full::<Bytes>::from("{\"to\":\"bob\"}"))?;
//! let res = client.oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//!
//! // An attacker replays the exact bytes.
//! let (method, uri, headers, body) = sent.lock().unwrap().pop().unwrap();
//! let mut replay = Request::builder().method(method).uri(uri).body(body)?;
//! *replay.headers_mut() = headers;
//! let res = server.oneshot(replay).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["portcullis-reason"], "replayed");
//! # Ok(())
//! # }
//! ```
//!
//! # Security
//!
//! Defaults deny: `created` and `nonce` are required, `content-digest` must be covered when
//! a body is sent, bodies are capped at 1 MiB, the replay cache fails closed, attestation is
//! required on every route not configured otherwise. Keys and secrets never appear in
//! `Debug` output, errors or logs. Security events are emitted with `tracing` under the
//! target `portcullis::attest` with ECS field names (`event.action`, `event.outcome`,
//! `event.reason`...).

pub mod attestation;
mod body;
pub mod builder;
pub mod clock;
pub mod components;
pub mod digest;
pub mod dpop;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod key;
pub mod params;
pub mod replay;
pub mod resolver;
pub mod sign;
pub mod verify;

pub use crate::attestation::{
    AttachAttestationLayer, AttestationLayer, AttestationMode, AttestationProvider,
    AttestationVerifier, AttestedDevice, JwtAttestationVerifier,
};
pub use crate::builder::ServiceBuilderExt;
pub use crate::clock::{Clock, SystemClock, TokioClock};
pub use crate::components::{Component, RequestParts};
pub use crate::digest::DigestAlgorithm;
pub use crate::dpop::{DpopLayer, VerifiedDpop, VerifyDpopLayer};
pub use crate::error::{BoxError, BuildError, HeaderError, KeyError, SignError};
pub use crate::key::{Algorithm, SecretSource, SigningKey, VerifyingKey};
pub use crate::params::SignatureParams;
#[cfg(feature = "redis")]
pub use crate::replay::RedisReplayCache;
pub use crate::replay::{MemoryReplayCache, ReplayCache, ReplayError};
pub use crate::resolver::{JwksKeys, KeyResolver, RotatingKeys, StaticKeys};
pub use crate::sign::{Sign, SignLayer};
pub use crate::verify::{Reason, VerifiedSignature, VerifySignature, VerifySignatureLayer};
