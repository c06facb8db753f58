//! Interoperability of the RFC 9421 verifier with an independent signer: Python's
//! `http-message-signatures` package, with its default settings, signs and sends real HTTPS
//! requests to `VerifySignatureLayer` served by `serve_tls`. Its default coverage
//! (`@method`, `@authority`, `@target-uri`) satisfies the default policy; its missing nonce is
//! refused with a challenge that says what is required, unless the named relaxation
//! `allow_missing_nonce()` is on.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use portcullis::attest::{StaticKeys, VerifiedSignature, VerifySignatureLayer, VerifyingKey};
use testkit::pki::TestPki;
use tower::service_fn;

struct Setup {
    dir: PathBuf,
    url: String,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.serving.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/adversarial/interop/rfc9421_sign.py")
}

/// Serves the verifier over TLS, trusting the key the Python side generated; the CA
/// certificate goes to a file for the Python client.
async fn serve(relax_nonce: bool) -> Setup {
    testkit::install_default_provider();
    let pki = TestPki::new();
    let dir = std::env::temp_dir().join(format!(
        "portcullis-rfc9421-{}-{}",
        std::process::id(),
        testkit::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let generated = std::process::Command::new("python3")
        .arg(script())
        .arg("--gen-key")
        .arg(dir.join("key.pem"))
        .output()
        .expect("python3 runs");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    std::fs::write(dir.join("ca.pem"), pki.root.cert_pem()).unwrap();
    let public =
        VerifyingKey::from_public_pem(&String::from_utf8(generated.stdout).unwrap()).unwrap();
    let mut verifier = VerifySignatureLayer::builder(StaticKeys::new().with("py-key", public));
    if relax_nonce {
        verifier = verifier.allow_missing_nonce();
    }
    let stack = portcullis::server::builder()
        .verify_signatures(verifier.build().unwrap())
        .service(service_fn(|req: Request<Full<Bytes>>| async move {
            let keyid = req
                .extensions()
                .get::<VerifiedSignature>()
                .map(|s| s.keyid().to_owned())
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(keyid))))
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
    let serving = tokio::spawn(portcullis::server::serve_tls(
        listener,
        Arc::new(config),
        stack,
    ));
    Setup {
        dir,
        url: format!("https://localhost:{port}/v1/orders?page=2"),
        serving,
    }
}

/// Runs the Python signer; returns its JSON report of the server's answer.
async fn python_sign_and_send(setup: &Setup, extra: &[&str]) -> serde_json::Value {
    let key = setup.dir.join("key.pem");
    let ca = setup.dir.join("ca.pem");
    let out = tokio::process::Command::new("python3")
        .arg(script())
        .args(["--url", &setup.url, "--key-id", "py-key"])
        .arg("--key")
        .arg(key)
        .arg("--ca")
        .arg(ca)
        .args(extra)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the Python signer failed (is `http-message-signatures` installed? scripts/test-all.sh \
         installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_default_python_signer_covers_target_uri_and_is_told_a_nonce_is_required() {
    let s = serve(false).await;
    let answer = python_sign_and_send(&s, &[]).await;
    let input = answer["signature_input"].as_str().unwrap();
    assert!(
        input.contains("\"@target-uri\"") && !input.contains("nonce="),
        "the signer's defaults: {input}"
    );
    assert_eq!(answer["status"], 401, "{answer}");
    assert_eq!(
        answer["reason"], "missing_nonce",
        "@target-uri covers @authority, @path and @query"
    );
    let challenge = answer["www_authenticate"].as_str().unwrap();
    assert!(
        challenge.starts_with("Signature realm=\"api\", error=\"missing_nonce\"")
            && challenge.contains("no nonce parameter")
            && challenge.contains("required: covering @method @authority @path @query"),
        "{challenge}"
    );
    assert!(
        answer["accept_signature"]
            .as_str()
            .unwrap()
            .contains("nonce"),
        "{answer}"
    );

    // With a nonce, the same defaults are accepted.
    let answer = python_sign_and_send(&s, &["--nonce", "py-nonce-1"]).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"], "py-key");
    // And the same nonce again is a replay.
    let answer = python_sign_and_send(&s, &["--nonce", "py-nonce-1"]).await;
    assert_eq!(answer["status"], 401, "{answer}");
    assert_eq!(answer["reason"], "replayed");
}

#[tokio::test]
async fn the_named_relaxation_accepts_the_python_defaults_and_bodies_with_their_digest() {
    let s = serve(true).await;
    let answer = python_sign_and_send(&s, &[]).await;
    assert_eq!(answer["status"], 200, "{answer}");
    let answer = python_sign_and_send(
        &s,
        &[
            "--method",
            "POST",
            "--body",
            "{\"to\":\"bob\",\"amount\":5}",
        ],
    )
    .await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(
        answer["signature_input"]
            .as_str()
            .unwrap()
            .contains("content-digest")
    );
}
