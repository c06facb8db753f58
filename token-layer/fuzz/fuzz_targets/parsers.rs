//! Fuzzes every parser of network and file input in portcullis-token: `Authorization`,
//! `WWW-Authenticate`, JWT validation, OAuth token responses, the stored token record and the
//! encrypted store file. Run with `cargo +nightly fuzz run parsers` from `token-layer/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis_token::fuzz::parsers(data);
});
