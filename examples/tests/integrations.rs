//! The integration examples (`axum_server`, `tonic_client`, `reqwest_client`) run as tests:
//! each example's `run()` checks what a user would see and fails with the step that differed.

#[allow(
    dead_code,
    reason = "main() is the example's entry point; the test calls run()"
)]
#[path = "../axum_server.rs"]
mod axum_server;

#[allow(
    dead_code,
    reason = "main() is the example's entry point; the test calls run()"
)]
#[path = "../tonic_client.rs"]
mod tonic_client;

#[allow(
    dead_code,
    reason = "main() is the example's entry point; the test calls run()"
)]
#[path = "../reqwest_client.rs"]
mod reqwest_client;

/// axum behind the server stack over TLS: 200 with a valid token, 401 without, 403 on a
/// missing scope, 429 after a burst, one audit record per request.
#[tokio::test]
async fn axum_server_stack_over_tls() {
    if let Err(err) = axum_server::run().await {
        panic!("axum_server: {err}");
    }
}

/// tonic over the pinned connector: health check served over h2, rogue certificate refused
/// with a `PinFailure`.
#[tokio::test]
async fn tonic_client_over_pinned_connector() {
    if let Err(err) = tonic_client::run().await {
        panic!("tonic_client: {err}");
    }
}

/// reqwest with the pinned rustls config: pinned request OK, rogue certificate refused with a
/// `PinFailure`.
#[tokio::test]
async fn reqwest_client_with_pinned_config() {
    if let Err(err) = reqwest_client::run().await {
        panic!("reqwest_client: {err}");
    }
}
