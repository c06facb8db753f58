//! Server half: verify RFC 9421 signatures, the body's `Content-Digest` and freshness.
//!
//! [`VerifySignatureLayer`] checks, in order: the `Signature-Input`/`Signature` fields, the
//! key (found by `keyid`; the key decides the algorithm), the required components, `created`,
//! `expires`, `nonce` and `tag`, the signature itself; then it reads the body up to a cap,
//! hashing it as it streams, and compares it with the covered `Content-Digest` before the
//! inner service sees it; finally it records the nonce (or, without one, a SHA-256 of the
//! signature base) in a [`ReplayCache`](crate::ReplayCache), counted against the key's share
//! (partition `sig:{keyid}`), so one key sending fresh nonces faster than they expire is
//! refused alone (`429`, `replay_quota_exceeded`). On success a [`VerifiedSignature`] goes
//! into the request extensions; on failure the client gets `401` (or `413`/`429`/`503`)
//! with a stable reason in `portcullis-reason` and an `Accept-Signature` field saying what
//! is expected.
//!
//! The inner service receives `Request<Full<Bytes>>`: the body has been read (up to the
//! cap) and checked before the service runs, so it never acts on unverified bytes.

mod future;
mod layer;
mod reason;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::{VerifySignatureLayer, VerifySignatureLayerBuilder};
pub use self::reason::{REASON_HEADER, Reason, Rejection, VerifiedSignature};
pub use self::service::VerifySignature;
