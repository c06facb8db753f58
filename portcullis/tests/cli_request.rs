//! `portcullis request`, run as the real binary against TLS servers on loopback.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use portcullis::attest::{StaticKeys, VerifiedSignature, VerifySignatureLayer, VerifyingKey};
use portcullis::token::require::{Algorithm, JwtValidator, VerificationKey};
use portcullis::token::secret::KdfParams;
use portcullis::token::token::{TokenResponse, TokenSet};
use portcullis::token::{
    FileKey, FileStore, RequireBearerLayer, SecretStore, SecretValue, TokenSource, VerifiedClaims,
};
use testkit::pki::{KeyAlg, LeafSpec, TestPki};
use testkit::server::{TestResponse, TestServer, server_config};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const PASSPHRASE: &str = "cli request test passphrase";
const JWT_SECRET: [u8; 32] = [7; 32];

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-cli-request-{tag}-{}-{}",
            std::process::id(),
            testkit::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p.display().to_string()
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .arg("request")
        .args(args)
        .env("PORTCULLIS_PASSPHRASE", PASSPHRASE)
        .output()
        .await
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn text(status: StatusCode, body: impl Into<String>) -> TestResponse {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(sub: &str, jti: &str, lifetime: u64) -> String {
    let claims = serde_json::json!({
        "iss": "https://login.test", "aud": "orders", "sub": sub, "jti": jti,
        "iat": now(), "exp": now() + lifetime,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&JWT_SECRET),
    )
    .unwrap()
}

#[tokio::test]
async fn pinned_get_prints_the_body_and_verbose_outcome() {
    let pki = TestPki::new();
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    let dir = TempDir::new("get");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let leaf_pin = pki.leaf.spki_pin();
    let backup = pki.root.spki_pin();
    let url = server.url("/hello");

    let out = run(&[&url, "--ca-file", &ca, "--pin", &leaf_pin, "--pin", &backup]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello");
    assert_eq!(stderr(&out), "", "quiet without -v");

    let out = run(&[&url, "--ca-file", &ca, "--pin", &leaf_pin, "-v"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "pin: {leaf_pin} matched at leaf (pattern localhost)"
        )),
        "{err}"
    );
    assert!(err.contains("signature: not signed"), "{err}");
    assert!(
        err.contains("< HTTP/2 200 OK") || err.contains("< HTTP/1.1 200 OK"),
        "{err}"
    );
    assert!(err.contains("< content-length: 5"), "{err}");

    // --connect-to: dial the server while validating and pinning for the URL's host.
    let out = run(&[
        "https://localhost:1/hello",
        "--connect-to",
        &server.addr().to_string(),
        "--ca-file",
        &ca,
        "--pin",
        &leaf_pin,
    ])
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello");
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn pin_mismatch_exits_1_before_any_request_and_is_not_retried() {
    let pki = TestPki::new();
    let other = TestPki::named("Other");
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    let dir = TempDir::new("mismatch");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let out = run(&[
        &server.url("/"),
        "--ca-file",
        &ca,
        "--pin",
        &other.leaf.spki_pin(),
    ])
    .await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("certificate pinning failure for localhost"),
        "{err}"
    );
    assert!(
        err.contains(&pki.leaf.spki_pin()),
        "lists the peer's pins: {err}"
    );
    assert!(
        err.contains(&other.leaf.spki_pin()),
        "lists the configured pins: {err}"
    );
    assert_eq!(stdout(&out), "");
    assert_eq!(server.requests(), 0);
    assert_eq!(
        server.accepted(),
        1,
        "a pin failure is final: one connection"
    );
}

#[tokio::test]
async fn tls_and_connection_failures_exit_2() {
    let pki = TestPki::new();
    let stranger = TestPki::named("Stranger");
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    let dir = TempDir::new("tls");
    let wrong_ca = dir.write("ca.pem", stranger.root.cert_pem());
    let out = run(&[&server.url("/"), "--ca-file", &wrong_ca]).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not chain to a trusted root (unknown issuer)")
            && !stderr(&out).contains("UnknownIssuer"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.requests(), 0);

    let closed = format!("https://localhost:{}/", testkit::free_port());
    let out = run(&[&closed, "--ca-file", &wrong_ca]).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("connection failed"),
        "{}",
        stderr(&out)
    );
    // In words: no hyper wrapper kind, no rustls enum names.
    assert!(!stderr(&out).contains("(Connect)"), "{}", stderr(&out));
}

