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
/// Parses a number of seconds (`10`, `0.5`) for `--connect-timeout` / `--max-time`.
pub(crate) fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds (e.g. 10 or 0.5)"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!("{text}: expected seconds between 0 and 86400"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `1.5 s`, `10 s`.
pub(crate) fn seconds(d: std::time::Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// `TLS 1.3` rather than rustls's `TLSv1_3`.
pub(crate) fn tls_version(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2",
        Some(rustls::ProtocolVersion::TLSv1_1) => "TLS 1.1",
        Some(rustls::ProtocolVersion::TLSv1_0) => "TLS 1.0",
        _ => "unknown TLS version",
    }
}

/// A connection failure in words, with what to do about the common ones.
pub(crate) fn explain_connect_error(err: &portcullis_pin::ConnectError) -> String {
    use rustls::{CertificateError, Error as TlsError};
    let Some(tls) = err.tls_error() else {
        return err.to_string();
    };
    match tls {
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate does not chain to a trusted root (unknown issuer); if it \
             uses a private CA, pass that CA's certificate with --ca-file"
                .into()
        }
        TlsError::InvalidCertificate(CertificateError::Expired)
        | TlsError::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired".into()
        }
        TlsError::InvalidCertificate(CertificateError::NotValidYet)
        | TlsError::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet (check this machine's clock)".into()
        }
        TlsError::InvalidCertificate(CertificateError::NotValidForName)
        | TlsError::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate is not valid for this host name".into()
        }
        TlsError::InvalidCertificate(CertificateError::Revoked) => {
            "the server's certificate has been revoked".into()
        }
        TlsError::PeerIncompatible(_) | TlsError::AlertReceived(_) => format!(
            "the TLS handshake failed: the server does not speak a protocol version or cipher \
             suite we accept (TLS 1.2 or 1.3 with modern suites): {tls}"
        ),
        _ => err.to_string(),
    }
}

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
