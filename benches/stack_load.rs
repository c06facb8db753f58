//! Load, latency and memory harness of the benchmark report (issue 6), over real sockets on
//! loopback (HTTPS, TLS 1.3, HTTP/1.1 keep-alive). `benches/report.sh` runs it; every figure
//! it prints is a ratio to a baseline measured in the same run.
//!
//! * `stack_load client SECS`: sequential requests over one keep-alive connection from a bare
//!   hyper client, each client layer alone, and the full `portcullis::client::builder()`
//!   stack, against the same in-process bare server. Arms are interleaved in rounds so that
//!   the machine's load drifts over all of them alike.
//! * `stack_load server SECS`: a bare axum `Router` served by a minimal tokio-rustls +
//!   hyper-util loop vs the same router under `portcullis::server::serve_tls` alone and under
//!   the full `portcullis::server::builder()` stack, each loaded by a second process (this
//!   binary's `loadgen` mode) that signs every request and sends a bearer token in every arm.
//! * `stack_load memory N`: entries kept and resident memory (RSS) after `N` unique keys fed
//!   to the keyed rate limiter, the replay cache and the audit detector, each in a fresh
//!   process, against an unbounded `HashMap` of the same keys.
//! * `stack_load loadgen PORT CONNS SECS MAX HMAC_HEX TOKEN|-`: the load generator. It only
//!   dials 127.0.0.1 and stops after `SECS` seconds or `MAX` requests, whichever comes first.
//!
//! Without arguments (as `cargo test --all-targets` runs it) it is a quick smoke check: every
//! client arm and every server arm answers 200 (through a real second process for the
//! servers), the server stack refuses the load generator without a token (with 401 and a
//! Bearer challenge, checked on a signed request without a token), and the bounded
//! structures stay within their bounds under a small flood.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis::attest::{
    MemoryReplayCache, SignLayer, SigningKey, StaticKeys, VerifySignatureLayer,
};
use portcullis::audit::{Auditor, Detector, DetectorConfig, MemorySink, SecurityEvent, schema};
use portcullis::pin::{PinPolicy, PinnedTls};
use portcullis::retry::rate_limit::{
    ClientRateLimitLayer, ExtensionKey, KeyedLimiter, PeerIp, Quota, RateLimitLayer,
};
use portcullis::retry::retry::RetryLayer;
use portcullis::token::require::{Algorithm, JwtValidator, VerificationKey};
use portcullis::token::token::{RefreshError, TokenResponse, TokenSet};
use portcullis::token::{
    BearerLayer, MemoryStore, RequireBearerLayer, TokenSource, VerifiedClaims,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use secrecy::SecretSlice;
use testkit::pki::TestPki;
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceExt, service_fn};
use tracing_subscriber::layer::SubscriberExt as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = Full<Bytes>;
type CallFuture = Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>>>>;
/// One arm of the client table: sends one request and returns the status after reading the
/// whole body.
type ClientArm = Box<dyn FnMut() -> CallFuture>;

const PATH: &str = "/bench";
/// A quota no benchmark reaches: the limiters do their full work and never refuse.
const HUGE: u32 = 1_000_000_000;
/// JWT settings shared by the server stack and the token minted for the load generator.
const ISSUER: &str = "https://login.bench";
const AUDIENCE: &str = "bench";
const KEY_ID: &str = "loadgen";
const BARE_SERVER: &str = "bare axum Router (baseline)";
const FULL_SERVER: &str = "full server stack";

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

fn huge_quota() -> Quota {
    Quota::per_second(nz(HUGE)).allow_burst(nz(HUGE))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    testkit::install_default_provider();
    let result = match args.as_slice() {
        [] => smoke(),
        ["client", secs] => secs_arg(secs).and_then(client_report),
        ["server", secs] => secs_arg(secs).and_then(server_report),
        ["memory", n] => n.parse().map_err(Into::into).and_then(memory_report),
        ["memory-arm", arm, n] => n
            .parse()
            .map_err(Into::into)
            .and_then(|n| memory_arm(arm, n, false).map(|m| println!("{}", m.line()))),
        ["loadgen", port, conns, secs, max, key, token] => {
            LoadArgs::parse(port, conns, secs, max, key, token).and_then(|args| {
                let out = runtime()?.block_on(loadgen(args))?;
                println!("{}", out.line());
                Ok(())
            })
        }
        _ => Err(
            "usage: stack_load [client SECS | server SECS | memory N | memory-arm ARM N | \
                  loadgen PORT CONNS SECS MAX HMAC_HEX TOKEN|-]"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stack_load: {err}");
            ExitCode::FAILURE
        }
    }
}

