//! Shared helpers for the runnable examples in this folder, and the steps of the end-to-end
//! demo (`cargo run --release --example demo`), kept here so `tests/demo.rs` runs the very
//! same code in CI.

pub mod demo {
    //! The end-to-end demo: a local API behind the full server stack, a local OAuth token
    //! endpoint, and the full client stack against them, step by step.
    //!
    //! Everything runs on 127.0.0.1 with certificates minted at start-up. [`run`] returns a
    //! [`Report`] whose steps each say what was expected, what was seen and whether it
    //! passed; the `demo` example prints it and exits non-zero unless every step passed.
    //!
    //! [`run`] installs the audit collector as the global `tracing` subscriber, so call it
    //! once per process.

    use std::collections::BTreeSet;
    use std::convert::Infallible;
    use std::fmt;
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use portcullis::attest::{
        MemoryReplayCache, SignLayer, SigningKey, StaticKeys, VerifiedSignature,
        VerifySignatureLayer,
    };
    use portcullis::audit::{AnomalyKind, Auditor, DetectorConfig, MemorySink, Threshold};
    use portcullis::pin::{PinFailure, PinPolicy, PinnedConnector, PinnedPeer, PinnedTls};
    use portcullis::retry::rate_limit::{
        ClientRateLimitLayer, ExtensionKey, PeerIp, Quota, RateLimitLayer,
    };
    use portcullis::retry::retry::RetryLayer;
    use portcullis::server::RotatingCert;
    use portcullis::token::require::{Algorithm, JwtValidator, VerificationKey};
    use portcullis::token::secret::KdfParams;
    use portcullis::token::token::{ClientAuth, TokenSet};
    use portcullis::token::{
        BearerLayer, FileKey, FileStore, OAuthRefresh, RequireBearerLayer, TokenSource,
        VerifiedClaims,
    };
    use testkit::pki::{Authority, TestPki};
    use testkit::server::{TestResponse, TestServer, server_config};
    use tower::{BoxError, Service, ServiceExt, service_fn};
    use tracing_subscriber::layer::SubscriberExt as _;

    type Body = Full<Bytes>;

    const ISSUER: &str = "https://localhost/oauth";
    const AUDIENCE: &str = "orders-api";
    /// The HS256 key shared by the token endpoint and the API (a demo; use asymmetric keys
    /// or a JWKS in production).
    const JWT_SECRET: [u8; 32] = [0x5e; 32];
    const ACCESS_LIFETIME_S: u64 = 2;
    const DEVICE_KEY_ID: &str = "demo-device-1";
    /// Per-identity quota of the API: a burst of 10, then 5 requests per second.
    const IDENTITY_BURST: u32 = 10;
    const BURST_SIZE: usize = 30;

    /// One step of the demo.
    #[derive(Clone, Debug)]
    pub struct Step {
        /// 1-based step number.
        pub number: usize,
        /// What the step shows.
        pub title: &'static str,
        /// What was seen, one line each.
        pub lines: Vec<String>,
        /// Whether everything behaved as it must.
        pub passed: bool,
    }

