//! No secret in any Debug, Display, error or tracing output; the fuzz entry point survives a
//! corpus of tricky inputs.

use std::{
    convert::Infallible,
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use portcullis_token::{
    BearerLayer, TokenSource,
    bearer::ReplayBody,
    require::{Algorithm, JwtValidator, RequireBearerLayer, VerificationKey},
    secret::{FileKey, FileStore, KdfParams, MemoryStore, SecretStore, SecretValue},
    token::{ClientAuth, OAuthRefresh, TokenResponse, TokenSet},
};
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_debug_display_errors_or_tracing() {
    let capture = Capture::default();
    let c = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || c.clone())
        .with_ansi(false)
        .init();

    const AT: &str = "AT-SECRET-c0ffee";
    const RT: &str = "RT-SECRET-beef42";
    const RT2: &str = "RT-SECRET-rotated";
    const CLIENT_SECRET: &str = "CS-SECRET-d00d";
    const PASS: &str = "PASS-SECRET-hunter2";
    const VALUE: &str = "VAL-SECRET-42";
    let secrets = [AT, RT, RT2, CLIENT_SECRET, PASS, VALUE, "SECRET"];
    let mut seen: Vec<String> = Vec::new();

    // File store with a passphrase, and its errors.
    let dir = std::env::temp_dir().join(format!("portcullis-hygiene-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.pcs");
    let key = FileKey::passphrase(PASS)
        .with_kdf_params(portcullis_token::secret::danger::insecure_kdf_params());
    seen.push(format!("{key:?}"));
    let store = FileStore::open(&path, key).await.unwrap();
    store.put("v", SecretValue::from(VALUE)).await.unwrap();
    let value = store.get("v").await.unwrap().unwrap();
    seen.push(format!("{value:?} {store:?}"));
    let err = FileStore::open(
        &path,
        FileKey::passphrase(VALUE)
            .with_kdf_params(portcullis_token::secret::danger::insecure_kdf_params()),
    )
    .await
    .unwrap_err();
    seen.push(format!("{err} {err:?}"));

    // A token endpoint that echoes secrets in its error bodies and in a malformed success.
    let server = testkit::server::TestServer::http_with(|req: Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let form = String::from_utf8_lossy(&body).to_string();
        let (status, text) = if form.contains("RT-SECRET-beef42") {
            (200, format!("{{\"access_token\":\"{AT}\",\"token_type\":\"Bearer\",\"expires_in\":600,\"refresh_token\":\"{RT2}\"}}"))
        } else if form.contains("malformed") {
            (200, format!("{{\"access_token\": 5, \"leak\":\"{AT}{RT}\"}}"))
        } else if form.contains("server-error") {
            (500, format!("{{\"error\":\"{RT}\",\"detail\":\"{AT}\"}}"))
        } else {
            (400, format!("{{\"error\":\"invalid_grant\",\"error_description\":\"reused {RT2}\"}}"))
        };
        Response::builder().status(status).body(Full::new(Bytes::from(text))).unwrap()
    })
    .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let refresher = OAuthRefresh::new(
        client,
        format!("http://127.0.0.1:{}/token", server.port())
            .parse()
            .unwrap(),
        ClientAuth::Post {
            client_id: "app".into(),
            client_secret: CLIENT_SECRET.into(),
        },
    );
    seen.push(format!("{refresher:?}"));
    let memory = MemoryStore::new();
    let source = TokenSource::builder(refresher.clone(), memory.clone())
        .load()
        .await
        .unwrap();
    source.seed(TokenSet::from_refresh_token(RT)).await.unwrap();
    let token = source.token().await.unwrap();
    assert_eq!(token.expose(), AT);
    seen.push(format!("{token:?} {source:?} {memory:?}"));
    seen.push(format!(
        "{:?}",
        TokenSet::new(AT, Duration::from_secs(1), Some(RT.into()))
    ));
    seen.push(format!(
        "{:?}",
        TokenResponse::new(AT, None).with_refresh_token(RT)
    ));

    // Bearer injection: the request as the inner service sees it.
    let inner_debug = Arc::new(Mutex::new(String::new()));
    let d = inner_debug.clone();
    let svc = ServiceBuilder::new()
        .layer(BearerLayer::new(source.clone()))
        .service(service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
            *d.lock().unwrap() = format!("{req:?}");
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
        }));
    seen.push(format!("{svc:?}"));
    svc.oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    seen.push(inner_debug.lock().unwrap().clone());

    // Failures: malformed answer, server error, invalid_grant.
    for rt in ["malformed", "server-error", "revoked"] {
        let src = TokenSource::builder(refresher.clone(), MemoryStore::new())
            .load()
            .await
            .unwrap();
        src.seed(TokenSet::from_refresh_token(rt)).await.unwrap();
        let err = src.token().await.unwrap_err();
        seen.push(format!("{err} {err:?}"));
        seen.push(format!("{src:?}"));
    }

    // Server side: refused tokens are logged without their text.
    let secret = [9u8; 32];
    let validator = JwtValidator::builder()
        .issuer("iss")
        .audience("aud")
        .key(VerificationKey::hmac(Algorithm::HS256, &secret).unwrap())
        .build()
        .unwrap();
    let bad = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &serde_json::json!({"iss": "iss", "aud": "other", "exp": 4_000_000_000u64, "sub": AT}),
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap();
    let resp = ServiceBuilder::new()
        .layer(RequireBearerLayer::new(validator.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }))
        .oneshot(
            Request::builder()
                .header(header::AUTHORIZATION, format!("Bearer {bad}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let err = validator.validate(&bad).unwrap_err();
    seen.push(format!("{err} {err:?} {validator:?}"));

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("token.refresh"), "events were captured: {log}");
    assert!(log.contains("bearer.validate"));
    assert!(log.contains("invalid_grant"));
    let jwt_parts: Vec<&str> = bad.split('.').collect();
    for s in secrets.iter().copied().chain(jwt_parts.iter().copied()) {
        assert!(!log.contains(s), "secret {s:?} in tracing output:\n{log}");
        for text in &seen {
            assert!(!text.contains(s), "secret {s:?} in {text}");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn fuzz_entry_survives_a_corpus_of_tricky_inputs() {
    let mut corpus: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"Bearer".to_vec(),
        b"Bearer ".to_vec(),
        b"bearer abc".to_vec(),
        b"Bearer abc===".to_vec(),
        b"Bearer a=b".to_vec(),
        b"Bearer \xff\xfe".to_vec(),
        b"Basic realm=\"x\", Bearer error=\"invalid_token\"".to_vec(),
        b"Bearer realm=\"unterminated".to_vec(),
        b"Bearer error=\"a\\".to_vec(),
        b",,,,,,".to_vec(),
        b"Bearer ,error=,=,realm".to_vec(),
        b"Negotiate abc==, Bearer scope=\"a b\"".to_vec(),
        b"eyJhbGciOiJub25lIn0.e30.".to_vec(),
        b"eyJhbGciOiJIUzI1NiJ9.e30.sig".to_vec(),
        b"a.b.c.d".to_vec(),
        b"....".to_vec(),
        b"{\"access_token\":\"x\",\"token_type\":\"bearer\",\"expires_in\":-1}".to_vec(),
        b"{\"access_token\":\"x\",\"token_type\":\"bearer\",\"expires_in\":\"99999999999999999999\"}".to_vec(),
        b"{\"access_token\":\"x\",\"token_type\":\"bearer\",\"expires_in\":1e300}".to_vec(),
        b"{\"error\":\"invalid_grant\"}".to_vec(),
        b"{\"error\":\"\\u0000\\n\"}".to_vec(),
        b"{\"v\":1,\"expires_at\":18446744073709551615}".to_vec(),
        b"PCSTORE1".to_vec(),
        b"PCSTORE1\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        b"PCSTORE1\x00".to_vec(),
        b"PCSTORE2".to_vec(),
        b"\xff\xff\xff\xff".to_vec(),
        b"\x00\x00\x00\x02\x00\x01a\x00\x00\x00\x01b".to_vec(),
        b"\x00\x00\x00\x01\xff\xffa".to_vec(),
        vec![b'a'; 20_000],
        [b"Bearer ".as_slice(), &vec![b'x'; 9000]].concat(),
        vec![b'"'; 5000],
        vec![b','; 9000],
    ];
    // Every prefix of a real JWT and of a challenge.
    let jwt = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5mdXp6IiwiYXVkIjoiZnV6eiIsImV4cCI6NDAwMDAwMDAwMH0.c2ln";
    for i in 0..jwt.len() {
        corpus.push(jwt.as_bytes()[..i].to_vec());
    }
    let challenge = b"Bearer realm=\"api\", error=\"invalid_token\", scope=\"a b\"";
    for i in 0..challenge.len() {
        corpus.push(challenge[..i].to_vec());
    }
    for input in &corpus {
        portcullis_token::fuzz::parsers(input);
    }
    // The parsers agree with the RFC on the well-formed cases.
    let c = portcullis_token::header::parse_www_authenticate(
        b"Basic realm=\"x\", Bearer realm=\"api\", error=\"invalid_token\"",
    )
    .unwrap();
    assert!(c.is_invalid_token());
    assert_eq!(c.realm.as_deref(), Some("api"));
    assert!(portcullis_token::header::parse_www_authenticate(b"Basic realm=\"x\"").is_none());
    assert_eq!(
        portcullis_token::header::parse_authorization(b"bEaReR  abc.def-_~+/==").unwrap(),
        "abc.def-_~+/=="
    );
}
