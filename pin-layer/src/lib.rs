//! Certificate and public-key pinning on the verified chain, with TLS hardening, for rustls,
//! hyper and tower.
//!
//! Standard validation always runs (chain to a trusted root, host name, validity dates,
//! revocation when CRLs are given). The host's pins are then checked on the chain that
//! rustls-webpki *verified*, inside its one path build: a certificate a server appends to its
//! chain cannot satisfy a pin, and a root pin matches even when the server does not send the
//! root.
//!
//! # Example
//! ```
//! use portcullis_pin::{PinPolicy, PinnedTls};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let pki = testkit::pki::TestPki::new();
//! # let (root, backup) = (pki.root.spki_pin(), pki.leaf.spki_pin());
//! let policy = PinPolicy::builder()
//!     .pin("**.example.com", &[&root, &backup])?
//!     .build()?;
//! assert!(policy.entry_for("api.example.com").is_some());
//! assert!(policy.entry_for("api.example.com.evil.com").is_none());
//!
//! let tls = PinnedTls::builder(policy)
//!     .root_certificates([pki.root.cert()])?
//!     .build()?;
//! // For hyper-util: tls.connector(); for hyper-rustls users: tls.https_connector();
//! // for reqwest or tonic: tls.client_config().
//! let config = tls.client_config();
//! assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
//! # Ok(())
//! # }
//! ```
//!
//! # Security
//! Pins add to standard validation; they never replace it. An enforcing entry needs a backup
//! pin unless it opts out by name. An expired entry stops enforcing but still reports.
//! Only TLS 1.2 and 1.3 with rustls' AEAD suites are offered, and only `https://` is dialled.

mod builder;
mod client;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod layer;
mod observe;
mod pin;
mod policy;
mod server;
mod verify;

pub use builder::ServiceBuilderExt;
pub use client::{
    BuildError, ConnectError, PinnedConnector, PinnedPeer, PinnedStream, PinnedTls,
    PinnedTlsBuilder, TlsVersions,
};
pub use layer::{NotPinned, RequirePinned, RequirePinnedLayer, ResponseFuture};
pub use observe::{PinCheck, PinReport, TARGET};
pub use pin::{Pin, PinParseError};
pub use policy::{
    DEFAULT_EXPIRY_WARNING, HostPattern, Mode, PinEntry, PinPolicy, PinPolicyBuilder, PolicyError,
    Position,
};
pub use server::{
    AddPeerIdentity, PeerIdentity, PeerIdentityLayer, PinnedClientVerifier,
    PinnedClientVerifierBuilder,
};
pub use verify::{ChainLink, PinFailure, PinVerifier, UnpinnableHost};