    impl fmt::Display for Step {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            writeln!(f, "{}. {}", self.number, self.title)?;
            for line in &self.lines {
                for part in line.lines() {
                    writeln!(f, "     {part}")?;
                }
            }
            write!(f, "   => {}", if self.passed { "PASS" } else { "FAIL" })
        }
    }

    /// Every step, in order.
    #[derive(Clone, Debug, Default)]
    pub struct Report {
        /// The steps that ran.
        pub steps: Vec<Step>,
    }

    impl Report {
        /// Whether every step passed (and there was at least one).
        pub fn all_passed(&self) -> bool {
            !self.steps.is_empty() && self.steps.iter().all(|s| s.passed)
        }
    }

    /// The number of steps [`run`] performs.
    pub const STEPS: usize = 8;

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
    }

    // ----- The OAuth token endpoint. -----

    /// The token endpoint's memory: the live refresh token of the one session, the ones it
    /// already rotated away, and how many refreshes it served.
    #[derive(Debug, Default)]
    struct Issuer {
        live: Option<String>,
        rotated_away: Vec<String>,
        refreshes: usize,
    }

    fn json(status: StatusCode, body: String) -> TestResponse {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }

    async fn token_endpoint(issuer: Arc<Mutex<Issuer>>, req: Request<Incoming>) -> TestResponse {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let form = String::from_utf8_lossy(&body).into_owned();
        let field = |name: &str| {
            form.split('&')
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .map(str::to_owned)
        };
        let presented = field("refresh_token").unwrap_or_default();
        let mut st = lock(&issuer);
        if field("grant_type").as_deref() != Some("refresh_token")
            || st.live.as_deref() != Some(presented.as_str())
        {
            if st.rotated_away.contains(&presented) {
                // A rotated-away refresh token came back: someone copied it. Revoke.
                st.live = None;
            }
            return json(
                StatusCode::BAD_REQUEST,
                r#"{"error":"invalid_grant"}"#.into(),
            );
        }
        st.refreshes += 1;
        let n = st.refreshes;
        st.rotated_away.push(presented);
        let rotated = format!("rt-{n}-{}", now());
        st.live = Some(rotated.clone());
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": "orders:read",
            "iat": now(), "exp": now() + ACCESS_LIFETIME_S, "jti": format!("at-{n}"),
        });
        let Ok(access) = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&JWT_SECRET),
        ) else {
            return json(StatusCode::INTERNAL_SERVER_ERROR, "{}".into());
        };
        json(
            StatusCode::OK,
            format!(
                r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":{ACCESS_LIFETIME_S},"refresh_token":"{rotated}"}}"#
            ),
        )
    }

    // ----- The API behind the server stack. -----

    #[derive(Debug, Default)]
    struct ApiState {
        flaky_calls: AtomicUsize,
        jtis: Mutex<BTreeSet<String>>,
    }

    async fn api(state: Arc<ApiState>, req: Request<Body>) -> Result<Response<Body>, Infallible> {
        if req.uri().path() == "/flaky" {
            // Fails twice, then recovers: the client's retry layer must ride through.
            let n = state.flaky_calls.fetch_add(1, Ordering::SeqCst);
            let mut resp = Response::new(Body::from(format!("attempt {}", n + 1)));
            if n % 3 != 2 {
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            return Ok(resp);
        }
        let claims = req.extensions().get::<VerifiedClaims>();
        let who = claims.and_then(|c| c.subject()).unwrap_or("-").to_owned();
        let jti = claims.and_then(|c| c.jti()).unwrap_or("-").to_owned();
        let key = req
            .extensions()
            .get::<VerifiedSignature>()
            .map(|s| s.keyid().to_owned())
            .unwrap_or_default();
        lock(&state.jtis).insert(jti.clone());
        Ok(Response::new(Body::from(format!(
            "orders for {who} (token {jti}, signed by {key})"
        ))))
    }

    // ----- A tap under the signing layer: what went on the wire. -----

    #[derive(Clone, Debug, Default)]
    struct Wire(Arc<Mutex<Option<Request<Body>>>>);

    fn copy(req: &Request<Body>) -> Request<Body> {
        let mut r = Request::new(req.body().clone());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.headers_mut() = req.headers().clone();
        r
    }

    type PinnedClient = Client<PinnedConnector, Body>;

    fn pinned_client(tls: &PinnedTls) -> PinnedClient {
        Client::builder(TokioExecutor::new()).build(tls.connector())
    }

    /// The bottom of the client stacks: the pinned hyper client, keeping a copy of the last
    /// request sent (headers and body as signed) for the replay and tamper step.
    fn tapped(
        client: PinnedClient,
        wire: Wire,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Incoming>,
        Error = hyper_util::client::legacy::Error,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        service_fn(move |req: Request<Body>| {
            *lock(&wire.0) = Some(copy(&req));
            client.request(req)
        })
    }

    async fn read(res: Response<Incoming>) -> (StatusCode, http::HeaderMap, String) {
        let status = res.status();
        let headers = res.headers().clone();
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    }

    fn pin_line(peer: Option<&PinnedPeer>) -> (Option<String>, String) {
        match peer.and_then(PinnedPeer::check) {
            Some(check) => {
                let pin = check.matched_pin().map(ToString::to_string);
                let line = format!(
                    "matched pin {} at position {} (pattern {})",
                    pin.as_deref().unwrap_or("none"),
                    check.position().map(|p| p.as_str()).unwrap_or("-"),
                    check.pattern().unwrap_or("-"),
                );
                (pin, line)
            }
            None => (None, "no pin check in the response extensions".into()),
        }
    }

    fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
        let mut out = err.to_string();
        let mut cur = err.source();
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }

    /// Runs every step and returns the report; `on_step` sees each step as it completes.
    ///
    /// # Errors
    /// When the demo cannot set itself up (bind a port, install the `tracing` subscriber,
    /// build a layer). A step that misbehaves is a failed [`Step`], not an error.
    pub async fn run(mut on_step: impl FnMut(&Step)) -> Result<Report, BoxError> {
        testkit::install_default_provider();
        let mut report = Report::default();
        let mut push = |report: &mut Report, title, lines, passed| {
            let step = Step {
                number: report.steps.len() + 1,
                title,
                lines,
                passed,
            };
            on_step(&step);
            report.steps.push(step);
        };

        // --- The audit layer: one auditor for both sides, strict thresholds for a demo. ---
        let anomalies: Arc<Mutex<Vec<String>>> = Arc::default();
        let records = MemorySink::new(1000);
        let seen = anomalies.clone();
        let minute = Duration::from_secs(60);
        let auditor = Auditor::builder()
            .detector(
                DetectorConfig::new()
                    .threshold(AnomalyKind::PinViolations, Threshold::new(1, minute))
                    .threshold(AnomalyKind::SignatureFailures, Threshold::new(1, minute))
                    .threshold(AnomalyKind::Replays, Threshold::new(1, minute))
                    .threshold(AnomalyKind::UnauthorizedBurst, Threshold::new(2, minute))
                    .threshold(AnomalyKind::RateLimitedBurst, Threshold::new(5, minute)),
            )
            .on_anomaly(move |a: &portcullis::audit::Anomaly| {
                lock(&seen).push(format!(
                    "{} for {} ({} in {} s)",
                    a.kind(),
                    a.subject(),
                    a.threshold().count(),
                    a.threshold().window().as_secs()
                ));
            })
            .sink(records.clone())
            .tracing_records(false)
            .build()?;
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(auditor.collector()),
        )
        .map_err(|e| format!("cannot install the audit collector: {e}"))?;

        // --- Certificates: the API's CA, its current key, a backup key kept offline, and a
        // rogue CA the device was tricked into trusting. ---
        let pki = TestPki::named("Demo API");
        let backup_leaf = pki.intermediate.issue_leaf();
        let primary_pin = pki.leaf.spki_pin();
        let backup_pin = backup_leaf.spki_pin();
        let rogue = Authority::root("Rogue Proxy CA");
        let rogue_leaf = rogue.issue_leaf();
        let policy = PinPolicy::builder()
            .pin("localhost", &[&primary_pin, &backup_pin])?
            .build()?;
        let make_tls = || {
            PinnedTls::builder(policy.clone())
                .root_certificates([pki.root.cert(), rogue.cert()])
                .and_then(|b| b.build())
        };
        let tls = make_tls()?;

        // --- The OAuth token endpoint (TLS, same CA, reached through the pinned client). ---
        let issuer = Arc::new(Mutex::new(Issuer {
            live: Some("rt-0-initial".into()),
            ..Issuer::default()
        }));
        let i = issuer.clone();
        let token_server = TestServer::https_with(
            server_config(pki.server_chain(), pki.leaf.key_der()),
            move |req| token_endpoint(i.clone(), req),
        )
        .await;
        let token_url: http::Uri = token_server.url("/oauth/token").parse()?;

        // --- The API: serve_tls + the full server stack. ---
        let device_key = SigningKey::generate_ed25519(DEVICE_KEY_ID)?;
        let validator = JwtValidator::builder()
            .issuer(ISSUER)
            .audience(AUDIENCE)
            .key(VerificationKey::hmac(Algorithm::HS256, &JWT_SECRET)?)
            .max_lifetime(Duration::from_secs(60))
            .leeway(Duration::from_secs(1))
            .build()?;
        let state = Arc::new(ApiState::default());
        let app_state = state.clone();
        let server = portcullis::server::builder()
            .audit(auditor.server_layer().identity(|ext: &http::Extensions| {
                ext.get::<VerifiedClaims>()
                    .and_then(|c| c.subject().map(str::to_owned))
            }))
            .pre_auth_rate_limit(RateLimitLayer::keyed(
                Quota::per_second(nz(100)).allow_burst(nz(200)),
                PeerIp::new(),
            ))
            .verify_signatures(
                VerifySignatureLayer::builder(
                    StaticKeys::new().with(DEVICE_KEY_ID, device_key.verifying_key()),
                )
                .replay_cache(MemoryReplayCache::new(10_000))
                .build()?,
            )
            .require_bearer(RequireBearerLayer::new(validator).scopes(["orders:read"]))
            .identity_rate_limit(RateLimitLayer::keyed(
                Quota::per_second(nz(5)).allow_burst(nz(IDENTITY_BURST)),
                ExtensionKey::new(|c: &VerifiedClaims| c.subject().map(str::to_owned)),
            ))
            .service(service_fn(move |req| api(app_state.clone(), req)));
        let cert = RotatingCert::new(pki.server_chain(), pki.leaf.key_der())?;
        let api_config = cert.server_config();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_port = listener.local_addr()?.port();
        let api_task = tokio::spawn(portcullis::server::serve_tls(
            listener,
            Arc::new(api_config),
            server,
        ));
        let api_url = |path: &str| format!("https://localhost:{api_port}{path}");

        // --- The client: tokens from an encrypted file store, refreshed through the pinned
        // client; the full stack on top. ---
        let dir = std::env::temp_dir().join(format!(
            "portcullis-demo-{}-{}",
            std::process::id(),
            testkit::free_port()
        ));
        std::fs::create_dir_all(&dir)?;
        let store = FileStore::open(
            dir.join("tokens.pcs"),
            FileKey::passphrase("demo passphrase").with_kdf_params(KdfParams::new(8 * 1024, 1, 1)?),
        )
        .await?;
        let refresher = OAuthRefresh::new(
            pinned_client(&tls),
            token_url,
            ClientAuth::Public {
                client_id: "orders-mobile".into(),
            },
        );
        let source = TokenSource::builder(refresher, store)
            .refresh_margin(Duration::from_millis(1200))
            .min_validity(Duration::from_millis(300))
            .load()
            .await?;
        source
            .seed(TokenSet::from_refresh_token("rt-0-initial"))
            .await?;

        let wire = Wire::default();
        let stack = |tls: PinnedTls| {
            portcullis::client::builder()
                .audit(auditor.client_layer())
                .rate_limit(ClientRateLimitLayer::new(
                    Quota::per_second(nz(100)).allow_burst(nz(100)),
                ))
                .retry(
                    RetryLayer::new()
                        .max_attempts(3)
                        .backoff(Duration::from_millis(20), Duration::from_millis(200)),
                )
                .tokens(BearerLayer::new(source.clone()))
                .sign(SignLayer::new(device_key.clone()))
                .service(tapped(pinned_client(&tls), wire.clone()))
        };
        let client = stack(tls.clone());
        let get = |url: String| Request::get(url).body(Body::default());

        let outcome = async {
            // 1. Pinned request accepted.
            {
                let res = client.clone().oneshot(get(api_url("/orders"))?).await;
                let (lines, passed) = match res {
                    Ok(res) => {
                        let (pin, line) = pin_line(res.extensions().get::<PinnedPeer>());
                        let position = res
                            .extensions()
                            .get::<PinnedPeer>()
                            .and_then(PinnedPeer::check)
                            .and_then(|c| c.position());
                        let (status, _, body) = read(res).await;
                        (
                            vec![format!("GET /orders -> {status} {body}"), line],
                            status == StatusCode::OK
                                && pin.as_deref() == Some(primary_pin.as_str())
                                && position.map(|p| p.as_str()) == Some("leaf"),
                        )
                    }
                    Err(e) => (vec![format!("request failed: {}", error_chain(&*e))], false),
                };
                push(&mut report, "pinned request accepted", lines, passed);
            }

            // 2. A man in the middle with a certificate from a CA the device trusts.
            let mitm = TestServer::https_with(
                server_config(vec![rogue_leaf.cert.clone(), rogue.cert()], rogue_leaf.key_der()),
                |_req| async { testkit::server::hello() },
            )
            .await;
            {
                let url = format!("https://localhost:{}/orders", mitm.port());
                let res = client.clone().oneshot(get(url)?).await;
                let (mut lines, passed) = match res {
                    Ok(res) => (vec![format!("MITM answered {}: NOT refused", res.status())], false),
                    Err(e) => match PinFailure::find(&*e) {
                        Some(f) => (vec![format!("refused: {f}")], true),
                        None => (vec![format!("refused, but not by the pin check: {}", error_chain(&*e))], false),
                    },
                };
                lines.push(format!(
                    "requests that reached the man in the middle: {}",
                    mitm.requests()
                ));
                push(
                    &mut report,
                    "man in the middle with a trusted rogue CA refused by the pins",
                    lines,
                    passed && mitm.requests() == 0,
                );
            }

            // 3. The server rotates to its backup key; a new connection matches the backup pin.
            {
                cert.rotate(pki.chain_for(&backup_leaf), backup_leaf.key_der())?;
                let fresh = stack(make_tls()?);
                let res = fresh.oneshot(get(api_url("/orders"))?).await;
                let (lines, passed) = match res {
                    Ok(res) => {
                        let (pin, line) = pin_line(res.extensions().get::<PinnedPeer>());
                        let (status, _, _) = read(res).await;
                        (
                            vec![
                                format!("server now presents the backup key {backup_pin}"),
                                format!("GET /orders on a new connection -> {status}"),
                                line,
                            ],
                            status == StatusCode::OK && pin.as_deref() == Some(backup_pin.as_str()),
                        )
                    }
                    Err(e) => (vec![format!("request failed: {}", error_chain(&*e))], false),
                };
                push(&mut report, "backup pin takes over after key rotation", lines, passed);
            }

            // 4. Tokens rotate while requests flow.
            {
                let before = lock(&issuer).refreshes;
                let mut ok = 0;
                let mut lines = Vec::new();
                let rounds = 10;
                for _ in 0..rounds {
                    match client.clone().oneshot(get(api_url("/orders"))?).await {
                        Ok(res) if res.status() == StatusCode::OK => ok += 1,
                        Ok(res) => lines.push(format!("request answered {}", res.status())),
                        Err(e) => lines.push(format!("request failed: {}", error_chain(&*e))),
                    }
                    tokio::time::sleep(Duration::from_millis(350)).await;
                }
                let (refreshes, rotated) = {
                    let st = lock(&issuer);
                    (st.refreshes - before, st.rotated_away.len())
                };
                let jtis: Vec<String> = lock(&state.jtis).iter().cloned().collect();
                lines.insert(0, format!(
                    "{ok}/{rounds} requests accepted over {:.1} s with {ACCESS_LIFETIME_S}-second access tokens",
                    rounds as f64 * 0.35
                ));
                lines.insert(1, format!(
                    "token endpoint: {refreshes} refreshes in this step, {rotated} refresh tokens rotated away so far"
                ));
                lines.insert(2, format!("access tokens the API accepted: {}", jtis.join(", ")));
                push(
                    &mut report,
                    "tokens rotate while requests flow",
                    lines,
                    ok == rounds && refreshes >= 2 && rotated >= 3,
                );
            }

            // 5. A replayed and a tampered signed request.
            {
                let post = Request::post(api_url("/orders"))
                    .header("content-type", "application/json")
                    .body(Body::from(r#"{"item":"book","qty":1}"#))?;
                let first = client.clone().oneshot(post).await.map(|r| r.status());
                let sent = lock(&wire.0).take();
                let raw = pinned_client(&tls);
                let mut lines = vec![format!("signed POST /orders -> {}", match &first {
                    Ok(s) => s.to_string(),
                    Err(e) => error_chain(&**e),
                })];
                let mut passed = matches!(first, Ok(StatusCode::OK));
                match sent {
                    Some(sent) => {
                        if let Some(input) = sent.headers().get("signature-input").and_then(|v| v.to_str().ok()) {
                            lines.push(format!("signature-input: {input}"));
                        }
                        let (status, headers, _) = read(raw.request(copy(&sent)).await?).await;
                        let reason = header(&headers, "portcullis-reason").to_owned();
                        lines.push(format!("same bytes replayed      -> {status} reason={reason}"));
                        passed &= status == StatusCode::UNAUTHORIZED && reason == "replayed";
                        let mut tampered = copy(&sent);
                        *tampered.body_mut() = Body::from(r#"{"item":"book","qty":100}"#);
                        let (status, headers, _) = read(raw.request(tampered).await?).await;
                        let reason = header(&headers, "portcullis-reason").to_owned();
                        lines.push(format!("body changed, same sig  -> {status} reason={reason}"));
                        passed &= status == StatusCode::UNAUTHORIZED && reason == "digest_mismatch";
                    }
                    None => {
                        lines.push("nothing was captured on the wire".into());
                        passed = false;
                    }
                }
                push(&mut report, "replayed and tampered signed requests refused", lines, passed);
            }

            // 6. A 503 is retried (each attempt signed afresh); a pin failure is not.
            {
                let res = client.clone().oneshot(get(api_url("/flaky"))?).await;
                let attempts = state.flaky_calls.load(Ordering::SeqCst);
                let mut lines = Vec::new();
                let mut passed = match res {
                    Ok(res) => {
                        let (status, _, body) = read(res).await;
                        lines.push(format!(
                            "GET /flaky -> {status} ({body}); attempts the server saw: {attempts} (503, 503, 200)"
                        ));
                        status == StatusCode::OK && attempts == 3
                    }
                    Err(e) => {
                        lines.push(format!("request failed: {}", error_chain(&*e)));
                        false
                    }
                };
                let accepted_before = mitm.accepted();
                let url = format!("https://localhost:{}/orders", mitm.port());
                let res = client.clone().oneshot(get(url)?).await;
                let connections = mitm.accepted() - accepted_before;
                let pin_failed = matches!(&res, Err(e) if PinFailure::find(&**e).is_some());
                lines.push(format!(
                    "GET via the man in the middle -> {}; connections it accepted: {connections} (retry allows 3 attempts), requests: {}",
                    if pin_failed { "pin failure" } else { "NOT a pin failure" },
                    mitm.requests()
                ));
                passed &= pin_failed && connections == 1 && mitm.requests() == 0;
                push(&mut report, "503 retried, pin failure not retried", lines, passed);
            }

            // 7. A burst over the per-identity quota (sent without retry, so the 429s show).
            {
                let burst = portcullis::client::builder()
                    .tokens(BearerLayer::new(source.clone()))
                    .sign(SignLayer::new(device_key.clone()))
                    .audit(auditor.client_layer())
                    .service(pinned_client(&tls));
                let calls = (0..BURST_SIZE).map(|_| {
                    let svc = burst.clone();
                    let req = get(api_url("/orders"));
                    async move { svc.oneshot(req?).await }
                });
                let results = futures_join_all(calls).await;
                let mut ok = 0;
                let mut limited = 0;
                let mut with_retry_after = 0;
                let mut retry_after = String::new();
                let mut other = Vec::new();
                for r in results {
                    match r {
                        Ok(res) if res.status() == StatusCode::OK => ok += 1,
                        Ok(res) if res.status() == StatusCode::TOO_MANY_REQUESTS => {
                            limited += 1;
                            if let Some(v) = res.headers().get(http::header::RETRY_AFTER) {
                                with_retry_after += 1;
                                retry_after = v.to_str().unwrap_or("?").to_owned();
                            }
                        }
                        Ok(res) => other.push(res.status().to_string()),
                        Err(e) => other.push(error_chain(&*e)),
                    }
                }
                let mut lines = vec![format!(
                    "{BURST_SIZE} concurrent requests (quota: burst {IDENTITY_BURST}, 5/s per identity): {ok} x 200, {limited} x 429 (Retry-After: {retry_after} s on {with_retry_after})"
                )];
                if !other.is_empty() {
                    lines.push(format!("unexpected: {}", other.join("; ")));
                }
                push(
                    &mut report,
                    "rate-limited burst",
                    lines,
                    ok > 0 && limited > 0 && with_retry_after == limited && other.is_empty(),
                );
            }

            // 8. What the audit layer made of it.
            {
                auditor.flush();
                let raised = lock(&anomalies).clone();
                let has = |kind: AnomalyKind| raised.iter().any(|a| a.starts_with(kind.as_str()));
                let wanted = [
                    AnomalyKind::PinViolations,
                    AnomalyKind::Replays,
                    AnomalyKind::SignatureFailures,
                    AnomalyKind::UnauthorizedBurst,
                    AnomalyKind::RateLimitedBurst,
                ];
                let mut lines = vec![format!(
                    "{} audit records, {} anomalies raised",
                    auditor.records_produced(),
                    auditor.anomalies_raised()
                )];
                lines.extend(raised.iter().map(|a| format!("anomaly: {a}")));
                for kind in wanted.iter().filter(|k| !has(**k)) {
                    lines.push(format!("missing anomaly: {kind}"));
                }
                // The server's record of the replayed request, with the events it raised.
                let replay_record = records.with_action("http.request").into_iter().find(|r| {
                    r["client.address"].is_string()
                        && r["http.response.status_code"] == 401
                        && r["portcullis.events"]
                            .as_array()
                            .is_some_and(|e| e.iter().any(|e| e["event.reason"] == "replayed"))
                });
                match &replay_record {
                    Some(r) => {
                        let events: Vec<String> = r["portcullis.events"]
                            .as_array()
                            .map(|evs| {
                                evs.iter()
                                    .map(|e| {
                                        format!(
                                            "{} {} ({})",
                                            e["event.action"].as_str().unwrap_or("-"),
                                            e["event.outcome"].as_str().unwrap_or("-"),
                                            e["event.reason"].as_str().unwrap_or("-")
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        lines.push(format!(
                            "record of the replay: {} {} -> {} from {} in {} ms; events: {}",
                            r["http.request.method"].as_str().unwrap_or("-"),
                            r["url.path"].as_str().unwrap_or("-"),
                            r["http.response.status_code"],
                            r["client.address"].as_str().unwrap_or("-"),
                            r["event.duration"]
                                .as_f64()
                                .map(|ns| format!("{:.1}", ns / 1e6))
                                .unwrap_or_else(|| "?".into()),
                            events.join(", ")
                        ));
                    }
                    None => lines.push("no audit record of the replayed request".into()),
                }
                push(
                    &mut report,
                    "anomalies raised by the audit layer",
                    lines,
                    wanted.iter().all(|k| has(*k)) && replay_record.is_some(),
                );
            }
            Ok::<(), BoxError>(())
        }
        .await;

        api_task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        outcome?;
        Ok(report)
    }

    /// Runs `futures` concurrently and collects their outputs in order.
    async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            if let Ok(v) = h.await {
                out.push(v);
            }
        }
        out
    }
}
