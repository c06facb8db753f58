//! The security-event schema: target prefix, field names and well-known values.
//!
//! This module is the contract between the Portcullis layers and the audit layer. Other
//! layers do **not** depend on this crate: they emit plain [`tracing`] events whose target
//! starts with [`TARGET_PREFIX`] and whose fields use the names below. Code that may depend
//! on this crate (applications, the facade) can use the constants instead of string
//! literals.
//!
//! ```
//! use portcullis_audit::schema;
//!
//! // What the pin layer emits on a pin mismatch (written with literals there).
//! tracing::warn!(
//!     target: "portcullis::pin",
//!     {
//!     "event.kind" = schema::kind::ALERT,
//!     "event.category" = schema::category::NETWORK,
//!     "event.action" = schema::action::PIN_CHECK,
//!     "event.outcome" = schema::outcome::FAILURE,
//!     "event.reason" = schema::reason::PIN_MISMATCH,
//!     "server.address" = "api.example.com",
//!     "tls.server.hash.sha256" = "4f2a...",
//!     },
//!     "pin mismatch"
//! );
//! assert!(schema::is_security_target("portcullis::pin"));
//! assert_eq!(schema::field::EVENT_ACTION, "event.action");
//! ```

use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};
use time::OffsetDateTime;

/// Every security event's `tracing` target starts with this prefix, followed by the area
/// (`portcullis::pin`, `portcullis::token`, `portcullis::attest`, `portcullis::retry`,
/// `portcullis::audit`).
pub const TARGET_PREFIX: &str = "portcullis::";

/// The target of the events this crate emits itself (request records, anomalies,
/// enforcement decisions).
pub const AUDIT_TARGET: &str = "portcullis::audit";

/// The name of the span the [`AuditLayer`](crate::AuditLayer) opens around each request.
pub const REQUEST_SPAN: &str = "portcullis.request";

/// Returns `true` if `target` is a Portcullis security-event target.
pub fn is_security_target(target: &str) -> bool {
    target.starts_with(TARGET_PREFIX)
}

/// Field names (ECS / OpenTelemetry semantic conventions).
pub mod field {
    /// `"event"` for facts, `"alert"` for something a person should look at.
    pub const EVENT_KIND: &str = "event.kind";
    /// The family of the event: see [`category`](super::category).
    pub const EVENT_CATEGORY: &str = "event.category";
    /// What happened: see [`action`](super::action).
    pub const EVENT_ACTION: &str = "event.action";
    /// `"success"` or `"failure"`.
    pub const EVENT_OUTCOME: &str = "event.outcome";
    /// Why (for failures): see [`reason`](super::reason).
    pub const EVENT_REASON: &str = "event.reason";
    /// Duration of the request in nanoseconds (request records).
    pub const EVENT_DURATION: &str = "event.duration";
    /// Host name or address of the server (the peer, on the client side).
    pub const SERVER_ADDRESS: &str = "server.address";
    /// Address of the client (the peer, on the server side).
    pub const CLIENT_ADDRESS: &str = "client.address";
    /// The identity: user, token subject, mTLS identity or signing key id. Never a secret.
    pub const USER_ID: &str = "user.id";
    /// Hex SHA-256 of the server's leaf certificate (or of the pinned SPKI).
    pub const TLS_SERVER_HASH_SHA256: &str = "tls.server.hash.sha256";
    /// The HTTP method.
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    /// The request path, without the query string (queries may carry secrets).
    pub const URL_PATH: &str = "url.path";
    /// The HTTP status code of the response.
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// Name of the anomaly rule that fired (anomaly events).
    pub const RULE_NAME: &str = "rule.name";
    /// Number of signals that made an anomaly fire (anomaly events).
    pub const ANOMALY_COUNT: &str = "portcullis.anomaly.count";
    /// Window of the anomaly rule in milliseconds (anomaly events).
    pub const ANOMALY_WINDOW_MS: &str = "portcullis.anomaly.window_ms";
    /// Summary of the security events a request raised, as `action:outcome` items separated
    /// by commas (request records in the `tracing` pipeline).
    pub const REQUEST_EVENTS: &str = "portcullis.events";
    /// What went wrong, for a person to read (no secret ever goes here).
    pub const ERROR_MESSAGE: &str = "error.message";
    /// Number of failures an event stands for, when repeats are folded into one event
    /// (audit sink failures).
    pub const FAILURE_COUNT: &str = "portcullis.failure.count";
    /// The `tracing` message field.
    pub const MESSAGE: &str = "message";

