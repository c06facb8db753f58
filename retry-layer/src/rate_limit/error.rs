use std::fmt;
use std::time::Duration;

/// A client-side limit was reached and the layer fails fast (or the wait would be too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub(crate) retry_after: Duration,
    pub(crate) limit: u32,
}

impl RateLimited {
    /// How long until a request with the same key would pass.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The burst size of the quota.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit exceeded (burst of {}): request not sent, next one allowed in {:.1?}",
            self.limit, self.retry_after
        )
    }
}

impl std::error::Error for RateLimited {}

/// The key extractor found no key and the policy is [`MissingKey::Reject`](super::MissingKey).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MissingRateLimitKey;

impl fmt::Display for MissingRateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "request has no rate-limit key: provide it (for peer ip, a PeerAddr extension) or \
             choose MissingKey::SharedBucket",
        )
    }
}

impl std::error::Error for MissingRateLimitKey {}
