//! `portcullis probe https://HOST[:PORT]`: connect, validate, show the verified chain, check pins.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use portcullis_pin::{PinEntry, PinPolicy, PinnedTls, Position};

use super::usage_error;

/// Exit code when the chain validated but no pin matched.
pub(super) const EXIT_PIN_MISMATCH: u8 = 1;
/// Exit code when the connection or standard TLS validation failed.
pub(super) const EXIT_TLS: u8 = 2;

/// Connect to an HTTPS server, validate its certificate, print the verified chain with each
/// certificate's pin, position and expiry, and say whether the pins or policy match.
///
/// Exit status: 0 on success, 1 on a pin mismatch, 2 on a connection or TLS validation
/// failure, 64 on a usage error.
#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {
    /// `https://HOST[:PORT]`.
    url: String,
    /// A pin the server must match (repeatable): sha256/<base64>, bare base64, or a colon-hex
    /// certificate fingerprint.
    #[arg(long = "pin", value_name = "PIN")]
    pins: Vec<String>,
    /// A pin policy file (TOML, or JSON by extension).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Trust these PEM root certificates instead of the system's.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Connect to this address while validating for the URL's host.
    #[arg(long, value_name = "ADDR:PORT")]
    connect_to: Option<SocketAddr>,
    /// Give up when the TCP connection and TLS handshake take longer (seconds, decimals allowed).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = super::parse_seconds)]
    connect_timeout: Duration,
    /// Give up when the whole probe takes longer (seconds, decimals allowed).
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = super::parse_seconds)]
    max_time: Duration,
}

pub(crate) fn run(args: ProbeArgs) -> ExitCode {
    let uri: http::Uri = match args.url.parse() {
        Ok(u) => u,
        Err(e) => return usage_error(&format!("invalid URL {:?}: {e}", args.url)),
    };
    if uri.scheme_str() != Some("https") {
        return usage_error("probe only speaks https:// (refusing to downgrade)");
    }
    let Some(host) = uri.host().map(str::to_owned) else {
        return usage_error("the URL has no host");
    };
    let policy = match build_policy(&host, &args.pins, args.policy.as_deref()) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    let tls = match pinned_tls(policy, args.ca_file.as_deref(), true) {
        Ok(t) => t,
        Err(e) => return usage_error(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis probe: cannot start runtime: {e}");
            return ExitCode::from(EXIT_TLS);
        }
    };
    let mut connector = tls.connector();
    if let Some(addr) = args.connect_to {
        connector = connector.connect_to(addr);
    }
    let limit = args.connect_timeout.min(args.max_time);
    let connected =
        runtime.block_on(async { tokio::time::timeout(limit, connector.connect(uri)).await });
    let Ok(connected) = connected else {
        let which = if args.connect_timeout <= args.max_time {
            "--connect-timeout"
        } else {
            "--max-time"
        };
        eprintln!(
            "portcullis probe: connection to {host} timed out after {} ({which}): no TLS handshake \
             completed",
            super::seconds(limit)
        );
        return ExitCode::from(EXIT_TLS);
    };
    match connected {
        Ok(stream) => {
            let conn = stream.tls_connection();
            println!(
                "connected to {host}: {}, {}, key exchange {}",
                super::tls_version(conn.protocol_version()),
                conn.negotiated_cipher_suite()
                    .and_then(|s| s.suite().as_str())
                    .unwrap_or("unknown cipher suite"),
                conn.negotiated_key_exchange_group()
                    .and_then(|g| g.name().as_str())
                    .unwrap_or("none"),
            );
            let check = stream.peer().check();
            println!("verified chain:");
            if let Some(chain) = check.and_then(|c| c.verified_chain()) {
                for link in chain {
                    let expiry = link
                        .not_after
                        .map(|t| t.date().to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "  {:<12} {}  expires {}  {}",
                        link.position.as_str(),
                        link.spki_pin,
                        expiry,
                        link.subject
                    );
                }
            }
            match check {
                Some(c) if c.matched_pin().is_some() => {
                    println!(
                        "pin OK: {} matched at {} (pattern {})",
                        c.matched_pin().map(ToString::to_string).unwrap_or_default(),
                        c.position().map(Position::as_str).unwrap_or("?"),
                        c.pattern().unwrap_or("-"),
                    );
                    ExitCode::SUCCESS
                }
                Some(c) if c.pattern().is_some() => {
                    // Report-only entry: connection allowed, but no pin matched.
                    eprintln!(
                        "portcullis probe: no pin matched for {host} (report-only entry {})",
                        c.pattern().unwrap_or("-")
                    );
                    ExitCode::from(EXIT_PIN_MISMATCH)
                }
                _ => {
                    println!("no pins configured for {host}: standard validation passed");
                    ExitCode::SUCCESS
                }
            }
        }
        Err(err) => {
            if let Some(failure) = err.pin_failure() {
                println!("{failure}");
                eprintln!("portcullis probe: pin mismatch for {host}");
                ExitCode::from(EXIT_PIN_MISMATCH)
            } else {
                eprintln!("portcullis probe: {}", super::explain_connect_error(&err));
                ExitCode::from(EXIT_TLS)
            }
        }
    }
}

/// Builds a pinned TLS configuration trusting `ca_file` (PEM) or else the system's roots.
pub(super) fn pinned_tls(
    policy: PinPolicy,
    ca_file: Option<&Path>,
    record_chain: bool,
) -> Result<PinnedTls, String> {
    let mut builder = PinnedTls::builder(policy);
    if record_chain {
        builder = builder.record_verified_chain();
    }
    builder = match ca_file {
        Some(path) => super::pin_cmd::read_certificates(path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|certs| builder.root_certificates(certs).map_err(|e| e.to_string()))
            .map_err(|e| format!("--ca-file {e}"))?,
        None => builder
            .native_roots()
            .map_err(|e| format!("{e} (pass --ca-file)"))?,
    };
    builder.build().map_err(|e| e.to_string())
}

/// The policy file's entries plus, when `pins` are given, an entry for `host` with them.
pub(super) fn build_policy(
    host: &str,
    pins: &[String],
    policy: Option<&Path>,
) -> Result<PinPolicy, String> {
    let mut builder = PinPolicy::builder();
    if let Some(path) = policy {
        let file = PinPolicy::from_path(path).map_err(|e| e.to_string())?;
        for entry in file.entries() {
            builder = builder.entry(entry.clone());
        }
    }
    if !pins.is_empty() {
        let pins = pins
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e: portcullis_pin::PinParseError| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A probe checks given pins; the backup-pin rule is for deployed policies.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        builder = builder.entry(
            PinEntry::new(host, pins)
                .map_err(|e| e.to_string())?
                .allow_single_pin(),
        );
    }
    builder.build().map_err(|e| e.to_string())
}
