//! Runs the steps of `cargo run --example demo` and requires every one of them to pass.

use portcullis_examples::demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_step_passes() {
    let report = demo::run(|step| println!("{step}\n"))
        .await
        .expect("the demo sets itself up");
    assert_eq!(report.steps.len(), demo::STEPS);
    let failed: Vec<_> = report
        .steps
        .iter()
        .filter(|s| !s.passed)
        .map(|s| s.to_string())
        .collect();
    assert!(failed.is_empty(), "failed steps:\n{}", failed.join("\n"));
}