fn secs_arg(s: &str) -> Result<f64, BoxError> {
    let secs: f64 = s.parse()?;
    if !(0.1..=600.0).contains(&secs) {
        return Err(format!("SECS must be within 0.1..=600, got {secs}").into());
    }
    Ok(secs)
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A one-worker server runtime on its own thread: the server gets one of the two cores.
fn server_runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------------------------------------
// Servers

/// The PKI of one run: server chain for `localhost`/127.0.0.1 and a server config that only
/// offers HTTP/1.1, so that every client arm speaks the same protocol.
struct Tls {
    pki: TestPki,
    server: Arc<ServerConfig>,
}

impl Tls {
    fn new() -> Self {
        let pki = TestPki::new();
        let mut server = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Tls {
            pki,
            server: Arc::new(server),
        }
    }

    fn roots(&self) -> RootCertStore {
        self.pki.root_store()
    }
}

/// The minimal TLS server a user writes without Portcullis: tokio-rustls accept, hyper-util's
/// auto connection builder, the service.
async fn serve_bare<S, B>(listener: TcpListener, config: Arc<ServerConfig>, service: S)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                .await;
        });
    }
}

async fn ok_handler<B>(_req: Request<B>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn router() -> axum::Router {
    axum::Router::new().route(PATH, axum::routing::get(|| async { "ok" }))
}

async fn bind() -> Result<(TcpListener, u16), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

// ---------------------------------------------------------------------------------------------
// Client arms

fn arm<S, B>(svc: S, url: String) -> ClientArm
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + 'static,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
{
    Box::new(move || {
        let svc = svc.clone();
        let req = Request::get(url.as_str()).body(Body::default());
        Box::pin(async move {
            let res = svc.oneshot(req?).await.map_err(Into::into)?;
            let status = res.status();
            res.into_body().collect().await.map_err(Into::into)?;
            Ok(status)
        })
    })
}

async fn token_source()
-> Result<TokenSource<impl portcullis::token::token::Refresh, MemoryStore>, BoxError> {
    let source = TokenSource::builder(
        |_rt: secrecy::SecretString| async {
            Ok::<_, RefreshError>(
                TokenResponse::new("bench-access-token", Some(Duration::from_secs(3600)))
                    .with_refresh_token("bench-refresh-token"),
            )
        },
        MemoryStore::new(),
    )
    .load()
    .await?;
    source.seed(TokenSet::from_refresh_token("rt-0")).await?;
    Ok(source)
}

/// Every arm of the client table, against the server on `port`.
async fn client_arms(
    tls: &Tls,
    port: u16,
    auditor: &Auditor,
) -> Result<Vec<(&'static str, ClientArm)>, BoxError> {
    let url = format!("https://localhost:{port}{PATH}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // Baseline: hyper-util's client over hyper-rustls with rustls' own verifier.
    let bare_config = ClientConfig::builder()
        .with_root_certificates(tls.roots())
        .with_no_client_auth();
    let bare_connector = {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(bare_config)
            .https_only()
            .enable_http1()
            .wrap_connector(http)
    };
    fn client<C, B>(connector: &C) -> Client<C, B>
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
        B: hyper::body::Body + Send,
        B::Data: Send,
    {
        Client::builder(TokioExecutor::new()).build(connector.clone())
    }
    let bare = || client::<_, Body>(&bare_connector);

    let policy = PinPolicy::builder()
        .pin(
            "localhost",
            &[&tls.pki.intermediate.spki_pin(), &tls.pki.root.spki_pin()],
        )?
        .build()?;
    let pinned = PinnedTls::builder(policy)
        .root_certificates([tls.pki.root.cert()])?
        .build()?;
    let sign_key = SigningKey::generate_ed25519("bench-device")?;

    let mut arms: Vec<(&'static str, ClientArm)> = vec![
        ("bare hyper client (baseline)", arm(bare(), url.clone())),
        (
            "pin (PinnedTls connector)",
            arm(
                portcullis::client::builder()
                    .pinned(pinned.clone())
                    .connect_to(addr)
                    .build::<Body>()?,
                url.clone(),
            ),
        ),
        (
            "bearer token (BearerLayer)",
            arm(
                BearerLayer::new(token_source().await?).layer(client(&bare_connector)),
                url.clone(),
            ),
        ),
        (
            "sign ed25519 (SignLayer)",
            arm(SignLayer::new(sign_key.clone()).layer(bare()), url.clone()),
        ),
        (
            "retry (RetryLayer, 2 attempts)",
            arm(
                RetryLayer::new()
                    .max_attempts(2)
                    .layer(client(&bare_connector)),
                url.clone(),
            ),
        ),
        (
            "rate limit (ClientRateLimitLayer)",
            arm(
                ClientRateLimitLayer::new(huge_quota()).layer(bare()),
                url.clone(),
            ),
        ),
        (
            "audit (Auditor::client_layer)",
            arm(auditor.client_layer().layer(bare()), url.clone()),
        ),
    ];
    let full = portcullis::client::builder()
        .pinned(pinned)
        .connect_to(addr)
        .audit(auditor.client_layer())
        .rate_limit(ClientRateLimitLayer::new(huge_quota()))
        .retry(RetryLayer::new().max_attempts(2))
        .tokens(BearerLayer::new(token_source().await?))
        .sign(SignLayer::new(sign_key))
        .build::<Body>()?;
    arms.push(("full client stack", arm(full, url)));
    Ok(arms)
}

/// The client's auditor, its collector installed on this thread for every arm (the client
/// runs on a current-thread runtime), as in an application that audits.
fn client_auditor() -> Result<(Auditor, tracing::subscriber::DefaultGuard), BoxError> {
    let auditor = Auditor::builder()
        .sink(MemorySink::new(1024))
        .tracing_records(false)
        .build()?;
    let guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(auditor.collector()));
    Ok((auditor, guard))
}

/// Starts the bare server of the client table on its own runtime thread.
fn start_client_table_server(tls: &Tls, rt: &tokio::runtime::Runtime) -> Result<u16, BoxError> {
    let (listener, port) = rt.block_on(bind())?;
    rt.spawn(serve_bare(
        listener,
        tls.server.clone(),
        service_fn(ok_handler::<Incoming>),
    ));
    Ok(port)
}

#[derive(Default)]
struct Samples {
    latencies_ns: Vec<u64>,
    busy: Duration,
    errors: u64,
}

impl Samples {
    fn record(&mut self, elapsed: Duration, ok: bool) {
        self.latencies_ns.push(elapsed.as_nanos() as u64);
        if !ok {
            self.errors += 1;
        }
    }

    fn rps(&self) -> f64 {
        self.latencies_ns.len() as f64 / self.busy.as_secs_f64().max(1e-9)
    }

    fn percentile_us(&mut self, p: f64) -> f64 {
        percentile(&mut self.latencies_ns, p) as f64 / 1e3
    }
}

fn percentile(values: &mut [u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn client_report(secs: f64) -> Result<(), BoxError> {
    const ROUNDS: u32 = 4;
    let tls = Tls::new();
    let server_rt = server_runtime()?;
    let port = start_client_table_server(&tls, &server_rt)?;
    let rt = runtime()?;
    let (auditor, _guard) = client_auditor()?;
    let mut arms = rt.block_on(client_arms(&tls, port, &auditor))?;
    let window = Duration::from_secs_f64(secs / f64::from(ROUNDS));
    let mut samples: Vec<Samples> = arms.iter().map(|_| Samples::default()).collect();
    rt.block_on(async {
        for (_, call) in arms.iter_mut() {
            // Warm-up: connection, TLS handshake, token fetch, lazy statics.
            for _ in 0..50 {
                let status = call().await?;
                if status != StatusCode::OK {
                    return Err::<(), BoxError>(format!("warm-up answered {status}").into());
                }
            }
        }
        for _ in 0..ROUNDS {
            for ((_, call), s) in arms.iter_mut().zip(samples.iter_mut()) {
                let start = Instant::now();
                while start.elapsed() < window {
                    let t0 = Instant::now();
                    let status = call().await?;
                    s.record(t0.elapsed(), status == StatusCode::OK);
                }
                s.busy += start.elapsed();
            }
        }
        Ok(())
    })?;

    println!(
        "Client stacks: sequential GET over one keep-alive HTTPS connection (TLS 1.3, HTTP/1.1) \
         to a bare in-process hyper server on 127.0.0.1; {ROUNDS} interleaved rounds, {:.2} s \
         per arm in all.\n",
        secs
    );
    println!(
        "| client | req/s | × baseline | p50 µs | × baseline | p99 µs | × baseline | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let base_rps = samples[0].rps();
    let base_p50 = samples[0].percentile_us(50.0);
    let base_p99 = samples[0].percentile_us(99.0);
    for ((name, _), s) in arms.iter().zip(samples.iter_mut()) {
        let (rps, p50, p99) = (s.rps(), s.percentile_us(50.0), s.percentile_us(99.0));
        println!(
            "| {name} | {rps:.0} | {:.2} | {p50:.1} | {:.2} | {p99:.1} | {:.2} | {} |",
            rps / base_rps,
            p50 / base_p50,
            p99 / base_p99,
            s.errors
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Server arms and the load generator

/// Secrets of one run, shared with the load generator through its command line (they only
/// protect a loopback benchmark and die with it).
struct RunKeys {
    hmac: Vec<u8>,
    jwt_secret: Vec<u8>,
}

impl RunKeys {
    fn new() -> Self {
        let random = |n: usize| -> Vec<u8> {
            (0..n.div_ceil(8))
                .flat_map(|i| RandomState::new().hash_one(i).to_le_bytes())
                .take(n)
                .collect()
        };
        RunKeys {
            hmac: random(32),
            jwt_secret: random(32),
        }
    }

    fn token(&self) -> Result<String, BoxError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({
                "iss": ISSUER, "aud": AUDIENCE, "sub": "loadgen", "jti": "bench",
                "iat": now, "exp": now + 3600, "scope": "bench:read",
            }),
            &jsonwebtoken::EncodingKey::from_secret(&self.jwt_secret),
        )?)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, BoxError> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return Err("HMAC_HEX must be an even number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(Into::into))
        .collect()
}

/// The three servers of the server table, on one one-worker runtime.
struct Servers {
    ports: Vec<(&'static str, u16)>,
    root_pem_path: std::path::PathBuf,
    /// The server auditor's latest records.
    records: MemorySink,
}

fn start_servers(
    tls: &Tls,
    keys: &RunKeys,
    rt: &tokio::runtime::Runtime,
) -> Result<Servers, BoxError> {
    fn serve<S, B>(rt: &tokio::runtime::Runtime, tls: &Tls, service: S) -> Result<u16, BoxError>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (listener, port) = rt.block_on(bind())?;
        rt.spawn(portcullis::server::serve_tls(
            listener,
            tls.server.clone(),
            service,
        ));
        Ok(port)
    }
    let hmac = SigningKey::hmac_sha256(KEY_ID, &SecretSlice::from(keys.hmac.clone()))?;
    let verify = || {
        VerifySignatureLayer::builder(StaticKeys::new().with(KEY_ID, hmac.verifying_key()))
            // A fresh nonce per request: room for all of them.
            .replay_cache(MemoryReplayCache::new(20_000_000).per_partition(20_000_000))
            .build()
    };
    let bearer = || -> Result<RequireBearerLayer, BoxError> {
        let validator = JwtValidator::builder()
            .issuer(ISSUER)
            .audience(AUDIENCE)
            .key(VerificationKey::hmac(Algorithm::HS256, &keys.jwt_secret)?)
            .build()?;
        Ok(RequireBearerLayer::new(validator).scopes(["bench:read"]))
    };
    let records = MemorySink::new(1024);
    let auditor = Auditor::builder()
        .sink(records.clone())
        .tracing_records(false)
        .build()?;
    // Process-wide, as an audited server installs it: the connection tasks that serve_tls
    // spawns report their layers' events to the collector. Ignored when one is set already.
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(auditor.collector()),
    );

    let mut ports = Vec::new();
    let (listener, port) = rt.block_on(bind())?;
    rt.spawn(serve_bare(listener, tls.server.clone(), router()));
    ports.push((BARE_SERVER, port));
    let server = portcullis::server::builder;
    ports.push((
        "serve_tls, no layer",
        serve(rt, tls, server().service(router()))?,
    ));
    ports.push((
        "serve_tls + audit (server_layer)",
        serve(
            rt,
            tls,
            server().audit(auditor.server_layer()).service(router()),
        )?,
    ));
    ports.push((
        "serve_tls + pre-auth rate limit (per IP)",
        serve(
            rt,
            tls,
            server()
                .pre_auth_rate_limit(RateLimitLayer::keyed(huge_quota(), PeerIp::new()))
                .service(router()),
        )?,
    ));
    ports.push((
        "serve_tls + verify signatures (HMAC, replay cache)",
        serve(
            rt,
            tls,
            server().verify_signatures(verify()?).service(router()),
        )?,
    ));
    ports.push((
        "serve_tls + require bearer (HS256 JWT)",
        serve(
            rt,
            tls,
            server().require_bearer(bearer()?).service(router()),
        )?,
    ));
    let stack = server()
        .audit(auditor.server_layer())
        .pre_auth_rate_limit(RateLimitLayer::keyed(huge_quota(), PeerIp::new()))
        .verify_signatures(verify()?)
        .require_bearer(bearer()?)
        .identity_rate_limit(RateLimitLayer::keyed(
            huge_quota(),
            ExtensionKey::new(|c: &VerifiedClaims| c.subject().map(str::to_owned)),
        ))
        .service(router());
    ports.push((FULL_SERVER, serve(rt, tls, stack)?));

    let root_pem_path =
        std::env::temp_dir().join(format!("portcullis-bench-root-{}.der", std::process::id()));
    std::fs::write(&root_pem_path, tls.pki.root.cert().as_ref())?;
    Ok(Servers {
        ports,
        root_pem_path,
        records,
    })
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.root_pem_path);
    }
}

/// Runs the load generator as a second process and parses its summary line.
fn spawn_loadgen(
    servers: &Servers,
    port: u16,
    conns: u32,
    secs: f64,
    max: u64,
    keys: &RunKeys,
    token: Option<&str>,
) -> Result<LoadOutcome, BoxError> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "loadgen",
            &port.to_string(),
            &conns.to_string(),
            &secs.to_string(),
            &max.to_string(),
            &hex(&keys.hmac),
            token.unwrap_or("-"),
        ])
        .env("PORTCULLIS_BENCH_ROOT", &servers.root_pem_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    // The load generator bounds itself; this is the watchdog in case it hangs.
    let deadline = Instant::now() + Duration::from_secs_f64(secs + 30.0);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("load generator overran its time bound: killed".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("load generator failed: {}", out.status).into());
    }
    LoadOutcome::parse(&String::from_utf8_lossy(&out.stdout))
}