#[tokio::test]
async fn other_http_status_exits_3_with_the_body() {
    let pki = TestPki::new();
    let server = TestServer::https_with(
        server_config(pki.server_chain(), pki.leaf.key_der()),
        |req| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            text(
                StatusCode::NOT_FOUND,
                format!("no such order: {}", String::from_utf8_lossy(&body)),
            )
        },
    )
    .await;
    let dir = TempDir::new("status");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let out = run(&[
        &server.url("/orders/9"),
        "--ca-file",
        &ca,
        "-X",
        "PUT",
        "-H",
        "content-type: text/plain",
        "-d",
        "nine",
    ])
    .await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(stdout(&out), "no such order: nine");
}

#[tokio::test]
async fn usage_errors_exit_64() {
    let dir = TempDir::new("usage");
    let pki = TestPki::new();
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let not_a_key = dir.write("key.pem", "not a key");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["http://localhost/"], "refusing to downgrade"),
        (
            vec!["https://localhost/", "--ca-file", &ca, "-H", "no colon"],
            "expected 'Name: value'",
        ),
        (
            vec![
                "https://localhost/",
                "--ca-file",
                &ca,
                "--pin",
                "sha256/short",
            ],
            "pin",
        ),
        (
            vec![
                "https://localhost/",
                "--ca-file",
                &ca,
                "--sign-key",
                &not_a_key,
            ],
            "--key-id",
        ),
        (
            vec![
                "https://localhost/",
                "--ca-file",
                &ca,
                "--sign-key",
                &not_a_key,
                "--key-id",
                "k",
            ],
            "--sign-key",
        ),
        (
            vec![
                "https://localhost/",
                "--ca-file",
                &ca,
                "--token-file",
                "/nonexistent/x.pcs",
                "--token-name",
                "t",
            ],
            "no such store",
        ),
        (
            vec!["https://localhost/", "-X", "BAD METHOD"],
            "not a valid HTTP method",
        ),
    ];
    for (args, needle) in cases {
        let out = run(&args).await;
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

/// A TLS server that verifies RFC 9421 signatures and answers with the verified key id.
async fn verifying_server(pki: &TestPki, keys: StaticKeys) -> TestServer {
    let verify = VerifySignatureLayer::builder(keys).build().unwrap();
    let stack = ServiceBuilder::new().layer(verify).service(service_fn(
        |req: Request<Full<Bytes>>| async move {
            let proof = req.extensions().get::<VerifiedSignature>().cloned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>(text(
                StatusCode::OK,
                format!(
                    "verified {} {} body={}",
                    proof.as_ref().map(|p| p.keyid()).unwrap_or("-"),
                    proof.as_ref().map(|p| p.alg().as_str()).unwrap_or("-"),
                    String::from_utf8_lossy(&body)
                ),
            ))
        },
    ));
    TestServer::https_with(
        server_config(pki.server_chain(), pki.leaf.key_der()),
        move |req: Request<Incoming>| {
            let svc = stack.clone();
            async move { svc.oneshot(req).await.unwrap() }
        },
    )
    .await
}

#[tokio::test]
async fn signed_requests_are_verified_by_the_server_for_each_algorithm() {
    let pki = TestPki::new();
    let dir = TempDir::new("sign");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let ed = testkit::pki::self_signed(&LeafSpec {
        alg: KeyAlg::Ed25519,
        ..LeafSpec::client("device-ed")
    });
    let ec = testkit::pki::self_signed(&LeafSpec::client("device-ec"));
    let ed_pem = dir.write("ed.pem", ed.key_pem());
    let ec_pem = dir.write("ec.pem", ec.key_pem());
    let hmac_secret = [0x42u8; 32];
    let hmac_file = dir.write("hmac.key", hmac_secret);
    let public = |pem: &str| {
        portcullis::attest::SigningKey::from_pem("x", pem)
            .unwrap()
            .verifying_key()
    };
    let keys = StaticKeys::new()
        .with("device-ed", public(&ed.key_pem()))
        .with("device-ec", public(&ec.key_pem()))
        .with(
            "device-hmac",
            VerifyingKey::hmac_sha256(&secrecy::SecretSlice::from(hmac_secret.to_vec())).unwrap(),
        );
    let server = verifying_server(&pki, keys).await;
    let url = server.url("/v1/transfer");

    for (key, keyid, alg) in [
        (&ed_pem, "device-ed", Some("ed25519")),
        (&ec_pem, "device-ec", None),
        (&hmac_file, "device-hmac", Some("hmac-sha256")),
    ] {
        let mut args = vec![
            url.as_str(),
            "--ca-file",
            &ca,
            "-d",
            r#"{"to":"bob"}"#,
            "-H",
            "content-type: application/json",
            "--sign-key",
            key,
            "--key-id",
            keyid,
            "-v",
        ];
        if let Some(alg) = alg {
            args.extend(["--alg", alg]);
        }
        let out = run(&args).await;
        assert_eq!(code(&out), 0, "{keyid}: {}", stderr(&out));
        let expected_alg = match keyid {
            "device-ed" => "ed25519",
            "device-ec" => "ecdsa-p256-sha256",
            _ => "hmac-sha256",
        };
        assert_eq!(
            stdout(&out),
            format!(r#"verified {keyid} {expected_alg} body={{"to":"bob"}}"#)
        );
        let err = stderr(&out);
        assert!(
            err.contains("signature sent: signature-input: sig1=("),
            "{err}"
        );
        assert!(err.contains("\"content-digest\""), "{err}");
        assert!(err.contains(&format!("keyid=\"{keyid}\"")), "{err}");
        assert!(err.contains(&format!("alg=\"{expected_alg}\"")), "{err}");
    }

    // Unsigned, or signed with a key the server does not know: 401, exit 3.
    let out = run(&[&url, "--ca-file", &ca]).await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = run(&[
        &url,
        "--ca-file",
        &ca,
        "--sign-key",
        &ed_pem,
        "--key-id",
        "device-ec",
    ])
    .await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    // An algorithm that does not match the key is a usage error.
    let out = run(&[
        &url,
        "--ca-file",
        &ca,
        "--sign-key",
        &ed_pem,
        "--key-id",
        "device-ed",
        "--alg",
        "ecdsa-p256-sha256",
    ])
    .await;
    assert_eq!(code(&out), 64, "{}", stderr(&out));
}

/// A TLS API that requires a valid bearer JWT and answers with its subject and `jti`.
async fn bearer_api(pki: &TestPki) -> TestServer {
    let validator = JwtValidator::builder()
        .issuer("https://login.test")
        .audience("orders")
        .key(VerificationKey::hmac(Algorithm::HS256, &JWT_SECRET).unwrap())
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(RequireBearerLayer::new(validator))
        .service(service_fn(|req: Request<Incoming>| async move {
            let c = req.extensions().get::<VerifiedClaims>();
            Ok::<_, Infallible>(text(
                StatusCode::OK,
                format!(
                    "{} {}",
                    c.and_then(|c| c.subject()).unwrap_or("-"),
                    c.and_then(|c| c.jti()).unwrap_or("-")
                ),
            ))
        }));
    TestServer::https_with(
        server_config(pki.server_chain(), pki.leaf.key_der()),
        move |req: Request<Incoming>| {
            let svc = stack.clone();
            async move { svc.oneshot(req).await.unwrap() }
        },
    )
    .await
}

async fn store(path: &std::path::Path) -> FileStore {
    FileStore::open(
        path,
        FileKey::passphrase(PASSPHRASE).with_kdf_params(KdfParams::new(8 * 1024, 1, 1).unwrap()),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn tokens_from_the_file_store_are_sent_as_bearer_and_refreshed_when_due() {
    let pki = TestPki::new();
    let api = bearer_api(&pki).await;
    let dir = TempDir::new("token");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let file = dir.path("app.pcs");
    let file_arg = file.display().to_string();

    // A plain access token stored with `portcullis secret put`.
    let st = store(&file).await;
    st.put(
        "plain",
        SecretValue::new(jwt("bob", "plain-1", 300).into_bytes()),
    )
    .await
    .unwrap();
    // A token record written by a TokenSource: valid for 5 minutes, and one due for refresh.
    let seeder = |name: &'static str| {
        let st = st.clone();
        async move {
            TokenSource::builder(
                |_rt: secrecy::SecretString| async {
                    Err::<TokenResponse, _>(portcullis::token::token::RefreshError::InvalidGrant)
                },
                st,
            )
            .name(name)
            .load()
            .await
            .unwrap()
        }
    };
    seeder("fresh")
        .await
        .seed(TokenSet::new(
            jwt("alice", "fresh-1", 300),
            Duration::from_secs(300),
            Some("rt-fresh".into()),
        ))
        .await
        .unwrap();
    seeder("due")
        .await
        .seed(TokenSet::new(
            jwt("carol", "due-1", 5),
            Duration::from_secs(5),
            Some("rt-due-0".into()),
        ))
        .await
        .unwrap();
    drop(st);

    let url = api.url("/me");
    let out = run(&[
        &url,
        "--ca-file",
        &ca,
        "--token-file",
        &file_arg,
        "--token-name",
        "plain",
        "-v",
    ])
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "bob plain-1");
    assert!(
        stderr(&out).contains("plain access token"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("eyJ"),
        "no token in the output: {}",
        stderr(&out)
    );

    let out = run(&[
        &url,
        "--ca-file",
        &ca,
        "--token-file",
        &file_arg,
        "--token-name",
        "fresh",
        "-v",
    ])
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "alice fresh-1");
    assert!(
        stderr(&out).contains("still valid, not refreshed"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("eyJ"),
        "no token in the output: {}",
        stderr(&out)
    );

    // Due for refresh without a token endpoint: stops before sending, says what to pass.
    let out = run(&[
        &url,
        "--ca-file",
        &ca,
        "--token-file",
        &file_arg,
        "--token-name",
        "due",
    ])
    .await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--token-endpoint"),
        "{}",
        stderr(&out)
    );

    // With the token endpoint: refreshed once, the rotated refresh token is saved, and the
    // next run uses the new access token without refreshing again.
    let refreshes = Arc::new(AtomicUsize::new(0));
    let seen = refreshes.clone();
    let endpoint = TestServer::https_with(
        server_config(pki.server_chain(), pki.leaf.key_der()),
        move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let form = req.into_body().collect().await.unwrap().to_bytes();
                let form = String::from_utf8_lossy(&form).into_owned();
                let n = seen.load(Ordering::SeqCst);
                if !form.contains(&format!("refresh_token=rt-due-{n}")) {
                    return text(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#);
                }
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                text(
                    StatusCode::OK,
                    format!(
                        r#"{{"access_token":"{}","token_type":"Bearer","expires_in":300,"refresh_token":"rt-due-{n}"}}"#,
                        jwt("carol", &format!("due-{}", n + 1), 300)
                    ),
                )
            }
        },
    )
    .await;
    let token_url = endpoint.url("/oauth/token");
    // The token endpoint (localhost, like the API) is pinned: the refresh token may go there.
    let pin = pki.root.spki_pin();
    let args = [
        url.as_str(),
        "--ca-file",
        &ca,
        "--pin",
        &pin,
        "--token-file",
        &file_arg,
        "--token-name",
        "due",
        "--token-endpoint",
        &token_url,
        "-v",
    ];
    let out = run(&args).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "carol due-2");
    assert!(
        stderr(&out).contains("refreshed through the token endpoint"),
        "{}",
        stderr(&out)
    );
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);

    let out = run(&args).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "carol due-2");
    assert!(
        stderr(&out).contains("still valid, not refreshed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);

    // A wrong passphrase is a usage error naming the problem, never a crash.
    let out = tokio::process::Command::new(BIN)
        .args([
            "request",
            &url,
            "--ca-file",
            &ca,
            "--token-file",
            &file_arg,
            "--token-name",
            "fresh",
        ])
        .env("PORTCULLIS_PASSPHRASE", "wrong")
        .output()
        .await
        .unwrap();
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert_eq!(api.requests(), 4, "requests that were sent");
}

#[tokio::test]
async fn policy_files_pin_the_host_and_report_only_mismatches_exit_1() {
    let pki = TestPki::new();
    let stranger = TestPki::named("Stranger");
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    let dir = TempDir::new("policy");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let enforce = dir.write(
        "enforce.toml",
        format!(
            "[[host]]\npattern = \"localhost\"\npins = [\"{}\", \"{}\"]\n",
            pki.root.spki_pin(),
            stranger.root.spki_pin()
        ),
    );
    let out = run(&[
        &server.url("/"),
        "--ca-file",
        &ca,
        "--policy",
        &enforce,
        "-v",
    ])
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("matched at root"), "{}", stderr(&out));

    let report_only = dir.write(
        "report.toml",
        format!(
            "[[host]]\npattern = \"localhost\"\nmode = \"report_only\"\npins = [\"{}\", \"{}\"]\n",
            stranger.root.spki_pin(),
            stranger.leaf.spki_pin()
        ),
    );
    let out = run(&[&server.url("/"), "--ca-file", &ca, "--policy", &report_only]).await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "hello",
        "report-only lets the request through"
    );
    assert!(stderr(&out).contains("report-only"), "{}", stderr(&out));
}

