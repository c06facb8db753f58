//! The [`EnforceLayer`]: adaptive policy enforcement on the server side.
//!
//! Refuses requests from identities and client addresses a [`PenaltyBox`](crate::PenaltyBox)
//! holds: `403 Forbidden` while blocked, `429 Too Many Requests` with `Retry-After` while
//! throttled. Each refusal is a `policy.enforce` security event under `portcullis::audit`.
//!
//! Put it after the layers that establish the identity (mTLS, signature, bearer), so that
//! the identity is in the request extensions; a peer-only penalty (by client address) also
//! works in front of them.

mod future;
mod layer;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::EnforceLayer;
pub use self::service::Enforce;