    /// Field-name prefixes kept by the collector. Any other field is dropped before it can
    /// reach a sink, so that a stray `token = %secret` never lands in an audit log.
    pub const KEPT_PREFIXES: &[&str] = &[
        "event.",
        "server.",
        "client.",
        "user.",
        "tls.",
        "http.",
        "url.",
        "rule.",
        "error.",
        "portcullis.",
    ];

    /// Returns `true` if a field of this name is part of the schema and kept by the
    /// collector.
    pub fn is_kept(name: &str) -> bool {
        name == MESSAGE || KEPT_PREFIXES.iter().any(|p| name.starts_with(p))
    }
}

/// Values of `event.kind`.
pub mod kind {
    /// A fact: a request, a verification that passed or failed.
    pub const EVENT: &str = "event";
    /// Something a person should look at: a pin violation, an anomaly.
    pub const ALERT: &str = "alert";
}

/// Values of `event.outcome`.
pub mod outcome {
    /// The action succeeded.
    pub const SUCCESS: &str = "success";
    /// The action failed.
    pub const FAILURE: &str = "failure";
}

/// Values of `event.category`.
pub mod category {
    /// Token and signature checks, logins.
    pub const AUTHENTICATION: &str = "authentication";
    /// TLS and pinning.
    pub const NETWORK: &str = "network";
    /// HTTP requests (request records).
    pub const WEB: &str = "web";
    /// Anomalies and enforcement.
    pub const INTRUSION_DETECTION: &str = "intrusion_detection";
}

/// Values of `event.action` the detector and the layers agree on.
pub mod action {
    /// Pin check of a server (client side) or of a client certificate (server side).
    /// A failure counts as a pin violation (so does a failure of any `tls.pin.*` action,
    /// of `pin.verify`, or with a reason starting with `pin_mismatch`).
    pub const PIN_CHECK: &str = "tls.pin.check";
    /// Verification of a signed request. A failure counts as a signature failure, or as a
    /// replay when `event.reason` is [`reason::REPLAYED`](super::reason::REPLAYED).
    pub const SIGNATURE_VERIFY: &str = "signature.verify";
    /// Signing of an outgoing request.
    pub const SIGNATURE_SIGN: &str = "signature.sign";
    /// Validation of a bearer token on the server side.
    pub const TOKEN_VALIDATE: &str = "token.validate";
    /// Refresh of a token on the client side. A failure with `event.reason =
    /// "invalid_grant"` (the refresh token was revoked or reused) counts as token reuse.
    pub const TOKEN_REFRESH: &str = "token.refresh";
    /// A rate-limit decision.
    pub const RATE_LIMIT: &str = "rate_limit.check";
    /// A retry attempt.
    pub const RETRY: &str = "retry.attempt";
    /// One request record of the [`AuditLayer`](crate::AuditLayer).
    pub const HTTP_REQUEST: &str = "http.request";
    /// An anomaly raised by the detector.
    pub const ANOMALY: &str = "anomaly.detected";
    /// A request refused by the [`EnforceLayer`](crate::EnforceLayer).
    pub const ENFORCE: &str = "policy.enforce";
    /// An audit sink failed to write entries (raised by
    /// [`JsonLinesFile`](crate::JsonLinesFile), at most once a minute).
    pub const SINK_WRITE: &str = "audit.sink.write";
}

/// Values of `event.reason` the detector recognizes (on failures, whatever the action).
pub mod reason {
    /// A replayed signature or nonce. Counted as a replay (so are `replay` and any reason
    /// ending in `_replayed`).
    pub const REPLAYED: &str = "replayed";
    /// A token (or refresh token) presented again after it was used or revoked. Counted as
    /// token reuse.
    pub const TOKEN_REUSE: &str = "token_reuse";
    /// The OAuth answer to a revoked or reused refresh token. On a `token.refresh`
    /// failure, counted as token reuse.
    pub const INVALID_GRANT: &str = "invalid_grant";
    /// The peer's certificate chain matched no configured pin.
    pub const PIN_MISMATCH: &str = "pin_mismatch";
    /// A signature did not verify.
    pub const BAD_SIGNATURE: &str = "bad_signature";
    /// A request refused because its identity or peer is blocked.
    pub const BLOCKED: &str = "blocked";
    /// A request refused because its identity or peer is throttled.
    pub const THROTTLED: &str = "throttled";
    /// An audit sink could not write: an I/O error (a full disk, a removed directory).
    pub const IO_ERROR: &str = "io_error";
    /// An audit log path was refused: a symbolic link or not a regular file.
    pub const UNSAFE_PATH: &str = "unsafe_path";
}

