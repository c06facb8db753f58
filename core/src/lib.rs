//! The small vocabulary the Portcullis layers share, so that two layers meet through types
//! and never through a string both happen to spell the same way.
//!
//! Layers do not depend on each other; each may depend on this crate (its only dependency is
//! `http`). The layer that verifies something puts a typed proof into the request's
//! extensions; the layers inside it read that proof.
//!
//! # Example
//!
//! A DPoP verifier (outside) leaves a [`VerifiedDpop`]; the token check (inside) reads it to
//! enforce the token's `cnf.jkt` binding.
//!
//! ```
//! use portcullis_core::VerifiedDpop;
//!
//! let mut req = http::Request::new(());
//! // The proof verifier, after checking signature, htm, htu, iat, jti and ath:
//! req.extensions_mut().insert(VerifiedDpop::new(
//!     "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into(),
//!     Some("fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo".into()),
//!     "e1j3V_bKic8-LAEB".into(),
//!     1_700_000_000,
//!     "https://api.example/v1/orders".into(),
//! ));
//! // The token check, inside:
//! let proof = req.extensions().get::<VerifiedDpop>().expect("verified outside");
//! assert_eq!(proof.jkt(), "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
//! ```

mod addr;
mod proof;

pub use self::addr::{DEFAULT_IPV6_PREFIX, client_network, peer_key};
pub use self::proof::VerifiedDpop;
