//! With the collector in the global subscriber (as in production) and a multi-threaded
//! runtime, concurrent requests that hop between worker threads keep their own events, and
//! anomalies reach the `tracing` pipeline. (Its own test binary: the global default can be
//! set once per process.)

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use portcullis_audit::{Auditor, MemorySink};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

#[derive(Clone, Default)]
struct Anomalies(Arc<Mutex<Vec<HashMap<String, String>>>>);

struct FieldMap<'a>(&'a mut HashMap<String, String>);

impl Visit for FieldMap<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Anomalies {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut map = HashMap::new();
        event.record(&mut FieldMap(&mut map));
        if map.get("event.action").map(String::as_str) == Some("anomaly.detected") {
            self.0.lock().unwrap().push(map);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_across_threads_keep_their_own_events() {
    let sink = MemorySink::new(10_000);
    let auditor = Auditor::builder().sink(sink.clone()).build().unwrap();
    let anomalies = Anomalies::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(auditor.collector())
            .with(anomalies.clone()),
    )
    .unwrap();

    let handler = service_fn(|req: Request<String>| async move {
        let who = req.uri().path().trim_start_matches('/').to_owned();
        for _ in 0..4 {
            tracing::info!(
                target: "portcullis::token",
                { "event.action" = "token.validate", "event.outcome" = "success", "user.id" = who.as_str() },
                "accepted"
            );
            tokio::task::yield_now().await;
        }
        if who == "user-0" {
            // One pin violation: an anomaly (raised inside the dispatcher).
            tracing::warn!(
                target: "portcullis::pin",
                { "event.action" = "tls.pin.check", "event.outcome" = "failure", "event.reason" = "pin_mismatch", "server.address" = "api.example.com" },
                "pin violation"
            );
        }
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let svc = ServiceBuilder::new()
        .layer(auditor.server_layer())
        .service(handler);

    let mut tasks = Vec::new();
    for i in 0..64 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            svc.oneshot(
                Request::get(format!("/user-{i}"))
                    .body(String::new())
                    .unwrap(),
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let records = sink.with_action("http.request");
    assert_eq!(records.len(), 64);
    for r in &records {
        let user = r["user.id"].as_str().unwrap();
        let events = r["portcullis.events"].as_array().unwrap();
        let expected = if user == "user-0" { 5 } else { 4 };
        assert_eq!(events.len(), expected, "{r}");
        assert!(
            events
                .iter()
                .filter(|e| e["event.action"] == "token.validate")
                .all(|e| e["user.id"] == user),
            "{r}"
        );
    }
    let traced = anomalies.0.lock().unwrap().clone();
    assert_eq!(traced.len(), 1, "{traced:?}");
    assert_eq!(traced[0]["rule.name"], "pin_violations");
    assert_eq!(auditor.anomalies_raised(), 1);
}
