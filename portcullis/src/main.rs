//! The `portcullis` command: pins from certificates, TLS probes, policy lint, secret stores.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