/// A token endpoint that counts the refresh requests it receives and answers each with a new
/// access token and a rotated refresh token (`rt-N`), if the one sent is the current one.
async fn token_endpoint(pki: &TestPki) -> (TestServer, Arc<AtomicUsize>) {
    let refreshes = Arc::new(AtomicUsize::new(0));
    let seen = refreshes.clone();
    let server = TestServer::https_with(
        server_config(pki.server_chain(), pki.leaf.key_der()),
        move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let form = req.into_body().collect().await.unwrap().to_bytes();
                let form = String::from_utf8_lossy(&form).into_owned();
                let n = seen.load(Ordering::SeqCst);
                if !form.contains(&format!("refresh_token=rt-{n}")) {
                    return text(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#);
                }
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                text(
                    StatusCode::OK,
                    format!(
                        r#"{{"access_token":"{}","token_type":"Bearer","expires_in":300,"refresh_token":"rt-{n}"}}"#,
                        jwt("dave", &format!("refreshed-{n}"), 300)
                    ),
                )
            }
        },
    )
    .await;
    (server, refreshes)
}

#[tokio::test]
async fn a_token_endpoint_not_covered_by_an_enforcing_pin_is_refused_before_anything_is_sent() {
    let pki = TestPki::new();
    let stranger = TestPki::named("Stranger");
    let api = bearer_api(&pki).await;
    let (endpoint, refreshes) = token_endpoint(&pki).await;
    let dir = TempDir::new("token-endpoint-pin");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let file = dir.path("app.pcs");
    let file_arg = file.display().to_string();
    let st = store(&file).await;
    TokenSource::builder(
        |_rt: secrecy::SecretString| async {
            Err::<TokenResponse, _>(portcullis::token::token::RefreshError::InvalidGrant)
        },
        st,
    )
    .name("due")
    .load()
    .await
    .unwrap()
    .seed(TokenSet::new(
        jwt("dave", "due-0", 5),
        Duration::from_secs(5),
        Some("rt-0".into()),
    ))
    .await
    .unwrap();

    let url = api.url("/me");
    let token_url = endpoint.url("/oauth/token");
    let pin = pki.root.spki_pin();
    let report_only = dir.write(
        "report.toml",
        format!(
            "[[host]]\npattern = \"localhost\"\nmode = \"report_only\"\npins = [\"{}\", \"{}\"]\n",
            pki.root.spki_pin(),
            stranger.root.spki_pin()
        ),
    );
    // The same endpoint reached by IP: the --pin entry is for the URL's host, localhost.
    let by_ip = format!("https://127.0.0.1:{}/oauth/token", endpoint.port());
    let base = |extra: &[&str], endpoint_url: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            url.as_str(),
            "--ca-file",
            &ca,
            "--token-file",
            &file_arg,
            "--token-name",
            "due",
            "--token-endpoint",
            endpoint_url,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let cases = [
        ("no pin at all", base(&[], &token_url), "no pin covers"),
        (
            "a report-only entry",
            base(&["--policy", &report_only], &token_url),
            "report-only",
        ),
        (
            "a pin for the API host only",
            base(&["--pin", &pin], &by_ip),
            "no pin covers",
        ),
    ];
    for (what, args, want) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args).await;
        let err = stderr(&out);
        assert_eq!(code(&out), 4, "{what}: {err}");
        assert!(
            err.starts_with("portcullis request: refusing to send the refresh token to ")
                && err.contains(want)
                && err.contains("nothing was sent"),
            "{what}: {err}"
        );
        assert!(!err.contains("rt-0"), "{what}: no secret in the message");
        assert_eq!(stdout(&out), "", "{what}");
    }
    assert_eq!(
        endpoint.accepted(),
        0,
        "no connection to the token endpoint"
    );
    assert_eq!(api.accepted(), 0, "no connection to the API");
    assert_eq!(refreshes.load(Ordering::SeqCst), 0);

    // A plain-http token endpoint is a usage error.
    let plain = format!("http://localhost:{}/oauth/token", endpoint.port());
    let args = base(&["--pin", &pin], &plain);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("only https://"), "{}", stderr(&out));

    // Pinned: the refresh goes through with the untouched refresh token, then the API call.
    let args = base(&["--pin", &pin], &token_url);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "dave refreshed-1");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);

    // The exit code is documented in --help.
    let help = tokio::process::Command::new(BIN)
        .args(["request", "--help"])
        .output()
        .await
        .unwrap();
    assert!(
        stdout(&help)
            .contains("4   the --token-endpoint host is not covered by an enforcing pin entry"),
        "{}",
        stdout(&help)
    );
}