fn server_report(secs: f64) -> Result<(), BoxError> {
    const ROUNDS: u32 = 2;
    const CONNS: u32 = 8;
    let tls = Tls::new();
    let keys = RunKeys::new();
    let token = keys.token()?;
    let rt = server_runtime()?;
    let servers = start_servers(&tls, &keys, &rt)?;
    let per_round = secs / f64::from(ROUNDS);
    let mut results: Vec<Vec<LoadOutcome>> = servers.ports.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for ((_, port), out) in servers.ports.iter().zip(results.iter_mut()) {
            out.push(spawn_loadgen(
                &servers,
                *port,
                CONNS,
                per_round,
                u64::MAX / 2,
                &keys,
                Some(&token),
            )?);
        }
    }
    println!(
        "Server stacks under load from a second process (`stack_load loadgen`: {CONNS} \
         keep-alive HTTPS connections, HTTP/1.1, every request HMAC-signed with a bearer JWT in \
         all arms); server on a one-worker tokio runtime; {ROUNDS} interleaved rounds, {:.2} s \
         per arm in all; p50/p99 are the mean of the rounds' percentiles.\n",
        secs
    );
    println!(
        "| server | req/s | × baseline | p50 µs | × baseline | p99 µs | × baseline | non-200 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let summary = |outs: &[LoadOutcome]| {
        let ok: u64 = outs.iter().map(|o| o.ok).sum();
        let errors: u64 = outs.iter().map(|o| o.errors).sum();
        let elapsed: f64 = outs.iter().map(|o| o.elapsed_us as f64 / 1e6).sum();
        let n = outs.len().max(1) as f64;
        let p50 = outs.iter().map(|o| o.p50_us).sum::<f64>() / n;
        let p99 = outs.iter().map(|o| o.p99_us).sum::<f64>() / n;
        ((ok + errors) as f64 / elapsed.max(1e-9), p50, p99, errors)
    };
    let (base_rps, base_p50, base_p99, _) = summary(&results[0]);
    for ((name, _), outs) in servers.ports.iter().zip(results.iter()) {
        let (rps, p50, p99, errors) = summary(outs);
        println!(
            "| {name} | {rps:.0} | {:.2} | {p50:.0} | {:.2} | {p99:.0} | {:.2} | {errors} |",
            rps / base_rps,
            p50 / base_p50,
            p99 / base_p99,
        );
    }
    Ok(())
}

