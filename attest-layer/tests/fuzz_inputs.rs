//! Runs the fuzz target's entry function over tricky inputs on every `cargo test`.

use portcullis_attest::fuzz::parse_signature_headers;

#[test]
fn the_header_parsers_survive_tricky_inputs() {
    let long_list = format!("sig1=({});created=1", "\"a\" ".repeat(5000));
    let deep = "(".repeat(10_000);
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\n\n".to_vec(),
        b"sig1=(\"@method\" \"@path\");created=1618884473;keyid=\"k\"\nsig1=:AAAA:\nsha-256=:AAAA:"
            .to_vec(),
        b"sig1=(\"@query-param\";name=\"a\");created=1\nsig1=:/w==:".to_vec(),
        b"sig1=(\"@query-param\";name=\"zzz\")".to_vec(),
        b"sig1=(\"@query-param\")".to_vec(),
        b"sig1=(\"content-type\";bs);created=99999999999999".to_vec(),
        b"sig1=(\"@method\");created=-1;expires=1.5;nonce=?1;keyid=:AA==:".to_vec(),
        b"sig1=(\"@method\" \"@method\")".to_vec(),
        b"sig1=(\"x-missing\")".to_vec(),
        b"sig1=(\"@status\")".to_vec(),
        b"sig1=(\"\")".to_vec(),
        b"sig1=(\"\xff\xfe\")".to_vec(),
        b"a=(), b=(\"@path\"), a=(\"@method\")".to_vec(),
        b"SIG=(\"@method\")".to_vec(),
        b"sig1=(\"@method\");created=999999999999999;expires=999999999999999".to_vec(),
        b"sig1=(\"@method\");created=9999999999999999".to_vec(),
        b"\nsig1=:not base64!:\nsha-256=:====:".to_vec(),
        b"\nsig1=:\n".to_vec(),
        b"\n\nsha-256=(1 2), sha-512=?1, unknown=:AA==:".to_vec(),
        long_list.into_bytes(),
        deep.into_bytes(),
        vec![0u8; 1024],
        (0u8..=255).collect(),
    ];
    for case in &cases {
        parse_signature_headers(case);
    }
}
