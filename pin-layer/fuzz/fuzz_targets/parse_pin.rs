//! Pins and host patterns from arbitrary strings: never a panic; what parses round-trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_pin::fuzz::pin_and_pattern(data);
});