// ----- The CLI explains itself (issue 12). -----

/// A listener that accepts TCP and never says a word; dropped with the returned task.
async fn silent_listener() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    (port, holder)
}

#[tokio::test]
async fn request_gives_up_on_a_server_that_accepts_tcp_and_never_speaks() {
    let (port, holder) = silent_listener().await;
    let url = format!("https://localhost:{port}/");
    let to = format!("127.0.0.1:{port}");

    let started = std::time::Instant::now();
    let out = run(&[&url, "--connect-to", &to, "--connect-timeout", "0.4"]).await;
    let elapsed = started.elapsed();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "connection to localhost timed out after 0.4 s (--connect-timeout): no TLS handshake completed"
        ),
        "{}",
        stderr(&out)
    );
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");

    // --max-time bounds the whole request when it is the shorter.
    let started = std::time::Instant::now();
    let out = run(&[&url, "--connect-to", &to, "--max-time", "0.5"]).await;
    let elapsed = started.elapsed();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("operation timed out after 0.5 s (--max-time)"),
        "{}",
        stderr(&out)
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    let out = run(&[&url, "--max-time", "soon"]).await;
    assert_eq!(code(&out), 64);
    assert!(
        stderr(&out).contains("is not a number of seconds"),
        "{}",
        stderr(&out)
    );

    // Safe defaults, shown in --help.
    let out = run(&["--help"]).await;
    let help = stdout(&out);
    assert!(help.contains("--connect-timeout <SECONDS>"), "{help}");
    assert!(help.contains("[default: 10]"), "{help}");
    assert!(help.contains("[default: 30]"), "{help}");
    holder.abort();
}

