//! The [`AuditLayer`]: one structured record per request.
//!
//! The layer opens a `portcullis.request` span (target `portcullis::audit`) around the
//! inner service. The [collector](crate::AuditCollector) attaches every security event
//! raised inside that span to the request; when the response head (or an error) comes
//! back, the layer builds an [`AuditRecord`](crate::AuditRecord) with the identity, the
//! outcome, the latency and those events, feeds it to the detector and the sinks, and emits
//! it as a `tracing` event.
//!
//! Put it outermost, so that its latency covers the whole stack and every layer's events
//! land in its span.

mod future;
mod layer;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::AuditLayer;
pub use self::service::Audit;
