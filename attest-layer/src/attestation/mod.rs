//! Device attestation: verify platform attestation tokens per route, and attach them on
//! the client.
//!
//! The [`AttestationVerifier`] trait checks a token the platform produced (Play Integrity,
//! App Attest, Firebase App Check...). [`JwtAttestationVerifier`] is a built-in verifier for
//! JWT attestation tokens in the style of Firebase App Check: JWKS-signed, `iss`,
//! `aud` = project, `sub` = app id, `exp`. [`AttestationLayer`] applies it per route:
//! [`AttestationMode::Required`] (the default: fail closed), [`AttestationMode::Optional`]
//! (report only) or [`AttestationMode::Off`]. With
//! [`consume_jti`](AttestationLayerBuilder::consume_jti) each limited-use token works once,
//! and a token without a `jti` (which could be replayed until it expires) is refused with
//! `attestation_jti_missing` unless
//! [`allow_missing_jti`](AttestationLayerBuilder::allow_missing_jti) is set. On the client,
//! [`AttachAttestationLayer`] adds the token an [`AttestationProvider`] hands it.

mod client;
mod server;
mod verifier;

pub use self::client::{AttachAttestation, AttachAttestationLayer, AttestationProvider};
pub use self::server::{
    Attestation, AttestationFuture, AttestationLayer, AttestationLayerBuilder, AttestationMode,
};
pub use self::verifier::{
    AttestationError, AttestationVerifier, AttestedDevice, JwtAttestationVerifier,
};

/// The header Firebase App Check uses, and the default here.
pub const DEFAULT_HEADER: &str = "x-firebase-appcheck";
