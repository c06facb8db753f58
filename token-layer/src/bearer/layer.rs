use tower_layer::Layer;

use super::Bearer;
use crate::token::TokenSource;

/// Default cap on the request body buffered for a replay (64 KiB).
pub(crate) const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// Adds `Authorization: Bearer <token>` (marked sensitive) to every request, with tokens from a
/// [`TokenSource`].
///
/// On a `401` whose `WWW-Authenticate` says `Bearer error="invalid_token"`, it forces one
/// refresh (shared by all requests that saw the same token) and replays the request once,
/// but only when the body could be buffered: bodies whose size is known and at most the
/// replay cap (default 64 KiB). Larger or unknown-length bodies are streamed through and the
/// 401 is returned as is (the next request gets a fresh token).
pub struct BearerLayer<R, S> {
    source: TokenSource<R, S>,
    replay_cap: usize,
}

impl<R, S> BearerLayer<R, S> {
    /// A layer drawing tokens from `source`.
    pub fn new(source: TokenSource<R, S>) -> Self {
        Self {
            source,
            replay_cap: DEFAULT_REPLAY_CAP,
        }
    }

    /// Largest request body buffered so it can be replayed after a 401 (0: never replay a
    /// request with a body).
    pub fn replay_body_cap(mut self, bytes: usize) -> Self {
        self.replay_cap = bytes;
        self
    }
}

impl<R, S> Clone for BearerLayer<R, S> {
    fn clone(&self) -> Self {
        Self {
            source: self.source.clone(),
            replay_cap: self.replay_cap,
        }
    }
}

impl<R, S> std::fmt::Debug for BearerLayer<R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerLayer")
            .field("source", &self.source)
            .field("replay_cap", &self.replay_cap)
            .finish()
    }
}

impl<Svc, R, S> Layer<Svc> for BearerLayer<R, S> {
    type Service = Bearer<Svc, R, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        Bearer::new(inner, self.source.clone()).replay_body_cap(self.replay_cap)
    }
}
