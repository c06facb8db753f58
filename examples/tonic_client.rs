//! A tonic 0.14 gRPC client over the pinned connector: `Endpoint::connect_with_connector(
//! tls.connector())`, HTTP/2 negotiated by ALPN, calling the standard gRPC health service
//! (`tonic-health`, generated code shipped in the crate, so no `protoc`) served over TLS on
//! 127.0.0.1. Then the same call to a server whose certificate chains to a rogue CA that the
//! client also trusts (a user-installed proxy CA): standard validation accepts it, the pin
//! refuses it before any gRPC byte is sent, and the error carries a `PinFailure`.
//!
//! The pinned connector does the TLS itself, so tonic's own `tls-*` features stay off: with
//! them, tonic's channel would try to add its own TLS on `https://` endpoints.
//!
//! ```sh
//! cargo run -p portcullis-examples --example tonic_client
//! ```

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use portcullis::pin::{PinFailure, PinPolicy, PinnedStream, PinnedTls};
use testkit::pki::{Authority, TestPki};
use testkit::server::server_config;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::{ServiceBuilder, ServiceExt};

type BoxError = Box<dyn Error + Send + Sync>;

/// The gRPC service name whose health the client asks for.
const SERVICE: &str = "orders.v1.Orders";

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => {
            println!("\ntonic_client: every check passed");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("\ntonic_client: FAILED: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Starts a gRPC health server over TLS on 127.0.0.1 (the Portcullis `serve_tls`, HTTP/2 via
/// ALPN); returns its port, a counter of gRPC requests that reached it, and its task.
async fn grpc_server(
    pki: &TestPki,
) -> Result<(u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>), BoxError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = ServiceBuilder::new()
        .map_request(move |req: http::Request<hyper::body::Incoming>| {
            counter.fetch_add(1, Ordering::SeqCst);
            req
        })
        .service(health);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let config = Arc::new(server_config(pki.server_chain(), pki.leaf.key_der()));
    let task = tokio::spawn(async move {
        // Keep the reporter alive as long as the server.
        let _reporter = reporter;
        portcullis::server::serve_tls(listener, config, service).await;
    });
    Ok((port, calls, task))
}

/// What the pinned connector saw for the last connection it made.
#[derive(Debug, Default, Clone)]
struct Handshake {
    alpn: Option<String>,
    matched_pin: Option<String>,
}

/// Connects a channel through the pinned connector, recording the negotiated ALPN protocol
/// and the matched pin of each connection.
async fn connect(
    tls: &PinnedTls,
    port: u16,
    seen: Arc<Mutex<Handshake>>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = tls.connector().map_response(move |stream: PinnedStream| {
        let alpn = stream
            .tls_connection()
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let matched_pin = stream.peer().matched_pin().map(ToString::to_string);
        if let Ok(mut seen) = seen.lock() {
            *seen = Handshake { alpn, matched_pin };
        }
        stream
    });
    Endpoint::from_shared(format!("https://localhost:{port}"))?
        .connect_with_connector(connector)
        .await
}

/// Runs the example; `Err` says which check failed.
pub(crate) async fn run() -> Result<(), BoxError> {
    testkit::install_default_provider();

    let api = TestPki::named("Orders gRPC");
    let rogue = TestPki::named("Rogue");
    let backup = Authority::root("Orders gRPC Backup (offline)");
    let (api_port, api_calls, api_task) = grpc_server(&api).await?;
    let (rogue_port, rogue_calls, rogue_task) = grpc_server(&rogue).await?;

    // Pin the API's intermediate key plus an offline backup; trust both roots (the rogue CA was
    // installed on the device), so only the pin tells them apart.
    let policy = PinPolicy::builder()
        .pin(
            "localhost",
            &[&api.intermediate.spki_pin(), &backup.spki_pin()],
        )?
        .build()?;
    let tls = PinnedTls::builder(policy)
        .root_certificates([api.root.cert(), rogue.root.cert()])?
        .build()?;

    println!("1. grpc.health.v1.Health/Check {SERVICE:?} on https://localhost:{api_port}");
    let seen = Arc::new(Mutex::new(Handshake::default()));
    let channel = connect(&tls, api_port, seen.clone()).await?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: SERVICE.to_owned(),
        })
        .await?
        .into_inner();
    let status = response.status();
    let handshake = seen.lock().map(|h| h.clone()).unwrap_or_default();
    println!("   status: {status:?}");
    println!(
        "   ALPN: {}, pin matched: {}",
        handshake.alpn.as_deref().unwrap_or("none"),
        handshake.matched_pin.as_deref().unwrap_or("none")
    );
    if status != WireStatus::Serving {
        return Err(format!("expected SERVING, got {status:?}").into());
    }
    if handshake.alpn.as_deref() != Some("h2") {
        return Err(format!("expected ALPN h2, got {:?}", handshake.alpn).into());
    }
    if handshake.matched_pin.as_deref() != Some(api.intermediate.spki_pin().as_str()) {
        return Err(format!(
            "expected the intermediate pin, got {:?}",
            handshake.matched_pin
        )
        .into());
    }
    let unknown = client
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await;
    match unknown {
        Err(status) if status.code() == tonic::Code::NotFound => {
            println!("   unknown service: NOT_FOUND, as the health protocol says")
        }
        other => return Err(format!("expected NOT_FOUND, got {other:?}").into()),
    }
    if api_calls.load(Ordering::SeqCst) != 2 {
        return Err("the API server did not see exactly two gRPC calls".into());
    }

    println!(
        "\n2. the same call to https://localhost:{rogue_port} (certificate from the rogue CA)"
    );
    match connect(&tls, rogue_port, Arc::default()).await {
        Ok(channel) => {
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: SERVICE.to_owned(),
                })
                .await;
            return Err(format!("the rogue server was accepted: {answer:?}").into());
        }
        Err(err) => match PinFailure::find(&err) {
            Some(failure) => {
                println!("   refused by the pin:\n{failure}");
            }
            None => return Err(format!("refused, but not by the pin: {err:?}").into()),
        },
    }
    let reached = rogue_calls.load(Ordering::SeqCst);
    println!("   gRPC calls that reached the rogue server: {reached}");
    if reached != 0 {
        return Err("a gRPC call reached the rogue server".into());
    }

    api_task.abort();
    rogue_task.abort();
    Ok(())
}
