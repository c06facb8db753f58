//! Threat: a certificate from another trusted CA (a mis-issuing or coerced CA, a corporate
//! proxy) for a pinned domain's host whose name strict IDNA rejects but TLS accepts: an
//! underscore or `--` in positions 3-4, as CDN node names use (`r3---sn-4g5e.…`). Such names
//! used to canonicalise to nothing, so no pin applied and the connection passed. Defence: one
//! canonical form for policy patterns and server names, the way the TLS stack matches names
//! (lower case, no trailing dot, UTS-46 without STD3 rules or hyphen checks); a name with no
//! canonical form is refused with `UnpinnableHost` and a `tls.pin.check` failure event.

use std::sync::{Arc, Mutex};

use portcullis::pin::{ConnectError, PinPolicy, PinnedStream, PinnedTls};
use testkit::pki::{Authority, LeafSpec, TestPki};
use testkit::server::{TestServer, server_config};

/// Names rustls and webpki accept as server names that `idna::domain_to_ascii_strict`
/// rejects.
const CDN_NAMES: &[&str] = &[
    "a_b.example.test",
    "ab--cd.example.test",
    "r3---sn-4g5e.example.test",
    "R3---SN-4G5E.Example.Test.",
];

/// The pinned site's CA and a second CA the client also trusts (the attacker's).
struct Cas {
    legit: TestPki,
    second: TestPki,
}

impl Cas {
    fn new() -> Self {
        Self {
            legit: TestPki::named("Pinned Site"),
            second: TestPki::named("Other Trusted"),
        }
    }

    /// A client trusting both CAs, with `**.example.test` pinned to the legit CA's root key.
    fn client(&self) -> PinnedTls {
        let policy = PinPolicy::builder()
            .pin(
                "**.example.test",
                &[
                    &self.legit.root.spki_pin(),
                    &Authority::root("Offline Backup").spki_pin(),
                ],
            )
            .unwrap()
            .build()
            .unwrap();
        PinnedTls::builder(policy)
            .root_certificates([self.legit.root.cert(), self.second.root.cert()])
            .unwrap()
            .build()
            .unwrap()
    }
}

/// A server with a certificate for `name` (without a trailing dot) from `ca`.
async fn serve(ca: &TestPki, name: &str) -> TestServer {
    let san = name.strip_suffix('.').unwrap_or(name);
    let leaf = ca
        .intermediate
        .issue(&LeafSpec::server().with_names(&[san]));
    TestServer::https(server_config(ca.chain_for(&leaf), leaf.key_der())).await
}

/// Connects to `server` on 127.0.0.1 with `name` as the server name (SNI and verification).
async fn connect(
    tls: &PinnedTls,
    server: &TestServer,
    name: &str,
) -> Result<PinnedStream, ConnectError> {
    tls.connector()
        .connect_to(server.addr())
        .connect(
            format!("https://{name}:{}/", server.port())
                .parse()
                .unwrap(),
        )
        .await
}

#[tokio::test]
async fn other_trusted_ca_is_refused_for_cdn_style_names() {
    let cas = Cas::new();
    let tls = cas.client();
    for name in CDN_NAMES {
        let server = serve(&cas.second, name).await;
        let err = connect(&tls, &server, name).await.unwrap_err();
        let failure = err
            .pin_failure()
            .unwrap_or_else(|| panic!("{name}: expected a pin failure, got {err}"));
        assert_eq!(failure.pattern(), "**.example.test", "{name}");
        assert!(
            failure.to_string().contains("Other Trusted Root CA"),
            "{failure}"
        );
        assert_eq!(server.requests(), 0, "{name}");
    }
}

#[tokio::test]
async fn control_the_pinned_ca_is_accepted_for_the_same_names() {
    let cas = Cas::new();
    let tls = cas.client();
    for name in CDN_NAMES {
        let server = serve(&cas.legit, name).await;
        let stream = connect(&tls, &server, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let pin = stream.peer().matched_pin().expect("pinned and matched");
        assert_eq!(pin.to_string(), cas.legit.root.spki_pin(), "{name}");
    }
}

#[tokio::test]
async fn name_without_a_canonical_form_fails_closed() {
    // Valid for rustls and webpki, but `xn--a` is not punycode: UTS-46 has no form for it.
    let name = "xn--a.example.test";
    let cas = Cas::new();
    let tls = cas.client();
    let events = Arc::new(Mutex::new(Vec::new()));
    let _guard = testkit::subscriber::set_default(capture(events.clone()));
    for ca in [&cas.second, &cas.legit] {
        let server = serve(ca, name).await;
        let err = connect(&tls, &server, name).await.unwrap_err();
        let refused = err
            .unpinnable_host()
            .unwrap_or_else(|| panic!("expected UnpinnableHost, got {err}"));
        assert_eq!(refused.host(), name);
        assert_eq!(server.requests(), 0);
    }
    let text = String::from_utf8(events.lock().unwrap().clone()).unwrap();
    assert_eq!(
        text.matches("\"event.reason\":\"host_not_canonical\"")
            .count(),
        2,
        "{text}"
    );
}

fn capture(buf: Arc<Mutex<Vec<u8>>>) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || Writer(buf.clone()))
        .finish()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