/// Longest string value kept in a [`SecurityEvent`], in bytes; longer values are cut.
pub const MAX_VALUE_LEN: usize = 512;

/// Longest list of fields kept in a [`SecurityEvent`].
pub const MAX_FIELDS: usize = 32;

/// The value of one field of a [`SecurityEvent`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FieldValue {
    /// A string (cut at [`MAX_VALUE_LEN`] bytes).
    Str(String),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
}

impl FieldValue {
    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            FieldValue::U64(v) => Some(v),
            FieldValue::I64(v) => u64::try_from(v).ok(),
            FieldValue::Str(ref s) => s.parse().ok(),
            _ => None,
        }
    }

    pub(crate) fn string(mut s: String) -> Self {
        truncate(&mut s, MAX_VALUE_LEN);
        FieldValue::Str(s)
    }
}

impl From<&str> for FieldValue {
    fn from(s: &str) -> Self {
        FieldValue::string(s.to_owned())
    }
}

impl From<String> for FieldValue {
    fn from(s: String) -> Self {
        FieldValue::string(s)
    }
}

impl From<u64> for FieldValue {
    fn from(v: u64) -> Self {
        FieldValue::U64(v)
    }
}

impl From<u16> for FieldValue {
    fn from(v: u16) -> Self {
        FieldValue::U64(u64::from(v))
    }
}

impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::I64(v)
    }
}

impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue::Bool(v)
    }
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Str(s) => f.write_str(s),
            FieldValue::I64(v) => write!(f, "{v}"),
            FieldValue::U64(v) => write!(f, "{v}"),
            FieldValue::F64(v) => write!(f, "{v}"),
            FieldValue::Bool(v) => write!(f, "{v}"),
        }
    }
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldValue::Str(s) => serializer.serialize_str(s),
            FieldValue::I64(v) => serializer.serialize_i64(*v),
            FieldValue::U64(v) => serializer.serialize_u64(*v),
            FieldValue::F64(v) => serializer.serialize_f64(*v),
            FieldValue::Bool(v) => serializer.serialize_bool(*v),
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// One security event, as collected from `tracing` or built by hand for
/// [`Auditor::ingest`](crate::Auditor::ingest).
///
/// Only schema fields are kept ([`field::is_kept`]); strings are cut at
/// [`MAX_VALUE_LEN`] bytes and at most [`MAX_FIELDS`] fields are kept, so that one event's
/// size is bounded whatever a layer logs.
///
/// Serializes as one flat ECS object: `@timestamp`, `log.logger` (the target),
/// `log.level`, `message` and the fields.
#[derive(Clone, Debug, PartialEq)]
pub struct SecurityEvent {
    timestamp: OffsetDateTime,
    target: String,
    level: tracing::Level,
    fields: Vec<(&'static str, FieldValue)>,
}

impl SecurityEvent {
    /// A new event of `target` at level `INFO`, time-stamped now, with no fields.
    pub fn new(target: impl Into<String>) -> Self {
        let mut target = target.into();
        truncate(&mut target, 128);
        SecurityEvent {
            timestamp: OffsetDateTime::now_utc(),
            target,
            level: tracing::Level::INFO,
            fields: Vec::new(),
        }
    }

    /// Sets the level.
    pub fn with_level(mut self, level: tracing::Level) -> Self {
        self.level = level;
        self
    }

    /// Adds (or replaces) a field. Names outside the schema ([`field::is_kept`]) are
    /// ignored.
    pub fn with(mut self, name: &'static str, value: impl Into<FieldValue>) -> Self {
        self.set(name, value.into());
        self
    }

    pub(crate) fn set(&mut self, name: &'static str, value: FieldValue) {
        if !field::is_kept(name) {
            return;
        }
        if let Some(slot) = self.fields.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else if self.fields.len() < MAX_FIELDS {
            self.fields.push((name, value));
        }
    }

    /// When the event was collected.
    pub fn timestamp(&self) -> OffsetDateTime {
        self.timestamp
    }

    /// The `tracing` target, e.g. `portcullis::pin`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The level.
    pub fn level(&self) -> tracing::Level {
        self.level
    }

