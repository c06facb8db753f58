//! Client half: [`BearerLayer`] adds `Authorization: Bearer` from a [`TokenSource`] and replays
//! a request once when the server says the token is invalid.
//!
//! [`TokenSource`]: crate::TokenSource

mod body;
mod future;
mod layer;
mod service;

pub use self::body::ReplayBody;
pub use self::future::ResponseFuture;
pub use self::layer::BearerLayer;
pub use self::service::Bearer;
