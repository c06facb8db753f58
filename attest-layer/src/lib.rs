//! RFC 9421 request signing and verification, replay protection, device attestation and DPoP.

pub mod attestation;
mod body;
pub mod clock;
pub mod components;
pub mod digest;
pub mod dpop;
pub mod error;
pub mod key;
pub mod params;
pub mod replay;
pub mod resolver;
pub mod sign;
pub mod verify;

pub use crate::clock::{Clock, SystemClock, TokioClock};
pub use crate::components::{Component, RequestParts};
pub use crate::digest::DigestAlgorithm;
pub use crate::error::{BoxError, BuildError, HeaderError, KeyError, SignError};
pub use crate::key::{Algorithm, SecretSource, SigningKey, VerifyingKey};
pub use crate::params::SignatureParams;
pub use crate::replay::{MemoryReplayCache, ReplayCache, ReplayError};
#[cfg(feature = "redis")]
pub use crate::replay::RedisReplayCache;
pub use crate::resolver::{JwksKeys, KeyResolver, RotatingKeys, StaticKeys};
pub use crate::sign::{Sign, SignLayer};
pub use crate::verify::{Reason, VerifiedSignature, VerifySignature, VerifySignatureLayer};
pub use crate::dpop::{DpopLayer, VerifyDpopLayer};
pub use crate::attestation::{AttachAttestationLayer, AttestationLayer, AttestationMode, AttestationProvider, AttestationVerifier, AttestedDevice, JwtAttestationVerifier};
