//! Shared setup of the handshake benchmarks (`handshake.rs` and `handshake_instructions.rs`):
//! the PKI, one client config per arm and an in-memory TLS handshake.
//!
//! Every arm uses the same server config, the same provider (aws-lc-rs, rustls' default) and
//! so the same key exchange group (X25519MLKEM768) and signature scheme (ECDSA P-256): the
//! only difference between the arms is the certificate verifier.
#![allow(
    dead_code,
    reason = "included by two bench targets; each uses part of it"
)]

use std::sync::Arc;

use portcullis_pin::{PinPolicy, PinnedTls};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, NamedGroup, ServerConfig, ServerConnection,
};
use testkit::pki::TestPki;

/// One side of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arm {
    /// rustls' own `WebPkiServerVerifier` (`ClientConfig::builder().with_root_certificates`).
    Unpinned,
    /// `PinnedTls::client_config()` pinning the root: the pin check walks the whole chain.
    Pinned,
    /// `PinnedTls::client_config()` pinning the leaf: the first hash matches.
    PinnedLeaf,
}

impl Arm {
    pub(crate) const ALL: [Arm; 3] = [Arm::Unpinned, Arm::Pinned, Arm::PinnedLeaf];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Arm::Unpinned => "unpinned",
            Arm::Pinned => "pinned",
            Arm::PinnedLeaf => "pinned_leaf",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Arm> {
        Arm::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// A three-certificate hierarchy and a server sending leaf + intermediate.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) pki: TestPki,
    /// A second, unrelated root: the backup pin every enforcing entry needs. It is on no
    /// path, so it never matches before the pin under test.
    backup: TestPki,
    pub(crate) server: Arc<ServerConfig>,
}

impl Setup {
    pub(crate) fn new() -> Self {
        testkit::install_default_provider();
        let pki = TestPki::new();
        let backup = TestPki::named("Backup");
        let server = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
        Self {
            pki,
            backup,
            server: Arc::new(server),
        }
    }

    /// The client config of `arm`, with TLS session resumption on (`resumed`) or off (every
    /// handshake is a full one). Build it once and share the `Arc`: rustls only resumes
    /// sessions under the config (verifier) that made them.
    pub(crate) fn client(&self, arm: Arm, resumed: bool) -> Arc<ClientConfig> {
        let mut config = match arm {
            Arm::Unpinned => {
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let mut config = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("default versions")
                    .with_root_certificates(self.pki.root_store())
                    .with_no_client_auth();
                // The same ALPN offer as the pinned config, so the ClientHellos are alike.
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                config
            }
            Arm::Pinned => self.pinned_config(&self.pki.root.spki_pin()),
            Arm::PinnedLeaf => self.pinned_config(&self.pki.leaf.spki_pin()),
        };
        if !resumed {
            config.resumption = Resumption::disabled();
        }
        Arc::new(config)
    }
}

impl Setup {
    /// A pinned config for localhost with `pin` and the backup root's pin.
    pub(crate) fn pinned_config(&self, pin: &str) -> ClientConfig {
        let policy = PinPolicy::builder()
            .pin("localhost", &[pin, &self.backup.root.spki_pin()])
            .expect("pins")
            .build()
            .expect("policy");
        PinnedTls::builder(policy)
            .root_certificates([self.pki.root.cert()])
            .expect("root")
            .build()
            .expect("pinned tls")
            .client_config()
    }

    /// A pinned config whose pins are both off the server's path (the intermediate is
    /// pinned by a key of the backup hierarchy): its handshakes must fail.
    pub(crate) fn mismatched_config(&self) -> Arc<ClientConfig> {
        let mut config = self.pinned_config(&self.backup.intermediate.spki_pin());
        config.resumption = Resumption::disabled();
        Arc::new(config)
    }
}

/// What a handshake negotiated, to check that the arms are comparable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) kind: HandshakeKind,
    pub(crate) group: Option<NamedGroup>,
}

/// Runs one TLS handshake between `client` and `server` through in-memory buffers, including
/// the server's session tickets, and returns what it negotiated.
///
/// # Panics
/// Panics when the handshake fails (a broken bench setup).
pub(crate) fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> Outcome {
    try_handshake(client, server).expect("handshake")
}

/// [`handshake`], returning the first TLS error of either side.
pub(crate) fn try_handshake(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> Result<Outcome, rustls::Error> {
    let name = ServerName::try_from("localhost").expect("server name");
    let mut c = ClientConnection::new(Arc::clone(client), name).expect("client connection");
    let mut s = ServerConnection::new(Arc::clone(server)).expect("server connection");
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let to_server = transfer(&mut buf, &mut c, &mut s)?;
        let to_client = transfer(&mut buf, &mut s, &mut c)?;
        if !to_server && !to_client && !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
    }
    let kind = c.handshake_kind().expect("handshake finished");
    let group = c.negotiated_key_exchange_group().map(|g| g.name());
    Ok(Outcome { kind, group })
}

/// Moves every pending TLS record from `from` to `to`; returns whether anything moved.
fn transfer<A, B>(
    buf: &mut Vec<u8>,
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
) -> Result<bool, rustls::Error> {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write_tls to a Vec");
    }
    if buf.is_empty() {
        return Ok(false);
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read_tls from a slice");
        to.process_new_packets()?;
    }
    Ok(true)
}
