//! The fuzz targets' entry points over inputs that have broken parsers like these before.

use portcullis_pin::fuzz;

const PIN_INPUTS: &[&str] = &[
    "",
    " ",
    "/",
    "sha256/",
    "SHA256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=",
    "sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E",
    "sha256//////////////////////////////////////////8=",
    "r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=",
    "::",
    ":::::::::::::::::::::::::::::::",
    "AB:",
    ":AB",
    "sha256 Fingerprint=",
    "Fingerprint=AB:CD",
    "éé:éé",
    "\u{0}\u{0}",
    "**.",
    "*.",
    "**.*.example.com",
    "[::1]",
    "[",
    "]",
    "[::1",
    "xn--",
    "xn--zz.example.com",
    "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.example.com",
    "example.com.",
    "..",
    "ß.example.com",
    "١٢٣.example",
];

#[test]
fn pin_and_pattern_parsers_survive_tricky_inputs() {
    for input in PIN_INPUTS {
        fuzz::pin_and_pattern(input.as_bytes());
    }
    let long = "a".repeat(100_000);
    fuzz::pin_and_pattern(long.as_bytes());
    fuzz::pin_and_pattern(&[0xff, 0xfe, 0x00]);
    let many_labels = "a.".repeat(2000) + "com";
    fuzz::pin_and_pattern(many_labels.as_bytes());
}

#[test]
fn policy_parsers_survive_tricky_inputs() {
    let inputs = [
        "",
        "[[host]]",
        "[[host]]\npattern = 1\npins = 2",
        "{\"host\": [{\"pattern\": \"**.example.com\", \"pins\": []}]}",
        "{\"host\": [{\"pattern\": \"x.example.com\", \"pins\": [\"sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=\"], \"allow_single_pin\": true}]}",
        "expiry_warning_days = 4294967295\n",
        "expiry_warning_days = -1\n",
        "[[host]]\npattern = \"*.example.com\"\npins = [\"sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=\"]\nallow_single_pin = true\nexpires = \"9999-12-31\"\n",
        "[[host]]\npattern = \"*.example.com\"\npins = [\"sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=\"]\nallow_single_pin = true\nexpires = \"-9999-01-01\"\n",
        "{\"host\": null}",
        "[",
        "{",
        "\"",
    ];
    for input in inputs {
        fuzz::policy(input.as_bytes());
    }
    let deep = "[".repeat(10_000);
    fuzz::policy(deep.as_bytes());
    let deep_json = "{\"host\":".repeat(5_000);
    fuzz::policy(deep_json.as_bytes());
}
