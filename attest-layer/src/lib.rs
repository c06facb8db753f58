//! RFC 9421 request signing and verification, replay protection, device attestation and DPoP (not built yet: see issue 4).
