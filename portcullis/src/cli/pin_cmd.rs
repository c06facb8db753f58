//! `portcullis pin FILE...`: pins and fingerprints of certificates in PEM or DER files.

use std::path::PathBuf;
use std::process::ExitCode;

use portcullis_pin::Pin;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Print the `sha256/<base64>` SPKI pin of each certificate, with its subject, issuer,
/// expiry and SHA-256 certificate fingerprint.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    portcullis pin server.pem                 # every certificate of a PEM chain\n  \
    portcullis pin leaf.der root.pem\n  \
    portcullis pin --format curl server.pem   # for curl --pinnedpubkey\n  \
    curl --pinnedpubkey \"$(portcullis pin --format curl leaf.pem)\" https://example.com\n\n\
    Exit status: 0 when every file was read, 1 otherwise.")]
pub(crate) struct PinArgs {
    /// PEM (one or more certificates) or DER certificate files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// `text`: the pin with subject, issuer, expiry and fingerprint; `curl`: only curl's
    /// `sha256//<base64>` form of the SPKI pin, one line per certificate.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "curl"])]
    format: String,
}

pub(crate) fn run(args: PinArgs) -> ExitCode {
    let mut failed = false;
    for path in &args.files {
        match read_certificates(path) {
            Ok(certs) => {
                for cert in certs {
                    let described = if args.format == "curl" {
                        curl_pin(&cert)
                    } else {
                        describe(&cert)
                    };
                    match described {
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
    if bytes.is_empty() {
        return Err("the file is empty (expected a PEM or DER certificate)".into());
    }
    if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                format!(
                    "invalid PEM ({}); expected complete -----BEGIN CERTIFICATE----- ... \
                     -----END CERTIFICATE----- blocks",
                    pem_error(&e)
                )
            })?;
        if certs.is_empty() {
            return Err("no CERTIFICATE block in this PEM file".into());
        }
        Ok(certs)
    } else {
        Ok(vec![CertificateDer::from(bytes)])
    }
}

/// A PEM reading error in words (the library's Display shows Debug forms of byte strings).
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a BEGIN line without its END line: the file is \
                                            truncated"
            .into(),
        Error::IllegalSectionStart { .. } => "a malformed -----BEGIN line".into(),
        Error::Base64Decode(_) => "the text between BEGIN and END is not valid base64".into(),
        _ => "unreadable PEM".into(),
    }
}

pub(crate) fn parse_x509(
    der: &[u8],
) -> Result<x509_parser::certificate::X509Certificate<'_>, String> {
    use x509_parser::prelude::*;
    if der.is_empty() {
        return Err("the file is empty (expected a PEM or DER certificate)".into());
    }
    match X509Certificate::from_der(der) {
        Ok((_, x509)) => Ok(x509),
        Err(_) => Err(format!(
            "not an X.509 certificate: {} bytes of DER that do not parse (truncated or not a \
             certificate); expected a PEM CERTIFICATE block or a DER certificate",
            der.len()
        )),
    }
}

/// curl's `--pinnedpubkey` form: `sha256//<base64>`.
fn curl_pin(cert: &CertificateDer<'_>) -> Result<String, String> {
    let x509 = parse_x509(cert.as_ref())?;
    let spki = Pin::from_spki_der(x509.tbs_certificate.subject_pki.raw).to_string();
    let b64 = spki.strip_prefix("sha256/").unwrap_or(&spki);
    Ok(format!("sha256//{b64}\n"))
}

fn describe(cert: &CertificateDer<'_>) -> Result<String, String> {
    let x509 = parse_x509(cert.as_ref())?;
    let spki = Pin::from_spki_der(x509.tbs_certificate.subject_pki.raw);
    let fingerprint = Pin::from_certificate_der(cert.as_ref());
    Ok(format!(
        "{spki}\n  subject: {}\n  issuer: {}\n  notAfter: {}\n  sha256 fingerprint: {fingerprint}\n",
        super::printable(&x509.subject().to_string(), 512),
        super::printable(&x509.issuer().to_string(), 512),
        super::rfc3339(x509.validity().not_after.to_datetime()),
    ))
}
