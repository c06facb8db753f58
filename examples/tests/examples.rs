//! The step-by-step examples (`pinned_client`, `signed_requests`, `rotating_client`,
//! `resilient_client`) run as tests: each example's `run()` checks what it claims (a refused
//! man-in-the-middle, a refused tampered or replayed request, a rotation that survives and a
//! reuse that is refused, retries and limits that behave) and fails with the step that
//! differed. Each runs on the runtime its `main` uses.

use std::process::ExitCode;

#[allow(
    dead_code,
    reason = "main() is the example's entry point; the test calls run()"
)]
#[path = "../pinned_client.rs"]
mod pinned_client;

#[allow(
    dead_code,
    reason = "main() is the example's entry point; the test calls run()"
)]
#[path = "../signed_requests.rs"]
mod signed_requests;

#[allow(
    dead_code,
    reason = "main() is the example's entry point; the test calls run()"
)]
#[path = "../rotating_client.rs"]
mod rotating_client;

#[allow(
    dead_code,
    reason = "main() is the example's entry point; the test calls run()"
)]
#[path = "../resilient_client.rs"]
mod resilient_client;

/// The pinned client reaches the real API and refuses the proxy's certificate on the pin,
/// before any request byte.
#[tokio::test(flavor = "current_thread")]
async fn pinned_client_refuses_the_proxy() {
    assert_eq!(pinned_client::run().await, ExitCode::SUCCESS);
}

/// Signed requests verify; tampered and replayed ones get 401.
#[tokio::test(flavor = "current_thread")]
async fn signed_requests_verify_and_tampering_is_refused() {
    if let Err(err) = signed_requests::run().await {
        panic!("signed_requests: {err}");
    }
}

/// Tokens rotate through the store; a replayed refresh token ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_client_rotates_and_stops_on_reuse() {
    if let Err(err) = rotating_client::run().await {
        panic!("rotating_client: {err}");
    }
}

/// Retries, idempotency, the circuit breaker and the keyed rate limit do what each step says.
#[tokio::test(flavor = "current_thread")]
async fn resilient_client_steps_behave() {
    if let Err(err) = resilient_client::run().await {
        panic!("resilient_client: {err}");
    }
}
