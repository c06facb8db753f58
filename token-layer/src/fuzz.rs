//! Entry points for fuzzing the parsers that read network and file input. Not a stable API.

use std::sync::OnceLock;

use crate::require::{Algorithm, JwtValidator, VerificationKey};

fn validator() -> &'static JwtValidator {
    static V: OnceLock<JwtValidator> = OnceLock::new();
    V.get_or_init(|| {
        let key = VerificationKey::hmac(Algorithm::HS256, &[0x5a; 32])
            .unwrap_or_else(|_| unreachable!("32-byte HMAC key"));
        JwtValidator::builder()
            .issuer("https://issuer.fuzz")
            .audience("fuzz")
            .key(key)
            .build()
            .unwrap_or_else(|_| unreachable!("complete builder"))
    })
}

/// Feeds `data` to every parser: `Authorization`, `WWW-Authenticate`, JWT validation, OAuth
/// token responses, the stored token record and the encrypted store file. Must never panic.
pub fn parsers(data: &[u8]) {
    let _ = crate::header::parse_authorization(data);
    let _ = crate::header::parse_www_authenticate(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = validator().validate(s);
        if let Ok(token) = crate::header::parse_authorization(data) {
            let _ = validator().validate(token);
        }
    }
    let _ = crate::token::parse_token_response(200, data);
    let _ = crate::token::parse_token_response(400, data);
    crate::token::fuzz_record(data);
    crate::secret::fuzz_file(data);
}