    /// The value of a field.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The value of a string field.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(FieldValue::as_str)
    }

    /// All kept fields, in the order they were recorded.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &FieldValue)> {
        self.fields.iter().map(|(n, v)| (*n, v))
    }

    /// `event.action`.
    pub fn action(&self) -> Option<&str> {
        self.get_str(field::EVENT_ACTION)
    }

    /// `event.outcome`.
    pub fn outcome(&self) -> Option<&str> {
        self.get_str(field::EVENT_OUTCOME)
    }

    /// `event.reason`.
    pub fn reason(&self) -> Option<&str> {
        self.get_str(field::EVENT_REASON)
    }

    /// `user.id` (an empty string counts as absent).
    pub fn user_id(&self) -> Option<&str> {
        self.get_str(field::USER_ID).filter(|s| !s.is_empty())
    }

    /// `client.address` (an empty string counts as absent).
    pub fn client_address(&self) -> Option<&str> {
        self.get_str(field::CLIENT_ADDRESS)
            .filter(|s| !s.is_empty())
    }

    /// `server.address` (an empty string counts as absent).
    pub fn server_address(&self) -> Option<&str> {
        self.get_str(field::SERVER_ADDRESS)
            .filter(|s| !s.is_empty())
    }

    /// `http.response.status_code`.
    pub fn status_code(&self) -> Option<u64> {
        self.get(field::HTTP_RESPONSE_STATUS_CODE)
            .and_then(FieldValue::as_u64)
    }

    /// `true` if `event.outcome` is `failure`.
    pub fn is_failure(&self) -> bool {
        self.outcome() == Some(outcome::FAILURE)
    }

    /// `action:outcome`, used in request summaries.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{}:{}",
            self.action().unwrap_or("-"),
            self.outcome().unwrap_or("-")
        )
    }
}

impl Serialize for SecurityEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len() + 3))?;
        write_header(&mut map, self.timestamp, &self.target, self.level)?;
        for (name, value) in &self.fields {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

pub(crate) fn write_header<M: SerializeMap>(
    map: &mut M,
    timestamp: OffsetDateTime,
    target: &str,
    level: tracing::Level,
) -> Result<(), M::Error> {
    let ts = timestamp
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    map.serialize_entry("@timestamp", &ts)?;
    map.serialize_entry("log.logger", target)?;
    map.serialize_entry("log.level", level.as_str())
}

/// Collects the fields of a `tracing` event or span into a [`SecurityEvent`].
pub(crate) struct Visitor<'a>(pub(crate) &'a mut SecurityEvent);

impl tracing::field::Visit for Visitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field::is_kept(field.name()) {
            self.0.set(field.name(), FieldValue::from(value));
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.set(field.name(), FieldValue::I64(value));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.set(field.name(), FieldValue::U64(value));
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.set(field.name(), FieldValue::F64(value));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.set(field.name(), FieldValue::Bool(value));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field::is_kept(field.name()) {
            self.0
                .set(field.name(), FieldValue::string(format!("{value:?}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_outside_the_schema_are_dropped() {
        let ev = SecurityEvent::new("portcullis::token")
            .with("token", "secret-bearer-value")
            .with(field::USER_ID, "alice");
        assert_eq!(ev.get("token"), None);
        assert_eq!(ev.user_id(), Some("alice"));
        let json = serde_json::to_string(&ev).unwrap();
        assert!(!json.contains("secret-bearer-value"), "{json}");
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_VALUE_LEN);
        let ev = SecurityEvent::new("portcullis::pin").with(field::SERVER_ADDRESS, long.as_str());
        let kept = ev.server_address().unwrap();
        assert!(kept.len() <= MAX_VALUE_LEN);
        assert!(kept.chars().all(|c| c == 'é'));
    }

    #[test]
    fn serializes_as_flat_ecs_object() {
        let ev = SecurityEvent::new("portcullis::attest")
            .with(field::EVENT_ACTION, action::SIGNATURE_VERIFY)
            .with(field::HTTP_RESPONSE_STATUS_CODE, 401u16);
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["log.logger"], "portcullis::attest");
        assert_eq!(v["event.action"], "signature.verify");
        assert_eq!(v["http.response.status_code"], 401);
        assert!(v["@timestamp"].as_str().unwrap().contains('T'));
        assert_eq!(ev.status_code(), Some(401));
    }
}
