//! TLS sessions belong to the pin policy generation they were verified under: real handshakes
//! on loopback, with a server that counts full and resumed handshakes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_pin::{PinFailure, PinPolicy, PinnedTls};
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use testkit::pki::{Authority, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A TLS server on 127.0.0.1 that counts full and resumed handshakes and answers each read
/// with `pong`. Stops when dropped.
struct CountingServer {
    addr: std::net::SocketAddr,
    full: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingServer {
    async fn start(config: rustls::ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (full, resumed, failed): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            Default::default();
        let counters = (Arc::clone(&full), Arc::clone(&resumed), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (full, resumed, failed) = counters.clone();
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    match tls.get_ref().1.handshake_kind() {
                        Some(HandshakeKind::Resumed) => resumed.fetch_add(1, Ordering::SeqCst),
                        _ => full.fetch_add(1, Ordering::SeqCst),
                    };
                    let mut buf = [0u8; 64];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(b"pong").await.is_err() {
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
            failed,
            task,
        }
    }

    fn counts(&self) -> (usize, usize, usize) {
        (
            self.full.load(Ordering::SeqCst),
            self.resumed.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }

    fn uri(&self) -> http::Uri {
        format!("https://localhost:{}/", self.addr.port())
            .parse()
            .unwrap()
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(pki: &TestPki, tls12_only: bool) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.server_chain(), pki.leaf.key_der())
        .unwrap()
}

/// Pins the server's real leaf (and an offline backup).
fn good(pki: &TestPki) -> PinPolicy {
    policy(&[pki.leaf.spki_pin(), Authority::root("Backup").spki_pin()])
}

/// Pins keys the server does not have (an emergency rotation away from its key).
fn rotated() -> PinPolicy {
    policy(&[
        Authority::root("New A").spki_pin(),
        Authority::root("New B").spki_pin(),
    ])
}

fn policy(pins: &[String]) -> PinPolicy {
    let pins: Vec<&str> = pins.iter().map(String::as_str).collect();
    PinPolicy::builder()
        .pin("localhost", &pins)
        .unwrap()
        .build()
        .unwrap()
}

/// A connection made with a held `client_config()` (what reqwest, tonic and hyper-rustls
/// pools keep), through tokio-rustls. ALPN is left out: the test speaks its own protocol.
async fn raw_connect(
    config: &Arc<rustls::ClientConfig>,
    server: &CountingServer,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(server.addr).await?;
    TlsConnector::from(config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn held(tls: &PinnedTls) -> Arc<rustls::ClientConfig> {
    let mut config = tls.client_config();
    config.alpn_protocols.clear();
    Arc::new(config)
}

/// One request and response on a kept-alive connection: whatever the server sent since the
/// handshake (its TLS 1.3 tickets) is read before the response.
async fn ping(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) {
    stream.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    stream.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong");
}

#[tokio::test]
async fn late_tls13_ticket_of_an_old_connection_is_not_resumed_after_a_swap() {
    let pki = TestPki::new();
    let server = CountingServer::start(server_config(&pki, false)).await;
    let tls = PinnedTls::builder(good(&pki))
        .root_certificates([pki.root.cert()])
        .unwrap()
        .build()
        .unwrap();
    let config = held(&tls);

    // A keep-alive connection verified under the old policy; its tickets are still unread.
    let mut old = raw_connect(&config, &server).await.unwrap();
    assert_eq!(old.get_ref().1.tls13_tickets_received(), 0);

    // Emergency rotation; then the old connection serves one more request, and reads the
    // tickets its server sent after the handshake.
    tls.set_policy(rotated());
    ping(&mut old).await;
    assert!(old.get_ref().1.tls13_tickets_received() >= 1);
    assert_eq!(server.counts(), (1, 0, 0));

    // Neither a new connection nor the held config resumes from those tickets: each makes a
    // full handshake, refused under the new policy.
    let err = tls.connector().connect(server.uri()).await.unwrap_err();
    assert!(err.pin_failure().is_some(), "{err}");
    let err = raw_connect(&config, &server).await.unwrap_err();
    assert!(PinFailure::find(&err).is_some(), "{err}");
    tokio::task::yield_now().await;
    let (_, resumed, _) = server.counts();
    assert_eq!(
        resumed, 0,
        "no handshake resumed a session of the old policy"
    );
}

#[tokio::test]
async fn tls12_session_stored_after_a_swap_mid_handshake_is_not_resumed() {
    let pki = TestPki::new();
    let server = CountingServer::start(server_config(&pki, true)).await;
    // The swap happens while the first handshake is between its certificate check and the
    // end of the handshake, where TLS 1.2 stores its session.
    let swap: Arc<Mutex<Option<PinnedTls>>> = Arc::default();
    let on_match = Arc::clone(&swap);
    let tls = PinnedTls::builder(good(&pki))
        .root_certificates([pki.root.cert()])
        .unwrap()
        .on_match(move |_| {
            let tls = on_match.lock().unwrap().take();
            if let Some(tls) = tls {
                tls.set_policy(rotated());
            }
        })
        .build()
        .unwrap();
    *swap.lock().unwrap() = Some(tls.clone());

    let first = tls.connector().connect(server.uri()).await.unwrap();
    assert_eq!(
        first.tls_connection().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(first.peer().generation(), 0);
    assert_eq!(tls.generation(), 1, "swapped during the handshake");

    let err = tls.connector().connect(server.uri()).await.unwrap_err();
    assert!(err.pin_failure().is_some(), "{err}");
    tokio::task::yield_now().await;
    let (full, resumed, _) = server.counts();
    assert_eq!((full, resumed), (1, 0));
}

#[tokio::test]
async fn sessions_resume_within_each_generation() {
    for tls12 in [false, true] {
        let pki = TestPki::new();
        let server = CountingServer::start(server_config(&pki, tls12)).await;
        let tls = PinnedTls::builder(good(&pki))
            .root_certificates([pki.root.cert()])
            .unwrap()
            .build()
            .unwrap();

        // Generation 0: a held config and the connector share sessions.
        let config = held(&tls);
        let mut first = raw_connect(&config, &server).await.unwrap();
        ping(&mut first).await;
        let second = tls.connector().connect(server.uri()).await.unwrap();
        assert!(second.peer().resumed(), "tls12={tls12}");

        // Generations 1 and 2: same policy, but nothing crosses the swaps.
        for generation in [1, 2] {
            tls.set_policy(good(&pki));
            let fresh = tls.connector().connect(server.uri()).await.unwrap();
            assert!(!fresh.peer().resumed(), "tls12={tls12}");
            assert_eq!(fresh.peer().generation(), generation);
            let mut raw = raw_connect(&held(&tls), &server).await.unwrap();
            ping(&mut raw).await;
            let again = tls.connector().connect(server.uri()).await.unwrap();
            assert!(again.peer().resumed(), "tls12={tls12} gen={generation}");
            assert_eq!(
                again.peer().check(),
                fresh.peer().check(),
                "a resumed connection shows its generation's last check"
            );
        }

        // The config held since generation 0 still verifies (under the current policy), but
        // keeps nothing: it never resumes.
        for _ in 0..2 {
            let mut raw = raw_connect(&config, &server).await.unwrap();
            ping(&mut raw).await;
            assert_eq!(raw.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
        }
        drop(first);
    }
}
