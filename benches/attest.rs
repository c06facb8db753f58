//! Attest layer costs: RFC 9421 sign and verify per request for each algorithm, and the
//! verifying server's throughput against a bare server in the same run (in-process tower
//! calls, 1 KiB JSON body, content-digest hashed while the body streams).
//!
//! Run: `cargo bench -p portcullis-benches --bench attest -- --warm-up-time 1 --measurement-time 2`

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use portcullis_attest::{
    MemoryReplayCache, SignLayer, SigningKey, StaticKeys, VerifySignatureLayer,
};
use secrecy::SecretSlice;
use tower::{Layer, ServiceExt, service_fn};

type Body = Full<Bytes>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn keys() -> Vec<SigningKey> {
    vec![
        SigningKey::generate_ed25519("ed").expect("ed25519 key"),
        SigningKey::generate_ecdsa_p256("ec").expect("p256 key"),
        SigningKey::hmac_sha256("hm", &SecretSlice::from(vec![42u8; 32])).expect("hmac key"),
    ]
}

fn body() -> Bytes {
    Bytes::from(format!("{{\"items\":\"{}\"}}", "x".repeat(1000)))
}

fn request() -> Request<Body> {
    Request::post("https://api.example.com/v1/orders?page=2")
        .header("content-type", "application/json")
        .body(Full::new(body()))
        .expect("request")
}

/// The transport below the signer: hands back the signed request.
fn sign_once(rt: &tokio::runtime::Runtime, signer: &SignLayer) -> Request<Body> {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    let s = slot.clone();
    let transport = service_fn(move |req: Request<Body>| {
        *s.lock().expect("slot") = Some(req);
        async { Ok::<_, Infallible>(Response::new(Body::default())) }
    });
    rt.block_on(signer.layer(transport).oneshot(request()))
        .expect("signed");
    slot.lock().expect("slot").take().expect("one request")
}

fn app()
-> impl tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone {
    service_fn(|_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) })
}

fn verifier(key: &SigningKey) -> VerifySignatureLayer {
    VerifySignatureLayer::builder(StaticKeys::new().with(key.keyid(), key.verifying_key()))
        // Each iteration carries a fresh nonce; room for every one of them in the window.
        .replay_cache(MemoryReplayCache::new(20_000_000).per_partition(20_000_000))
        .build()
        .expect("verifier")
}

fn bench_sign(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("attest/sign");
    g.throughput(Throughput::Elements(1));
    for key in keys() {
        let signer = SignLayer::new(key.clone());
        let transport = service_fn(|req: Request<Body>| async move {
            black_box(req);
            Ok::<_, Infallible>(Response::new(Body::default()))
        });
        let svc = signer.layer(transport);
        g.bench_function(BenchmarkId::from_parameter(key.algorithm().as_str()), |b| {
            b.iter(|| rt.block_on(svc.clone().oneshot(request())).expect("signed"))
        });
    }
    g.finish();
}

fn bench_verify(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("attest/verify");
    g.throughput(Throughput::Elements(1));
    for key in keys() {
        let signer = SignLayer::new(key.clone());
        let svc = verifier(&key).layer(app());
        g.bench_function(BenchmarkId::from_parameter(key.algorithm().as_str()), |b| {
            b.iter_batched(
                || sign_once(&rt, &signer),
                |req| {
                    let res = rt.block_on(svc.clone().oneshot(req)).expect("served");
                    assert_eq!(res.status(), 200);
                    res
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Server throughput: the same signed requests into a bare app and into the verifying stack.
fn bench_server(c: &mut Criterion) {
    let rt = runtime();
    let key = SigningKey::generate_ed25519("ed").expect("key");
    let signer = SignLayer::new(key.clone());
    let mut g = c.benchmark_group("attest/server");
    g.throughput(Throughput::Elements(1));
    let bare = app();
    g.bench_function("bare", |b| {
        b.iter_batched(
            || sign_once(&rt, &signer),
            |req| rt.block_on(bare.clone().oneshot(req)).expect("served"),
            BatchSize::SmallInput,
        )
    });
    for key in keys() {
        let signer = SignLayer::new(key.clone());
        let verifying = verifier(&key).layer(app());
        g.bench_function(
            BenchmarkId::new("verifying", key.algorithm().as_str()),
            |b| {
                b.iter_batched(
                    || sign_once(&rt, &signer),
                    |req| {
                        let res = rt.block_on(verifying.clone().oneshot(req)).expect("served");
                        assert_eq!(res.status(), 200);
                        res
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_sign, bench_verify, bench_server);
criterion_main!(benches);
