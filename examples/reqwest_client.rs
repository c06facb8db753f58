//! reqwest 0.13 with the pinned `rustls::ClientConfig`:
//! `ClientBuilder::tls_backend_preconfigured(tls.client_config())`. A request to a local
//! HTTPS server is accepted with its pin matched; a server whose certificate chains to a rogue
//! CA that the device also trusts is refused during the handshake, and
//! `PinFailure::find(&err)` finds why in reqwest's error. The same roots without the pins
//! accept the rogue server: that is what pinning adds.
//!
//! reqwest is used with `default-features = false` and `rustls-no-provider`: the pinned
//! config brings its own provider (aws-lc-rs), so reqwest compiles no second one.
//!
//! ```sh
//! cargo run -p portcullis-examples --example reqwest_client
//! ```

use std::error::Error;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use portcullis::pin::{PinFailure, PinPolicy, PinnedTls};
use testkit::pki::{Authority, TestPki};
use testkit::server::{TestServer, server_config};

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => {
            println!("\nreqwest_client: every check passed");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("\nreqwest_client: FAILED: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A reqwest client with `config` that resolves `localhost` to 127.0.0.1 only.
fn client(config: rustls::ClientConfig, port: u16) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], port)))
        .build()
}

/// Runs the example; `Err` says which check failed.
pub(crate) async fn run() -> Result<(), BoxError> {
    testkit::install_default_provider();

    let api = TestPki::named("Example API");
    let rogue = TestPki::named("Rogue");
    let backup = Authority::root("Example API Backup (offline)");
    let real = TestServer::https(server_config(api.server_chain(), api.leaf.key_der())).await;
    let mitm = TestServer::https(server_config(rogue.server_chain(), rogue.leaf.key_der())).await;

    // Pin the API's intermediate key plus an offline backup. The device trusts both roots (the
    // rogue CA was installed by the user), so only the pin tells the servers apart.
    let policy = PinPolicy::builder()
        .pin(
            "localhost",
            &[&api.intermediate.spki_pin(), &backup.spki_pin()],
        )?
        .build()?;
    let matched: Arc<Mutex<Vec<String>>> = Arc::default();
    let on_match = matched.clone();
    let tls = PinnedTls::builder(policy)
        .root_certificates([api.root.cert(), rogue.root.cert()])?
        .on_match(move |check| {
            if let (Ok(mut m), Some(pin)) = (on_match.lock(), check.matched_pin()) {
                m.push(pin.to_string());
            }
        })
        .build()?;

    println!("1. GET {} with the pinned config", real.url("/"));
    let res = client(tls.client_config(), real.port())?
        .get(real.url("/"))
        .send()
        .await?;
    let status = res.status();
    let version = res.version();
    let body = res.text().await?;
    let pins = matched.lock().map(|m| m.clone()).unwrap_or_default();
    println!("   {status} {version:?} {body:?}; pin matched: {pins:?}");
    if status != reqwest::StatusCode::OK || body != "hello" {
        return Err(format!("expected 200 \"hello\", got {status} {body:?}").into());
    }
    if version != reqwest::Version::HTTP_2 {
        return Err(format!("expected HTTP/2 (ALPN h2), got {version:?}").into());
    }
    if pins != [api.intermediate.spki_pin()] {
        return Err(format!("expected one match on the intermediate pin, got {pins:?}").into());
    }

    println!("\n2. GET {} (certificate from the rogue CA)", mitm.url("/"));
    match client(tls.client_config(), mitm.port())?
        .get(mitm.url("/"))
        .send()
        .await
    {
        Ok(res) => return Err(format!("the rogue server was accepted: {}", res.status()).into()),
        Err(err) => match PinFailure::find(&err) {
            Some(failure) => println!("   refused by the pin:\n{failure}"),
            None => return Err(format!("refused, but not by the pin: {err:?}").into()),
        },
    }
    println!(
        "   requests that reached the rogue server: {}",
        mitm.requests()
    );
    if mitm.requests() != 0 {
        return Err("a request reached the rogue server".into());
    }

    println!("\n3. the same roots without pins (plain rustls config)");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(api.root.cert())?;
    roots.add(rogue.root.cert())?;
    let unpinned = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let res = client(unpinned, mitm.port())?
        .get(mitm.url("/"))
        .send()
        .await?;
    println!(
        "   {}: standard validation alone accepts the rogue server",
        res.status()
    );
    if res.status() != reqwest::StatusCode::OK || mitm.requests() != 1 {
        return Err("the unpinned control request did not reach the rogue server".into());
    }
    Ok(())
}
