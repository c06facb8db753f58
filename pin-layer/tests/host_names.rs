//! Host names that strict IDNA rejects but TLS accepts (underscores, `--` in positions 3-4, as
//! CDN node names use) are pinned like any other, and a name without a canonical form fails
//! closed: real handshakes on loopback, with two trusted CAs.

use std::sync::{Arc, Mutex};

use portcullis_pin::{Pin, PinPolicy, PinnedTls, Position};
use testkit::pki::{Authority, LeafSpec, TestPki};
use testkit::server::{TestServer, server_config};

const CDN_NAMES: &[&str] = &[
    "a_b.example.test",
    "ab--cd.example.test",
    "r3---sn-4g5e.example.test",
];

/// `**.example.test` pinned to the legit CA's root key (and an offline backup); the client
/// trusts both the legit CA and a second one.
fn tls(legit: &TestPki, second: &TestPki, policy: Option<PinPolicy>) -> PinnedTls {
    let policy = policy.unwrap_or_else(|| {
        PinPolicy::builder()
            .pin(
                "**.example.test",
                &[
                    &legit.root.spki_pin(),
                    &Authority::root("Offline Backup").spki_pin(),
                ],
            )
            .unwrap()
            .build()
            .unwrap()
    });
    PinnedTls::builder(policy)
        .root_certificates([legit.root.cert(), second.root.cert()])
        .unwrap()
        .build()
        .unwrap()
}

/// A server presenting `pki`'s chain for a leaf valid for `name` only.
async fn serve(pki: &TestPki, name: &str) -> TestServer {
    let leaf = pki
        .intermediate
        .issue(&LeafSpec::server().with_names(&[name]));
    TestServer::https(server_config(pki.chain_for(&leaf), leaf.key_der())).await
}

async fn connect(
    tls: &PinnedTls,
    server: &TestServer,
    name: &str,
) -> Result<portcullis_pin::PinnedStream, portcullis_pin::ConnectError> {
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
async fn a_second_trusted_ca_is_refused_for_names_strict_idna_rejects() {
    let legit = TestPki::named("Legit");
    let second = TestPki::named("Second Trusted");
    let tls = tls(&legit, &second, None);
    for name in CDN_NAMES {
        let rogue = serve(&second, name).await;
        let err = connect(&tls, &rogue, name).await.unwrap_err();
        let failure = err
            .pin_failure()
            .unwrap_or_else(|| panic!("{name}: expected a pin failure, got {err}"));
        assert_eq!(failure.host(), *name);
        assert_eq!(failure.pattern(), "**.example.test");
        assert_eq!(rogue.requests(), 0, "{name}");

        let real = serve(&legit, name).await;
        let stream = connect(&tls, &real, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let check = stream.peer().check().expect("full handshake");
        assert_eq!(
            check.matched_pin(),
            Some(&legit.root.spki_pin().parse::<Pin>().unwrap()),
            "{name}"
        );
        assert_eq!(check.position(), Some(Position::Root), "{name}");
        assert_eq!(check.pattern(), Some("**.example.test"), "{name}");
    }
}

#[tokio::test]
async fn policy_file_patterns_with_such_labels_are_enforced() {
    let legit = TestPki::named("Legit");
    let second = TestPki::named("Second Trusted");
    let policy = PinPolicy::from_toml(&format!(
        "[[host]]\npattern = \"*.R3---SN-4G5E.example.test\"\npins = [\"{}\", \"{}\"]\n",
        legit.intermediate.spki_pin(),
        legit.root.spki_pin(),
    ))
    .unwrap();
    let tls = tls(&legit, &second, Some(policy));
    let name = "a_b.r3---sn-4g5e.example.test";
    let err = connect(&tls, &serve(&second, name).await, name)
        .await
        .unwrap_err();
    assert_eq!(
        err.pin_failure().expect("pin failure").pattern(),
        "*.r3---sn-4g5e.example.test"
    );
    let ok = connect(&tls, &serve(&legit, name).await, name)
        .await
        .unwrap();
    assert!(ok.peer().matched_pin().is_some());
}

#[tokio::test]
async fn a_name_without_a_canonical_form_fails_closed() {
    // A valid server name for rustls and webpki, but its `xn--` label is not punycode.
    let name = "xn--a.example.test";
    assert!(rustls_pki_types::DnsName::try_from(name).is_ok());
    let legit = TestPki::named("Legit");
    let second = TestPki::named("Second Trusted");
    let tls = tls(&legit, &second, None);
    let logs = Logs::default();
    let _guard = testkit::subscriber::set_default(logs.subscriber());
    for (pki, what) in [(&second, "second CA"), (&legit, "legit CA")] {
        let server = serve(pki, name).await;
        let err = connect(&tls, &server, name).await.unwrap_err();
        let refused = err
            .unpinnable_host()
            .unwrap_or_else(|| panic!("{what}: expected UnpinnableHost, got {err}"));
        assert_eq!(refused.host(), name);
        assert!(err.pin_failure().is_none(), "{what}");
        assert!(
            matches!(
                err.tls_error(),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(_)
                ))
            ),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains("no canonical form"), "{err}");
        assert_eq!(server.requests(), 0, "{what}");
    }
    let text = logs.text();
    assert_eq!(text.matches("host_not_canonical").count(), 2, "{text}");
    assert!(
        text.contains("\"event.action\":\"tls.pin.check\""),
        "{text}"
    );

    // Under an empty policy nothing can be pinned, so there is nothing to decide.
    let unpinned = tls_with_empty_policy(&legit, &second);
    connect(&unpinned, &serve(&second, name).await, name)
        .await
        .unwrap();
}

fn tls_with_empty_policy(legit: &TestPki, second: &TestPki) -> PinnedTls {
    tls(legit, second, Some(PinPolicy::empty()))
}

#[derive(Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let buf = self.0.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || LogWriter(buf.clone()))
            .finish()
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
