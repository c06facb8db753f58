//! Shared tools of the adversarial suite (not a threat): the `openssl` binary as an independent
//! TLS peer, a raw HTTP/1.1-over-TLS sender that writes exactly the bytes an attacker chooses,
//! and a capture of every `tracing` event as JSON lines.

use std::io::Write as _;
use std::net::TcpStream as StdTcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, ServerName};
use testkit::pki::{Issued, pem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A scratch directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "portcullis-adv-{tag}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `openssl s_server -www` on 127.0.0.1 presenting `leaf` and exactly the `chain` given (in
/// that order), with extra protocol and cipher flags. Killed when dropped.
#[derive(Debug)]
pub(crate) struct OpensslServer {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl OpensslServer {
    pub(crate) fn start(leaf: &Issued, chain: &[CertificateDer<'_>], flags: &[&str]) -> Self {
        let dir = TempDir::new("s_server");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let extra = dir.path().join("chain.pem");
        std::fs::write(&cert, leaf.cert_pem()).expect("cert");
        std::fs::write(&key, leaf.key_pem()).expect("key");
        let mut f = std::fs::File::create(&extra).expect("chain");
        for c in chain {
            f.write_all(pem("CERTIFICATE", c.as_ref()).as_bytes())
                .expect("chain");
        }
        for _ in 0..5 {
            let port = testkit::free_port();
            let mut cmd = Command::new("openssl");
            cmd.args(["s_server", "-quiet", "-www"])
                .args(["-accept", &format!("127.0.0.1:{port}")])
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key);
            if !chain.is_empty() {
                cmd.arg("-cert_chain").arg(&extra);
            }
            let mut child = cmd
                .args(flags)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start openssl s_server (install openssl)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port taken or flags refused; try again
                }
                if StdTcpStream::connect(testkit::loopback(port)).is_ok() {
                    return Self {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("openssl s_server {flags:?} did not start");
    }

    /// `https://localhost:PORT/`.
    pub(crate) fn uri(&self) -> http::Uri {
        format!("https://localhost:{}/", self.port).parse().unwrap()
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `openssl s_client` against 127.0.0.1:`port` with `flags` and stdin closed (it exits
/// after the handshake). Returns the exit status and stdout + stderr.
pub(crate) async fn s_client(port: u16, flags: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("openssl")
            .arg("s_client")
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "localhost"])
            .args(flags)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("openssl s_client finished")
    .expect("cannot run openssl s_client (install openssl)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A response as read off the wire.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive), or "".
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Writes `request` byte for byte to `https://localhost:port` (a plain rustls client trusting
/// `root`, ALPN http/1.1) and reads the answer until the server closes. `None` when the
/// server closed without answering.
pub(crate) async fn raw_https(
    root: CertificateDer<'static>,
    port: u16,
    request: &[u8],
) -> Option<RawResponse> {
    testkit::install_default_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the server under test");
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Option<RawResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(RawResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// Every `tracing` event as one JSON object per line, at every level.
#[derive(Clone, Debug, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// A `fmt` JSON layer writing here (to stack on a registry with other layers).
    pub(crate) fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + Send + Sync
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let buf = self.0.clone();
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(move || Writer(buf.clone()))
    }

    /// A subscriber writing every event here.
    pub(crate) fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        use tracing_subscriber::layer::SubscriberExt as _;
        tracing_subscriber::registry()
            .with(self.layer())
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
    }

    /// Makes [`Logs::subscriber`] this thread's default ([`testkit::subscriber::set_default`]:
    /// no event lost to another test thread's cached interest).
    pub(crate) fn install(&self) -> tracing::subscriber::DefaultGuard {
        testkit::subscriber::set_default(self.subscriber())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Every line, parsed (panics on a line that is not JSON).
    pub(crate) fn events(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The `event.reason` of every event with `event.action` = `action` and a failure outcome.
    pub(crate) fn failure_reasons(&self, action: &str) -> Vec<String> {
        self.events()
            .into_iter()
            .filter(|e| e["event.action"] == action && e["event.outcome"] == "failure")
            .map(|e| e["event.reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub(crate) fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
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

/// The first `rustls::Error` in `err`'s source chain, looking inside `io::Error`s too.
pub(crate) fn rustls_error(err: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r.clone());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(r.clone());
        }
        cur = e.source();
    }
    None
}

/// A server stack run by `portcullis::server::serve_tls` on 127.0.0.1 with a fresh test PKI,
/// and a pinned client for it. Stops when dropped.
pub(crate) struct Serving {
    pub(crate) pki: testkit::pki::TestPki,
    pub(crate) port: u16,
    pub(crate) tls: portcullis::pin::PinnedTls,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    pub(crate) async fn start<S, B>(stack: S) -> Self
    where
        S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        testkit::install_default_provider();
        let pki = testkit::pki::TestPki::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
        let task = tokio::spawn(portcullis::server::serve_tls(
            listener,
            Arc::new(config),
            stack,
        ));
        let policy = portcullis::pin::PinPolicy::builder()
            .pin(
                "localhost",
                &[&pki.intermediate.spki_pin(), &pki.root.spki_pin()],
            )
            .unwrap()
            .build()
            .unwrap();
        let tls = portcullis::pin::PinnedTls::builder(policy)
            .root_certificates([pki.root.cert()])
            .unwrap()
            .build()
            .unwrap();
        Self {
            pki,
            port,
            tls,
            task,
        }
    }

    /// `https://localhost:PORT{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// A plain pinned hyper client (no layers) for this server.
    pub(crate) fn client(&self) -> portcullis::client::PinnedClient {
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(self.tls.connector())
    }

    /// Writes `request` byte for byte over a fresh TLS connection (see [`raw_https`]).
    pub(crate) async fn raw(&self, request: &[u8]) -> Option<RawResponse> {
        raw_https(self.pki.root.cert(), self.port, request).await
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}
