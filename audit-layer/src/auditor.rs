//! The [`Auditor`]: detector, hooks and sinks shared by the collector and the layers.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::span;

use crate::audit::AuditLayer;
use crate::collector::AuditCollector;
use crate::detector::{Anomaly, AnomalyKind, Detector, DetectorConfig, Parts};
use crate::hook::AnomalyHook;
use crate::record::{AuditEntry, AuditRecord, Side};
use crate::schema::SecurityEvent;
use crate::sink::AuditSink;

/// Errors building an [`Auditor`], a [`Detector`] or a sink.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A threshold that can never or always fire.
    #[error(
        "invalid threshold for {kind}: {count} signals within {window:?}; expected at least 1 signal within a non-zero window"
    )]
    InvalidThreshold {
        /// The rule.
        kind: AnomalyKind,
        /// The configured count.
        count: u32,
        /// The configured window.
        window: Duration,
    },
    /// A capacity of zero.
    #[error("{what} is zero; expected at least 1")]
    ZeroCapacity {
        /// Which capacity.
        what: &'static str,
    },
    /// The audit log file cannot be opened.
    #[error(
        "cannot open audit log {} for appending: {source}; check that its directory exists and is writable",
        path.display()
    )]
    OpenLog {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The audit log path is not a regular file: a symbolic link (never followed, so whoever
    /// can write to the log's directory cannot redirect the log into another file), a FIFO
    /// or a device.
    #[error(
        "refusing audit log {}: it is {what}; expected a regular file (symbolic links are never followed)",
        path.display()
    )]
    UnsafeLog {
        /// The file.
        path: PathBuf,
        /// What is there instead: "a symbolic link", "not a regular file".
        what: &'static str,
    },
}

const MAX_PENDING: usize = 1024;
const MAX_OPEN_REQUESTS: usize = 65_536;

#[derive(Debug, Default)]
pub(crate) struct RequestEvents {
    pub(crate) events: Vec<SecurityEvent>,
    pub(crate) dropped: u32,
}

pub(crate) struct Shared {
    detector: Detector,
    hooks: Vec<Box<dyn AnomalyHook>>,
    sinks: Vec<Box<dyn AuditSink>>,
    requests: Mutex<HashMap<span::Id, RequestEvents>>,
    pending: Mutex<VecDeque<Anomaly>>,
    has_pending: AtomicBool,
    tracing_records: bool,
    max_events_per_request: usize,
    anomalies: AtomicU64,
    records: AtomicU64,
}

impl Shared {
    /// Opens the event buffer of an audited request. Returns `false` when too many
    /// requests are open.
    pub(crate) fn open_request(&self, id: &span::Id) -> bool {
        let Ok(mut map) = self.requests.lock() else {
            return false;
        };
        if map.len() >= MAX_OPEN_REQUESTS {
            return false;
        }
        map.insert(id.clone(), RequestEvents::default());
        true
    }

    /// Closes the buffer of a request and returns its events.
    pub(crate) fn close_request(&self, id: &span::Id) -> RequestEvents {
        self.requests
            .lock()
            .ok()
            .and_then(|mut m| m.remove(id))
            .unwrap_or_default()
    }

    /// Attaches an event to an open request; `false` if the request is not open here.
    pub(crate) fn attach(&self, id: &span::Id, event: &SecurityEvent) -> bool {
        let Ok(mut map) = self.requests.lock() else {
            return false;
        };
        let Some(req) = map.get_mut(id) else {
            return false;
        };
        if req.events.len() < self.max_events_per_request {
            req.events.push(event.clone());
        } else {
            req.dropped = req.dropped.saturating_add(1);
        }
        true
    }

    /// Feeds one collected event. Events inside an audited request go to its record
    /// rather than to the sinks, and their status codes are counted by the record.
    pub(crate) fn ingest(&self, event: &SecurityEvent, in_request: bool) -> Vec<Anomaly> {
        let anomalies = self.detector.observe_at(event, Instant::now(), !in_request);
        if !in_request {
            for sink in &self.sinks {
                sink.write(&AuditEntry::Event(event));
            }
        }
        self.raise(&anomalies);
        anomalies
    }

    /// Finishes a request: detector, sinks, `tracing` record, pending anomalies.
    pub(crate) fn finish(&self, record: &AuditRecord) {
        self.records.fetch_add(1, Ordering::Relaxed);
        let anomalies = self.detector.observe_parts(
            Parts {
                failure: None,
                status: record.status().map(u64::from),
                user: record.user_id().filter(|s| !s.is_empty()),
                client: record.client_address().filter(|s| !s.is_empty()),
                server: record.server_address().filter(|s| !s.is_empty()),
            },
            Instant::now(),
        );
        for sink in &self.sinks {
            sink.write(&AuditEntry::Request(record));
        }
        if self.tracing_records {
            emit_record(record);
        }
        self.raise(&anomalies);
        self.flush();
    }

