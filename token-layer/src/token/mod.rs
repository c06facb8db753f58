//! Client tokens that rotate themselves: [`TokenSource`], the [`Refresh`] trait and the
//! built-in OAuth 2.0 refresh grant ([`OAuthRefresh`]).

mod error;
mod oauth;
mod source;

use std::{fmt, future::Future, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};

pub use self::error::{RefreshError, TokenError};
#[cfg(feature = "fuzzing")]
pub(crate) use self::oauth::parse_token_response;
pub use self::oauth::{ClientAuth, OAuthRefresh};
#[cfg(feature = "fuzzing")]
pub(crate) use self::source::fuzz_record;
pub use self::source::{TokenSource, TokenSourceBuilder};

/// An access token: cheap to clone, zeroized when the last clone drops, redacted in `Debug`.
#[derive(Clone)]
pub struct AccessToken {
    value: Arc<SecretString>,
    /// `Bearer <token>`, built once per token (marked sensitive); `None` when the token holds
    /// bytes a header cannot carry.
    header: Option<http::HeaderValue>,
    generation: u64,
}

impl AccessToken {
    pub(crate) fn new(value: Arc<SecretString>, generation: u64) -> Self {
        let header = http::HeaderValue::try_from(format!("Bearer {}", value.expose_secret()))
            .ok()
            .map(|mut h| {
                h.set_sensitive(true);
                h
            });
        Self {
            value,
            header,
            generation,
        }
    }

    /// The `Authorization` header value, marked sensitive.
    pub(crate) fn header(&self) -> Option<&http::HeaderValue> {
        self.header.as_ref()
    }

    /// The token text, for the `Authorization` header. Never log it.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AccessToken([REDACTED], generation: {})",
            self.generation
        )
    }
}

/// What a token endpoint (or a custom [`Refresh`]) returned.
#[non_exhaustive]
pub struct TokenResponse {
    /// The new access token.
    pub access_token: SecretString,
    /// A new refresh token when the server rotates them; `None` keeps the current one.
    pub refresh_token: Option<SecretString>,
    /// Lifetime of the access token; `None` when the server did not say.
    pub expires_in: Option<Duration>,
}

impl TokenResponse {
    /// A response with an access token and its lifetime.
    pub fn new(access_token: impl Into<SecretString>, expires_in: Option<Duration>) -> Self {
        Self {
            access_token: access_token.into(),
            refresh_token: None,
            expires_in,
        }
    }

    /// Adds a rotated refresh token.
    pub fn with_refresh_token(mut self, refresh_token: impl Into<SecretString>) -> Self {
        self.refresh_token = Some(refresh_token.into());
        self
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[REDACTED]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// The tokens a [`TokenSource`] starts from (after a login, or seeded by an operator).
pub struct TokenSet {
    pub(crate) access_token: Option<SecretString>,
    pub(crate) refresh_token: Option<SecretString>,
    pub(crate) expires_in: Option<Duration>,
}

impl TokenSet {
    /// Only a refresh token: the first request refreshes.
    pub fn from_refresh_token(refresh_token: impl Into<SecretString>) -> Self {
        Self {
            access_token: None,
            refresh_token: Some(refresh_token.into()),
            expires_in: None,
        }
    }

    /// An access token valid for `expires_in`, plus an optional refresh token.
    pub fn new(
        access_token: impl Into<SecretString>,
        expires_in: Duration,
        refresh_token: Option<SecretString>,
    ) -> Self {
        Self {
            access_token: Some(access_token.into()),
            refresh_token,
            expires_in: Some(expires_in),
        }
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Exchanges a refresh token for new tokens. [`OAuthRefresh`] is the RFC 6749 §6 grant; write
/// your own for custom flows, or pass a closure
/// `Fn(SecretString) -> impl Future<Output = Result<TokenResponse, RefreshError>>`.
pub trait Refresh: Send + Sync + 'static {
    /// Performs one refresh. Return [`RefreshError::InvalidGrant`] when the server rejected the
    /// refresh token itself (revoked, reused, expired): the source then stops and asks for
    /// re-authentication instead of retrying.
    fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> impl Future<Output = Result<TokenResponse, RefreshError>> + Send;
}

impl<F, Fut> Refresh for F
where
    F: Fn(SecretString) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TokenResponse, RefreshError>> + Send,
{
    fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> impl Future<Output = Result<TokenResponse, RefreshError>> + Send {
        self(refresh_token.clone())
    }
}