#[tokio::test]
async fn a_non_2xx_answer_says_why_on_stderr_without_verbose() {
    let pki = TestPki::new();
    let server = TestServer::https_with(
        server_config(pki.server_chain(), pki.leaf.key_der()),
        |_req| async move {
            let mut r = text(StatusCode::UNAUTHORIZED, "denied");
            r.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            r.headers_mut().insert(
                "portcullis-reason",
                http::HeaderValue::from_static("token expired"),
            );
            r
        },
    )
    .await;
    let dir = TempDir::new("why");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let out = run(&[&server.url("/v1/me"), "--ca-file", &ca]).await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(stdout(&out), "denied");
    let err = stderr(&out);
    assert!(
        err.contains("portcullis request: the server answered 401 Unauthorized"),
        "{err}"
    );
    assert!(
        err.contains("< www-authenticate: Bearer error=\"invalid_token\""),
        "{err}"
    );
    assert!(err.contains("< portcullis-reason: token expired"), "{err}");
}

#[tokio::test]
async fn hmac_with_a_pem_key_and_public_keys_are_refused_before_anything_is_sent() {
    let pki = TestPki::new();
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    let dir = TempDir::new("keys");
    let ca = dir.write("ca.pem", pki.root.cert_pem());
    let ec = testkit::pki::self_signed(&LeafSpec::client("device-ec"));
    let private = dir.write("ec.pem", ec.key_pem());
    let url = server.url("/v1/transfer");

    // The PEM text must not become an HMAC secret.
    let out = run(&[
        &url,
        "--ca-file",
        &ca,
        "--sign-key",
        &private,
        "--key-id",
        "k1",
        "--alg",
        "hmac-sha256",
    ])
    .await;
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("is a PEM key file, but --alg hmac-sha256 signs with a raw shared secret"),
        "{}",
        stderr(&out)
    );

    // A public key (or a certificate) cannot sign.
    let public = rcgen::KeyPair::from_pem(&ec.key_pem())
        .unwrap()
        .public_key_pem();
    assert!(public.contains("BEGIN PUBLIC KEY"));
    let public = dir.write("ec.pub.pem", public);
    let cert = dir.write("ec.crt", ec.cert_pem());
    for key in [&public, &cert] {
        for alg in [None, Some("hmac-sha256"), Some("ecdsa-p256-sha256")] {
            let mut args = vec![
                url.as_str(),
                "--ca-file",
                &ca,
                "--sign-key",
                key,
                "--key-id",
                "k1",
            ];
            if let Some(alg) = alg {
                args.extend(["--alg", alg]);
            }
            let out = run(&args).await;
            assert_eq!(code(&out), 64, "{key} {alg:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains("this is a public key")
                    && stderr(&out).contains("a private key is needed"),
                "{key} {alg:?}: {}",
                stderr(&out)
            );
        }
    }
    assert_eq!(server.requests(), 0, "nothing was sent");
}

