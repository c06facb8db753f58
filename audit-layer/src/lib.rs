//! Security-event schema, per-request audit records, anomaly detection and adaptive
//! enforcement for `tower` services: the "assume breach" layer of Portcullis.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use portcullis_audit::{Auditor, MemorySink};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let records = MemorySink::new(100);
//! let auditor = Auditor::builder().sink(records.clone()).build()?;
//! // One collector per process, next to your usual fmt/JSON/OTel layers.
//! let subscriber = tracing_subscriber::registry().with(auditor.collector());
//! let _guard = tracing::subscriber::set_default(subscriber);
//!
//! // Any layer (it does not depend on this crate) emits its events in the schema:
//! let handler = service_fn(|_req: Request<String>| async {
//!     tracing::info!(
//!         target: "portcullis::token",
//!         { "event.action" = "token.validate", "event.outcome" = "success", "user.id" = "alice" },
//!         "bearer token accepted"
//!     );
//!     Ok::<_, Infallible>(Response::new(String::from("hello")))
//! });
//! let service = ServiceBuilder::new()
//!     .layer(auditor.server_layer())
//!     .service(handler);
//!
//! let response = service
//!     .oneshot(Request::get("/hello?debug=1").body(String::new())?)
//!     .await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! // One record for the request, with its identity, outcome, latency and events.
//! let record = &records.with_action("http.request")[0];
//! assert_eq!(record["url.path"], "/hello"); // never the query
//! assert_eq!(record["user.id"], "alice");
//! assert_eq!(record["event.outcome"], "success");
//! assert_eq!(record["portcullis.events"][0]["event.action"], "token.validate");
//! # Ok(())
//! # }
//! ```
//!
//! # The security-event schema
//!
//! Every Portcullis layer reports what it checks as a [`tracing`] event. The layers do not
//! depend on this crate; this schema is the contract ([`schema`] holds the names as
//! constants for code that may depend on it):
//!
//! - **Target**: `portcullis::<area>` — `portcullis::pin`, `portcullis::token`,
//!   `portcullis::attest`, `portcullis::retry`, `portcullis::audit`.
//! - **Fields** (ECS / OpenTelemetry names, written as string literals in the macros:
//!   `tracing::warn!(target: "portcullis::pin", { "event.action" = "tls.pin.check", ... }, "msg")`;
//!   note the braces: without them the level macros (`warn!`, `info!`...) take a leading
//!   string-literal field name for the format string and fail to compile):
//!
//! | field | meaning |
//! |---|---|
//! | `event.kind` | `event` (a fact) or `alert` (look at it) |
//! | `event.category` | `network` (TLS, pins), `authentication` (tokens, signatures), `web` (requests), `intrusion_detection` (anomalies) |
//! | `event.action` | what was done: `tls.pin.check`, `signature.verify`, `signature.sign`, `token.validate`, `token.refresh`, `rate_limit.check`, `retry.attempt`, `http.request`, `anomaly.detected`, `policy.enforce` |
//! | `event.outcome` | `success` or `failure` |
//! | `event.reason` | why it failed: `pin_mismatch`, `invalid_signature`, `replayed`, `token_reuse`, `invalid_grant`, ... |
//! | `server.address` | host of the server (the peer on the client side) |
//! | `client.address` | address of the client (the peer on the server side) |
//! | `user.id` | identity: user, token subject, mTLS identity or signing key id |
//! | `tls.server.hash.sha256` | hex SHA-256 of the server's leaf certificate or pinned SPKI |
//! | `http.request.method` | HTTP method |
//! | `url.path` | path only, never the query |
//! | `http.response.status_code` | HTTP status |
//!
//! What the [`Detector`] counts (per identity `user.id` and per peer, `client.address` or
//! else `server.address`):
//!
//! | emit | counted as |
//! |---|---|
//! | `event.outcome = "failure"` with `event.action = "tls.pin.check"` (or `tls.pin.*`, `pin.verify`, or a reason starting with `pin_mismatch`) | pin violation |
//! | failure of `signature.verify` | signature failure |
//! | any failure with `event.reason = "replayed"` (or `replay`, `*_replayed`) | replay |
//! | any failure with `event.reason = "token_reuse"`, or `token.refresh` failing with `invalid_grant` | token reuse |
//! | `http.response.status_code` 401 / 429 (taken from the request record when inside an audited request) | 401 / 429 burst |
//! | a `client.address` not among the identity's recent ones (after its first) | new client address |
//!
//! **No secret, ever, in any field** (nor in the message): no token, key, signature value,
//! cookie or query string. As a second line of defence the [collector](AuditCollector) keeps only fields
//! in the schema's namespaces ([`schema::field::KEPT_PREFIXES`]) and cuts long values.
//!
//! # The pieces
//!
//! - [`Auditor`]: the detector, anomaly hooks and sinks, shared by everything below.
//! - [`AuditCollector`] (`auditor.collector()`): the `tracing_subscriber::Layer` that
//!   collects every layer's security events and attaches them to the current request.
//! - [`AuditLayer`] (`auditor.server_layer()` / `auditor.client_layer()`): one
//!   [`AuditRecord`] per request — identity, outcome, latency, security events.
//! - [`Detector`]: sliding windows per identity and per peer for pin violations, signature
//!   failures, replays, token reuse, 401 bursts, 429 bursts and new client addresses;
//!   configurable [`Threshold`]s; bounded memory.
//! - [`AnomalyHook`]s, among them [`PenaltyBox`], and the [`EnforceLayer`] that blocks or
//!   throttles a penalized identity or peer for a period.
//! - Sinks: [`JsonLinesFile`] (JSON lines with size-based rotation), [`MemorySink`], your
//!   own [`AuditSink`], and the `tracing` pipeline itself (records and anomalies are emitted
//!   as `portcullis::audit` events).
//!
//! # Security
//!
//! Records carry the path without its query, and identities as extracted, never
//! credentials. Sinks and hooks run synchronously; a failing sink never fails a request.
//! Every structure that grows with traffic is bounded: tracked subjects, remembered
//! addresses, penalized subjects, events per request, pending anomalies.

pub mod audit;
mod auditor;
mod builder;
mod collector;
mod detector;
pub mod enforce;
mod extract;
mod hook;
mod record;
pub mod schema;
mod sink;

pub use crate::audit::{Audit, AuditLayer};
pub use crate::auditor::{Auditor, AuditorBuilder, BuildError};
pub use crate::builder::ServiceBuilderExt;
pub use crate::collector::AuditCollector;
pub use crate::detector::{Anomaly, AnomalyKind, Detector, DetectorConfig, Subject, Threshold};
pub use crate::enforce::{Enforce, EnforceLayer};
pub use crate::extract::{DefaultPeerExtractor, IdentityExtractor, PeerExtractor};
pub use crate::hook::{AnomalyHook, Penalty, PenaltyBox, Verdict};
pub use crate::record::{AuditEntry, AuditRecord, Side};
pub use crate::schema::{FieldValue, SecurityEvent};
pub use crate::sink::{AuditSink, JsonLinesFile, JsonLinesFileBuilder, MemorySink};
