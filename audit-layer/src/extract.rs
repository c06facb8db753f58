//! Pluggable identity and peer extraction from request and response extensions.
//!
//! Layers cannot name each other's types, so the audit and enforce layers ask an extractor
//! for the identity (the verified mTLS identity, token subject or key id another layer put
//! into the extensions) and for the peer address.

use std::net::{IpAddr, SocketAddr};

use http::Extensions;

/// Reads the identity of a request (or response) from its extensions.
///
/// Implemented for closures `Fn(&Extensions) -> Option<String>` and for `()` (no identity).
///
/// ```
/// use portcullis_audit::IdentityExtractor;
///
/// #[derive(Clone)]
/// struct VerifiedUser(String); // the type your auth layer inserts
///
/// let extractor = |ext: &http::Extensions| ext.get::<VerifiedUser>().map(|u| u.0.clone());
/// let mut ext = http::Extensions::new();
/// ext.insert(VerifiedUser("alice".into()));
/// assert_eq!(extractor.identity(&ext).as_deref(), Some("alice"));
/// ```
pub trait IdentityExtractor: Send + Sync + 'static {
    /// The identity, if one is there. It must not be a secret (a subject, not a token).
    fn identity(&self, extensions: &Extensions) -> Option<String>;
}

impl<F> IdentityExtractor for F
where
    F: Fn(&Extensions) -> Option<String> + Send + Sync + 'static,
{
    fn identity(&self, extensions: &Extensions) -> Option<String> {
        self(extensions)
    }
}

impl IdentityExtractor for () {
    fn identity(&self, _extensions: &Extensions) -> Option<String> {
        None
    }
}

/// Reads the peer (client) address of a request from its extensions.
///
/// Implemented for closures `Fn(&Extensions) -> Option<String>`, for `()` (no peer) and by
/// [`DefaultPeerExtractor`].
pub trait PeerExtractor: Send + Sync + 'static {
    /// The peer's address, if one is there.
    fn peer(&self, extensions: &Extensions) -> Option<String>;
}

impl<F> PeerExtractor for F
where
    F: Fn(&Extensions) -> Option<String> + Send + Sync + 'static,
{
    fn peer(&self, extensions: &Extensions) -> Option<String> {
        self(extensions)
    }
}

impl PeerExtractor for () {
    fn peer(&self, _extensions: &Extensions) -> Option<String> {
        None
    }
}

/// Reads a [`SocketAddr`] or an [`IpAddr`] extension and returns the IP address (the port
/// changes with every connection, so it is left out).
///
/// For axum's `ConnectInfo<SocketAddr>`, pass a closure:
/// `|ext: &http::Extensions| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string())`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultPeerExtractor;

impl PeerExtractor for DefaultPeerExtractor {
    fn peer(&self, extensions: &Extensions) -> Option<String> {
        extensions
            .get::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|| extensions.get::<IpAddr>().copied())
            .map(|ip| ip.to_string())
    }
}
