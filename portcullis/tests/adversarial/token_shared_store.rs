//! Threat: two processes share one encrypted token file (an app and its helper, two replicas
//! on one host). One rotates the refresh token; the other still holds the old one in memory,
//! refreshes with it, gets `invalid_grant` (or, at a server with reuse detection, gets the whole
//! token family revoked) and deletes the entry, erasing the newer token the first one just
//! saved: both end signed out. Defence: `TokenSource` holds the store's entry lock (a lock
//! file every process respects) from a re-read of the record to the write of the rotated one,
//! adopts a record another process stored instead of refreshing with a stale token, adopts a
//! newer record after `invalid_grant`, and deletes only by compare-and-swap.
//!
//! Two real processes (this test binary re-executed) refresh in turn through a real token
//! endpoint on 127.0.0.1 that rotates refresh tokens and, on a reused one, answers
//! `invalid_grant` and revokes the family, as OAuth 2.0 security best practice asks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis::token::TokenSource;
use portcullis::token::secret::{FileKey, FileStore, SecretStore};
use portcullis::token::token::{ClientAuth, OAuthRefresh, RefreshError, TokenResponse, TokenSet};
use secrecy::SecretString;
use testkit::server::TestServer;

const DIR: &str = "PORTCULLIS_SHARED_STORE_DIR";
const URL: &str = "PORTCULLIS_SHARED_STORE_URL";
const ID: &str = "PORTCULLIS_SHARED_STORE_ID";
const KEY: [u8; 32] = [0x5a; 32];
const RECORD: &str = "portcullis.token";
/// Refreshes per process.
const ROUNDS: usize = 30;

/// The token endpoint: one current refresh token; any other is a reuse, which revokes the
/// family.
#[derive(Default)]
struct Endpoint {
    current: String,
    issued: usize,
    reused: usize,
    /// The client id of each successful refresh, in order.
    by: Vec<String>,
}

async fn token_endpoint(state: Arc<Mutex<Endpoint>>) -> TestServer {
    TestServer::http_with(move |req: Request<Incoming>| {
        let state = state.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8(body.to_vec()).unwrap();
            let field = |name: &str| {
                body.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_owned())
                    .unwrap_or_default()
            };
            let mut st = state.lock().unwrap();
            if field("grant_type") != "refresh_token" || field("refresh_token") != st.current {
                st.reused += 1;
                st.current = "revoked-family".into();
                return Response::builder()
                    .status(400)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from_static(
                        b"{\"error\":\"invalid_grant\",\"error_description\":\"refresh token reused: family revoked\"}",
                    )))
                    .unwrap();
            }
            st.issued += 1;
            let n = st.issued;
            st.current = format!("rt-{n}");
            st.by.push(field("client_id"));
            // expires_in 0: every `token()` call refreshes again.
            let json = format!(
                "{{\"access_token\":\"at-{n}\",\"token_type\":\"Bearer\",\"expires_in\":0,\"refresh_token\":\"rt-{n}\"}}"
            );
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(json)))
                .unwrap()
        }
    })
    .await
}

fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn store_path(dir: &Path) -> PathBuf {
    dir.join("tokens.pcs")
}

/// Child half: refreshes `ROUNDS` times through the shared file, then checks that its entry
/// is still there. Does nothing when run as a normal test.
#[tokio::test]
async fn shared_store_child() {
    let (Ok(dir), Ok(url), Ok(id)) = (std::env::var(DIR), std::env::var(URL), std::env::var(ID))
    else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = FileStore::open(store_path(&dir), FileKey::raw(KEY))
        .await
        .unwrap();
    let refresher = OAuthRefresh::new(
        http_client(),
        url.parse().unwrap(),
        ClientAuth::Public {
            client_id: id.clone(),
        },
    );
    let source = TokenSource::builder(refresher, store.clone())
        .refresh_timeout(Duration::from_secs(20))
        .load()
        .await
        .unwrap();
    // Start together with the other process.
    std::fs::write(dir.join(format!("ready-{id}")), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("go").exists() {
        assert!(Instant::now() < deadline, "{id}: never told to go");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for round in 0..ROUNDS {
        if let Err(e) = source.token().await {
            panic!("{id}: round {round}: {e}");
        }
        // Give the other process a chance at the lock between rounds.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        store.get(RECORD).await.unwrap().is_some(),
        "{id}: the token entry was deleted"
    );
}

fn spawn_child(dir: &Path, url: &str, id: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "token_shared_store::shared_store_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR, dir)
        .env(URL, url)
        .env(ID, id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_rotating_through_one_file_store_lose_no_refresh_token() {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-adversarial-shared-store-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = Arc::new(Mutex::new(Endpoint {
        current: "rt-0".into(),
        ..Default::default()
    }));
    let server = token_endpoint(state.clone()).await;
    let url = format!("http://127.0.0.1:{}/oauth/token", server.port());

    // The login both processes start from.
    let store = FileStore::open(store_path(&dir), FileKey::raw(KEY))
        .await
        .unwrap();
    TokenSource::builder(
        |_rt: SecretString| async { Err::<TokenResponse, _>(RefreshError::InvalidGrant) },
        store.clone(),
    )
    .load()
    .await
    .unwrap()
    .seed(TokenSet::from_refresh_token("rt-0"))
    .await
    .unwrap();

    let children = [spawn_child(&dir, &url, "A"), spawn_child(&dir, &url, "B")];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(dir.join("ready-A").exists() && dir.join("ready-B").exists()) {
        assert!(Instant::now() < deadline, "children did not start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    std::fs::write(dir.join("go"), b"").unwrap();
    for (id, mut child) in ["A", "B"].into_iter().zip(children) {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("process {id} did not finish in time");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let out = child.wait_with_output().unwrap();
        assert!(
            status.success(),
            "process {id} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let (reused, issued, by, current) = {
        let st = state.lock().unwrap();
        (st.reused, st.issued, st.by.clone(), st.current.clone())
    };
    assert_eq!(reused, 0, "a process refreshed with a rotated-away token");
    assert_eq!(issued, 2 * ROUNDS);
    let switches = by.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches >= 5,
        "the two processes did not interleave: {by:?}"
    );
    // The file holds the one refresh token the server still accepts.
    let record = store
        .get(RECORD)
        .await
        .unwrap()
        .expect("token entry present");
    let json: serde_json::Value = serde_json::from_slice(record.expose()).unwrap();
    assert_eq!(json["refresh_token"].as_str(), Some(current.as_str()));
    std::fs::remove_dir_all(&dir).unwrap();
}