struct LoadArgs {
    port: u16,
    conns: u32,
    secs: f64,
    max: u64,
    key: Vec<u8>,
    token: Option<String>,
}

impl LoadArgs {
    fn parse(
        port: &str,
        conns: &str,
        secs: &str,
        max: &str,
        key: &str,
        token: &str,
    ) -> Result<Self, BoxError> {
        let conns: u32 = conns.parse()?;
        if !(1..=256).contains(&conns) {
            return Err("CONNS must be within 1..=256".into());
        }
        Ok(LoadArgs {
            port: port.parse()?,
            conns,
            secs: secs_arg(secs)?,
            max: max.parse()?,
            key: unhex(key)?,
            token: (token != "-").then(|| token.to_owned()),
        })
    }
}

struct LoadOutcome {
    ok: u64,
    errors: u64,
    elapsed_us: u64,
    p50_us: f64,
    p99_us: f64,
}

impl LoadOutcome {
    fn line(&self) -> String {
        format!(
            "ok={} errors={} elapsed_us={} p50_us={:.1} p99_us={:.1}",
            self.ok, self.errors, self.elapsed_us, self.p50_us, self.p99_us
        )
    }

    fn parse(s: &str) -> Result<Self, BoxError> {
        let fields: HashMap<&str, &str> = s
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .ok_or_else(|| BoxError::from(format!("load generator output lacks {k}: {s:?}")))
        };
        Ok(LoadOutcome {
            ok: get("ok")?.parse()?,
            errors: get("errors")?.parse()?,
            elapsed_us: get("elapsed_us")?.parse()?,
            p50_us: get("p50_us")?.parse()?,
            p99_us: get("p99_us")?.parse()?,
        })
    }
}

