//! End-to-end tests of the audit layer: collector + AuditLayer + detector + hooks + sinks +
//! EnforceLayer, with `tracing` events shaped the way the other layers emit them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use portcullis_audit::{
    Anomaly, AnomalyKind, Auditor, DetectorConfig, JsonLinesFile, MemorySink, PenaltyBox,
    SecurityEvent, Subject, Threshold, schema,
};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Records the `portcullis::audit` events that reach the `tracing` pipeline.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<HashMap<String, String>>>>);

impl Captured {
    fn with_action(&self, action: &str) -> Vec<HashMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.get("event.action").map(String::as_str) == Some(action))
            .cloned()
            .collect()
    }
}

struct FieldMap<'a>(&'a mut HashMap<String, String>);

impl Visit for FieldMap<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() == schema::AUDIT_TARGET {
            let mut map = HashMap::new();
            event.record(&mut FieldMap(&mut map));
            self.0.lock().unwrap().push(map);
        }
    }
}

fn install(auditor: &Auditor) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(auditor.collector())
        .with(captured.clone());
    (captured, testkit::subscriber::set_default(subscriber))
}

fn get(path: &str) -> Request<String> {
    Request::get(path).body(String::new()).unwrap()
}

fn from(path: &str, addr: &str) -> Request<String> {
    let mut req = get(path);
    req.extensions_mut()
        .insert(addr.parse::<SocketAddr>().unwrap());
    req
}

#[derive(Clone)]
struct VerifiedUser(String);

fn user_of(ext: &http::Extensions) -> Option<String> {
    ext.get::<VerifiedUser>().map(|u| u.0.clone())
}

fn as_user(mut req: Request<String>, user: &str) -> Request<String> {
    req.extensions_mut().insert(VerifiedUser(user.to_owned()));
    req
}

