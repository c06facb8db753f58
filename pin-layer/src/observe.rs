//! What observers see: `tracing` events, user callbacks and HPKP-style reports.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::pin::Pin;
use crate::policy::{Mode, PinEntry, Position};
use crate::verify::{ChainLink, PinFailure, UnpinnableHost};

/// The `tracing` target of pin events.
pub const TARGET: &str = "portcullis::pin";

/// The outcome of a successful certificate check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinCheck {
    host: String,
    pattern: Option<String>,
    matched: Option<(Pin, Position)>,
    mode: Option<Mode>,
    chain: Option<Vec<ChainLink>>,
}

impl PinCheck {
    pub(crate) fn unpinned(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            pattern: None,
            matched: None,
            mode: None,
            chain: None,
        }
    }

    pub(crate) fn matched(
        host: &str,
        entry: &PinEntry,
        pin: Pin,
        pos: Position,
        mode: Mode,
    ) -> Self {
        Self {
            host: host.to_owned(),
            pattern: Some(entry.pattern().to_string()),
            matched: Some((pin, pos)),
            mode: Some(mode),
            chain: None,
        }
    }

    pub(crate) fn reported(host: &str, entry: &PinEntry, mode: Mode) -> Self {
        Self {
            host: host.to_owned(),
            pattern: Some(entry.pattern().to_string()),
            matched: None,
            mode: Some(mode),
            chain: None,
        }
    }

    pub(crate) fn with_chain(mut self, chain: Option<Vec<ChainLink>>) -> Self {
        self.chain = chain;
        self
    }

    /// The verified chain, leaf first, when the configuration records it
    /// ([`PinnedTlsBuilder::record_verified_chain`](crate::PinnedTlsBuilder::record_verified_chain)).
    pub fn verified_chain(&self) -> Option<&[ChainLink]> {
        self.chain.as_deref()
    }

    /// The host that was verified.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The policy pattern that applied, or `None` for an unpinned host.
    pub fn pattern(&self) -> Option<&str> {
        self.pattern.as_deref()
    }

    /// The pin that matched on the verified chain, if one did.
    pub fn matched_pin(&self) -> Option<&Pin> {
        self.matched.as_ref().map(|(p, _)| p)
    }

    /// Where on the chain the pin matched.
    pub fn position(&self) -> Option<Position> {
        self.matched.map(|(_, p)| p)
    }

    /// The effective mode of the entry, or `None` for an unpinned host.
    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// Whether the host is pinned and a pin matched.
    pub fn is_pinned_match(&self) -> bool {
        self.matched.is_some()
    }
}

/// An HPKP (RFC 7469 §3) / TrustKit style violation report, ready to be sent as JSON to a
/// report URI. Identical reports are only produced once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PinReport {
    /// When the violation happened (RFC 3339).
    #[serde(rename = "date-time")]
    pub date_time: String,
    /// The host connected to.
    pub hostname: String,
    /// The port connected to, when known.
    pub port: Option<u16>,
    /// The policy pattern that applied (HPKP's "noted-hostname").
    #[serde(rename = "noted-hostname")]
    pub noted_hostname: String,
    /// Whether the pattern covers subdomains at any depth.
    #[serde(rename = "include-subdomains")]
    pub include_subdomains: bool,
    /// The verified chain's SPKI pins, leaf first.
    #[serde(rename = "validated-certificate-chain")]
    pub validated_certificate_chain: Vec<String>,
    /// The pins configured for the host.
    #[serde(rename = "known-pins")]
    pub known_pins: Vec<String>,
    /// The entry's expiration date (RFC 3339), if any.
    #[serde(rename = "effective-expiration-date")]
    pub effective_expiration_date: Option<String>,
    /// Whether the connection was refused.
    pub enforced: bool,
    /// Where the entry asks reports to be sent.
    #[serde(skip)]
    pub report_uri: Option<String>,
}