/// The load generator: `conns` keep-alive HTTP/1.1 connections to 127.0.0.1:`port`, each
/// sending signed GETs back to back until the deadline or the shared request budget.
async fn loadgen(args: LoadArgs) -> Result<LoadOutcome, BoxError> {
    let root_path = std::env::var_os("PORTCULLIS_BENCH_ROOT")
        .ok_or("PORTCULLIS_BENCH_ROOT (the server's root certificate, DER) is not set")?;
    let der = std::fs::read(root_path)?;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(der))?;
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let key = SigningKey::hmac_sha256(KEY_ID, &SecretSlice::from(args.key.clone()))?;
    let budget = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.conns {
        let connector = connector.clone();
        let signer = SignLayer::new(key.clone());
        let budget = budget.clone();
        let token = args.token.clone();
        let (port, max) = (args.port, args.max);
        tasks.spawn(async move {
            connection(connector, signer, port, token, deadline, budget, max).await
        });
    }
    let mut latencies = Vec::new();
    let (mut ok, mut errors) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (lat, o, e) = done??;
        latencies.extend(lat);
        ok += o;
        errors += e;
    }
    let elapsed_us = start.elapsed().as_micros() as u64;
    Ok(LoadOutcome {
        ok,
        errors,
        elapsed_us,
        p50_us: percentile(&mut latencies, 50.0) as f64 / 1e3,
        p99_us: percentile(&mut latencies, 99.0) as f64 / 1e3,
    })
}

