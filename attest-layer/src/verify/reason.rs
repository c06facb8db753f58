use std::fmt;

use http::StatusCode;

use crate::components::Component;
use crate::key::Algorithm;

/// The response header carrying the stable machine-readable [`Reason`] of a refusal.
pub const REASON_HEADER: &str = "portcullis-reason";

/// Why a request was refused. [`Reason::as_str`] is stable and machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// No `Signature-Input`/`Signature` (or none with the expected label).
    MissingSignature,
    /// `Signature-Input` is not valid.
    MalformedSignatureInput,
    /// `Signature` is not valid or has no member for the label.
    MalformedSignature,
    /// The signature has no `keyid` parameter.
    MissingKeyid,
    /// No key is known under the `keyid`.
    UnknownKey,
    /// The `alg` parameter names another algorithm than the key's.
    AlgorithmMismatch,
    /// The key's algorithm is not accepted by the policy.
    AlgorithmNotAccepted,
    /// A component the policy requires is not covered (or not present).
    MissingComponent,
    /// The signature has no `created` parameter.
    MissingCreated,
    /// `created` lies further in the future than the allowed skew.
    CreatedInFuture,
    /// `created` is older than the maximum age.
    TooOld,
    /// `expires` has passed.
    Expired,
    /// The policy requires a `nonce` and there is none.
    MissingNonce,
    /// The `tag` is not the one the policy requires.
    WrongTag,
    /// The signature does not verify.
    InvalidSignature,
    /// The body is not empty and `content-digest` is not covered.
    MissingContentDigest,
    /// `Content-Digest` is not valid or has no supported algorithm.
    MalformedContentDigest,
    /// The body does not match `Content-Digest`.
    DigestMismatch,
    /// The body is larger than the cap.
    BodyTooLarge,
    /// The body failed while it was read.
    BodyError,
    /// The nonce was already seen: a replay.
    Replayed,
    /// The replay cache could not answer (fail closed).
    ReplayCacheUnavailable,
    /// The key holds its share of the replay cache (fresh nonces faster than they expire):
    /// this key is refused until some expire, other keys are unaffected.
    ReplayQuotaExceeded,
}

impl Reason {
    /// The stable reason string sent in [`REASON_HEADER`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::MalformedSignatureInput => "malformed_signature_input",
            Self::MalformedSignature => "malformed_signature",
            Self::MissingKeyid => "missing_keyid",
            Self::UnknownKey => "unknown_key",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::AlgorithmNotAccepted => "algorithm_not_accepted",
            Self::MissingComponent => "missing_component",
            Self::MissingCreated => "missing_created",
            Self::CreatedInFuture => "created_in_future",
            Self::TooOld => "too_old",
            Self::Expired => "expired",
            Self::MissingNonce => "missing_nonce",
            Self::WrongTag => "wrong_tag",
            Self::InvalidSignature => "invalid_signature",
            Self::MissingContentDigest => "missing_content_digest",
            Self::MalformedContentDigest => "malformed_content_digest",
            Self::DigestMismatch => "digest_mismatch",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyError => "body_error",
            Self::Replayed => "replayed",
            Self::ReplayCacheUnavailable => "replay_cache_unavailable",
            Self::ReplayQuotaExceeded => "replay_quota_exceeded",
        }
    }

    /// What went wrong, in words, for the `error_description` of a challenge.
    pub fn description(self) -> &'static str {
        match self {
            Self::MissingSignature => "no Signature-Input and Signature with the expected label",
            Self::MalformedSignatureInput => "Signature-Input is not a valid structured field",
            Self::MalformedSignature => "Signature is not valid or has no member for the label",
            Self::MissingKeyid => "the signature has no keyid parameter",
            Self::UnknownKey => "no key is known under this keyid",
            Self::AlgorithmMismatch => "the alg parameter is not the key's algorithm",
            Self::AlgorithmNotAccepted => "the key's algorithm is not accepted",
            Self::MissingComponent => "the signature does not cover every required component",
            Self::MissingCreated => "the signature has no created parameter",
            Self::CreatedInFuture => "created is in the future",
            Self::TooOld => "created is too old",
            Self::Expired => "expires has passed",
            Self::MissingNonce => "the signature has no nonce parameter",
            Self::WrongTag => "the tag parameter is not the required one",
            Self::InvalidSignature => "the signature does not verify",
            Self::MissingContentDigest => "the body is not covered by content-digest",
            Self::MalformedContentDigest => "Content-Digest is not valid",
            Self::DigestMismatch => "the body does not match Content-Digest",
            Self::BodyTooLarge => "the body is larger than allowed",
            Self::BodyError => "the body could not be read",
            Self::Replayed => "this signature was already used",
            Self::ReplayCacheUnavailable => "the replay cache is unavailable",
            Self::ReplayQuotaExceeded => "this key sends fresh signatures faster than they expire",
        }
    }

    /// The HTTP status the server answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyError => StatusCode::BAD_REQUEST,
            Self::ReplayCacheUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::ReplayQuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Placed in the extensions of a refusal response, for layers above (audit, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    reason: Reason,
}

impl Rejection {
    pub(crate) fn new(reason: Reason) -> Self {
        Self { reason }
    }

    /// Why the request was refused.
    pub fn reason(&self) -> Reason {
        self.reason
    }
}

/// Proof that the request's signature was verified: placed in request extensions by
/// [`VerifySignature`](super::VerifySignature). Only this crate can build one.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedSignature {
    pub(crate) label: String,
    pub(crate) keyid: String,
    pub(crate) alg: Algorithm,
    pub(crate) components: Vec<Component>,
    pub(crate) created: Option<u64>,
    pub(crate) nonce: Option<String>,
    pub(crate) tag: Option<String>,
}

impl VerifiedSignature {
    /// The key that signed.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The algorithm, as bound to the key.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The covered components.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Whether the component named `name` (such as `content-digest`) was covered.
    pub fn covers(&self, name: &str) -> bool {
        self.components.iter().any(|c| c.name() == name)
    }

    /// The `created` parameter (UNIX seconds).
    pub fn created(&self) -> Option<u64> {
        self.created
    }

    /// The signature label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The `nonce`, if any.
    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// The `tag`, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_stable_snake_case_with_fitting_statuses() {
        assert_eq!(Reason::Replayed.as_str(), "replayed");
        assert_eq!(Reason::BodyTooLarge.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            Reason::ReplayCacheUnavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(Reason::InvalidSignature.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            (
                Reason::ReplayQuotaExceeded.as_str(),
                Reason::ReplayQuotaExceeded.status()
            ),
            ("replay_quota_exceeded", StatusCode::TOO_MANY_REQUESTS)
        );
        assert!(
            Reason::MalformedSignatureInput
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
        );
    }
}