impl PinReport {
    pub(crate) fn new(failure: &PinFailure, entry: &PinEntry, now: OffsetDateTime) -> Self {
        Self {
            date_time: now.format(&Rfc3339).unwrap_or_default(),
            hostname: failure.host().to_owned(),
            port: failure.port(),
            noted_hostname: failure.pattern().to_owned(),
            include_subdomains: entry.pattern().includes_subdomains(),
            validated_certificate_chain: failure
                .chain()
                .iter()
                .map(|l| l.spki_pin.to_string())
                .collect(),
            known_pins: failure.pins().iter().map(Pin::to_string).collect(),
            effective_expiration_date: entry.expiration().and_then(|e| e.format(&Rfc3339).ok()),
            enforced: failure.mode() == Mode::Enforce,
            report_uri: entry.report_uri_value().map(str::to_owned),
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

type MatchHook = Arc<dyn Fn(&PinCheck) + Send + Sync>;
type ViolationHook = Arc<dyn Fn(&PinFailure) + Send + Sync>;
type ReportHook = Arc<dyn Fn(&PinReport) + Send + Sync>;

/// User callbacks, called synchronously during the handshake: keep them short.
#[derive(Clone, Default)]
pub(crate) struct Observers {
    pub(crate) on_match: Vec<MatchHook>,
    pub(crate) on_violation: Vec<ViolationHook>,
    pub(crate) on_report: Vec<ReportHook>,
}

impl fmt::Debug for Observers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observers")
            .field("on_match", &self.on_match.len())
            .field("on_violation", &self.on_violation.len())
            .field("on_report", &self.on_report.len())
            .finish()
    }
}

impl Observers {
    pub(crate) fn matched(&self, check: &PinCheck) {
        if let (Some((pin, position)), Some(mode)) = (check.matched, check.mode) {
            tracing::debug!(
                target: TARGET,
                host = %check.host,
                event.kind = "event",
                event.category = "network",
                event.action = "tls.pin.check",
                event.outcome = "success",
                server.address = %check.host,
                tls.server.hash.sha256 = %pin,
                outcome = "match",
                matched_pin = %pin,
                position = position.as_str(),
                mode = mode.as_str(),
                "pin matched"
            );
        }
        for hook in &self.on_match {
            hook(check);
        }
    }

    pub(crate) fn violation(&self, failure: &PinFailure, report: Option<&PinReport>) {
        let outcome = match failure.mode() {
            Mode::Enforce => "failure",
            Mode::ReportOnly => "report",
        };
        let leaf = failure
            .chain()
            .first()
            .map(|l| l.spki_pin.to_string())
            .unwrap_or_default();
        let reason = if failure.entry_expired() {
            "pin_mismatch_entry_expired"
        } else {
            "pin_mismatch"
        };
        tracing::warn!(
            target: TARGET,
            host = %failure.host(),
            event.kind = "alert",
            event.category = "network",
            event.action = "tls.pin.check",
            event.outcome = "failure",
            event.reason = reason,
            server.address = %failure.host(),
            tls.server.hash.sha256 = %leaf,
            outcome,
            matched_pin = "",
            position = failure.position().as_str(),
            mode = failure.mode().as_str(),
            "pin violation"
        );
        for hook in &self.on_violation {
            hook(failure);
        }
        if let Some(report) = report {
            for hook in &self.on_report {
                hook(report);
            }
        }
    }

    pub(crate) fn unpinnable(&self, refused: &UnpinnableHost) {
        tracing::warn!(
            target: TARGET,
            host = %refused.host(),
            event.kind = "alert",
            event.category = "network",
            event.action = "tls.pin.check",
            event.outcome = "failure",
            event.reason = "host_not_canonical",
            server.address = %refused.host(),
            outcome = "failure",
            mode = Mode::Enforce.as_str(),
            "pin check refused: the server name has no canonical form to look its pins up by"
        );
    }

    pub(crate) fn expiry_warning(&self, host: &str, entry: &PinEntry) {
        let expires = entry
            .expiration()
            .and_then(|e| e.format(&Rfc3339).ok())
            .unwrap_or_default();
        tracing::warn!(
            target: TARGET,
            host = %host,
            pattern = %entry.pattern(),
            expires = %expires,
            event.kind = "event",
            event.category = "configuration",
            event.action = "tls.pin.expiry_warning",
            event.outcome = "unknown",
            server.address = %host,
            "pin policy entry expires soon; ship new pins before it stops enforcing"
        );
    }
}
