//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Mutex, Once};
use std::thread::ThreadId;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One captured tracing event: its target and fields rendered as strings.
#[derive(Debug, Clone)]
pub struct Captured {
    pub target: String,
    pub fields: Vec<(String, String)>,
}

impl Captured {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

static EVENTS: Mutex<Vec<(ThreadId, Captured)>> = Mutex::new(Vec::new());

/// Captures events of the current thread (tests run on current-thread runtimes).
///
/// One global subscriber collects every event with its thread, so the callsite interest is
/// the same for all tests running in parallel (a thread-local subscriber would race).
#[derive(Clone, Default)]
pub struct Capture;

impl Capture {
    pub fn events(&self) -> Vec<Captured> {
        let me = std::thread::current().id();
        EVENTS
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == me)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Makes sure the global collector is installed.
    pub fn install(&self) -> Installed {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            let subscriber = tracing_subscriber::registry().with(Collector);
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        Installed
    }
}

/// Returned by [`Capture::install`] (nothing to undo).
pub struct Installed;

struct Collector;

struct Visitor<'a>(&'a mut Vec<(String, String)>);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Collector {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        event.record(&mut Visitor(&mut fields));
        EVENTS.lock().unwrap().push((
            std::thread::current().id(),
            Captured {
                target: event.metadata().target().to_string(),
                fields,
            },
        ));
    }
}
