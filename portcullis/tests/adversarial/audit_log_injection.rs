//! Threat: log injection — request paths and header-borne values (a signature's `keyid`)
//! carrying CR/LF, quotes, backslashes, JSON fragments, ANSI escapes or megabytes, written
//! raw onto the wire to forge audit records ("event.outcome":"success"), split a line in two,
//! repaint an operator's terminal or bloat the log. Defence: the audit layer (`Auditor` with a
//! `JsonLinesFile` sink and the `AuditCollector`, outermost in the preset server stack)
//! serializes every record with serde, one object per line, keeps only schema fields and cuts
//! values at 512 bytes; hyper refuses raw control bytes before any layer runs. Every line of
//! the audit file and of the JSON `tracing` output is parsed back and checked.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use portcullis::attest::{SigningKey, StaticKeys, VerifySignatureLayer};
use portcullis::audit::{Auditor, JsonLinesFile};
use serde_json::Value;
use tower::service_fn;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::support::{Logs, Serving, TempDir};

/// The `event.action` an attacker tries to forge.
const FORGED: &str = "forged.action";
const MAX_VALUE_LEN: usize = 512;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every `event.action` in `v`, nested events included.
fn actions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                if k == "event.action"
                    && let Some(s) = val.as_str()
                {
                    out.push(s.to_owned());
                }
                actions(val, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| actions(i, out)),
        _ => {}
    }
}

/// Every string value in `v`, nested ones included.
fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Object(map) => map.values().for_each(|x| strings(x, out)),
        Value::Array(items) => items.iter().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn request(target: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut r = b"GET ".to_vec();
    r.extend_from_slice(target);
    r.extend_from_slice(b" HTTP/1.1\r\nhost: localhost\r\n");
    r.extend_from_slice(extra);
    r.extend_from_slice(b"connection: close\r\n\r\n");
    r
}

