use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::Audit;
use crate::auditor::Auditor;
use crate::extract::{DefaultPeerExtractor, IdentityExtractor, PeerExtractor};
use crate::record::Side;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) auditor: Auditor,
    pub(crate) side: Side,
    pub(crate) identity: Arc<dyn IdentityExtractor>,
    pub(crate) peer: Arc<dyn PeerExtractor>,
}

/// Applies [`Audit`] to a service: one structured record per request.
///
/// Made by [`Auditor::server_layer`] or [`Auditor::client_layer`]. On the server side the
/// client address comes from the [`DefaultPeerExtractor`] (a `SocketAddr` extension) unless
/// you set another; on the client side the peer is the URI's host.
#[derive(Clone)]
pub struct AuditLayer {
    pub(crate) config: Arc<Config>,
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("side", &self.config.side)
            .finish_non_exhaustive()
    }
}

impl AuditLayer {
    /// An audit layer reporting to `auditor`, on `side`.
    pub fn new(auditor: Auditor, side: Side) -> Self {
        let peer: Arc<dyn PeerExtractor> = match side {
            Side::Server => Arc::new(DefaultPeerExtractor),
            Side::Client => Arc::new(()),
        };
        AuditLayer {
            config: Arc::new(Config {
                auditor,
                side,
                identity: Arc::new(()),
                peer,
            }),
        }
    }

    /// Reads the identity from the request extensions (before the inner service runs) and
    /// then from the response extensions. Without one, or when it finds nothing, the record
    /// takes the first `user.id` of the request's security events.
    pub fn identity(self, extractor: impl IdentityExtractor) -> Self {
        let mut config = (*self.config).clone();
        config.identity = Arc::new(extractor);
        AuditLayer {
            config: Arc::new(config),
        }
    }

    /// Reads the client address from the request extensions (server side).
    pub fn peer(self, extractor: impl PeerExtractor) -> Self {
        let mut config = (*self.config).clone();
        config.peer = Arc::new(extractor);
        AuditLayer {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            config: self.config.clone(),
        }
    }
}
