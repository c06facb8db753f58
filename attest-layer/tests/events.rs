//! Security events: refusals and acceptances are emitted under `portcullis::attest` with the
//! ECS field names the audit layer collects, and never carry key material.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{app, duplicate, sign};
use http::Request;
use http_body_util::Full;
use portcullis_attest::{SignLayer, SigningKey, StaticKeys, VerifySignatureLayer};
use secrecy::SecretSlice;
use tower::{Layer, ServiceExt};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

type Events = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

struct Capture(Events);

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields(BTreeMap::new());
        event.record(&mut f);
        self.0
            .lock()
            .unwrap()
            .push((event.metadata().target().to_owned(), f.0));
    }
}

#[tokio::test]
async fn verification_outcomes_are_ecs_security_events_without_secrets() {
    let events: Events = Arc::default();
    let _guard = testkit::subscriber::set_default(
        tracing_subscriber::registry().with(Capture(events.clone())),
    );

    let secret = vec![0x5Au8; 32];
    let key = SigningKey::hmac_sha256("svc-a", &SecretSlice::from(secret.clone())).unwrap();
    let layer = VerifySignatureLayer::builder(StaticKeys::new().with("svc-a", key.verifying_key()))
        .build()
        .unwrap();
    let signed = sign(
        &SignLayer::new(key),
        Request::post("https://api.example.com/v1/x")
            .body(Full::<Bytes>::from("{}"))
            .unwrap(),
    )
    .await
    .unwrap();
    let replay = duplicate(&signed).await;
    let signature = signed.headers()["signature"].to_str().unwrap().to_owned();
    assert_eq!(
        layer.layer(app()).oneshot(signed).await.unwrap().status(),
        200
    );
    assert_eq!(
        layer.layer(app()).oneshot(replay).await.unwrap().status(),
        401
    );

    let events = events.lock().unwrap();
    let ours: Vec<_> = events
        .iter()
        .filter(|(t, _)| t == "portcullis::attest")
        .map(|(_, f)| f)
        .collect();
    let ok = ours
        .iter()
        .find(|f| f.get("event.outcome").map(String::as_str) == Some("success"))
        .expect("a success event");
    assert_eq!(ok["event.action"], "signature.verify");
    assert_eq!(ok["user.id"], "svc-a");
    assert_eq!(ok["url.path"], "/v1/x");
    let refused = ours
        .iter()
        .find(|f| f.get("event.outcome").map(String::as_str) == Some("failure"))
        .expect("a failure event");
    assert_eq!(refused["event.kind"], "alert");
    assert_eq!(refused["event.reason"], "replayed");
    assert_eq!(refused["http.response.status_code"], "401");
    assert_eq!(refused["http.request.method"], "POST");
    let everything = format!("{events:?}");
    assert!(
        !everything.contains(&signature[6..30]),
        "no signature bytes in events"
    );
    assert!(
        !everything.to_lowercase().contains("5a5a5a"),
        "no key bytes in events"
    );
}
