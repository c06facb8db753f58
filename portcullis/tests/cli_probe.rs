//! `portcullis probe` explains itself: bounded time against a server that never speaks TLS,
//! and messages in words (TLS 1.3, suite and group names), never Debug output.

use std::process::Output;
use std::time::{Duration, Instant};

use testkit::pki::TestPki;
use testkit::server::{TestServer, server_config};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

async fn run(args: Vec<String>) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn probe_gives_up_on_a_server_that_accepts_tcp_and_never_speaks_tls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold every connection, saying nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let started = Instant::now();
    let out = run(vec![
        "probe".into(),
        format!("https://localhost:{port}"),
        "--connect-to".into(),
        format!("127.0.0.1:{port}"),
        "--connect-timeout".into(),
        "0.5".into(),
    ])
    .await;
    let elapsed = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("timed out after 0.5 s (--connect-timeout)"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    // --max-time bounds it too when it is the shorter.
    let out = run(vec![
        "probe".into(),
        format!("https://localhost:{port}"),
        "--connect-to".into(),
        format!("127.0.0.1:{port}"),
        "--max-time".into(),
        "0.3".into(),
    ])
    .await;
    assert!(
        text(&out.stderr).contains("(--max-time)"),
        "{}",
        text(&out.stderr)
    );
    let out = run(vec![
        "probe".into(),
        format!("https://localhost:{port}"),
        "--connect-timeout".into(),
        "soon".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("is not a number of seconds"),
        "{}",
        text(&out.stderr)
    );
    holder.abort();
}

#[tokio::test]
async fn probe_names_the_protocol_suite_and_group_in_words() {
    let pki = TestPki::new();
    let server = TestServer::https(server_config(pki.server_chain(), pki.leaf.key_der())).await;
    let dir = std::env::temp_dir().join(format!("portcullis-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pki.root.cert_pem()).unwrap();
    let out = run(vec![
        "probe".into(),
        format!("https://localhost:{}", server.port()),
        "--ca-file".into(),
        ca.display().to_string(),
        "--connect-to".into(),
        format!("127.0.0.1:{}", server.port()),
    ])
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("connected to localhost: TLS 1.3, TLS13_")
            && first.contains("key exchange X25519MLKEM768"),
        "{first}"
    );
    assert!(
        !stdout.contains("Some(") && !stdout.contains("TLSv1_3"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
