//! `portcullis policy check FILE`: lint a pin policy; `portcullis policy init URL`: write one
//! for a live host.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portcullis_pin::{ChainLink, Mode, PinPolicy};
use time::{Duration, OffsetDateTime};

use super::probe::{ConnectArgs, EXIT_TLS, Handshake, handshake, pinned_tls, runtime};
use super::usage_error;

/// The policy file format, for `--help` (kept in step with portcullis/README.md and the parser
/// in pin-layer/src/policy.rs).
const POLICY_FORMAT: &str = "\
Policy file format (TOML; JSON with the same fields when the file name ends in .json):

  expiry_warning_days = 30          # optional: warn this many days before an entry expires

  [[host]]                          # one table per host pattern (alias: [[hosts]])
  pattern = \"api.example.com\"       # exact host; *.example.com = one label;
                                    # **.example.com = the domain and all its subdomains
  pins = [                          # at least two distinct pins (current + backup)
    \"sha256/<base64 of the SHA-256 of the SubjectPublicKeyInfo, 44 chars>\",
    \"sha256/<backup pin: a key not in use yet, kept offline>\",
  ]                                 # also: bare 44-char base64, or a colon-hex
                                    # SHA-256 certificate fingerprint (AB:CD:...)
  mode = \"enforce\"                  # or \"report_only\" (connect, but report a mismatch)
  expires = \"2027-06-30\"            # optional, a date or RFC 3339 date-time; after it
                                    # the entry only reports
  position = \"any\"                  # where a pin must match: leaf | intermediate | root | any
  allow_single_pin = false          # true waives the backup-pin rule (not recommended)
  report_uri = \"https://reports.example.com/pins\"   # optional

The most specific pattern wins. Unknown fields are errors. A pin of a key (SPKI) survives
certificate renewal with the same key; `portcullis pin FILE` prints the pins of certificates.

Examples:
  portcullis policy check pins.toml
  portcullis policy init https://api.example.com --output pins.toml && portcullis policy check pins.toml";