async fn connection(
    connector: tokio_rustls::TlsConnector,
    signer: SignLayer,
    port: u16,
    token: Option<String>,
    deadline: Instant,
    budget: Arc<AtomicU64>,
    max: u64,
) -> Result<(Vec<u64>, u64, u64), BoxError> {
    let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    tcp.set_nodelay(true)?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    // The signer sees the absolute URI (for @authority and @target-uri); the wire gets the
    // origin form with the same Host.
    let transport = service_fn(move |mut req: Request<Body>| {
        let sender = sender.clone();
        async move {
            *req.uri_mut() = Uri::from_static(PATH);
            let mut sender = sender.lock().await;
            sender.ready().await?;
            sender.send_request(req).await
        }
    });
    let mut signed = signer.layer(transport);
    let url = format!("https://localhost:{port}{PATH}");
    let host = format!("localhost:{port}");
    let (mut latencies, mut ok, mut errors) = (Vec::new(), 0u64, 0u64);
    while Instant::now() < deadline && budget.fetch_add(1, Ordering::Relaxed) < max {
        let mut req = Request::get(url.as_str()).header(header::HOST, host.as_str());
        if let Some(token) = &token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Body::default())?;
        let t0 = Instant::now();
        let res = ServiceExt::<Request<Body>>::ready(&mut signed)
            .await?
            .call(req)
            .await?;
        let status = res.status();
        res.into_body().collect().await?;
        latencies.push(t0.elapsed().as_nanos() as u64);
        if status == StatusCode::OK {
            ok += 1;
        } else {
            errors += 1;
        }
    }
    Ok((latencies, ok, errors))
}

// ---------------------------------------------------------------------------------------------
// Memory under a flood of unique keys

/// What one memory arm kept after the flood.
struct MemOutcome {
    arm: String,
    keys: u64,
    entries: usize,
    bound: Option<usize>,
    refused: u64,
    rss_before_kib: u64,
    rss_after_kib: u64,
}

impl MemOutcome {
    fn line(&self) -> String {
        format!(
            "arm={} keys={} entries={} bound={} refused={} rss_before_kib={} rss_after_kib={}",
            self.arm,
            self.keys,
            self.entries,
            self.bound.map_or("none".to_owned(), |b| b.to_string()),
            self.refused,
            self.rss_before_kib,
            self.rss_after_kib
        )
    }

    fn parse(s: &str) -> Result<Self, BoxError> {
        let f: HashMap<&str, &str> = s
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let get = |k: &str| {
            f.get(k)
                .copied()
                .ok_or_else(|| BoxError::from(format!("memory arm output lacks {k}: {s:?}")))
        };
        Ok(MemOutcome {
            arm: get("arm")?.to_owned(),
            keys: get("keys")?.parse()?,
            entries: get("entries")?.parse()?,
            bound: get("bound")?.parse().ok(),
            refused: get("refused")?.parse()?,
            rss_before_kib: get("rss_before_kib")?.parse()?,
            rss_after_kib: get("rss_after_kib")?.parse()?,
        })
    }
}

const MEMORY_ARMS: [&str; 4] = ["baseline", "rate_limiter", "replay_cache", "detector"];

