//! `portcullis probe https://HOST[:PORT]`: connect, validate, show the verified chain, check pins.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use portcullis_pin::{ConnectError, PinEntry, PinPolicy, PinnedStream, PinnedTls, Position};

use super::usage_error;

/// Exit code when the chain validated but no pin matched.
pub(super) const EXIT_PIN_MISMATCH: u8 = 1;
/// Exit code when the connection or standard TLS validation failed.
pub(super) const EXIT_TLS: u8 = 2;

/// Connect to an HTTPS server, validate its certificate, print the verified chain with each
/// certificate's pin, position and expiry, and say whether the pins or policy match.
///
/// Exit status: 0 on success, 1 on a pin mismatch, 2 on a connection or TLS validation
/// failure (or a timeout), 64 on a usage error.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    portcullis probe https://example.com\n  \
    portcullis probe https://api.example.com --pin sha256/AAAA...= --pin sha256/BBBB...=\n  \
    portcullis probe https://api.example.com --policy pins.toml\n  \
    portcullis probe https://localhost:8443 --ca-file ca.pem --connect-to 127.0.0.1:8443 \\\n      \
    --connect-timeout 2 --max-time 5\n\n\
    Exit status:\n  \
    0   the chain validated (and a pin matched, when pins or a policy apply)\n  \
    1   pin mismatch\n  \
    2   connection or TLS validation failure, or a timeout\n  \
    64  usage error")]
pub(crate) struct ProbeArgs {
    /// `https://HOST[:PORT]`.
    url: String,
    /// A pin the server must match (repeatable): sha256/<base64>, bare base64, or a colon-hex
    /// certificate fingerprint.
    #[arg(long = "pin", value_name = "PIN")]
    pins: Vec<String>,
    /// A pin policy file (TOML, or JSON by extension; see `portcullis policy check --help`).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    conn: ConnectArgs,
}

/// Where and how long to connect: shared by `probe` and `policy init`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    /// Trust these PEM root certificates instead of the system's.
    #[arg(long, value_name = "PEM")]
    pub(super) ca_file: Option<PathBuf>,
    /// Connect to this address while validating for the URL's host.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(super) connect_to: Option<SocketAddr>,
    /// Give up when the TCP connection and TLS handshake take longer (seconds, decimals allowed).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = super::parse_seconds)]
    pub(super) connect_timeout: Duration,
    /// Give up when the whole command takes longer (seconds, decimals allowed).
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = super::parse_seconds)]
    pub(super) max_time: Duration,
}

/// The outcome of [`handshake`].
pub(super) enum Handshake {
    /// Connected: standard validation passed and enforcing pins matched.
    Done(Box<PinnedStream>),
    /// The connection or the TLS validation failed.
    Failed(ConnectError),
    /// No handshake completed in time; the message says which limit.
    TimedOut(String),
}

/// Connects to `uri` (or `--connect-to`) within the shorter of the two time limits.
pub(super) fn handshake(
    runtime: &tokio::runtime::Runtime,
    tls: &PinnedTls,
    uri: http::Uri,
    host: &str,
    conn: &ConnectArgs,
) -> Handshake {
    let mut connector = tls.connector();
    if let Some(addr) = conn.connect_to {
        connector = connector.connect_to(addr);
    }
    let limit = conn.connect_timeout.min(conn.max_time);
    let connected =
        runtime.block_on(async { tokio::time::timeout(limit, connector.connect(uri)).await });
    match connected {
        Ok(Ok(stream)) => Handshake::Done(Box::new(stream)),
        Ok(Err(err)) => Handshake::Failed(err),
        Err(_) => {
            let which = if conn.connect_timeout <= conn.max_time {
                "--connect-timeout"
            } else {
                "--max-time"
            };
            Handshake::TimedOut(format!(
                "connection to {host} timed out after {} ({which}): no TLS handshake completed",
                super::seconds(limit)
            ))
        }
    }
}

/// A current-thread runtime for one command.
pub(super) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub(crate) fn run(args: ProbeArgs) -> ExitCode {
    let (uri, host) = match super::parse_https_url(&args.url, "probe") {
        Ok(u) => u,
        Err(e) => return usage_error(&e),
    };
    let policy = match build_policy(&host, &args.pins, args.policy.as_deref()) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    let tls = match pinned_tls(policy, args.conn.ca_file.as_deref(), true) {
        Ok(t) => t,
        Err(e) => return usage_error(&e),
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis probe: cannot start runtime: {e}");
            return ExitCode::from(EXIT_TLS);
        }
    };
    let connected = match handshake(&runtime, &tls, uri, &host, &args.conn) {
        Handshake::Done(stream) => Ok(stream),
        Handshake::Failed(err) => Err(err),
        Handshake::TimedOut(message) => {
            eprintln!("portcullis probe: {message}");
            return ExitCode::from(EXIT_TLS);
        }
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
                        .map(super::rfc3339)
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
            .and_then(|certs| {
                // Each one must parse, so that a bad file is explained in words here.
                certs
                    .iter()
                    .try_for_each(|c| super::pin_cmd::parse_x509(c.as_ref()).map(drop))
                    .map(|()| certs)
            })
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
        let file = PinPolicy::from_path(path).map_err(|e| {
            format!(
                "--policy {}\n(the file format: portcullis policy check --help)",
                e.to_string().trim_end()
            )
        })?;
        for entry in file.entries() {
            builder = builder.entry(entry.clone());
        }
    }
    if !pins.is_empty() {
        let pins = pins
            .iter()
            .map(|p| super::parse_pin(p))
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