/// A signature whose `keyid` is `keyid` (an sf-string: `"` and `\` escaped).
fn signature_headers(keyid: &str) -> Vec<u8> {
    let escaped = keyid.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "signature-input: sig1=(\"@method\" \"@authority\" \"@path\" \"@query\");created={};keyid=\"{escaped}\";nonce=\"n-{}\"\r\nsignature: sig1=:AAAA:\r\n",
        now(),
        escaped.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn hostile_paths_and_keyids_never_forge_or_break_audit_lines() {
    let dir = TempDir::new("audit");
    let file = dir.path().join("audit.jsonl");
    let auditor = Auditor::builder()
        .sink(JsonLinesFile::open(&file).unwrap())
        .tracing_records(true)
        .build()
        .unwrap();
    let logs = Logs::default();
    let subscriber = tracing_subscriber::registry()
        .with(auditor.collector())
        .with(logs.layer())
        .with(tracing_subscriber::filter::LevelFilter::TRACE);
    let _guard = testkit::subscriber::set_default(subscriber);

    let key = SigningKey::generate_ed25519("device-1").unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let stack = portcullis::server::builder()
        .audit(auditor.server_layer())
        .verify_signatures(
            VerifySignatureLayer::builder(StaticKeys::new().with("device-1", key.verifying_key()))
                .build()
                .unwrap(),
        )
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new()))) }
        }));
    let serving = Serving::start(stack).await;

    // sf-strings: printable ASCII, `"` and `\` escaped on the wire.
    let keyids = [
        format!(
            "\"}}{{\"event.action\":\"{FORGED}\",\"event.outcome\":\"success\",\"user.id\":\"admin\"}}"
        ),
        format!("a\",\"event.action\":\"{FORGED}\",\"x\":\"\\u001b[2J"),
        "quote\" back\\slash {braces} 'single'".to_owned(),
        "k".repeat(3000),
    ];
    let long_path = format!("/{}", "p".repeat(20_000));
    let mut attacks: Vec<(String, Vec<u8>)> = vec![
        (
            "encoded CRLF and JSON in the path".into(),
            request(
                format!("/a%0d%0a%7b%22event.action%22:%22{FORGED}%22%7d").as_bytes(),
                b"",
            ),
        ),
        (
            "quotes, backslashes and braces in the path".into(),
            request(
                format!("/x\"}},{{\"event.action\":\"{FORGED}\"}}\\u001b").as_bytes(),
                b"",
            ),
        ),
        ("a 20 kB path".into(), request(long_path.as_bytes(), b"")),
        (
            "raw CR LF in the path".into(),
            request(b"/a\r\nx-injected: 1", b""),
        ),
        (
            "raw ESC in the path".into(),
            request(b"/\x1b[31mred\x1b[0m", b""),
        ),
        ("raw NUL in the path".into(), request(b"/a\x00b", b"")),
        (
            "raw ESC in a header".into(),
            request(b"/h", b"user-agent: \x1b]0;pwned\x07\r\n"),
        ),
        (
            "C1 control (UTF-8 CSI) in a header".into(),
            request(b"/h", "user-agent: \u{9b}31m\r\n".as_bytes()),
        ),
    ];
    for (i, keyid) in keyids.iter().enumerate() {
        attacks.push((
            format!("keyid #{i}"),
            request(b"/orders", &signature_headers(keyid)),
        ));
    }

    let mut answered_by_stack = 0;
    for (what, bytes) in &attacks {
        match serving.raw(bytes).await {
            Some(res) if res.status == 401 => answered_by_stack += 1,
            // hyper refuses malformed request lines and heads before any layer.
            Some(res) => assert_eq!(res.status, 400, "{what}"),
            None => {}
        }
    }
    assert_eq!(reached.load(Ordering::SeqCst), 0, "no forged request ran");
    assert!(
        answered_by_stack >= 2 + keyids.len(),
        "the encoded and quoted paths and every keyid reached the stack ({answered_by_stack})"
    );

    // The audit file: every line one JSON object, no forged action, values cut, no raw
    // control bytes.
    let raw = std::fs::read(&file).unwrap();
    assert!(
        !raw.contains(&0x1b) && !raw.contains(&b'\r'),
        "raw control bytes"
    );
    let text = String::from_utf8(raw).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let requests: Vec<&Value> = records
        .iter()
        .filter(|r| r["event.action"] == "http.request")
        .collect();
    assert_eq!(requests.len(), answered_by_stack, "one record per request");
    for r in &records {
        assert!(r.is_object(), "{r}");
        let mut seen = Vec::new();
        actions(r, &mut seen);
        assert!(!seen.iter().any(|a| a == FORGED), "forged action in {r}");
        let mut values = Vec::new();
        strings(r, &mut values);
        for v in values {
            assert!(v.len() <= MAX_VALUE_LEN, "uncut value of {} bytes", v.len());
        }
    }
    for r in &requests {
        assert_eq!(r["client.address"], "127.0.0.1");
        assert_eq!(r["http.response.status_code"], 401);
        assert_eq!(r["event.outcome"], "failure");
    }
    // A claimed keyid is not an identity: refused as an unknown key, it is recorded, if at
    // all, verbatim (escaped, cut at 512 bytes), never as something else.
    let keyed: Vec<&&Value> = requests
        .iter()
        .filter(|r| r["portcullis.events"][0]["event.reason"] == "unknown_key")
        .collect();
    assert_eq!(keyed.len(), keyids.len(), "{text}");
    for r in keyed {
        let user = r["user.id"].as_str().unwrap_or_default();
        assert!(
            user.is_empty()
                || keyids
                    .iter()
                    .any(|k| user == &k[..k.len().min(MAX_VALUE_LEN)]),
            "{r}"
        );
    }
    // The quoted path went in verbatim, escaped, not rewritten.
    let quoted = format!("/x\"}},{{\"event.action\":\"{FORGED}\"}}\\u001b");
    assert!(
        requests.iter().any(|r| r["url.path"] == quoted.as_str()),
        "{requests:?}"
    );

    // The JSON tracing output: every line parses (Logs::events panics otherwise), no
    // forged action anywhere.
    let events = logs.events();
    assert!(
        events
            .iter()
            .any(|e| e["event.action"] == "signature.verify")
    );
    for e in &events {
        let mut seen = Vec::new();
        actions(e, &mut seen);
        assert!(!seen.iter().any(|a| a == FORGED), "forged action in {e}");
    }
}
