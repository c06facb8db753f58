//! Command-line parsing and dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod pin_cmd;
mod policy_cmd;
mod probe;
mod request;
mod secret;

/// Exit code for usage errors (BSD `EX_USAGE`).
pub(crate) const EXIT_USAGE: u8 = 64;

/// Security tooling for pinned, token-protected and signed HTTP.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the SPKI pin, subject, issuer, expiry and fingerprint of certificates.
    Pin(pin_cmd::PinArgs),
    /// Connect to an HTTPS server and check its chain against pins or a policy.
    Probe(probe::ProbeArgs),
    /// Pin policy tools.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Seed, read and rotate secrets in an encrypted file store.
    Secret(secret::SecretArgs),
    /// Send one request through the client stack (pins, signature, bearer token), like curl.
    Request(Box<request::RequestArgs>),
}

/// Prints a one-line usage error and returns exit code 64.
pub(crate) fn usage_error(message: &str) -> ExitCode {
    eprintln!("portcullis: {message}");
    ExitCode::from(EXIT_USAGE)
}

pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Pin(args) => pin_cmd::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Secret(args) => secret::run(args),
        Command::Request(args) => request::run(*args),
    }
}
