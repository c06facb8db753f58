//! Client half: single-flight refresh, refresh ahead of expiry, backoff, invalid_grant,
//! rotation (with a crash test that kills a child process mid-rotation), the OAuth refresh
//! grant over real HTTP, and BearerLayer's one-shot replay.

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use portcullis_token::{
    BearerLayer, TokenSource,
    bearer::ReplayBody,
    secret::{FileKey, FileStore, MemoryStore, SecretStore},
    token::{ClientAuth, OAuthRefresh, RefreshError, TokenError, TokenResponse, TokenSet},
};
use secrecy::{ExposeSecret, SecretString};
use tower::{ServiceBuilder, ServiceExt, service_fn};

type Counter = Arc<AtomicUsize>;

/// A refresher that counts calls, takes `delay` and hands out `at-N` / `rt-N`.
fn counting_refresher(
    calls: Counter,
    delay: Duration,
    lifetime: Duration,
) -> impl Fn(SecretString) -> Pin<Box<dyn Future<Output = Result<TokenResponse, RefreshError>> + Send>>
+ Send
+ Sync
+ 'static {
    move |_rt: SecretString| {
        let calls = calls.clone();
        Box::pin(async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(delay).await;
            Ok(TokenResponse::new(format!("at-{n}"), Some(lifetime))
                .with_refresh_token(format!("rt-{n}")))
        })
    }
}

async fn seeded<R: portcullis_token::Refresh>(
    refresher: R,
    store: MemoryStore,
    access: Option<(&str, Duration)>,
) -> TokenSource<R, MemoryStore> {
    let source = TokenSource::builder(refresher, store)
        .refresh_margin(Duration::from_secs(60))
        .min_validity(Duration::from_secs(10))
        .backoff(Duration::from_secs(2), Duration::from_secs(60))
        .load()
        .await
        .unwrap();
    let set = match access {
        Some((at, life)) => TokenSet::new(at, life, Some("rt-0".into())),
        None => TokenSet::from_refresh_token("rt-0"),
    };
    source.seed(set).await.unwrap();
    source
}

fn echo_auth() -> impl tower::Service<
    Request<ReplayBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| {
                assert!(v.is_sensitive(), "authorization must be marked sensitive");
                v.to_str().unwrap().to_owned()
            })
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(auth))))
    })
}

