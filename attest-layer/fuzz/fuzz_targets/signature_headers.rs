//! Fuzzes the `Signature-Input`, `Signature` and `Content-Digest` parsers.
//!
//! Run with `cargo +nightly fuzz run signature_headers` from `attest-layer/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis_attest::fuzz::parse_signature_headers(data);
});
