//! A pinned hyper client against a local server, then the same request through a
//! man-in-the-middle whose CA the client trusts (a user-installed proxy CA): standard
//! validation would accept it, the pin refuses it before any request byte is sent.
//!
//! ```sh
//! cargo run --example pinned_client
//! ```

use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_pin::{PinFailure, PinPolicy, PinnedPeer, PinnedTls};
use testkit::pki::{Authority, TestPki};
use testkit::server::{TestServer, server_config};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    run().await
}

/// Runs the example (also run by `tests/examples.rs`); fails with the step that differed.
pub(crate) async fn run() -> ExitCode {
    // The API's real certificates, and a proxy that mints its own for any host.
    let api = TestPki::named("Example API");
    let proxy = TestPki::named("Corporate Proxy");
    let backup = Authority::root("Example API Backup (offline)");

    let real = TestServer::https(server_config(api.server_chain(), api.leaf.key_der())).await;
    let mitm = TestServer::https(server_config(proxy.server_chain(), proxy.leaf.key_der())).await;

    // Pin the API's intermediate key, with an offline backup key.
    let policy = PinPolicy::builder()
        .pin(
            "localhost",
            &[&api.intermediate.spki_pin(), &backup.spki_pin()],
        )
        .expect("valid pins")
        .build()
        .expect("valid policy");
    println!("policy: localhost pinned to");
    for pin in policy.entries()[0].pins() {
        println!("  {pin}");
    }

    // The device trusts both roots: the proxy CA was installed by the user.
    let tls = PinnedTls::builder(policy)
        .root_certificates([api.root.cert(), proxy.root.cert()])
        .expect("roots")
        .build()
        .expect("pinned TLS");
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(tls.connector());

    println!("\n1. GET {} (the real API)", real.url("/"));
    let res = match client.get(real.url("/").parse().unwrap()).await {
        Ok(res) => res,
        Err(e) => {
            eprintln!("   unexpected failure: {e:?}");
            return ExitCode::FAILURE;
        }
    };
    let status = res.status();
    let peer = res.extensions().get::<PinnedPeer>().cloned();
    let body = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let check = peer.as_ref().and_then(|p| p.check());
    println!(
        "   {} {:?}; pin {} matched at {}",
        status,
        String::from_utf8_lossy(&body),
        check
            .and_then(|c| c.matched_pin())
            .map(ToString::to_string)
            .unwrap_or_default(),
        check
            .and_then(|c| c.position())
            .map(|p| p.as_str())
            .unwrap_or("?"),
    );

    println!(
        "\n2. GET {} (through the proxy's certificate)",
        mitm.url("/")
    );
    match client.get(mitm.url("/").parse().unwrap()).await {
        Ok(res) => {
            eprintln!("   the proxy was accepted: {}", res.status());
            ExitCode::FAILURE
        }
        Err(err) => match PinFailure::find(&err) {
            Some(failure) => {
                println!("   refused:\n{failure}");
                println!(
                    "   requests that reached the proxy: {} (the handshake failed first)",
                    mitm.requests()
                );
                if mitm.requests() == 0 && check.is_some() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            None => {
                eprintln!("   failed, but not on the pin: {err:?}");
                ExitCode::FAILURE
            }
        },
    }
}
