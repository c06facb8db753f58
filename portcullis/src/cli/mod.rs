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
        TlsError::InvalidCertificate(CertificateError::BadSignature) => {
            "the server's certificate chain does not verify: a signature does not match the \
             trusted issuer of that name (a different CA with the same name?); check --ca-file"
                .into()
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

/// Parses `https://HOST[:PORT][/PATH]` for `what` (`probe`, `request`, ...), saying what is
/// wrong and what is expected. Returns the URI and its host (IPv6 without brackets).
pub(crate) fn parse_https_url(url: &str, what: &str) -> Result<(http::Uri, String), String> {
    let expected = "expected https://HOST[:PORT][/PATH]";
    if !url.contains("://") {
        return Err(format!(
            "the URL {url:?} has no scheme; {expected}, e.g. https://{}",
            url.trim_start_matches('/')
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("the URL {url:?} is not valid ({e}); {expected}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "{what} only speaks https:// (refusing to downgrade); {expected}"
        ));
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("the URL {url:?} has no host; {expected}"))?
        .to_owned();
    Ok((uri, host))
}

/// Parses a pin, adding what a person most likely got wrong to the library's message.
pub(crate) fn parse_pin(text: &str) -> Result<portcullis_pin::Pin, String> {
    text.parse().map_err(|e: portcullis_pin::PinParseError| {
        let t = text.trim();
        let b64 = t.strip_prefix("sha256/").unwrap_or(t);
        let looks_b64 = !b64.is_empty()
            && b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
        if t.starts_with("sha256//") {
            format!("{e} (sha256//<base64> is curl's form: drop one slash)")
        } else if looks_b64 && b64.len() < 44 && b64.len() >= 42 && !b64.ends_with("==") {
            format!(
                "{e} (the base64 is {} characters: its trailing '=' padding seems to be missing; \
                 a SHA-256 pin is 44 characters ending in '=')",
                b64.len()
            )
        } else {
            e.to_string()
        }
    })
}

/// A date-time as RFC 3339 (`2027-03-01T00:00:00Z`).
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.date().to_string())
}

/// Text from the network (certificate subjects, header values) without control characters,
/// bounded in length, safe to print or to put in a comment.
pub(crate) fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push_str("...");
    }
    out
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
