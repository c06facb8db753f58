//! Token layer costs, each against a bare service in the same run (in-process tower calls on a
//! current-thread runtime):
//! * client: `BearerLayer` injecting a cached token (no refresh) vs the bare service;
//! * server: `RequireBearerLayer` validating an HS256 / ES256 / EdDSA JWT (signature, claims,
//!   lifetime, scopes) vs the bare service.
//!
//! Run: `cargo bench -p portcullis-benches --bench token -- --warm-up-time 1 --measurement-time 2`

use std::{convert::Infallible, hint::black_box, time::Duration};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, header};
use http_body_util::Full;
use jsonwebtoken::{EncodingKey, Header};
use portcullis_token::{
    BearerLayer, MemoryStore, TokenSource,
    bearer::ReplayBody,
    require::{Algorithm, JwtValidator, RequireBearerLayer, VerificationKey},
    token::{RefreshError, TokenResponse, TokenSet},
};
use secrecy::SecretString;
use tower::{Layer, ServiceExt, service_fn};

type Body = Full<Bytes>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn ok<B>(_req: Request<B>) -> std::future::Ready<Result<Response<Body>, Infallible>> {
    std::future::ready(Ok(Response::new(Body::default())))
}

fn injection(c: &mut Criterion) {
    let rt = runtime();
    let source = rt.block_on(async {
        let never = |_rt: SecretString| async {
            Err::<TokenResponse, _>(RefreshError::InvalidResponse("bench never refreshes"))
        };
        let source = TokenSource::builder(never, MemoryStore::new())
            .load()
            .await
            .expect("source");
        source
            .seed(TokenSet::new(
                "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJlLWJ5dGVzLWZvci10aGUtYmVuY2g",
                Duration::from_secs(3600),
                Some("refresh".into()),
            ))
            .await
            .expect("seed");
        source
    });
    let mut group = c.benchmark_group("token_injection");
    group.throughput(Throughput::Elements(1));
    let bare = service_fn(ok::<Body>);
    group.bench_function("bare", |b| {
        b.iter(|| {
            let resp = rt.block_on(bare.oneshot(Request::new(Body::default())));
            black_box(resp.expect("response"))
        })
    });
    let bearer = BearerLayer::new(source).layer(service_fn(ok::<ReplayBody<Body>>));
    group.bench_function("bearer_cached_token", |b| {
        b.iter(|| {
            let resp = rt.block_on(bearer.clone().oneshot(Request::new(Body::default())));
            black_box(resp.expect("response"))
        })
    });
    group.finish();
}

struct Issuer {
    name: &'static str,
    alg: Algorithm,
    enc: EncodingKey,
    key: VerificationKey,
}

fn issuers() -> Vec<Issuer> {
    let secret = [42u8; 32];
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    vec![
        Issuer {
            name: "hs256",
            alg: Algorithm::HS256,
            enc: EncodingKey::from_secret(&secret),
            key: VerificationKey::hmac(Algorithm::HS256, &secret).expect("hmac"),
        },
        Issuer {
            name: "es256",
            alg: Algorithm::ES256,
            enc: EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("ec pem"),
            key: VerificationKey::from_pem(Algorithm::ES256, ec.public_key_pem().as_bytes())
                .expect("ec public"),
        },
        Issuer {
            name: "eddsa",
            alg: Algorithm::EdDSA,
            enc: EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("ed pem"),
            key: VerificationKey::from_pem(Algorithm::EdDSA, ed.public_key_pem().as_bytes())
                .expect("ed public"),
        },
    ]
}

fn validation(c: &mut Criterion) {
    let rt = runtime();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://login.example", "aud": "orders", "sub": "user-1",
        "iat": now, "exp": now + 3000, "scope": "orders:read profile", "jti": "bench",
    });
    let mut group = c.benchmark_group("jwt_validation");
    group.throughput(Throughput::Elements(1));
    let request = |auth: &str| {
        Request::get("/orders/1")
            .header(header::AUTHORIZATION, auth)
            .body(Body::default())
            .expect("request")
    };
    let bare = service_fn(ok::<Body>);
    group.bench_function("bare", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(bare.oneshot(request("Bearer x")))
                    .expect("response"),
            )
        })
    });
    for issuer in issuers() {
        let token =
            jsonwebtoken::encode(&Header::new(issuer.alg), &claims, &issuer.enc).expect("token");
        let auth = format!("Bearer {token}");
        let validator = JwtValidator::builder()
            .issuer("https://login.example")
            .audience("orders")
            .key(issuer.key)
            .build()
            .expect("validator");
        let svc = RequireBearerLayer::new(validator)
            .scopes(["orders:read"])
            .layer(service_fn(ok::<Body>));
        // Make sure the token is accepted before measuring.
        let status = rt
            .block_on(svc.clone().oneshot(request(&auth)))
            .expect("response")
            .status();
        assert_eq!(status, 200, "{} token must validate", issuer.name);
        group.bench_function(issuer.name, |b| {
            b.iter(|| {
                black_box(
                    rt.block_on(svc.clone().oneshot(request(&auth)))
                        .expect("response"),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, injection, validation);
criterion_main!(benches);
