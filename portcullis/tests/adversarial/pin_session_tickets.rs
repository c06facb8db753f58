//! Threat: an emergency pin rotation (`PinnedTls::set_policy`) bypassed through TLS session
//! resumption, a resumed handshake skipping the certificate check: a server whose key was just
//! unpinned has its TLS 1.3 ticket read after the swap on a keep-alive connection verified
//! under the old policy, or a TLS 1.2 session stored after a swap that happened mid-handshake,
//! and every later connection resumes from it. Defence: every session belongs to the policy
//! generation of the config its connection was made with (one config, verifier and session
//! store per generation); a generation's store is retired at the swap and drops whatever
//! arrives later. Counted on a real rustls server: no handshake is resumed, each is refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use portcullis::pin::{PinFailure, PinPolicy, PinnedTls};
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use testkit::pki::{Authority, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The server of the key being rotated away from: a rustls server on 127.0.0.1 that issues
/// session tickets (or TLS 1.2 session ids), counts full and resumed handshakes, and answers
/// each request with `pong`.
struct TicketIssuingServer {
    addr: SocketAddr,
    full: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TicketIssuingServer {
    async fn start(pki: &TestPki, version: &'static rustls::SupportedProtocolVersion) -> Self {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.server_chain(), pki.leaf.key_der())
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let full = Arc::new(AtomicUsize::new(0));
        let resumed = Arc::new(AtomicUsize::new(0));
        let (f, r) = (full.clone(), resumed.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, full, resumed) = (acceptor.clone(), f.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let counter = match tls.get_ref().1.handshake_kind() {
                        Some(HandshakeKind::Resumed) => &resumed,
                        _ => &full,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 64];
                    while let Ok(1..) = tls.read(&mut buf).await {
                        if tls.write_all(b"pong").await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            full,
            resumed,
            task,
        }
    }

    fn full(&self) -> usize {
        self.full.load(Ordering::SeqCst)
    }

    fn resumed(&self) -> usize {
        self.resumed.load(Ordering::SeqCst)
    }

    fn uri(&self) -> http::Uri {
        format!("https://localhost:{}/", self.addr.port())
            .parse()
            .unwrap()
    }
}

impl Drop for TicketIssuingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn policy(pins: [String; 2]) -> PinPolicy {
    PinPolicy::builder()
        .pin("localhost", &[pins[0].as_str(), pins[1].as_str()])
        .unwrap()
        .build()
        .unwrap()
}

/// The policy before the rotation: the server's key is pinned.
fn before(pki: &TestPki) -> PinPolicy {
    policy([pki.leaf.spki_pin(), Authority::root("Backup").spki_pin()])
}

/// The emergency rotation: only keys the server does not have.
fn rotated() -> PinPolicy {
    policy([
        Authority::root("Rotated A").spki_pin(),
        Authority::root("Rotated B").spki_pin(),
    ])
}

/// A connection through a held `client_config()`, the way reqwest, tonic or a hyper-rustls
/// pool keeps one (ALPN off: the server speaks its own protocol).
async fn held_connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

#[tokio::test]
async fn tls13_ticket_read_after_an_emergency_rotation_is_never_resumed() {
    let pki = TestPki::new();
    let server = TicketIssuingServer::start(&pki, &rustls::version::TLS13).await;
    let tls = PinnedTls::builder(before(&pki))
        .root_certificates([pki.root.cert()])
        .unwrap()
        .build()
        .unwrap();
    let mut config = tls.client_config();
    config.alpn_protocols.clear();
    let config = Arc::new(config);

    // A keep-alive connection, verified while the key was still pinned. The server's tickets
    // are on the wire but not read yet.
    let mut keep_alive = held_connect(&config, server.addr).await.unwrap();
    assert_eq!(keep_alive.get_ref().1.tls13_tickets_received(), 0);

    tls.set_policy(rotated());

    // The next request on it reads the tickets: they arrive after the rotation.
    keep_alive.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    keep_alive.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong");
    assert_eq!(keep_alive.get_ref().1.tls13_tickets_received(), 2);

    // Every new connection, through the connector or the same held config, makes a full
    // handshake and is refused by the rotated pins.
    for attempt in 0..2 {
        let err = tls.connector().connect(server.uri()).await.unwrap_err();
        assert!(err.pin_failure().is_some(), "connector #{attempt}: {err}");
        let err = held_connect(&config, server.addr).await.unwrap_err();
        assert!(
            PinFailure::find(&err).is_some(),
            "held config #{attempt}: {err}"
        );
    }
    assert_eq!(server.resumed(), 0, "no handshake skipped the pin check");
    assert_eq!(
        server.full(),
        1,
        "only the pre-rotation handshake completed"
    );
}

#[tokio::test]
async fn tls12_session_stored_after_a_swap_mid_handshake_is_never_resumed() {
    let pki = TestPki::new();
    let server = TicketIssuingServer::start(&pki, &rustls::version::TLS12).await;
    // The rotation lands between the certificate check and the end of the handshake, where
    // TLS 1.2 stores the session: the callback runs inside the check.
    let rotate: Arc<Mutex<Option<PinnedTls>>> = Arc::default();
    let hook = rotate.clone();
    let tls = PinnedTls::builder(before(&pki))
        .root_certificates([pki.root.cert()])
        .unwrap()
        .on_match(move |_| {
            let tls = hook.lock().unwrap().take();
            if let Some(tls) = tls {
                tls.set_policy(rotated());
            }
        })
        .build()
        .unwrap();
    *rotate.lock().unwrap() = Some(tls.clone());

    let first = tls.connector().connect(server.uri()).await.unwrap();
    assert_eq!(
        first.tls_connection().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        (first.peer().generation(), tls.generation()),
        (0, 1),
        "verified under the old policy, rotated before the session was stored"
    );

    for attempt in 0..2 {
        let err = tls.connector().connect(server.uri()).await.unwrap_err();
        assert!(err.pin_failure().is_some(), "#{attempt}: {err}");
    }
    assert_eq!(server.resumed(), 0, "no handshake skipped the pin check");
    assert_eq!(server.full(), 1);
}

#[tokio::test]
async fn control_sessions_resume_under_the_policy_they_were_verified_under() {
    // Without a rotation the same moves resume: the attack above is not refused by accident.
    let pki = TestPki::new();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let server = TicketIssuingServer::start(&pki, version).await;
        let tls = PinnedTls::builder(before(&pki))
            .root_certificates([pki.root.cert()])
            .unwrap()
            .build()
            .unwrap();
        let mut config = tls.client_config();
        config.alpn_protocols.clear();
        let config = Arc::new(config);
        let mut keep_alive = held_connect(&config, server.addr).await.unwrap();
        keep_alive.write_all(b"ping").await.unwrap();
        keep_alive.read_exact(&mut [0u8; 4]).await.unwrap();
        let next = tls.connector().connect(server.uri()).await.unwrap();
        assert!(next.peer().resumed(), "{version:?}");
        // The server counts a TLS 1.3 handshake once the client's Finished arrives.
        for _ in 0..200 {
            if server.resumed() > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(server.resumed(), 1, "{version:?}");
    }
}
