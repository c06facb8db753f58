//! Threat: chain injection — an interceptor with a certificate from another trusted CA appends
//! the pinned site's own (public) certificates to the chain it sends, so a pin appears in the
//! presented chain without being on the path that validates. A checker that hashes every
//! presented certificate (the classic Android `checkServerTrusted` mistake) accepts it.
//! Defence: the pin layer checks pins only on the path rustls-webpki verified (`PinnedTls`,
//! enforce mode), inside path building; the refusal is a `PinFailure` listing the verified
//! chain, which holds none of the injected certificates. Tried with rustls and `openssl
//! s_server` interceptors, the injected certificates before and after the real ones.

use portcullis::pin::{Pin, PinPolicy, PinnedTls, Position};
use rustls_pki_types::CertificateDer;
use testkit::pki::{Authority, TestPki};
use testkit::server::{TestServer, server_config};

use crate::support::OpensslServer;

/// The genuine site, the attacker's CA (trusted by the client too), and a client pinning
/// `pins` for localhost.
struct Setup {
    real: TestPki,
    attacker: TestPki,
}

impl Setup {
    fn new() -> Self {
        Self {
            real: TestPki::named("Real Site"),
            attacker: TestPki::named("Attacker"),
        }
    }

    fn client(&self, pins: &[String]) -> PinnedTls {
        let pins: Vec<&str> = pins.iter().map(String::as_str).collect();
        PinnedTls::builder(
            PinPolicy::builder()
                .pin("localhost", &pins)
                .unwrap()
                .build()
                .unwrap(),
        )
        .root_certificates([self.real.root.cert(), self.attacker.root.cert()])
        .unwrap()
        .build()
        .unwrap()
    }

    /// The chains an attacker would try: the genuine certificates appended after its own
    /// intermediate, placed before it, or its intermediate left out entirely.
    fn injected_chains(&self) -> Vec<(&'static str, Vec<CertificateDer<'static>>)> {
        let (real_int, real_root, real_leaf) = (
            self.real.intermediate.cert(),
            self.real.root.cert(),
            self.real.leaf.cert.clone(),
        );
        let own = self.attacker.intermediate.cert();
        vec![
            ("appended", vec![own.clone(), real_int.clone(), real_root]),
            ("first", vec![real_int.clone(), own.clone()]),
            ("genuine leaf appended", vec![own, real_leaf]),
        ]
    }

    /// Asserts `failure` lists the attacker's verified path and nothing injected.
    fn assert_refused(&self, what: &str, failure: &portcullis::pin::PinFailure) {
        let chain: Vec<(Position, String)> = failure
            .chain()
            .iter()
            .map(|l| (l.position, l.spki_pin.to_string()))
            .collect();
        assert_eq!(
            chain,
            [
                (Position::Leaf, self.attacker.leaf.spki_pin()),
                (
                    Position::Intermediate,
                    self.attacker.intermediate.spki_pin()
                ),
                (Position::Root, self.attacker.root.spki_pin()),
            ],
            "{what}: the verified chain is the attacker's"
        );
        let msg = failure.to_string();
        // The message's chain part names none of the injected certificates.
        let (verified, _configured) = msg.split_once("Pinned certificates").unwrap();
        for injected in [
            self.real.intermediate.spki_pin(),
            self.real.root.spki_pin(),
            self.real.leaf.spki_pin(),
        ] {
            assert!(!verified.contains(&injected), "{what}: {msg}");
        }
    }
}

#[tokio::test]
async fn pinned_intermediate_and_root_injected_in_a_rustls_interceptors_chain_are_refused() {
    let s = Setup::new();
    let tls = s.client(&[s.real.intermediate.spki_pin(), s.real.root.spki_pin()]);
    for (what, extra) in s.injected_chains() {
        let mut chain = vec![s.attacker.leaf.cert.clone()];
        chain.extend(extra);
        let mitm = TestServer::https(server_config(chain, s.attacker.leaf.key_der())).await;
        let err = tls
            .connector()
            .connect(mitm.url("/").parse().unwrap())
            .await
            .unwrap_err();
        let failure = err
            .pin_failure()
            .unwrap_or_else(|| panic!("{what}: expected a pin failure, got {err}"));
        s.assert_refused(what, failure);
        assert_eq!(mitm.requests(), 0, "{what}");
    }
}

#[tokio::test]
async fn pinned_leaf_key_injected_in_an_openssl_interceptors_chain_is_refused() {
    let s = Setup::new();
    // Leaf pinning (and a backup), the genuine leaf appended by the interceptor; plus the CA
    // pins, injected the same way.
    let pin_sets = [
        vec![s.real.leaf.spki_pin(), Authority::root("Backup").spki_pin()],
        vec![s.real.intermediate.spki_pin(), s.real.root.spki_pin()],
    ];
    let clients: Vec<PinnedTls> = pin_sets.iter().map(|pins| s.client(pins)).collect();
    for (what, extra) in s.injected_chains() {
        let mitm = OpensslServer::start(&s.attacker.leaf, &extra, &[]);
        for tls in &clients {
            let err = tls.connector().connect(mitm.uri()).await.unwrap_err();
            let failure = err
                .pin_failure()
                .unwrap_or_else(|| panic!("{what}: expected a pin failure, got {err}"));
            s.assert_refused(what, failure);
        }
    }
}

#[tokio::test]
async fn control_a_client_hashing_the_presented_chain_would_have_matched() {
    // The attack is real: the pinned keys are in what the interceptor presents.
    let s = Setup::new();
    let pinned = [
        Pin::from_spki_der(&s.real.intermediate.spki()),
        Pin::from_spki_der(&s.real.root.spki()),
    ];
    for (what, extra) in s.injected_chains() {
        let presented: Vec<Pin> = extra
            .iter()
            .filter_map(|c| {
                let (_, cert) = x509_parser::parse_x509_certificate(c.as_ref()).ok()?;
                Some(Pin::from_spki_der(cert.tbs_certificate.subject_pki.raw))
            })
            .collect();
        let naive_match = presented.iter().any(|p| pinned.contains(p))
            || presented.contains(&Pin::from_spki_der(&s.real.leaf.spki));
        assert!(naive_match, "{what}");
    }
    // And the genuine site, with the same pins and trust, is accepted on its verified path.
    let tls = s.client(&[s.real.intermediate.spki_pin(), s.real.root.spki_pin()]);
    let genuine =
        TestServer::https(server_config(s.real.server_chain(), s.real.leaf.key_der())).await;
    let stream = tls
        .connector()
        .connect(genuine.url("/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        stream.peer().check().and_then(|c| c.position()),
        Some(Position::Intermediate)
    );
}
