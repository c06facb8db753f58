//! Secret stores, short-lived token rotation, bearer injection and bearer validation for tower.

pub mod bearer;
#[doc(hidden)]
pub mod fuzz;
pub mod header;
pub mod require;
pub mod secret;
pub mod token;

pub use bearer::{Bearer, BearerLayer};
pub use require::{JwtValidator, RequireBearerLayer, VerifiedClaims};
pub use secret::{FileKey, FileStore, KeyringStore, MemoryStore, SecretStore, SecretValue};
pub use token::{AccessToken, OAuthRefresh, Refresh, TokenSource};

/// Boxed error used by the layers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
