//! The end-to-end demo: a local API behind the full Portcullis server stack (audit, pre-auth
//! rate limit by peer IP, RFC 9421 signature verification with a replay cache, JWT bearer
//! validation, per-identity rate limit) and a local OAuth token endpoint, with the full client
//! stack (audit, rate limit, retry, rotating bearer tokens, signing, pinned TLS) against them.
//!
//! Loopback only, no setup: certificates are minted at start-up. Prints one numbered step per
//! group of lines, each ending in PASS or FAIL, and exits 0 only when every step behaved.
//!
//! Run: `cargo run --release --example demo`

use std::process::ExitCode;

use portcullis_examples::demo;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    println!("Portcullis end-to-end demo (loopback only)\n");
    let started = std::time::Instant::now();
    match demo::run(|step| println!("{step}\n")).await {
        Ok(report) => {
            let passed = report.steps.iter().filter(|s| s.passed).count();
            println!(
                "{passed}/{} steps passed in {:.1} s",
                report.steps.len(),
                started.elapsed().as_secs_f64()
            );
            if report.all_passed() && report.steps.len() == demo::STEPS {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("demo could not run: {e}");
            ExitCode::from(2)
        }
    }
}
