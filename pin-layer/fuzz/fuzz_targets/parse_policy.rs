//! Policy files (TOML and JSON) from arbitrary bytes: never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_pin::fuzz::policy(data);
});
