//! The `tracing_subscriber::Layer` that collects the security events of every layer.

use std::fmt;
use std::sync::Arc;

use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::auditor::Shared;
use crate::schema::{self, SecurityEvent, Visitor, action};

/// Collects every `tracing` event whose target starts with `portcullis::`, keeps its schema
/// fields ([`schema::field::is_kept`]), attaches it to the audited request it was raised in
/// (the nearest `portcullis.request` span) and feeds the [`Detector`](crate::Detector).
///
/// The layers that raise the events do not depend on this crate: they only follow the
/// [schema](crate::schema). Events outside any audited request go to the sinks on their
/// own. The collector's own output (request records and anomaly events) is skipped.
///
/// Get one from [`Auditor::collector`](crate::Auditor::collector) and add it to a
/// subscriber built on [`tracing_subscriber::Registry`]:
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let auditor = portcullis_audit::Auditor::builder().build()?;
/// let subscriber = tracing_subscriber::registry().with(auditor.collector());
/// let _guard = tracing::subscriber::set_default(subscriber);
/// # Ok::<(), portcullis_audit::BuildError>(())
/// ```
pub struct AuditCollector {
    shared: Arc<Shared>,
}

impl AuditCollector {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        AuditCollector { shared }
    }
}

impl fmt::Debug for AuditCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditCollector").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AuditCollector
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !schema::is_security_target(meta.target()) {
            return;
        }
        // Our own output: request records and anomalies (cheap check on static metadata).
        if meta.target() == schema::AUDIT_TARGET
            && (meta.fields().field(schema::field::REQUEST_EVENTS).is_some()
                || meta.fields().field(schema::field::RULE_NAME).is_some())
        {
            return;
        }
        let mut ev = SecurityEvent::new(meta.target()).with_level(*meta.level());
        event.record(&mut Visitor(&mut ev));
        if meta.target() == schema::AUDIT_TARGET
            && matches!(ev.action(), Some(action::HTTP_REQUEST | action::ANOMALY))
        {
            return;
        }
        let mut in_request = false;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                let m = span.metadata();
                if m.name() == schema::REQUEST_SPAN && m.target() == schema::AUDIT_TARGET {
                    in_request = self.shared.attach(&span.id(), &ev);
                    break;
                }
            }
        }
        self.shared.ingest(&ev, in_request);
    }
}
