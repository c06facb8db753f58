//! Threat: a downgrade to weak TLS — a server (or a man in the middle) that only speaks TLS 1.0
//! or 1.1, or a TLS 1.2 server that only offers CBC/SHA-1 or NULL-encryption cipher suites, and
//! a client that offers TLS 1.0/1.1 to our server. Defence: `PinnedTls` (pin layer) only ever
//! offers TLS 1.2 and 1.3 with AEAD, forward-secret suites (rustls' aws-lc-rs provider), even
//! for hosts whose pins match; `serve_tls` with a default rustls config refuses old clients.
//! The other side is the `openssl` binary, an independent implementation.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use portcullis::pin::{ConnectError, PinPolicy, PinnedTls};
use rustls::AlertDescription;
use testkit::legacy::{LegacyTlsServer, LegacyVersion};
use testkit::pki::{Authority, TestPki};
use tower::ServiceExt;

use crate::support::{Logs, OpensslServer, rustls_error, s_client};

/// A client trusting `pki` with the leaf's key pinned (the server is the genuine one: only the
/// protocol is weak).
fn pinned_client(pki: &TestPki) -> PinnedTls {
    let policy = PinPolicy::builder()
        .pin(
            "localhost",
            &[
                &pki.leaf.spki_pin(),
                &Authority::root("Offline Backup").spki_pin(),
            ],
        )
        .unwrap()
        .build()
        .unwrap();
    PinnedTls::builder(policy)
        .root_certificates([pki.root.cert()])
        .unwrap()
        .build()
        .unwrap()
}

fn alert(err: &ConnectError) -> AlertDescription {
    match err.tls_error() {
        Some(rustls::Error::AlertReceived(a)) => *a,
        other => panic!("expected a TLS alert from the server, got {other:?} ({err})"),
    }
}

#[tokio::test]
async fn tls10_and_tls11_only_servers_are_refused_with_protocol_version() {
    let pki = TestPki::new();
    let tls = pinned_client(&pki);
    for version in [LegacyVersion::Tls10, LegacyVersion::Tls11] {
        let server = LegacyTlsServer::start(version, &pki.leaf, &pki.intermediate.cert_pem());
        let uri: http::Uri = format!("https://localhost:{}/", server.port())
            .parse()
            .unwrap();
        let err = tls.connector().connect(uri.clone()).await.unwrap_err();
        assert!(matches!(err, ConnectError::Tls(_)), "{version:?}: {err}");
        assert_eq!(
            alert(&err),
            AlertDescription::ProtocolVersion,
            "{version:?}"
        );
        assert!(
            err.to_string()
                .starts_with("TLS handshake failed: received fatal alert: ProtocolVersion"),
            "{version:?}: {err}"
        );
        assert!(
            err.pin_failure().is_none(),
            "refused before any certificate"
        );

        // Through the preset client stack: the same rustls reason reaches the caller.
        let client = portcullis::client::builder()
            .pinned(tls.clone())
            .build::<Full<Bytes>>()
            .unwrap();
        let err = client
            .oneshot(Request::get(uri).body(Full::default()).unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            rustls_error(&err),
            Some(rustls::Error::AlertReceived(
                AlertDescription::ProtocolVersion
            )),
            "{version:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn tls12_server_offering_only_weak_cipher_suites_is_refused() {
    let pki = TestPki::new();
    let tls = pinned_client(&pki);
    let chain = [pki.intermediate.cert()];
    for suites in [
        // No encryption at all.
        "ECDHE-ECDSA-NULL-SHA",
        // CBC with SHA-1 / SHA-2 MACs (Lucky 13, padding oracles).
        "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384",
    ] {
        let server = OpensslServer::start(
            &pki.leaf,
            &chain,
            &["-tls1_2", "-cipher", &format!("{suites}:@SECLEVEL=0")],
        );
        let err = tls.connector().connect(server.uri()).await.unwrap_err();
        assert_eq!(alert(&err), AlertDescription::HandshakeFailure, "{suites}");
        assert!(err.pin_failure().is_none(), "{suites}");
    }
}

#[tokio::test]
async fn control_the_same_openssl_server_with_aead_suites_is_accepted_and_pinned() {
    let pki = TestPki::new();
    let tls = pinned_client(&pki);
    let chain = [pki.intermediate.cert()];
    for (flags, want) in [
        (
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (&["-tls1_3"][..], rustls::ProtocolVersion::TLSv1_3),
    ] {
        let server = OpensslServer::start(&pki.leaf, &chain, flags);
        let stream = tls
            .connector()
            .connect(server.uri())
            .await
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        assert_eq!(stream.tls_connection().protocol_version(), Some(want));
        assert_eq!(
            stream.peer().matched_pin().map(ToString::to_string),
            Some(pki.leaf.spki_pin())
        );
    }
}

#[tokio::test]
async fn serve_tls_refuses_tls10_and_tls11_clients() {
    let pki = TestPki::new();
    let logs = Logs::default();
    let _guard = logs.install();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
    let app = portcullis::server::builder().service(tower::service_fn(
        |_req: Request<hyper::body::Incoming>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
        },
    ));
    let serving = tokio::spawn(portcullis::server::serve_tls(
        listener,
        Arc::new(config),
        app,
    ));

    for flag in ["-tls1", "-tls1_1"] {
        // The old client gets a fatal alert and no session.
        let (ok, out) = s_client(port, &[flag, "-cipher", "DEFAULT:@SECLEVEL=0"]).await;
        assert!(!ok, "{flag}: {out}");
        assert!(out.contains("alert handshake failure"), "{flag}: {out}");
        assert!(out.contains("Cipher is (NONE)"), "{flag}: {out}");
    }
    // Control: a TLS 1.2 openssl client completes the handshake with the same server.
    let (ok, out) = s_client(port, &["-tls1_2"]).await;
    assert!(ok && out.contains("Protocol  : TLSv1.2"), "{out}");

    let refused: Vec<_> = logs
        .events()
        .into_iter()
        .filter(|e| e["event.action"] == "tls.handshake" && e["event.outcome"] == "failure")
        .collect();
    assert_eq!(refused.len(), 2, "{}", logs.text());
    for e in refused {
        assert_eq!(e["event.reason"], "handshake_failed");
        assert_eq!(e["client.address"], "127.0.0.1");
        // rustls' PeerIncompatible: an old ClientHello lacks what TLS 1.2+ requires.
        let detail = e["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with("peer is incompatible"), "{detail}");
    }
    serving.abort();
}