/// Pin policy tools.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCommand {
    /// Lint a policy file: backup pins, expiry in the past or within 30 days, pins that can
    /// never match. Exits non-zero when it finds an error.
    #[command(
        long_about = "Lint a pin policy file: it must parse, each entry needs a backup pin, \
                      and expiry in the past is an error, within 30 days a warning; pins that \
                      can never match are errors. Exit status 0 when there is no error, 1 \
                      otherwise.",
        after_help = POLICY_FORMAT
    )]
    Check {
        /// The policy file (TOML, or JSON by extension).
        file: PathBuf,
    },
    /// Connect to a live host and write a commented TOML policy pinning its verified chain
    /// (leaf, intermediates, root); add a backup pin before deploying it.
    #[command(
        long_about = "Connect to a live HTTPS host, validate its chain (system roots or \
                      --ca-file), and write a commented TOML policy with the leaf, \
                      intermediate and root pins of the verified chain. Before deploying it, \
                      add a backup pin for a key kept offline (the file says how). Prints to \
                      stdout, or writes --output (never overwriting a file). Exit status: 0 \
                      when written, 2 on a connection, TLS or timeout failure, 64 on a usage \
                      error.",
        after_help = "Examples:\n  \
            portcullis policy init https://api.example.com > pins.toml\n  \
            portcullis policy init https://api.example.com --output pins.toml\n  \
            portcullis policy init https://localhost:8443 --ca-file ca.pem \\\n      \
            --connect-to 127.0.0.1:8443 --connect-timeout 2 --output pins.toml\n  \
            portcullis policy check pins.toml"
    )]
    Init {
        /// `https://HOST[:PORT]`.
        url: String,
        /// Write the policy to this file (refuses to overwrite) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

pub(crate) fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Check { file } => check(&file),
        PolicyCommand::Init { url, output, conn } => init(&url, output.as_deref(), &conn),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let policy = match PinPolicy::from_path(path) {
        Ok(p) => p,
        Err(e) => {
            println!("error: {e}");
            eprintln!(
                "portcullis policy check: {}: 1 error (the file format: portcullis policy check \
                 --help)",
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    let findings = lint(&policy, OffsetDateTime::now_utc());
    let errors = findings.iter().filter(|f| f.starts_with("error")).count();
    for f in &findings {
        println!("{f}");
    }
    let warnings = findings.len() - errors;
    if errors > 0 {
        eprintln!(
            "portcullis policy check: {}: {errors} error(s), {warnings} warning(s)",
            path.display()
        );
        ExitCode::from(1)
    } else {
        println!(
            "{}: {} entries OK, {warnings} warning(s)",
            path.display(),
            policy.entries().len()
        );
        ExitCode::SUCCESS
    }
}

fn init(url: &str, output: Option<&Path>, conn: &ConnectArgs) -> ExitCode {
    let (uri, host) = match super::parse_https_url(url, "policy init") {
        Ok(u) => u,
        Err(e) => return usage_error(&e),
    };
    if let Some(path) = output
        && path.exists()
    {
        return usage_error(&format!(
            "--output {}: the file exists; refusing to overwrite it",
            path.display()
        ));
    }
    // No pins yet: standard validation only, recording the verified chain.
    let tls = match pinned_tls(PinPolicy::empty(), conn.ca_file.as_deref(), true) {
        Ok(t) => t,
        Err(e) => return usage_error(&e),
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis policy init: cannot start runtime: {e}");
            return ExitCode::from(EXIT_TLS);
        }
    };
    let stream = match handshake(&runtime, &tls, uri, &host, conn) {
        Handshake::Done(stream) => stream,
        Handshake::Failed(err) => {
            eprintln!(
                "portcullis policy init: {}",
                super::explain_connect_error(&err)
            );
            return ExitCode::from(EXIT_TLS);
        }
        Handshake::TimedOut(message) => {
            eprintln!("portcullis policy init: {message}");
            return ExitCode::from(EXIT_TLS);
        }
    };
    let Some(chain) = stream.peer().check().and_then(|c| c.verified_chain()) else {
        eprintln!("portcullis policy init: {host}: no verified chain was recorded");
        return ExitCode::from(EXIT_TLS);
    };
    let roots = match &conn.ca_file {
        Some(p) => format!("--ca-file {}", p.display()),
        None => "the system's root certificates".to_owned(),
    };
    let pattern = host.trim_start_matches('[').trim_end_matches(']');
    let text = policy_toml(pattern, chain, &roots, OffsetDateTime::now_utc());
    match output {
        None => print!("{text}"),
        Some(path) => {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
            if let Err(e) = written {
                eprintln!("portcullis policy init: --output {}: {e}", path.display());
                return ExitCode::from(1);
            }
            eprintln!(
                "portcullis policy init: wrote {} ({} pins for {host}); add a backup pin, then \
                 run: portcullis policy check {}",
                path.display(),
                chain.len(),
                path.display()
            );
        }
    }
    ExitCode::SUCCESS
}

/// The commented TOML policy for `host` pinning every certificate of `chain`.
fn policy_toml(host: &str, chain: &[ChainLink], roots: &str, now: OffsetDateTime) -> String {
    use std::fmt::Write as _;
    // A TOML basic string: the host comes from a parsed URI, but escape anyway.
    let quoted = |s: &str| {
        let mut q = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => q.push_str("\\\""),
                '\\' => q.push_str("\\\\"),
                c if c.is_control() => {
                    let _ = write!(q, "\\u{:04X}", u32::from(c));
                }
                c => q.push(c),
            }
        }
        q.push('"');
        q
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Pin policy for {}, written by `portcullis policy init` at {}",
        super::printable(host, 253),
        super::rfc3339(now)
    );
    let _ = writeln!(
        t,
        "# from the chain the server presented, validated against {}.",
        super::printable(roots, 200)
    );
    t.push_str(
        "# The format: `portcullis policy check --help`. Check it with `portcullis policy check`.\n\
         #\n\
         # BEFORE DEPLOYING, add a backup pin: the SPKI pin of a key that is NOT in use yet, kept\n\
         # offline, so that replacing a compromised or lost key does not lock clients out:\n\
         #   openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out backup-key.pem\n\
         #   openssl pkey -in backup-key.pem -pubout -outform DER | openssl dgst -sha256 -binary \\\n\
         #     | base64\n\
         # and add \"sha256/<that base64>\" to `pins` below. Pinning only the leaf breaks at the\n\
         # next key change; the intermediate and root pins survive a leaf renewal.\n\n\
         expiry_warning_days = 30\n\n\
         [[host]]\n",
    );
    let _ = writeln!(t, "pattern = {}", quoted(host));
    t.push_str("pins = [\n");
    let mut seen = HashSet::new();
    for link in chain {
        let expiry = link
            .not_after
            .map(|d| format!(", expires {}", super::rfc3339(d)))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "  # {}: {}{expiry}",
            link.position.as_str(),
            super::printable(&link.subject, 200)
        );
        if seen.insert(link.spki_pin) {
            let _ = writeln!(t, "  {},", quoted(&link.spki_pin.to_string()));
        } else {
            t.push_str("  # (same key as above)\n");
        }
    }
    t.push_str(
        "  # \"sha256/<your backup pin>\",\n\
         ]\n\
         mode = \"enforce\"          # \"report_only\" to watch before enforcing\n\
         position = \"any\"          # leaf | intermediate | root | any\n\
         # expires = \"YYYY-MM-DD\"  # optional: after it the entry only reports\n",
    );
    t
}

fn lint(policy: &PinPolicy, now: OffsetDateTime) -> Vec<String> {
    let mut out = Vec::new();
    for entry in policy.entries() {
        let pattern = entry.pattern();
        let mut seen = HashSet::new();
        for pin in entry.pins() {
            if !seen.insert(pin) {
                out.push(format!("warning: {pattern}: pin {pin} is listed twice"));
            }
            if pin.hash().iter().all(|b| *b == 0) {
                out.push(format!(
                    "error: {pattern}: pin {pin} is all zeros and can never match"
                ));
            }
        }
        if seen.len() < 2 {
            out.push(format!(
                "warning: {pattern}: only one distinct pin; a key rotation will lock clients out \
                 (add a backup pin)"
            ));
        }
        if entry.configured_mode() == Mode::ReportOnly {
            out.push(format!(
                "warning: {pattern}: report_only, nothing is enforced"
            ));
        }
        if let Some(expires) = entry.expiration() {
            if expires <= now {
                out.push(format!(
                    "error: {pattern}: expired on {}; the entry no longer enforces (reports only)",
                    expires.date()
                ));
            } else if expires - now <= Duration::days(30) {
                out.push(format!(
                    "warning: {pattern}: expires on {} (within 30 days); ship new pins",
                    expires.date()
                ));
            }
        }
    }
    out
}
