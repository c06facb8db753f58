use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::Enforce;
use crate::extract::{DefaultPeerExtractor, IdentityExtractor, PeerExtractor};
use crate::hook::PenaltyBox;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) penalties: PenaltyBox,
    pub(crate) identity: Arc<dyn IdentityExtractor>,
    pub(crate) peer: Arc<dyn PeerExtractor>,
}

/// Applies [`Enforce`] to a service.
///
/// ```
/// use std::time::Duration;
/// use portcullis_audit::{EnforceLayer, PenaltyBox};
///
/// #[derive(Clone)]
/// struct VerifiedUser(String);
///
/// let penalties = PenaltyBox::block_for(Duration::from_secs(300));
/// let layer = EnforceLayer::new(penalties)
///     .identity(|ext: &http::Extensions| ext.get::<VerifiedUser>().map(|u| u.0.clone()));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct EnforceLayer {
    pub(crate) config: Arc<Config>,
}

impl fmt::Debug for EnforceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnforceLayer")
            .field("penalties", &self.config.penalties)
            .finish_non_exhaustive()
    }
}

impl EnforceLayer {
    /// Enforces the penalties of `penalties` (register the same box as an anomaly hook).
    /// The client address comes from the [`DefaultPeerExtractor`]; there is no identity
    /// until you set an extractor.
    pub fn new(penalties: PenaltyBox) -> Self {
        EnforceLayer {
            config: Arc::new(Config {
                penalties,
                identity: Arc::new(()),
                peer: Arc::new(DefaultPeerExtractor),
            }),
        }
    }

    /// Reads the identity from the request extensions.
    pub fn identity(self, extractor: impl IdentityExtractor) -> Self {
        let mut config = (*self.config).clone();
        config.identity = Arc::new(extractor);
        EnforceLayer {
            config: Arc::new(config),
        }
    }

    /// Reads the client address from the request extensions.
    pub fn peer(self, extractor: impl PeerExtractor) -> Self {
        let mut config = (*self.config).clone();
        config.peer = Arc::new(extractor);
        EnforceLayer {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for EnforceLayer {
    type Service = Enforce<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Enforce {
            inner,
            config: self.config.clone(),
        }
    }
}
