//! Audit layer costs: per-request overhead of `AuditLayer` (and `EnforceLayer`) against the
//! bare service in the same run, and event ingestion by the anomaly detector.
//!
//! Run: `cargo bench -p portcullis-benches --bench audit -- --warm-up-time 1 --measurement-time 2`

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use portcullis_audit::{
    Auditor, DetectorConfig, EnforceLayer, JsonLinesFile, PenaltyBox, SecurityEvent, schema,
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tracing_subscriber::layer::SubscriberExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn request() -> Request<String> {
    let mut req = Request::get("/v1/items/42?page=2")
        .body(String::new())
        .expect("request");
    req.extensions_mut().insert(
        "192.0.2.7:40000"
            .parse::<std::net::SocketAddr>()
            .expect("addr"),
    );
    req
}

/// A handler that, like a stack of Portcullis layers, raises one security event.
async fn handler(_req: Request<String>) -> Result<Response<String>, Infallible> {
    tracing::info!(
        target: "portcullis::token",
        { "event.action" = "token.validate", "event.outcome" = "success", "user.id" = "alice" },
        "bearer token accepted"
    );
    Ok(Response::new(String::new()))
}

/// Times `iters` sequential requests through `svc` on one current-thread runtime.
fn run<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: Service<Request<String>, Response = Response<String>>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let res = svc
                .ready()
                .await
                .expect("ready")
                .call(request())
                .await
                .expect("call");
            black_box(res);
        }
        start.elapsed()
    })
}

fn bench_request(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("audit/request");
    group.throughput(Throughput::Elements(1));

    // Without any subscriber: the span is disabled, the record still goes to the detector.
    {
        let auditor = Auditor::builder().build().expect("auditor");
        let mut bare = service_fn(handler);
        group.bench_function("no subscriber/bare", |b| {
            b.iter_custom(|n| run(&rt, &mut bare, n))
        });
        let mut audited = ServiceBuilder::new()
            .layer(auditor.server_layer())
            .service_fn(handler);
        group.bench_function("no subscriber/audit", |b| {
            b.iter_custom(|n| run(&rt, &mut audited, n))
        });
    }

    // With the collector installed: the handler's event is collected in both cases; with
    // the audit layer it is also attached to a per-request record.
    {
        let auditor = Auditor::builder().build().expect("auditor");
        let subscriber = tracing_subscriber::registry().with(auditor.collector());
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut bare = service_fn(handler);
        group.bench_function("collector/bare", |b| {
            b.iter_custom(|n| run(&rt, &mut bare, n))
        });
        let mut audited = ServiceBuilder::new()
            .layer(auditor.server_layer())
            .service_fn(handler);
        group.bench_function("collector/audit", |b| {
            b.iter_custom(|n| run(&rt, &mut audited, n))
        });
        let penalties = PenaltyBox::block_for(Duration::from_secs(60));
        let mut enforced = ServiceBuilder::new()
            .layer(auditor.server_layer())
            .layer(EnforceLayer::new(penalties))
            .service_fn(handler);
        group.bench_function("collector/audit+enforce", |b| {
            b.iter_custom(|n| run(&rt, &mut enforced, n))
        });
    }

    // The same with every record written to a JSON lines file (rotating at 64 MiB).
    {
        let dir =
            std::env::temp_dir().join(format!("portcullis-audit-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = JsonLinesFile::builder(dir.join("audit.jsonl"))
            .max_bytes(64 << 20)
            .max_files(1)
            .open()
            .expect("audit log");
        let auditor = Auditor::builder().sink(file).build().expect("auditor");
        let subscriber = tracing_subscriber::registry().with(auditor.collector());
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut audited = ServiceBuilder::new()
            .layer(auditor.server_layer())
            .service_fn(handler);
        group.bench_function("collector/audit+jsonl file", |b| {
            b.iter_custom(|n| run(&rt, &mut audited, n))
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

fn failure_events(identities: u32) -> Vec<SecurityEvent> {
    (0..identities)
        .map(|i| {
            SecurityEvent::new("portcullis::attest")
                .with(
                    schema::field::EVENT_ACTION,
                    schema::action::SIGNATURE_VERIFY,
                )
                .with(schema::field::EVENT_OUTCOME, schema::outcome::FAILURE)
                .with(schema::field::EVENT_REASON, "invalid_signature")
                .with(schema::field::USER_ID, format!("key-{i}"))
                .with(
                    schema::field::CLIENT_ADDRESS,
                    format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                )
        })
        .collect()
}

fn bench_ingest(c: &mut Criterion) {
    let rt = runtime();
    let _enter = rt.enter();
    let mut group = c.benchmark_group("audit/ingest");
    group.throughput(Throughput::Elements(1));

    // 1,000 identities that fit the detector, then 100,000 that flood a 10,000 bound.
    for identities in [1_000u32, 100_000] {
        let events = failure_events(identities);
        let detector = portcullis_audit::Detector::new(DetectorConfig::new()).expect("detector");
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("detector.observe", identities), |b| {
            b.iter(|| {
                i = (i + 1) % events.len();
                black_box(detector.observe(&events[i]))
            })
        });
    }

    // A security event emitted with `tracing`, outside any request, through the collector.
    let auditor = Auditor::builder()
        .tracing_records(false)
        .build()
        .expect("auditor");
    let subscriber = tracing_subscriber::registry().with(auditor.collector());
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut n = 0u32;
    group.bench_function("tracing event via collector", |b| {
        b.iter(|| {
            n = (n + 1) % 1_000;
            tracing::warn!(
                target: "portcullis::attest",
                {
                    "event.action" = "signature.verify",
                    "event.outcome" = "failure",
                    "event.reason" = "invalid_signature",
                    "user.id" = %n,
                },
                "refused request signature"
            );
        })
    });
    group.finish();
}

criterion_group!(benches, bench_request, bench_ingest);
criterion_main!(benches);
