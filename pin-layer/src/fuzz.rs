//! Entry points for the fuzz targets in `pin-layer/fuzz` (and their regression test).
//!
//! Each takes arbitrary bytes, must never panic, and checks the parsers' invariants.

use crate::{HostPattern, Pin, PinPolicy};

/// Parses `data` as a pin and as a host pattern; whatever parses must round-trip through
/// `Display`, and every error must say what was expected.
///
/// # Panics
/// When an invariant breaks (that is the point of a fuzz target).
pub fn pin_and_pattern(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.parse::<Pin>() {
        Ok(pin) => {
            let again: Pin = pin.to_string().parse().expect("Display round-trips");
            assert_eq!(again, pin);
        }
        Err(e) => assert!(e.to_string().contains("expected")),
    }
    if let Ok(pattern) = HostPattern::parse(s) {
        let again = HostPattern::parse(&pattern.to_string()).expect("canonical form parses");
        assert_eq!(again, pattern);
        let _ = pattern.matches(s);
    }
}

/// Parses `data` as a TOML and as a JSON policy, and looks a host up in what parses.
pub fn policy(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [PinPolicy::from_toml(s), PinPolicy::from_json(s)] {
        match parsed {
            Ok(policy) => {
                for entry in policy.entries() {
                    let host = entry
                        .pattern()
                        .to_string()
                        .replace("**.", "")
                        .replace("*.", "a.");
                    assert!(policy.entry_for(&host).is_some(), "{host}");
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