#[tokio::test(start_paused = true)]
async fn thousand_concurrent_requests_on_an_expired_token_cause_exactly_one_refresh() {
    let calls = Counter::default();
    let source = seeded(
        counting_refresher(
            calls.clone(),
            Duration::from_millis(200),
            Duration::from_secs(600),
        ),
        MemoryStore::new(),
        Some(("at-expired", Duration::from_secs(0))),
    )
    .await;
    let svc = ServiceBuilder::new()
        .layer(BearerLayer::new(source.clone()))
        .service(echo_auth());
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let resp = svc
                .oneshot(Request::new(Full::new(Bytes::new())))
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "Bearer at-1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_in_the_background_ahead_of_expiry() {
    let calls = Counter::default();
    let source = seeded(
        counting_refresher(
            calls.clone(),
            Duration::from_millis(100),
            Duration::from_secs(120),
        ),
        MemoryStore::new(),
        Some(("at-0", Duration::from_secs(120))),
    )
    .await;
    // Fresh: served from cache, no refresh.
    assert_eq!(source.token().await.unwrap().expose(), "at-0");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(source.token().await.unwrap().expose(), "at-0");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Inside the 60 s margin: the still-valid token is served at once and one background
    // refresh starts, however many callers come.
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..50 {
        assert_eq!(source.token().await.unwrap().expose(), "at-0");
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(source.token().await.unwrap().expose(), "at-1");
    // Below the minimum validity callers wait for the refresh instead of getting a token
    // about to expire.
    tokio::time::advance(Duration::from_secs(115)).await;
    assert_eq!(source.token().await.unwrap().expose(), "at-2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn failed_refresh_backs_off_instead_of_storming_the_endpoint() {
    let calls = Counter::default();
    let c = calls.clone();
    let refresher = move |_rt: SecretString| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Err::<TokenResponse, _>(RefreshError::Endpoint {
                status: 503,
                error: None,
            })
        }
    };
    let source = seeded(refresher, MemoryStore::new(), None).await;
    let err = source.token().await.unwrap_err();
    assert!(
        matches!(
            err,
            TokenError::Refresh(RefreshError::Endpoint { status: 503, .. })
        ),
        "{err}"
    );
    for _ in 0..100 {
        let err = source.token().await.unwrap_err();
        assert!(matches!(err, TokenError::BackingOff { .. }), "{err}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Backoff starts at 2 s (with jitter: between 1 and 2 s).
    tokio::time::advance(Duration::from_millis(2001)).await;
    assert!(source.token().await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Then doubles: 2 to 4 s; nothing before 2 s.
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert!(matches!(
        source.token().await,
        Err(TokenError::BackingOff { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn invalid_grant_clears_stored_tokens_and_requires_reauthentication() {
    let calls = Counter::default();
    let c = calls.clone();
    let refresher = move |_rt: SecretString| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Err::<TokenResponse, _>(RefreshError::InvalidGrant)
        }
    };
    let store = MemoryStore::new();
    let source = seeded(refresher, store.clone(), None).await;
    assert!(store.get("portcullis.token").await.unwrap().is_some());
    let err = source.token().await.unwrap_err();
    assert!(matches!(err, TokenError::ReauthenticationRequired), "{err}");
    assert!(err.requires_reauthentication());
    assert_eq!(store.get("portcullis.token").await.unwrap(), None);
    // No loop: further calls do not hit the endpoint.
    for _ in 0..10 {
        assert!(matches!(
            source.token().await,
            Err(TokenError::ReauthenticationRequired)
        ));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // After a new login, the source works again.
    source
        .seed(TokenSet::new("at-new", Duration::from_secs(600), None))
        .await
        .unwrap();
    assert_eq!(source.token().await.unwrap().expose(), "at-new");
}

#[tokio::test]
async fn rotated_refresh_tokens_are_persisted_and_used_by_the_next_start() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    let n = Counter::default();
    let refresher = move |rt: SecretString| {
        let s = s.clone();
        let n = n.clone();
        async move {
            s.lock().unwrap().push(rt.expose_secret().to_owned());
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, RefreshError>(
                TokenResponse::new(format!("at-{i}"), Some(Duration::from_secs(1)))
                    .with_refresh_token(format!("rt-{i}")),
            )
        }
    };
    let store = MemoryStore::new();
    let source = seeded(refresher.clone(), store.clone(), None).await;
    assert_eq!(source.token().await.unwrap().expose(), "at-1");
    // 1 s lifetime is below the minimum validity: the next call refreshes again.
    assert_eq!(source.token().await.unwrap().expose(), "at-2");
    let record = store.get("portcullis.token").await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(record.expose()).unwrap();
    assert_eq!(json["refresh_token"], "rt-2");
    assert_eq!(json["access_token"], "at-2");
    drop(source);
    // A new process loads the rotated token.
    let restarted = TokenSource::builder(refresher, store).load().await.unwrap();
    assert_eq!(restarted.token().await.unwrap().expose(), "at-3");
    assert_eq!(*seen.lock().unwrap(), vec!["rt-0", "rt-1", "rt-2"]);
}

/// A body of unknown length: cannot be buffered, so cannot be replayed.
struct Unsized(Option<Bytes>);

impl Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
}

/// A server that rejects `at-0` with 401 invalid_token and echoes the body otherwise.
fn rejecting_server<B>(
    hits: Counter,
) -> impl tower::Service<
    Request<ReplayBody<B>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<portcullis_token::BoxError>,
{
    service_fn(move |req: Request<ReplayBody<B>>| {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            let auth = req.headers()[header::AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            if auth == "Bearer at-0" {
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"api\", error=\"invalid_token\""
                        .parse()
                        .unwrap(),
                );
                return Ok::<_, Infallible>(resp);
            }
            Ok(Response::new(Full::new(Bytes::from(format!(
                "{auth}|{}",
                String::from_utf8_lossy(&body)
            )))))
        }
    })
}

#[tokio::test]
async fn a_401_invalid_token_refreshes_once_and_replays_the_request_once() {
    let calls = Counter::default();
    let hits = Counter::default();
    let source = seeded(
        counting_refresher(calls.clone(), Duration::ZERO, Duration::from_secs(600)),
        MemoryStore::new(),
        Some(("at-0", Duration::from_secs(600))),
    )
    .await;
    let svc = ServiceBuilder::new()
        .layer(BearerLayer::new(source.clone()))
        .service(rejecting_server::<Full<Bytes>>(hits.clone()));
    let resp = svc
        .clone()
        .oneshot(
            Request::post("http://api.test/orders")
                .body(Full::new(Bytes::from_static(b"{\"qty\":1}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "Bearer at-1|{\"qty\":1}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // An empty-bodied request on the fast path replays too.
    source
        .seed(TokenSet::new(
            "at-0",
            Duration::from_secs(600),
            Some("rt".into()),
        ))
        .await
        .unwrap();
    let resp = svc
        .clone()
        .oneshot(
            Request::get("http://api.test/me")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn replay_happens_at_most_once_even_if_the_new_token_is_rejected_too() {
    let calls = Counter::default();
    let hits = Counter::default();
    let h = hits.clone();
    let always_401 = service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
        h.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::UNAUTHORIZED;
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer error=\"invalid_token\"".parse().unwrap(),
            );
            Ok::<_, Infallible>(resp)
        }
    });
    let source = seeded(
        counting_refresher(calls.clone(), Duration::ZERO, Duration::from_secs(600)),
        MemoryStore::new(),
        Some(("at-0", Duration::from_secs(600))),
    )
    .await;
    let resp = ServiceBuilder::new()
        .layer(BearerLayer::new(source))
        .service(always_401)
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_non_replayable_body_is_not_replayed_but_the_next_request_gets_a_new_token() {
    let calls = Counter::default();
    let hits = Counter::default();
    let source = seeded(
        counting_refresher(calls.clone(), Duration::ZERO, Duration::from_secs(600)),
        MemoryStore::new(),
        Some(("at-0", Duration::from_secs(600))),
    )
    .await;
    let svc = ServiceBuilder::new()
        .layer(BearerLayer::new(source.clone()))
        .service(rejecting_server::<Unsized>(hits.clone()));
    let resp = svc
        .clone()
        .oneshot(
            Request::post("http://api.test/upload")
                .body(Unsized(Some(Bytes::from_static(b"stream"))))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "a streamed body must not be sent twice"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let resp = svc
        .oneshot(
            Request::post("http://api.test/upload")
                .body(Unsized(Some(Bytes::from_static(b"again"))))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "Bearer at-1|again"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A known-size body over the cap is not buffered either.
    source
        .seed(TokenSet::new(
            "at-0",
            Duration::from_secs(600),
            Some("rt".into()),
        ))
        .await
        .unwrap();
    let hits2 = Counter::default();
    let resp = ServiceBuilder::new()
        .layer(BearerLayer::new(source).replay_body_cap(4))
        .service(rejecting_server::<Full<Bytes>>(hits2.clone()))
        .oneshot(
            Request::post("http://api.test/x")
                .body(Full::new(Bytes::from_static(b"12345")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(hits2.load(Ordering::SeqCst), 1);
}

/// A token endpoint on loopback that rotates refresh tokens, accepting the current one and
/// the one just used (a grace window for a client that died before persisting).
#[derive(Default)]
struct Endpoint {
    current: String,
    previous: Option<String>,
    issued: usize,
    forms: Vec<HashMap<String, String>>,
    auth: Vec<Option<String>>,
}

async fn token_endpoint(state: Arc<Mutex<Endpoint>>, lifetime: u64) -> testkit::server::TestServer {
    testkit::server::TestServer::http_with(move |req: Request<hyper::body::Incoming>| {
        let state = state.clone();
        async move {
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
            let mut st = state.lock().unwrap();
            st.forms.push(form.clone());
            st.auth.push(auth);
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let ok = form.get("grant_type").map(String::as_str) == Some("refresh_token")
                && (rt == st.current || st.previous.as_deref() == Some(rt.as_str()));
            if !ok {
                return Response::builder()
                    .status(400)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(
                        b"{\"error\":\"invalid_grant\",\"error_description\":\"refresh token reused\"}",
                    )))
                    .unwrap();
            }
            st.issued += 1;
            let n = st.issued;
            st.previous = Some(rt);
            st.current = format!("rt-{n}");
            let body = format!(
                "{{\"access_token\":\"at-{n}\",\"token_type\":\"Bearer\",\"expires_in\":{lifetime},\"refresh_token\":\"rt-{n}\"}}"
            );
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
    })
    .await
}

fn http_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn oauth_refresh_grant_over_real_http_rotates_and_maps_invalid_grant() {
    let state = Arc::new(Mutex::new(Endpoint {
        current: "rt-0".into(),
        ..Default::default()
    }));
    let server = token_endpoint(state.clone(), 600).await;
    let refresher = OAuthRefresh::new(
        http_client(),
        format!("http://127.0.0.1:{}/oauth/token", server.port())
            .parse()
            .unwrap(),
        ClientAuth::Basic {
            client_id: "mobile app".into(),
            client_secret: "s3cr3t:+".into(),
        },
    )
    .scope("read");
    let store = MemoryStore::new();
    let source = TokenSource::builder(refresher.clone(), store.clone())
        .load()
        .await
        .unwrap();
    source
        .seed(TokenSet::from_refresh_token("rt-0"))
        .await
        .unwrap();
    assert_eq!(source.token().await.unwrap().expose(), "at-1");
    {
        let st = state.lock().unwrap();
        let form = &st.forms[0];
        assert_eq!(form["grant_type"], "refresh_token");
        assert_eq!(form["refresh_token"], "rt-0");
        assert_eq!(form["scope"], "read");
        assert!(!form.contains_key("client_secret"));
        // client_secret_basic: id and secret are form-encoded before base64 (RFC 6749 §2.3.1).
        use base64::Engine as _;
        let expected = base64::engine::general_purpose::STANDARD.encode("mobile+app:s3cr3t%3A%2B");
        assert_eq!(
            st.auth[0].as_deref(),
            Some(format!("Basic {expected}").as_str())
        );
    }
    // Revocation on the server side: the stored refresh token is no longer accepted.
    state.lock().unwrap().current = "revoked".into();
    state.lock().unwrap().previous = None;
    let at1 = source.token().await.unwrap();
    let err = source.token_after_rejection(&at1).await.unwrap_err();
    assert!(matches!(err, TokenError::ReauthenticationRequired), "{err}");
    assert_eq!(store.get("portcullis.token").await.unwrap(), None);
}

const CRASH_DIR: &str = "PORTCULLIS_TOKEN_CRASH_DIR";
const CRASH_URL: &str = "PORTCULLIS_TOKEN_CRASH_URL";
const CRASH_KEY: [u8; 32] = [0x42; 32];

/// Child half of the crash test, not a test itself: the crash test re-runs this binary (its
/// own test only, with [`CRASH_DIR`] and [`CRASH_URL`] set) and lands here, rotating tokens in
/// a loop until the parent kills it.
async fn crash_child_process(dir: String, url: String) -> ! {
    let store = FileStore::open(
        std::path::Path::new(&dir).join("tokens.pcs"),
        FileKey::raw(CRASH_KEY),
    )
    .await
    .unwrap();
    let refresher = OAuthRefresh::new(
        http_client(),
        url.parse().unwrap(),
        ClientAuth::Public {
            client_id: "crash-test".into(),
        },
    );
    let source = TokenSource::builder(refresher, store).load().await.unwrap();
    loop {
        // Every token lives 1 s, below the minimum validity: each call rotates.
        source.token().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_process_mid_rotation_leaves_a_usable_refresh_token() {
    if let (Ok(dir), Ok(url)) = (std::env::var(CRASH_DIR), std::env::var(CRASH_URL)) {
        crash_child_process(dir, url).await;
    }
    let dir = std::env::temp_dir().join(format!("portcullis-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens.pcs");
    let _ = std::fs::remove_file(&path);
    let state = Arc::new(Mutex::new(Endpoint {
        current: "rt-0".into(),
        ..Default::default()
    }));
    let server = token_endpoint(state.clone(), 1).await;
    let url = format!("http://127.0.0.1:{}/token", server.port());
    {
        let store = FileStore::open(&path, FileKey::raw(CRASH_KEY))
            .await
            .unwrap();
        let seed = TokenSource::builder(
            |_rt: SecretString| async { Err::<TokenResponse, _>(RefreshError::InvalidGrant) },
            store,
        )
        .load()
        .await
        .unwrap();
        seed.seed(TokenSet::from_refresh_token("rt-0"))
            .await
            .unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    for round in 0..8u64 {
        let start = state.lock().unwrap().issued;
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "killing_the_process_mid_rotation_leaves_a_usable_refresh_token",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR, &dir)
            .env(CRASH_URL, &url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let the child rotate a few times, then kill it at a different point of its
        // rotate-persist cycle each round.
        let target = start + 3 + (round as usize % 3);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while state.lock().unwrap().issued < target {
            assert!(
                std::time::Instant::now() < deadline,
                "child made no progress"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(Duration::from_micros(round * 350)).await;
        child.kill().unwrap();
        child.wait().unwrap();

        // The file opens (never torn) and its refresh token is one the server accepts.
        let store = FileStore::open(&path, FileKey::raw(CRASH_KEY))
            .await
            .unwrap();
        let record = store
            .get("portcullis.token")
            .await
            .unwrap()
            .expect("tokens survived");
        let json: serde_json::Value = serde_json::from_slice(record.expose()).unwrap();
        let stored = json["refresh_token"].as_str().unwrap().to_owned();
        {
            let st = state.lock().unwrap();
            assert!(
                stored == st.current || st.previous.as_deref() == Some(stored.as_str()),
                "round {round}: stored refresh token is neither the old nor the new one"
            );
        }
        // And the next start can refresh with it.
        let refresher = OAuthRefresh::new(
            http_client(),
            url.parse().unwrap(),
            ClientAuth::Public {
                client_id: "crash-test".into(),
            },
        );
        let source = TokenSource::builder(refresher, store).load().await.unwrap();
        source.token().await.unwrap();
    }
    assert!(state.lock().unwrap().issued >= 8 * 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A token endpoint in memory that rotates refresh tokens and answers `invalid_grant` to any
/// refresh token but the current one.
#[derive(Default)]
struct Rotating {
    current: String,
    issued: usize,
    rejected: usize,
}

/// A refresher against `server`; its first request waits for `gate` (when given) before it
/// lands, as on a slow network.
fn rotating_refresher(
    server: Arc<Mutex<Rotating>>,
    lifetime: Duration,
    gate: Option<Arc<tokio::sync::Notify>>,
) -> impl Fn(SecretString) -> Pin<Box<dyn Future<Output = Result<TokenResponse, RefreshError>> + Send>>
+ Send
+ Sync
+ 'static {
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    move |rt: SecretString| {
        let server = server.clone();
        let gate = gate.clone().filter(|_| first.swap(false, Ordering::SeqCst));
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            let mut st = server.lock().unwrap();
            if rt.expose_secret() != st.current {
                st.rejected += 1;
                return Err(RefreshError::InvalidGrant);
            }
            st.issued += 1;
            let n = st.issued;
            st.current = format!("rt-{n}");
            Ok(TokenResponse::new(format!("at-{n}"), Some(lifetime))
                .with_refresh_token(format!("rt-{n}")))
        })
    }
}

/// A store whose `lock_entry` holds nothing (the trait's default), like a store shared with a
/// process its lock does not reach.
#[derive(Clone)]
struct NoEntryLock(MemoryStore);

impl SecretStore for NoEntryLock {
    async fn get(
        &self,
        name: &str,
    ) -> Result<Option<portcullis_token::SecretValue>, portcullis_token::secret::StoreError> {
        self.0.get(name).await
    }
    async fn put(
        &self,
        name: &str,
        value: portcullis_token::SecretValue,
    ) -> Result<(), portcullis_token::secret::StoreError> {
        self.0.put(name, value).await
    }
    async fn delete(&self, name: &str) -> Result<bool, portcullis_token::secret::StoreError> {
        self.0.delete(name).await
    }
    async fn compare_and_swap(
        &self,
        name: &str,
        expected: Option<&portcullis_token::SecretValue>,
        new: Option<portcullis_token::SecretValue>,
    ) -> Result<bool, portcullis_token::secret::StoreError> {
        self.0.compare_and_swap(name, expected, new).await
    }
}

fn stored_refresh_token(record: &portcullis_token::SecretValue) -> String {
    let json: serde_json::Value = serde_json::from_slice(record.expose()).unwrap();
    json["refresh_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_source_adopts_the_record_another_source_rotated_instead_of_reusing_its_token() {
    let server = Arc::new(Mutex::new(Rotating {
        current: "rt-0".into(),
        ..Default::default()
    }));
    let store = MemoryStore::new();
    let life = Duration::from_secs(600);
    let a = TokenSource::builder(
        rotating_refresher(server.clone(), life, None),
        store.clone(),
    )
    .load()
    .await
    .unwrap();
    a.seed(TokenSet::new("at-0", Duration::ZERO, Some("rt-0".into())))
        .await
        .unwrap();
    // B started from the same record (another process reading the same file).
    let b = TokenSource::builder(
        rotating_refresher(server.clone(), life, None),
        store.clone(),
    )
    .load()
    .await
    .unwrap();
    assert_eq!(a.token().await.unwrap().expose(), "at-1");
    // B's own token is expired and its refresh token rt-0 is no longer current: it re-reads
    // the store and serves A's fresh token without asking the server.
    assert_eq!(b.token().await.unwrap().expose(), "at-1");
    let (issued, rejected) = {
        let st = server.lock().unwrap();
        (st.issued, st.rejected)
    };
    assert_eq!((issued, rejected), (1, 0));
    let record = store.get("portcullis.token").await.unwrap().unwrap();
    assert_eq!(stored_refresh_token(&record), "rt-1");
}

#[tokio::test]
async fn invalid_grant_after_a_concurrent_rotation_adopts_the_newer_record_and_deletes_nothing() {
    let server = Arc::new(Mutex::new(Rotating {
        current: "rt-0".into(),
        ..Default::default()
    }));
    let store = NoEntryLock(MemoryStore::new());
    let gate = Arc::new(tokio::sync::Notify::new());
    // Tokens expire at once, so every call refreshes.
    let a = TokenSource::builder(
        rotating_refresher(server.clone(), Duration::ZERO, None),
        store.clone(),
    )
    .load()
    .await
    .unwrap();
    a.seed(TokenSet::from_refresh_token("rt-0")).await.unwrap();
    let b = TokenSource::builder(
        rotating_refresher(server.clone(), Duration::ZERO, Some(gate.clone())),
        store.clone(),
    )
    .load()
    .await
    .unwrap();
    // B reads rt-0 and sends it; its request lands only after A has rotated rt-0 to rt-1.
    let b_call = tokio::spawn({
        let b = b.clone();
        async move { b.token().await.map(|t| t.expose().to_owned()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(a.token().await.unwrap().expose(), "at-1");
    gate.notify_one();
    // B's rt-0 is refused; B finds A's newer record, adopts it and refreshes with rt-1.
    assert_eq!(b_call.await.unwrap().unwrap(), "at-2");
    assert_eq!(server.lock().unwrap().rejected, 1);
    let record = store
        .get("portcullis.token")
        .await
        .unwrap()
        .expect("the newer record was not deleted");
    assert_eq!(stored_refresh_token(&record), "rt-2");
    // And A, in turn, follows B's rotation.
    assert_eq!(a.token().await.unwrap().expose(), "at-3");
}

#[tokio::test]
async fn a_record_removed_from_the_store_requires_reauthentication_until_a_new_login_lands() {
    let server = Arc::new(Mutex::new(Rotating {
        current: "rt-0".into(),
        ..Default::default()
    }));
    let store = MemoryStore::new();
    let source = TokenSource::builder(
        rotating_refresher(server.clone(), Duration::ZERO, None),
        store.clone(),
    )
    .load()
    .await
    .unwrap();
    source
        .seed(TokenSet::from_refresh_token("rt-0"))
        .await
        .unwrap();
    assert_eq!(source.token().await.unwrap().expose(), "at-1");
    // An operator (or another process whose refresh token was rejected) removes the record:
    // the tokens held in memory are not used any more.
    assert!(store.delete("portcullis.token").await.unwrap());
    let err = source.token().await.unwrap_err();
    assert!(matches!(err, TokenError::ReauthenticationRequired), "{err}");
    assert_eq!(server.lock().unwrap().issued, 1);
    assert_eq!(store.get("portcullis.token").await.unwrap(), None);
    // Another process signs in and stores a record: this source picks it up.
    let other = TokenSource::builder(
        rotating_refresher(server.clone(), Duration::ZERO, None),
        store.clone(),
    )
    .load()
    .await
    .unwrap();
    server.lock().unwrap().current = "rt-login".into();
    other
        .seed(TokenSet::from_refresh_token("rt-login"))
        .await
        .unwrap();
    assert_eq!(source.token().await.unwrap().expose(), "at-2");
}
