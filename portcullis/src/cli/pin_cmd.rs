//! `portcullis pin FILE...`: pins and fingerprints of certificates in PEM or DER files.

use std::path::PathBuf;
use std::process::ExitCode;

use portcullis_pin::Pin;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Print the `sha256/<base64>` SPKI pin of each certificate, with its subject, issuer,
/// expiry and SHA-256 certificate fingerprint.
#[derive(Debug, clap::Args)]
pub(crate) struct PinArgs {
    /// PEM (one or more certificates) or DER certificate files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub(crate) fn run(args: PinArgs) -> ExitCode {
    let mut failed = false;
    for path in &args.files {
        match read_certificates(path) {
            Ok(certs) => {
                for cert in certs {
                    match describe(&cert) {
                        Ok(text) => print!("{text}"),
                        Err(e) => {
                            eprintln!("portcullis pin: {}: {e}", path.display());
                            failed = true;
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("portcullis pin: {}: {e}", path.display());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads every certificate of a PEM file, or the one certificate of a DER file.
pub(crate) fn read_certificates(
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("invalid PEM: {e}"))?;
        if certs.is_empty() {
            return Err("no CERTIFICATE block in this PEM file".into());
        }
        Ok(certs)
    } else {
        Ok(vec![CertificateDer::from(bytes)])
    }
}

fn describe(cert: &CertificateDer<'_>) -> Result<String, String> {
    use x509_parser::prelude::*;
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate (expected PEM or DER): {e}"))?;
    let spki = Pin::from_spki_der(x509.tbs_certificate.subject_pki.raw);
    let fingerprint = Pin::from_certificate_der(cert.as_ref());
    Ok(format!(
        "{spki}\n  subject: {}\n  issuer: {}\n  notAfter: {}\n  sha256 fingerprint: {fingerprint}\n",
        x509.subject(),
        x509.issuer(),
        x509.validity().not_after.to_datetime(),
    ))
}
