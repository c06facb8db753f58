//! Pins: the SHA-256 of a SubjectPublicKeyInfo, or of a whole certificate.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// A pin: what a certificate on the verified chain must hash to.
///
/// Three textual forms are accepted by [`FromStr`]:
/// - `sha256/<base64>`: the SHA-256 of the DER SubjectPublicKeyInfo (OkHttp, HPKP, curl's
///   `--pinnedpubkey`), an [`Pin::Spki`] pin;
/// - a bare 44-character base64 SHA-256, the same SPKI pin without its prefix (TrustKit,
///   Android Network Security Config);
/// - 32 colon-separated hex bytes, the certificate fingerprint that
///   `openssl x509 -noout -fingerprint -sha256` prints, a [`Pin::Certificate`] pin that matches
///   one exact certificate rather than its key.
///
/// [`Display`](fmt::Display) prints `sha256/<base64>` for SPKI pins and colon-hex for
/// certificate pins, which parse back to the same pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pin {
    /// SHA-256 of the DER-encoded SubjectPublicKeyInfo.
    Spki([u8; 32]),
    /// SHA-256 of the whole DER-encoded certificate.
    Certificate([u8; 32]),
}

impl Pin {
    /// The SPKI pin of a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(spki: &[u8]) -> Self {
        Self::Spki(Sha256::digest(spki).into())
    }

    /// The certificate pin of a DER certificate.
    pub fn from_certificate_der(cert: &[u8]) -> Self {
        Self::Certificate(Sha256::digest(cert).into())
    }

    /// The 32 hash bytes.
    pub fn hash(&self) -> &[u8; 32] {
        match self {
            Self::Spki(h) | Self::Certificate(h) => h,
        }
    }

    /// Whether this pin names a key (`true`) or one whole certificate (`false`).
    pub fn is_spki(&self) -> bool {
        matches!(self, Self::Spki(_))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spki(h) => write!(f, "sha256/{}", STANDARD.encode(h)),
            Self::Certificate(h) => {
                for (i, b) in h.iter().enumerate() {
                    if i > 0 {
                        f.write_str(":")?;
                    }
                    write!(f, "{b:02X}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

/// A string that is not a pin in any accepted form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid pin {input:?}: {reason}; expected `sha256/<base64 of 32 bytes>`, a bare 44-character \
     base64 SHA-256, or a 32-byte colon-hex SHA-256 certificate fingerprint \
     (AB:CD:...)"
)]
pub struct PinParseError {
    input: String,
    reason: &'static str,
}

impl PinParseError {
    fn new(input: &str, reason: &'static str) -> Self {
        // Pins are public values, but keep messages bounded for hostile input.
        let input: String = input.chars().take(120).collect();
        Self { input, reason }
    }

    /// Why the string was refused.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl FromStr for Pin {
    type Err = PinParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(PinParseError::new(input, "the pin is empty"));
        }
        if s.len() == 44 && !s.contains(':') && STANDARD.decode(s).is_ok_and(|b| b.len() == 32) {
            return decode_b64(input, s).map(Pin::Spki);
        }
        if let Some((alg, rest)) = s.split_once('/') {
            if !alg.eq_ignore_ascii_case("sha256") {
                return Err(PinParseError::new(
                    input,
                    "only sha256 pins are supported (the prefix must be `sha256/`)",
                ));
            }
            return decode_b64(input, rest).map(Pin::Spki);
        }
        if s.contains(':') {
            return decode_colon_hex(input, s).map(Pin::Certificate);
        }
        if s.len() == 44 {
            return decode_b64(input, s).map(Pin::Spki);
        }
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PinParseError::new(
                input,
                "plain hex is ambiguous; write a certificate fingerprint with colons \
                 (AB:CD:...) or an SPKI pin as sha256/<base64>",
            ));
        }
        Err(PinParseError::new(input, "not a recognised pin form"))
    }
}

fn decode_b64(input: &str, b64: &str) -> Result<[u8; 32], PinParseError> {
    if b64.len() != 44 {
        return Err(PinParseError::new(
            input,
            "the base64 part must be 44 characters (32 bytes with padding)",
        ));
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| PinParseError::new(input, "the base64 part is not valid base64"))?;
    bytes
        .try_into()
        .map_err(|_| PinParseError::new(input, "the hash is not 32 bytes"))
}

fn decode_colon_hex(input: &str, s: &str) -> Result<[u8; 32], PinParseError> {
    // openssl prints `sha256 Fingerprint=AB:CD:...`; accept that prefix too.
    let s = s.rsplit_once('=').map_or(s, |(prefix, hex)| {
        if prefix.to_ascii_lowercase().contains("fingerprint") {
            hex
        } else {
            s
        }
    });
    let mut out = [0u8; 32];
    let mut n = 0;
    for part in s.split(':') {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PinParseError::new(
                input,
                "each colon-separated part must be two hex digits",
            ));
        }
        if n == 32 {
            return Err(PinParseError::new(
                input,
                "a SHA-256 fingerprint has 32 bytes, this one has more",
            ));
        }
        out[n] = u8::from_str_radix(part, 16)
            .map_err(|_| PinParseError::new(input, "invalid hex digit"))?;
        n += 1;
    }
    if n != 32 {
        return Err(PinParseError::new(
            input,
            "a SHA-256 fingerprint has 32 bytes, this one has fewer",
        ));
    }
    Ok(out)
}

impl serde::Serialize for Pin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B64: &str = "r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=";

    #[test]
    fn spki_forms_round_trip() {
        let a: Pin = format!("sha256/{B64}").parse().unwrap();
        let b: Pin = B64.parse().unwrap();
        assert_eq!(a, b);
        assert!(a.is_spki());
        assert_eq!(a.to_string(), format!("sha256/{B64}"));
        assert_eq!(a.to_string().parse::<Pin>().unwrap(), a);
    }

    #[test]
    fn certificate_fingerprint_round_trips_and_differs_from_spki() {
        let hex = (0..32)
            .map(|i| format!("{i:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let p: Pin = hex.parse().unwrap();
        assert!(!p.is_spki());
        assert_eq!(p.to_string(), hex);
        assert_eq!(p.to_string().parse::<Pin>().unwrap(), p);
        let lower: Pin = hex.to_lowercase().parse().unwrap();
        assert_eq!(lower, p);
        let openssl: Pin = format!("sha256 Fingerprint={hex}").parse().unwrap();
        assert_eq!(openssl, p);
        assert_ne!(Pin::Spki(*p.hash()), p);
    }

    #[test]
    fn malformed_pins_are_refused_with_their_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("sha1/AAAA", "only sha256"),
            ("sha256/abc", "44 characters"),
            (
                "sha256/!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=",
                "not valid base64",
            ),
            (
                "sha256/!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
                "not valid base64",
            ),
            ("AB:CD", "fewer"),
            (&[["AB"; 33].join(":")].concat(), "more"),
            ("AB:CD:EG", "two hex digits"),
            ("A:BC", "two hex digits"),
            (&"ab".repeat(32), "ambiguous"),
            ("hello", "not a recognised pin form"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<Pin>().unwrap_err();
            assert!(
                err.to_string().contains(reason),
                "{input:?}: {err} should mention {reason:?}"
            );
            assert!(err.to_string().contains("expected `sha256/"), "{err}");
        }
    }
}