#[tokio::test(start_paused = true)]
async fn server_record_has_identity_outcome_latency_and_the_request_events() {
    let sink = MemorySink::new(100);
    let auditor = Auditor::builder().sink(sink.clone()).build().unwrap();
    let (captured, _guard) = install(&auditor);

    let handler = service_fn(|_req: Request<String>| async {
        // The attest layer's shape (string-literal names in braces).
        tracing::info!(
            target: "portcullis::attest",
            {
                "event.kind" = "event",
                "event.category" = "authentication",
                "event.action" = "signature.verify",
                "event.outcome" = "success",
                "user.id" = "key-7",
                "signature" = "c2VjcmV0LXNpZ25hdHVyZQ==",
            },
            "verified request signature"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Not a security event: not collected.
        tracing::info!(target: "app", "handler done");
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let svc = ServiceBuilder::new()
        .layer(auditor.server_layer())
        .service(handler);
    let res = svc
        .oneshot(from("/v1/items?access_token=s3cr3t", "192.0.2.10:52000"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let records = sink.with_action("http.request");
    assert_eq!(records.len(), 1, "{:?}", sink.entries());
    let r = &records[0];
    assert_eq!(r["url.path"], "/v1/items");
    assert_eq!(r["http.request.method"], "GET");
    assert_eq!(r["http.response.status_code"], 200);
    assert_eq!(r["event.outcome"], "success");
    assert_eq!(r["client.address"], "192.0.2.10");
    assert_eq!(
        r["user.id"], "key-7",
        "identity taken from the request's events"
    );
    assert_eq!(r["portcullis.side"], "server");
    let nanos = r["event.duration"].as_u64().unwrap();
    assert!(
        (150_000_000..151_000_000).contains(&nanos),
        "latency {nanos}ns"
    );
    let events = r["portcullis.events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "only security events are attached");
    assert_eq!(events[0]["event.action"], "signature.verify");
    assert_eq!(events[0]["log.logger"], "portcullis::attest");
    let text = serde_json::to_string(&sink.entries()).unwrap();
    assert!(!text.contains("s3cr3t"), "query string leaked: {text}");
    assert!(
        !text.contains("c2VjcmV0"),
        "non-schema field leaked: {text}"
    );

    // The same record reached the tracing pipeline.
    let traced = captured.with_action("http.request");
    assert_eq!(traced.len(), 1);
    assert_eq!(traced[0]["url.path"], "/v1/items");
    assert_eq!(traced[0]["user.id"], "key-7");
    assert_eq!(traced[0]["portcullis.events"], "signature.verify:success");
    assert_eq!(auditor.records_produced(), 1);
}

#[tokio::test(start_paused = true)]
async fn identity_extractor_reads_request_then_response_extensions() {
    let sink = MemorySink::new(100);
    let auditor = Auditor::builder().sink(sink.clone()).build().unwrap();
    let (_captured, _guard) = install(&auditor);
    // The inner "auth layer" only tells who it was in the response.
    let handler = service_fn(|req: Request<String>| async move {
        let mut res = Response::new(String::new());
        if req.uri().path() == "/login" {
            res.extensions_mut().insert(VerifiedUser("carol".into()));
        }
        Ok::<_, Infallible>(res)
    });
    let mut svc = ServiceBuilder::new()
        .layer(auditor.server_layer().identity(user_of))
        .service(handler);
    svc.ready()
        .await
        .unwrap()
        .call(as_user(get("/a"), "dave"))
        .await
        .unwrap();
    svc.ready()
        .await
        .unwrap()
        .call(get("/login"))
        .await
        .unwrap();
    svc.ready().await.unwrap().call(get("/anon")).await.unwrap();
    let users: Vec<_> = sink
        .with_action("http.request")
        .iter()
        .map(|r| r["user.id"].clone())
        .collect();
    assert_eq!(
        users,
        [
            serde_json::json!("dave"),
            serde_json::json!("carol"),
            serde_json::Value::Null
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn client_record_names_the_server_and_the_error() {
    let sink = MemorySink::new(100);
    let auditor = Auditor::builder().sink(sink.clone()).build().unwrap();
    let (captured, _guard) = install(&auditor);
    let failing = service_fn(|_req: Request<String>| async {
        // The pin layer's shape (dotted identifiers).
        tracing::warn!(
            target: "portcullis::pin",
            {
            event.kind = "alert",
            event.category = "network",
            event.action = "tls.pin.check",
            event.outcome = "failure",
            event.reason = "pin_mismatch",
            server.address = "api.example.com",
            tls.server.hash.sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            },
            "pin violation"
        );
        Err::<Response<String>, BoxError>("pin mismatch for api.example.com".into())
    });
    let svc = ServiceBuilder::new()
        .layer(auditor.client_layer())
        .service(failing);
    let err = svc
        .oneshot(get("https://api.example.com:8443/v1/me"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pin mismatch"));

    let r = &sink.with_action("http.request")[0];
    assert_eq!(r["portcullis.side"], "client");
    assert_eq!(r["server.address"], "api.example.com");
    assert_eq!(r["event.outcome"], "failure");
    assert_eq!(r["event.reason"], "pin mismatch for api.example.com");
    assert!(r.get("http.response.status_code").is_none());
    assert_eq!(
        r["portcullis.events"][0]["tls.server.hash.sha256"],
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );

    // One pin violation is an anomaly by default, about the server.
    let anomalies = sink.with_action("anomaly.detected");
    assert_eq!(anomalies.len(), 1);
    assert_eq!(anomalies[0]["rule.name"], "pin_violations");
    assert_eq!(anomalies[0]["server.address"], "api.example.com");
    assert_eq!(anomalies[0]["event.kind"], "alert");
    // Raised inside the dispatcher, emitted into tracing once the request completed.
    let traced = captured.with_action("anomaly.detected");
    assert_eq!(traced.len(), 1);
    assert_eq!(traced[0]["event.reason"], "pin_violations");
    let traced = captured.with_action("http.request");
    assert_eq!(traced[0]["event.outcome"], "failure");
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_keep_their_own_events() {
    let sink = MemorySink::new(100);
    let auditor = Auditor::builder().sink(sink.clone()).build().unwrap();
    let (_captured, _guard) = install(&auditor);
    let handler = service_fn(|req: Request<String>| async move {
        let who = req.uri().path().trim_start_matches('/').to_owned();
        for step in 0..3u64 {
            tracing::info!(
                target: "portcullis::token",
                { "event.action" = "token.validate", "event.outcome" = "success", "user.id" = who.as_str() },
                "step {step}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let svc = ServiceBuilder::new()
        .layer(auditor.server_layer())
        .service(handler);
    let (a, b) = tokio::join!(
        svc.clone().oneshot(get("/alice")),
        svc.clone().oneshot(get("/bob"))
    );
    a.unwrap();
    b.unwrap();
    let records = sink.with_action("http.request");
    assert_eq!(records.len(), 2);
    for r in records {
        let user = r["user.id"].as_str().unwrap().to_owned();
        let events = r["portcullis.events"].as_array().unwrap();
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| e["user.id"] == user.as_str()), "{r}");
    }
}

#[tokio::test(start_paused = true)]
async fn events_outside_requests_go_to_the_sinks_on_their_own() {
    let sink = MemorySink::new(100);
    let auditor = Auditor::builder().sink(sink.clone()).build().unwrap();
    let (_captured, _guard) = install(&auditor);
    tracing::info!(
        target: "portcullis::token",
        { "event.action" = "token.refresh", "event.outcome" = "success" },
        "background refresh"
    );
    let entries = sink.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["event.action"], "token.refresh");
    assert_eq!(entries[0]["log.logger"], "portcullis::token");
}

#[tokio::test(start_paused = true)]
async fn per_request_events_are_bounded() {
    let sink = MemorySink::new(100);
    let auditor = Auditor::builder()
        .sink(sink.clone())
        .max_events_per_request(5)
        .build()
        .unwrap();
    let (_captured, _guard) = install(&auditor);
    let handler = service_fn(|_req: Request<String>| async {
        for _ in 0..50 {
            tracing::info!(target: "portcullis::retry", { "event.action" = "retry.scheduled" }, "retry");
        }
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    ServiceBuilder::new()
        .layer(auditor.server_layer())
        .service(handler)
        .oneshot(get("/"))
        .await
        .unwrap();
    let r = &sink.with_action("http.request")[0];
    assert_eq!(r["portcullis.events"].as_array().unwrap().len(), 5);
    assert_eq!(r["portcullis.events_dropped"], 45);
}

/// The server stack of the demo, in small: audit outermost, then enforcement after the
/// (simulated) authentication, then a handler that refuses mallory.
fn server_stack(
    auditor: &Auditor,
    penalties: &PenaltyBox,
    reached: Arc<AtomicUsize>,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone {
    let handler = service_fn(move |req: Request<String>| {
        let reached = reached.clone();
        async move {
            reached.fetch_add(1, Ordering::SeqCst);
            let mut res = Response::new(String::new());
            if user_of(req.extensions()).as_deref() == Some("mallory") {
                *res.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok::<_, Infallible>(res)
        }
    });
    ServiceBuilder::new()
        .layer(auditor.server_layer().identity(user_of))
        .layer(portcullis_audit::EnforceLayer::new(penalties.clone()).identity(user_of))
        .service(handler)
}

#[tokio::test(start_paused = true)]
async fn a_401_burst_raises_an_anomaly_calls_hooks_and_blocks_the_identity_for_a_period() {
    let sink = MemorySink::new(1000);
    let penalties = PenaltyBox::block_for(Duration::from_secs(30));
    let seen: Arc<Mutex<Vec<Anomaly>>> = Arc::default();
    let seen2 = seen.clone();
    let auditor = Auditor::builder()
        .detector(DetectorConfig::new().threshold(
            AnomalyKind::UnauthorizedBurst,
            Threshold::new(3, Duration::from_secs(60)),
        ))
        .on_anomaly(penalties.clone())
        .on_anomaly(move |a: &Anomaly| seen2.lock().unwrap().push(a.clone()))
        .sink(sink.clone())
        .build()
        .unwrap();
    let (captured, _guard) = install(&auditor);
    let reached = Arc::new(AtomicUsize::new(0));
    let svc = server_stack(&auditor, &penalties, reached.clone());

    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(as_user(from("/x", "198.51.100.4:1000"), "mallory"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // The hook saw the anomaly about the identity (and the peer).
    {
        let seen = seen.lock().unwrap();
        let kinds: Vec<_> = seen
            .iter()
            .map(|a| (a.kind(), a.subject().clone()))
            .collect();
        assert!(kinds.contains(&(
            AnomalyKind::UnauthorizedBurst,
            Subject::Identity("mallory".into())
        )));
    }
    assert_eq!(
        captured.with_action("anomaly.detected").len(),
        seen.lock().unwrap().len()
    );

    // Now mallory is blocked before reaching the handler; alice, elsewhere, is not.
    let res = svc
        .clone()
        .oneshot(as_user(from("/x", "203.0.113.5:1000"), "mallory"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.headers().contains_key(http::header::RETRY_AFTER));
    assert_eq!(reached.load(Ordering::SeqCst), 3);
    let res = svc
        .clone()
        .oneshot(as_user(from("/x", "203.0.113.6:1000"), "alice"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(reached.load(Ordering::SeqCst), 4);

    // The refusal is in the request's record, as a policy.enforce event.
    let blocked = sink
        .with_action("http.request")
        .into_iter()
        .find(|r| r["http.response.status_code"] == 403)
        .unwrap();
    assert_eq!(blocked["user.id"], "mallory");
    assert_eq!(
        blocked["portcullis.events"][0]["event.action"],
        "policy.enforce"
    );
    assert_eq!(blocked["portcullis.events"][0]["event.reason"], "blocked");

    // After the period, mallory reaches the service again.
    tokio::time::advance(Duration::from_secs(30)).await;
    let res = svc
        .clone()
        .oneshot(as_user(from("/x", "203.0.113.5:1000"), "mallory"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reached.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn throttling_lets_one_request_through_per_interval_with_retry_after() {
    let penalties = PenaltyBox::throttle_for(Duration::from_secs(120), Duration::from_secs(10));
    let auditor = Auditor::builder()
        .on_anomaly(penalties.clone())
        .build()
        .unwrap();
    let (captured, _guard) = install(&auditor);
    let reached = Arc::new(AtomicUsize::new(0));
    let svc = server_stack(&auditor, &penalties, reached.clone());

    // Two replays within a minute (the default threshold) penalize eve.
    for _ in 0..2 {
        tracing::warn!(
            target: "portcullis::attest",
            { "event.action" = "signature.verify", "event.outcome" = "failure", "event.reason" = "replayed", "user.id" = "eve" },
            "refused request signature"
        );
    }
    // Raised inside the dispatcher: hooks ran at once, the tracing event waits for a flush.
    assert_eq!(auditor.anomalies_raised(), 1);
    assert!(captured.with_action("anomaly.detected").is_empty());
    auditor.flush();
    let traced = captured.with_action("anomaly.detected");
    assert_eq!(traced.len(), 1);
    assert_eq!(traced[0]["rule.name"], "replays");
    assert_eq!(traced[0]["user.id"], "eve");

    let ok = svc.clone().oneshot(as_user(get("/"), "eve")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let res = svc.clone().oneshot(as_user(get("/"), "eve")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()[http::header::RETRY_AFTER], "10");
    tokio::time::advance(Duration::from_secs(10)).await;
    let ok = svc.clone().oneshot(as_user(get("/"), "eve")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(reached.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn new_client_addresses_for_one_identity_raise_an_anomaly() {
    let sink = MemorySink::new(1000);
    let auditor = Auditor::builder()
        .detector(DetectorConfig::new().threshold(
            AnomalyKind::NewClientAddresses,
            Threshold::new(2, Duration::from_secs(300)),
        ))
        .sink(sink.clone())
        .build()
        .unwrap();
    let (_captured, _guard) = install(&auditor);
    let reached = Arc::new(AtomicUsize::new(0));
    let penalties = PenaltyBox::block_for(Duration::from_secs(1));
    let svc = server_stack(&auditor, &penalties, reached);
    for addr in [
        "192.0.2.1:1",
        "192.0.2.1:2",
        "198.51.100.1:1",
        "203.0.113.1:1",
    ] {
        svc.clone()
            .oneshot(as_user(from("/", addr), "alice"))
            .await
            .unwrap();
    }
    let anomalies = sink.with_action("anomaly.detected");
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    assert_eq!(anomalies[0]["rule.name"], "new_client_addresses");
    assert_eq!(anomalies[0]["user.id"], "alice");
    assert_eq!(anomalies[0]["client.address"], "203.0.113.1");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-audit-it-{name}-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(start_paused = true)]
async fn json_lines_file_gets_records_events_and_anomalies_and_rotates() {
    let dir = temp_dir("jsonl");
    let path = dir.join("audit.jsonl");
    let file = JsonLinesFile::builder(&path)
        .max_bytes(4096)
        .max_files(3)
        .open()
        .unwrap();
    let auditor = Auditor::builder()
        .detector(DetectorConfig::new().threshold(
            AnomalyKind::SignatureFailures,
            Threshold::new(2, Duration::from_secs(60)),
        ))
        .sink(file.clone())
        .build()
        .unwrap();
    let (_captured, _guard) = install(&auditor);
    let handler = service_fn(|_req: Request<String>| async {
        tracing::warn!(
            target: "portcullis::attest",
            {
                "event.action" = "signature.verify",
                "event.outcome" = "failure",
                "event.reason" = "invalid_signature",
                "user.id" = "key-9",
                "http.response.status_code" = 401u16,
            },
            "refused request signature"
        );
        let mut res = Response::new(String::new());
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        Ok::<_, Infallible>(res)
    });
    let svc = ServiceBuilder::new()
        .layer(auditor.server_layer())
        .service(handler);
    for _ in 0..20 {
        svc.clone().oneshot(get("/pay")).await.unwrap();
    }
    assert_eq!(file.write_errors(), 0);
    let mut lines = Vec::new();
    for p in [
        file.rotated_path(3),
        file.rotated_path(2),
        file.rotated_path(1),
        path.clone(),
    ] {
        if let Ok(text) = std::fs::read_to_string(&p) {
            assert!(text.len() <= 4096, "{} too big", p.display());
            for line in text.lines() {
                lines.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
            }
        }
    }
    assert!(file.rotated_path(1).exists(), "the file rotated");
    assert!(!file.rotated_path(4).exists());
    let actions: Vec<_> = lines
        .iter()
        .map(|l| l["event.action"].as_str().unwrap().to_owned())
        .collect();
    assert!(actions.contains(&"http.request".to_owned()));
    assert!(actions.contains(&"anomaly.detected".to_owned()));
    let last_record = lines
        .iter()
        .rev()
        .find(|l| l["event.action"] == "http.request")
        .unwrap();
    assert_eq!(last_record["user.id"], "key-9");
    assert_eq!(last_record["http.response.status_code"], 401);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_identities_keeps_memory_bounded() {
    let auditor = Auditor::builder()
        .detector(DetectorConfig::new().max_subjects(2_000))
        .tracing_records(false)
        .build()
        .unwrap();
    let capacity = auditor.detector().capacity();
    assert!(capacity < 2_100, "capacity {capacity}");
    for i in 0..100_000u32 {
        let ev = SecurityEvent::new("portcullis::token")
            .with(schema::field::EVENT_ACTION, schema::action::TOKEN_VALIDATE)
            .with(schema::field::EVENT_OUTCOME, schema::outcome::FAILURE)
            .with(schema::field::HTTP_RESPONSE_STATUS_CODE, 401u16)
            .with(schema::field::USER_ID, format!("user-{i}"))
            .with(
                schema::field::CLIENT_ADDRESS,
                format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            );
        auditor.ingest(&ev);
    }
    let tracked = auditor.detector().tracked_subjects();
    assert!(tracked <= capacity, "tracked {tracked} > {capacity}");
    assert!(tracked > 1_000, "tracked {tracked}");
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_before_its_response_is_still_recorded() {
    let sink = MemorySink::new(100);
    let auditor = Auditor::builder().sink(sink.clone()).build().unwrap();
    let (_captured, _guard) = install(&auditor);
    let slow = service_fn(|_req: Request<String>| async {
        tracing::info!(
            target: "portcullis::token",
            { "event.action" = "token.validate", "event.outcome" = "success", "user.id" = "frank" },
            "accepted"
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let svc = ServiceBuilder::new()
        .layer(auditor.server_layer())
        .service(slow);
    let timed_out = tokio::time::timeout(Duration::from_secs(2), svc.oneshot(get("/slow"))).await;
    assert!(timed_out.is_err());
    let records = sink.with_action("http.request");
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r["event.outcome"], "failure");
    assert_eq!(r["event.reason"], "request cancelled before a response");
    assert_eq!(r["user.id"], "frank");
    assert_eq!(r["event.duration"], 2_000_000_000u64);
    assert_eq!(r["portcullis.events"][0]["event.action"], "token.validate");
}
