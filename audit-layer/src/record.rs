//! The per-request audit record and the entries handed to sinks.

use std::fmt;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};
use time::OffsetDateTime;

use crate::detector::Anomaly;
use crate::schema::{self, SecurityEvent, action, category, field, kind};

/// Which half of the connection an [`AuditLayer`](crate::AuditLayer) sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Side {
    /// In an HTTP client: the peer is the server (`server.address`).
    Client,
    /// In an HTTP server: the peer is the client (`client.address`).
    Server,
}

impl Side {
    /// `"client"` or `"server"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// One structured record per request: identity, outcome, latency and the security events
/// raised while the request was processed.
///
/// Serializes as a flat ECS object (`event.action = "http.request"`) with the security
/// events under `portcullis.events`.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    pub(crate) timestamp: OffsetDateTime,
    pub(crate) side: Side,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) server_address: Option<String>,
    pub(crate) client_address: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<String>,
    pub(crate) duration: Duration,
    pub(crate) events: Vec<SecurityEvent>,
    pub(crate) dropped_events: u32,
}

impl AuditRecord {
    /// When the request started (wall clock).
    pub fn timestamp(&self) -> OffsetDateTime {
        self.timestamp
    }

    /// Client or server.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The HTTP method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The server's host (client side: the host called).
    pub fn server_address(&self) -> Option<&str> {
        self.server_address.as_deref()
    }

    /// The client's address (server side).
    pub fn client_address(&self) -> Option<&str> {
        self.client_address.as_deref()
    }

    /// The identity: from the [`IdentityExtractor`](crate::IdentityExtractor) on the request
    /// or the response extensions, or else the first `user.id` of the request's events.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// The response status, `None` when the inner service failed.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The inner service's error, when it failed.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// `success` for 1xx-3xx answers, `failure` for 4xx, 5xx and errors.
    pub fn outcome(&self) -> &'static str {
        match self.status {
            Some(s) if s < 400 => schema::outcome::SUCCESS,
            _ => schema::outcome::FAILURE,
        }
    }

    /// Time from the call to the response head (or the error).
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The security events raised while the request was processed (at most
    /// [`AuditorBuilder::max_events_per_request`](crate::AuditorBuilder::max_events_per_request)).
    pub fn events(&self) -> &[SecurityEvent] {
        &self.events
    }

    /// Events raised beyond the per-request limit and not kept.
    pub fn dropped_events(&self) -> u32 {
        self.dropped_events
    }

    /// `action:outcome,action:outcome` of the events.
    pub(crate) fn events_summary(&self) -> String {
        let mut s = String::new();
        for (i, e) in self.events.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&e.summary());
        }
        s
    }
}

impl fmt::Display for AuditRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.method, self.path)?;
        match self.status {
            Some(s) => write!(f, "{s}")?,
            None => f.write_str("error")?,
        }
        write!(f, " in {:?}", self.duration)?;
        if let Some(u) = &self.user_id {
            write!(f, " as {u:?}")?;
        }
        write!(f, " ({} security events)", self.events.len())
    }
}

impl Serialize for AuditRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let level = if self.error.is_some() {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        };
        schema::write_header(&mut map, self.timestamp, schema::AUDIT_TARGET, level)?;
        map.serialize_entry(field::EVENT_KIND, kind::EVENT)?;
        map.serialize_entry(field::EVENT_CATEGORY, category::WEB)?;
        map.serialize_entry(field::EVENT_ACTION, action::HTTP_REQUEST)?;
        map.serialize_entry(field::EVENT_OUTCOME, self.outcome())?;
        if let Some(e) = &self.error {
            map.serialize_entry(field::EVENT_REASON, e)?;
        }
        map.serialize_entry(
            field::EVENT_DURATION,
            &u64::try_from(self.duration.as_nanos()).unwrap_or(u64::MAX),
        )?;
        map.serialize_entry("portcullis.side", self.side.as_str())?;
        map.serialize_entry(field::HTTP_REQUEST_METHOD, &self.method)?;
        map.serialize_entry(field::URL_PATH, &self.path)?;
        if let Some(s) = self.status {
            map.serialize_entry(field::HTTP_RESPONSE_STATUS_CODE, &s)?;
        }
        if let Some(v) = &self.server_address {
            map.serialize_entry(field::SERVER_ADDRESS, v)?;
        }
        if let Some(v) = &self.client_address {
            map.serialize_entry(field::CLIENT_ADDRESS, v)?;
        }
        if let Some(v) = &self.user_id {
            map.serialize_entry(field::USER_ID, v)?;
        }
        map.serialize_entry(field::REQUEST_EVENTS, &self.events)?;
        if self.dropped_events > 0 {
            map.serialize_entry("portcullis.events_dropped", &self.dropped_events)?;
        }
        map.end()
    }
}

/// What a sink receives.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum AuditEntry<'a> {
    /// A finished request, with the security events it raised.
    Request(&'a AuditRecord),
    /// A security event raised outside any audited request (e.g. a background token
    /// refresh).
    Event(&'a SecurityEvent),
    /// An anomaly.
    Anomaly(&'a Anomaly),
}

impl Serialize for AuditEntry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AuditEntry::Request(r) => r.serialize(serializer),
            AuditEntry::Event(e) => e.serialize(serializer),
            AuditEntry::Anomaly(a) => a.serialize(serializer),
        }
    }
}
