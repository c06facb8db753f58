use std::time::Duration;

use crate::{BoxError, secret::StoreError};

/// Why one refresh attempt failed. Messages never contain a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The server rejected the refresh token (`invalid_grant`): revoked, reused or expired.
    #[error("the token endpoint rejected the refresh token (invalid_grant)")]
    InvalidGrant,
    /// The token endpoint answered with another OAuth error or an unexpected status.
    #[error("token endpoint answered {status}{}", .error.as_ref().map(|e| format!(" with error {e:?}")).unwrap_or_default())]
    Endpoint {
        /// HTTP status code.
        status: u16,
        /// The OAuth `error` code, when the body had a well-formed one.
        error: Option<String>,
    },
    /// The token endpoint's answer could not be used.
    #[error("invalid token endpoint response: {0}")]
    InvalidResponse(&'static str),
    /// The request did not reach the token endpoint or its answer was cut.
    #[error("token endpoint transport error: {0}")]
    Transport(#[source] BoxError),
    /// The refresh took longer than the configured timeout.
    #[error("token refresh timed out after {0:?}")]
    Timeout(Duration),
    /// A custom [`Refresh`](super::Refresh) failed.
    #[error("token refresh failed: {0}")]
    Other(#[source] BoxError),
}

/// Why a [`TokenSource`](super::TokenSource) has no usable access token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The refresh token was revoked or reused: the stored tokens were cleared and the user
    /// must sign in again (then call [`TokenSource::seed`](super::TokenSource::seed)).
    #[error(
        "re-authentication required: the refresh token was rejected (invalid_grant) and the stored tokens were cleared"
    )]
    ReauthenticationRequired,
    /// Nothing is stored under the source's name.
    #[error(
        "no token stored under {name:?}: seed one with TokenSource::seed or `portcullis secret put`"
    )]
    NoToken {
        /// The store entry name.
        name: String,
    },
    /// The access token expired and there is no refresh token.
    #[error("the access token expired and no refresh token is stored")]
    NoRefreshToken,
    /// The last refresh failed; the next attempt is held back.
    #[error("token refresh failed recently ({last}); next attempt in {retry_in:?}")]
    BackingOff {
        /// Time until the next refresh attempt.
        retry_in: Duration,
        /// The last failure.
        last: String,
    },
    /// A refresh attempt failed.
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    /// The secret store failed.
    #[error("token store error: {0}")]
    Store(#[from] StoreError),
    /// The stored token record is not one this crate wrote.
    #[error("stored token record {name:?} is malformed: {reason}")]
    Corrupt {
        /// The store entry name.
        name: String,
        /// What was wrong.
        reason: &'static str,
    },
}

impl TokenError {
    /// Whether a new login is needed (the refresh token is gone or was rejected).
    pub fn requires_reauthentication(&self) -> bool {
        matches!(
            self,
            Self::ReauthenticationRequired | Self::NoRefreshToken | Self::NoToken { .. }
        )
    }
}