/// Resident set size of this process, from /proc (0 where /proc is missing).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The `i`-th unique key: the length of a base64 nonce.
fn flood_key(i: u64) -> String {
    format!("nonce-{i:016x}")
}

/// Feeds `n` unique keys to one structure. `small` uses tiny bounds (the smoke check);
/// otherwise each structure has its default bound.
fn memory_arm(arm: &str, n: u64, small: bool) -> Result<MemOutcome, BoxError> {
    let rt = runtime()?;
    let _enter = rt.enter();
    let ttl = Duration::from_secs(300);
    let mut out = MemOutcome {
        arm: arm.to_owned(),
        keys: n,
        entries: 0,
        bound: None,
        refused: 0,
        rss_before_kib: 0,
        rss_after_kib: 0,
    };
    match arm {
        "baseline" => {
            // What an unbounded per-key map (a naive limiter or replay cache) keeps.
            let mut map: HashMap<String, tokio::time::Instant> = HashMap::new();
            out.rss_before_kib = rss_kib();
            for i in 0..n {
                map.insert(flood_key(i), tokio::time::Instant::now() + ttl);
            }
            out.rss_after_kib = rss_kib();
            out.entries = black_box(&map).len();
        }
        "rate_limiter" => {
            let quota = Quota::per_second(nz(10));
            let limiter = if small {
                KeyedLimiter::<String>::with_bounds(quota, 100, None)
            } else {
                KeyedLimiter::<String>::new(quota)
            };
            out.rss_before_kib = rss_kib();
            for i in 0..n {
                if limiter.check(&flood_key(i)).is_err() {
                    out.refused += 1;
                }
            }
            out.rss_after_kib = rss_kib();
            out.entries = limiter.len();
            out.bound = Some(limiter.max_keys());
        }
        "replay_cache" => {
            let capacity = if small { 100 } else { 100_000 };
            let cache = MemoryReplayCache::new(capacity);
            out.rss_before_kib = rss_kib();
            for i in 0..n {
                match cache.insert_once_now(&flood_key(i), flood_key(i), ttl) {
                    Ok(true) => {}
                    Ok(false) => return Err("a unique key was taken for a replay".into()),
                    Err(_full) => out.refused += 1,
                }
            }
            out.rss_after_kib = rss_kib();
            out.entries = cache.len();
            out.bound = Some(capacity);
        }
        "detector" => {
            let mut config = DetectorConfig::new();
            if small {
                config = config.max_subjects(100);
            }
            let detector = Detector::new(config)?;
            out.rss_before_kib = rss_kib();
            for i in 0..n {
                let event = SecurityEvent::new("portcullis::attest")
                    .with(
                        schema::field::EVENT_ACTION,
                        schema::action::SIGNATURE_VERIFY,
                    )
                    .with(schema::field::EVENT_OUTCOME, schema::outcome::FAILURE)
                    .with(schema::field::EVENT_REASON, "invalid_signature")
                    .with(schema::field::USER_ID, flood_key(i))
                    .with(
                        schema::field::CLIENT_ADDRESS,
                        format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                    );
                out.refused += detector.observe(&event).len() as u64;
            }
            out.rss_after_kib = rss_kib();
            out.entries = detector.tracked_subjects();
            out.bound = Some(detector.capacity());
        }
        other => return Err(format!("unknown memory arm {other:?}").into()),
    }
    Ok(out)
}

