//! `ServiceBuilder` shortcuts for the layers of this crate.

use tower::ServiceBuilder;
use tower_layer::Stack;

use crate::attestation::{AttachAttestationLayer, AttestationLayer};
use crate::dpop::{DpopLayer, VerifyDpopLayer};
use crate::key::SigningKey;
use crate::sign::SignLayer;
use crate::verify::VerifySignatureLayer;

mod sealed {
    pub trait Sealed<T> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Adds this crate's layers to a [`ServiceBuilder`].
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Signs requests with `key` and the default settings ([`SignLayer`]).
    fn sign_requests(self, key: SigningKey) -> ServiceBuilder<Stack<SignLayer, L>>;
    /// Verifies request signatures ([`VerifySignatureLayer`]).
    fn verify_signatures(
        self,
        layer: VerifySignatureLayer,
    ) -> ServiceBuilder<Stack<VerifySignatureLayer, L>>;
    /// Adds DPoP proofs ([`DpopLayer`]).
    fn dpop_proofs(self, layer: DpopLayer) -> ServiceBuilder<Stack<DpopLayer, L>>;
    /// Verifies DPoP proofs ([`VerifyDpopLayer`]).
    fn verify_dpop(self, layer: VerifyDpopLayer) -> ServiceBuilder<Stack<VerifyDpopLayer, L>>;
    /// Verifies device attestation per route ([`AttestationLayer`]).
    fn verify_attestation(
        self,
        layer: AttestationLayer,
    ) -> ServiceBuilder<Stack<AttestationLayer, L>>;
    /// Attaches device attestation tokens ([`AttachAttestationLayer`]).
    fn attach_attestation(
        self,
        layer: AttachAttestationLayer,
    ) -> ServiceBuilder<Stack<AttachAttestationLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn sign_requests(self, key: SigningKey) -> ServiceBuilder<Stack<SignLayer, L>> {
        self.layer(SignLayer::new(key))
    }

    fn verify_signatures(
        self,
        layer: VerifySignatureLayer,
    ) -> ServiceBuilder<Stack<VerifySignatureLayer, L>> {
        self.layer(layer)
    }

    fn dpop_proofs(self, layer: DpopLayer) -> ServiceBuilder<Stack<DpopLayer, L>> {
        self.layer(layer)
    }

    fn verify_dpop(self, layer: VerifyDpopLayer) -> ServiceBuilder<Stack<VerifyDpopLayer, L>> {
        self.layer(layer)
    }

    fn verify_attestation(
        self,
        layer: AttestationLayer,
    ) -> ServiceBuilder<Stack<AttestationLayer, L>> {
        self.layer(layer)
    }

    fn attach_attestation(
        self,
        layer: AttachAttestationLayer,
    ) -> ServiceBuilder<Stack<AttachAttestationLayer, L>> {
        self.layer(layer)
    }
}