    fn raise(&self, anomalies: &[Anomaly]) {
        if anomalies.is_empty() {
            return;
        }
        self.anomalies
            .fetch_add(anomalies.len() as u64, Ordering::Relaxed);
        for a in anomalies {
            for sink in &self.sinks {
                sink.write(&AuditEntry::Anomaly(a));
            }
            for hook in &self.hooks {
                hook.on_anomaly(a);
            }
        }
        if self.tracing_records
            && let Ok(mut p) = self.pending.lock()
        {
            for a in anomalies {
                if p.len() >= MAX_PENDING {
                    p.pop_front();
                }
                p.push_back(a.clone());
            }
            self.has_pending.store(true, Ordering::Release);
        }
    }

    /// Emits the pending anomaly events into the `tracing` pipeline.
    pub(crate) fn flush(&self) {
        if !self.has_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let drained: Vec<Anomaly> = match self.pending.lock() {
            Ok(mut p) => p.drain(..).collect(),
            Err(_) => return,
        };
        for a in &drained {
            emit_anomaly(a);
        }
    }
}

fn emit_record(r: &AuditRecord) {
    let duration = u64::try_from(r.duration().as_nanos()).unwrap_or(u64::MAX);
    let events = r.events_summary();
    macro_rules! record {
        ($lvl:expr) => {
            tracing::event!(
                target: "portcullis::audit",
                $lvl,
                {
                "event.kind" = "event",
                "event.category" = "web",
                "event.action" = "http.request",
                "event.outcome" = r.outcome(),
                "event.reason" = r.error(),
                "event.duration" = duration,
                "portcullis.side" = r.side().as_str(),
                "http.request.method" = r.method(),
                "url.path" = r.path(),
                "http.response.status_code" = r.status(),
                "server.address" = r.server_address(),
                "client.address" = r.client_address(),
                "user.id" = r.user_id(),
                "portcullis.events" = events.as_str(),
                },
                "{r}"
            )
        };
    }
    if r.error().is_some() {
        record!(tracing::Level::WARN);
    } else {
        record!(tracing::Level::INFO);
    }
}

fn emit_anomaly(a: &Anomaly) {
    let window_ms = u64::try_from(a.threshold().window().as_millis()).unwrap_or(u64::MAX);
    tracing::warn!(
        target: "portcullis::audit",
        {
        "event.kind" = "alert",
        "event.category" = "intrusion_detection",
        "event.action" = "anomaly.detected",
        "event.reason" = a.kind().as_str(),
        "rule.name" = a.kind().as_str(),
        "user.id" = a.user_id(),
        "client.address" = a.client_address(),
        "server.address" = a.server_address(),
        "portcullis.anomaly.count" = a.threshold().count(),
        "portcullis.anomaly.window_ms" = window_ms,
        },
        "{a}"
    );
}

/// The heart of the audit layer: one [`Detector`], the anomaly hooks and the sinks, shared
/// by the `tracing` [collector](Auditor::collector) and the tower layers it makes. Cloning
/// is cheap.
///
/// ```
/// use std::time::Duration;
/// use portcullis_audit::{AnomalyKind, Auditor, DetectorConfig, MemorySink, PenaltyBox, Threshold};
///
/// let sink = MemorySink::new(1000);
/// let penalties = PenaltyBox::block_for(Duration::from_secs(300));
/// let auditor = Auditor::builder()
///     .detector(DetectorConfig::new().threshold(
///         AnomalyKind::UnauthorizedBurst,
///         Threshold::new(20, Duration::from_secs(60)),
///     ))
///     .on_anomaly(penalties.clone())
///     .on_anomaly(|a: &portcullis_audit::Anomaly| eprintln!("{a}"))
///     .sink(sink.clone())
///     .build()?;
/// # let _ = auditor;
/// # Ok::<(), portcullis_audit::BuildError>(())
/// ```
#[derive(Clone)]
pub struct Auditor {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Auditor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auditor")
            .field("detector", &self.shared.detector.config())
            .field("hooks", &self.shared.hooks.len())
            .field("sinks", &self.shared.sinks.len())
            .field("tracing_records", &self.shared.tracing_records)
            .finish()
    }
}