#[tokio::test]
async fn urls_without_a_scheme_and_pins_without_padding_say_what_is_expected() {
    let out = run(&["api.example.com/v1/me"]).await;
    assert_eq!(code(&out), 64);
    let err = stderr(&out);
    assert!(err.contains("has no scheme"), "{err}");
    assert!(
        err.contains("expected https://HOST[:PORT][/PATH], e.g. https://api.example.com/v1/me"),
        "{err}"
    );

    let pki = TestPki::new();
    let pin = pki.leaf.spki_pin();
    let unpadded = pin.trim_end_matches('=');
    assert_eq!(unpadded.len(), pin.len() - 1);
    for given in [
        unpadded.to_owned(),
        unpadded.trim_start_matches("sha256/").to_owned(),
    ] {
        let out = run(&["https://localhost:1/", "--pin", &given]).await;
        assert_eq!(code(&out), 64);
        let err = stderr(&out);
        assert!(
            err.contains("padding seems to be missing"),
            "{given}: {err}"
        );
        assert!(
            err.contains("44 characters ending in '='"),
            "{given}: {err}"
        );
    }
    // curl's form is explained too.
    let curl = pin.replacen("sha256/", "sha256//", 1);
    let out = run(&["https://localhost:1/", "--pin", &curl]).await;
    assert_eq!(code(&out), 64);
    assert!(
        stderr(&out).contains("curl's form: drop one slash"),
        "{}",
        stderr(&out)
    );
}
