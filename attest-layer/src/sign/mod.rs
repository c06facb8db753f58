//! Client half: sign each outgoing request per RFC 9421, with a `Content-Digest` of its body.
//!
//! [`SignLayer`] collects the request body up to a cap (hashing it as it streams), adds
//! `Content-Digest`, builds the signature base over the configured components and adds
//! `Signature-Input` and `Signature`. Each call is signed afresh, so placed below a retry
//! layer every retry carries a new `created` and `nonce`.
//!
//! The inner service (a hyper client built for `Full<Bytes>`) receives
//! `Request<Full<Bytes>>`; a body over the cap fails the call with
//! [`SignError::BodyTooLarge`](crate::SignError::BodyTooLarge) and nothing is sent.

mod future;
mod layer;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::SignLayer;
pub use self::service::Sign;
