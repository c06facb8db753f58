//! `portcullis policy check FILE`: lint a pin policy.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

use portcullis_pin::{Mode, PinPolicy};
use time::{Duration, OffsetDateTime};

/// Pin policy tools.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCommand {
    /// Lint a policy file: backup pins, expiry in the past or within 30 days, pins that can
    /// never match. Exits non-zero when it finds an error.
    Check {
        /// The policy file (TOML, or JSON by extension).
        file: PathBuf,
    },
}

pub(crate) fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Check { file } => check(&file),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let policy = match PinPolicy::from_path(path) {
        Ok(p) => p,
        Err(e) => {
            println!("error: {e}");
            eprintln!("portcullis policy check: {}: 1 error", path.display());
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