impl Auditor {
    /// Starts building an auditor.
    pub fn builder() -> AuditorBuilder {
        AuditorBuilder {
            detector: DetectorConfig::default(),
            hooks: Vec::new(),
            sinks: Vec::new(),
            tracing_records: true,
            max_events_per_request: 64,
        }
    }

    /// The `tracing_subscriber::Layer` that collects the security events of every layer
    /// (targets starting with `portcullis::`), attaches them to the audited request they
    /// were raised in and feeds the detector. Install it once in the subscriber.
    pub fn collector(&self) -> AuditCollector {
        AuditCollector::new(self.shared.clone())
    }

    /// The [`AuditLayer`] for an HTTP server: the peer is the client.
    pub fn server_layer(&self) -> AuditLayer {
        AuditLayer::new(self.clone(), Side::Server)
    }

    /// The [`AuditLayer`] for an HTTP client: the peer is the server called.
    pub fn client_layer(&self) -> AuditLayer {
        AuditLayer::new(self.clone(), Side::Client)
    }

    /// Feeds an event directly (for code that does not go through `tracing`); returns the
    /// anomalies it raised, which have been handed to the hooks and sinks, and emitted.
    pub fn ingest(&self, event: &SecurityEvent) -> Vec<Anomaly> {
        let anomalies = self.shared.ingest(event, false);
        self.shared.flush();
        anomalies
    }

    /// Emits, as `tracing` events, the anomalies raised inside the `tracing` dispatcher
    /// (where emitting is not possible). The audit and enforce layers call this after each
    /// request; call it yourself (e.g. on a timer) if you use the collector alone.
    pub fn flush(&self) {
        self.shared.flush();
    }

    /// The detector.
    pub fn detector(&self) -> &Detector {
        &self.shared.detector
    }

    /// How many anomalies were raised so far.
    pub fn anomalies_raised(&self) -> u64 {
        self.shared.anomalies.load(Ordering::Relaxed)
    }

    /// How many request records were produced so far.
    pub fn records_produced(&self) -> u64 {
        self.shared.records.load(Ordering::Relaxed)
    }
}

/// Builds an [`Auditor`].
pub struct AuditorBuilder {
    detector: DetectorConfig,
    hooks: Vec<Box<dyn AnomalyHook>>,
    sinks: Vec<Box<dyn AuditSink>>,
    tracing_records: bool,
    max_events_per_request: usize,
}

impl fmt::Debug for AuditorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditorBuilder")
            .field("detector", &self.detector)
            .field("hooks", &self.hooks.len())
            .field("sinks", &self.sinks.len())
            .field("tracing_records", &self.tracing_records)
            .field("max_events_per_request", &self.max_events_per_request)
            .finish()
    }
}

impl AuditorBuilder {
    /// Thresholds and bounds of the detector.
    pub fn detector(mut self, config: DetectorConfig) -> Self {
        self.detector = config;
        self
    }

    /// Adds a hook called for each anomaly (a closure, a [`PenaltyBox`](crate::PenaltyBox)).
    pub fn on_anomaly(mut self, hook: impl AnomalyHook) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Adds a sink ([`JsonLinesFile`](crate::JsonLinesFile), [`MemorySink`](crate::MemorySink),
    /// a closure).
    pub fn sink(mut self, sink: impl AuditSink) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }

    /// Whether request records and anomalies are also emitted as `tracing` events under
    /// `portcullis::audit` (on by default), so that an existing `fmt`, JSON or
    /// OpenTelemetry pipeline receives them.
    pub fn tracing_records(mut self, on: bool) -> Self {
        self.tracing_records = on;
        self
    }

    /// How many security events are kept in one request record (64 by default); the rest
    /// are counted as dropped.
    pub fn max_events_per_request(mut self, max: usize) -> Self {
        self.max_events_per_request = max;
        self
    }

    /// Builds the auditor.
    ///
    /// # Errors
    ///
    /// An invalid detector threshold or a zero capacity.
    pub fn build(self) -> Result<Auditor, BuildError> {
        let detector = Detector::new(self.detector)?;
        Ok(Auditor {
            shared: Arc::new(Shared {
                detector,
                hooks: self.hooks,
                sinks: self.sinks,
                requests: Mutex::new(HashMap::new()),
                pending: Mutex::new(VecDeque::new()),
                has_pending: AtomicBool::new(false),
                tracing_records: self.tracing_records,
                max_events_per_request: self.max_events_per_request,
                anomalies: AtomicU64::new(0),
                records: AtomicU64::new(0),
            }),
        })
    }
}
