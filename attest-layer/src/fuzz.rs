//! Entry points for the fuzz targets in `attest-layer/fuzz` (not a stable API).

use http::{HeaderMap, Method, Uri};

use crate::components::RequestParts;
use crate::digest::parse_content_digest;
use crate::params::{
    parse_signature, parse_signature_input, serialize_signature, serialize_signature_input,
};

/// Feeds arbitrary bytes to the `Signature-Input`, `Signature` and `Content-Digest` parsers.
///
/// The input is split on `\n` into the three field values. Whatever parses must serialize
/// and parse back to the same value, and must build a signature base (or fail cleanly)
/// against a fixed request. Panics only on a bug.
pub fn parse_signature_headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.splitn(3, '\n');
    let input = fields.next().unwrap_or("");
    let signature = fields.next().unwrap_or("");
    let digest = fields.next().unwrap_or("");

    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert("host", http::HeaderValue::from_static("example.com"));
    let uri = Uri::from_static("/foo?a=1&b=%20x&a2=");
    let req = RequestParts::new(&Method::POST, &uri, &headers, "https");

    if let Ok(parsed) = parse_signature_input(&[input]) {
        for (label, params) in &parsed {
            let text = serialize_signature_input(label, params).expect("a parsed label serializes");
            let again =
                parse_signature_input(&[&text]).expect("a serialized signature-input parses");
            assert_eq!(&again[0].1, params, "signature-input round trip");
            let _ = params.signature_base(&req);
            let _ = (
                params.created(),
                params.expires(),
                params.nonce(),
                params.keyid(),
                params.alg(),
                params.tag(),
            );
        }
    }
    if let Ok(parsed) = parse_signature(&[signature]) {
        for (label, bytes) in &parsed {
            let text = serialize_signature(label, bytes).expect("a parsed label serializes");
            assert_eq!(&parse_signature(&[&text]).expect("round trip")[0].1, bytes);
        }
    }
    let _ = parse_content_digest(&[digest]);
}
