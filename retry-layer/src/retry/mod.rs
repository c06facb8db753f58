//! Client-side retries that never weaken security.
//!
//! [`RetryLayer`] repeats an attempt only when all of these hold:
//! - the outcome is transient ([`classify`](crate::classify)): a connection failure before
//!   any byte was sent, an attempt timeout, or 502/503/504/429/408; never a TLS, certificate
//!   or pin failure, never 401/403;
//! - the request is idempotent (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) or carries
//!   an `Idempotency-Key` (optionally added by the layer);
//! - its body was buffered: known length under the cap (otherwise it is streamed once and a
//!   `portcullis::retry` tracing event says why it will not be retried);
//! - attempts remain, the retry budget allows it, and the backoff (or the server's longer
//!   `Retry-After`, up to a cap) ends before the overall deadline.
//!
//! Each attempt is a fresh call of the inner stack, with its [`Attempt`] number in the request
//! extensions, so a signing layer below signs every attempt anew.

mod backoff;
mod body;
mod error;
mod future;
mod layer;
mod policy;
mod service;

pub use backoff::{FullJitterBackoff, FullJitterBackoffMaker};
pub use body::ReplayBody;
pub use error::{AttemptTimedOut, DeadlineExceeded};
pub use future::{AttemptFuture, ResponseFuture};
pub use layer::RetryLayer;
pub use policy::{Attempt, HttpResponse, RetryPolicy};
pub use service::{AttemptService, Retry};