fn memory_report(n: u64) -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    let mut outs = Vec::new();
    for arm in MEMORY_ARMS {
        // A fresh process per arm: RSS is not blurred by what an earlier arm freed.
        let out = Command::new(&exe)
            .args(["memory-arm", arm, &n.to_string()])
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(format!("memory arm {arm} failed: {}", out.status).into());
        }
        outs.push(MemOutcome::parse(&String::from_utf8_lossy(&out.stdout))?);
    }
    println!(
        "Memory after {n} unique keys, each structure with its default bound, one fresh process \
         per arm; baseline: an unbounded `HashMap<String, Instant>` of the same keys. RSS \
         growth = VmRSS after the flood − before.\n"
    );
    println!(
        "| structure | entries kept | bound | refused / anomalies | RSS before KiB | RSS after KiB | RSS growth KiB | × baseline growth |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let growth = |o: &MemOutcome| o.rss_after_kib.saturating_sub(o.rss_before_kib);
    let base = growth(&outs[0]).max(1) as f64;
    for o in &outs {
        let name = match o.arm.as_str() {
            "baseline" => "unbounded HashMap (baseline)",
            "rate_limiter" => "KeyedLimiter (rate limit, per key)",
            "replay_cache" => "MemoryReplayCache (nonces, TTL 300 s)",
            "detector" => "audit Detector (identity + peer per event)",
            other => other,
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {:.3} |",
            o.entries,
            o.bound.map_or("none".to_owned(), |b| b.to_string()),
            o.refused,
            o.rss_before_kib,
            o.rss_after_kib,
            growth(o),
            growth(o) as f64 / base
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Smoke check (cargo test --all-targets)

/// One GET to `port`, HMAC-signed as the load generator signs, without a bearer token: the
/// status and the `WWW-Authenticate` challenge.
async fn signed_get_without_token(
    tls: &Tls,
    keys: &RunKeys,
    port: u16,
) -> Result<(StatusCode, Option<String>), BoxError> {
    let mut config = ClientConfig::builder()
        .with_root_certificates(tls.pki.root_store())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let key = SigningKey::hmac_sha256(KEY_ID, &SecretSlice::from(keys.hmac.clone()))?;
    let mut signed = SignLayer::new(key).layer(service_fn(move |mut req: Request<Body>| {
        let sender = sender.clone();
        async move {
            *req.uri_mut() = Uri::from_static(PATH);
            sender.lock().await.send_request(req).await
        }
    }));
    let req = Request::get(format!("https://localhost:{port}{PATH}"))
        .header(header::HOST, format!("localhost:{port}"))
        .body(Body::default())?;
    let res = ServiceExt::<Request<Body>>::ready(&mut signed)
        .await?
        .call(req)
        .await?;
    let challenge = res
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((res.status(), challenge))
}

fn smoke() -> Result<(), BoxError> {
    let tls = Tls::new();

    // Every client arm answers 200 over real TLS.
    let server_rt = server_runtime()?;
    let port = start_client_table_server(&tls, &server_rt)?;
    let rt = runtime()?;
    let (auditor, _guard) = client_auditor()?;
    let mut arms = rt.block_on(client_arms(&tls, port, &auditor))?;
    for (name, call) in arms.iter_mut() {
        for _ in 0..3 {
            let status = rt.block_on(call())?;
            assert_eq!(status, StatusCode::OK, "client arm {name:?}");
        }
    }

    // Every server arm answers 200 to the load generator in a second process; the full
    // stack refuses it without a bearer token while the bare server does not check.
    let keys = RunKeys::new();
    let token = keys.token()?;
    let servers = start_servers(&tls, &keys, &server_rt)?;
    for (name, port) in &servers.ports {
        let out = spawn_loadgen(&servers, *port, 2, 30.0, 10, &keys, Some(&token))?;
        assert_eq!((out.ok, out.errors), (10, 0), "server arm {name:?}");
    }
    let port_of = |name: &str| {
        servers
            .ports
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .ok_or("server arm missing")
    };
    let stack_port = port_of(FULL_SERVER)?;
    let out = spawn_loadgen(&servers, stack_port, 1, 30.0, 3, &keys, None)?;
    assert_eq!(
        (out.ok, out.errors),
        (0, 3),
        "the stack must refuse a missing token"
    );
    // The refusal is the bearer check's: 401 with a Bearer challenge, for a request that is
    // signed like the load generator's and lacks only the token.
    let (status, challenge) = rt.block_on(signed_get_without_token(&tls, &keys, stack_port))?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "missing token");
    assert!(
        challenge
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer")),
        "missing token: WWW-Authenticate {challenge:?}"
    );
    // The full stack's audit records carry the events its layers raised (the audit-only
    // arm shares the auditor; its records have none).
    let records = servers.records.with_action("http.request");
    let full = records.iter().find(|r| {
        let events = r["portcullis.events"].to_string();
        events.contains("signature.verify") && events.contains("bearer.validate")
    });
    assert!(
        full.is_some_and(|r| r["http.response.status_code"] == 200),
        "no audit record with the stack's events among {} records, last: {}",
        records.len(),
        records.last().map(ToString::to_string).unwrap_or_default()
    );
    let bare_port = port_of(BARE_SERVER)?;
    let out = spawn_loadgen(&servers, bare_port, 1, 30.0, 3, &keys, None)?;
    assert_eq!((out.ok, out.errors), (3, 0));

    // Under a flood of 1,000 unique keys, the bounded structures keep their bound.
    let n = 1_000;
    let base = memory_arm("baseline", n, true)?;
    assert_eq!(base.entries, n as usize);
    for arm in &MEMORY_ARMS[1..] {
        let out = memory_arm(arm, n, true)?;
        let bound = out.bound.ok_or("bounded arm without a bound")?;
        assert!(
            out.entries <= bound + 1,
            "{arm}: {} entries for a bound of {bound}",
            out.entries
        );
        assert!(bound <= 200, "{arm}: small bound expected, got {bound}");
    }
    println!(
        "stack_load: smoke ok (8 client arms, 7 server arms via a second process, memory bounds)"
    );
    Ok(())
}
