//! HTTP servers on 127.0.0.1 with a free port, with or without TLS (rustls + hyper).
//!
//! A server counts accepted connections, completed TLS handshakes and served requests, so a
//! test can prove that a refused handshake sent no request byte, or that a client did not
//! retry. It stops when dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The response type of a test handler.
pub type TestResponse = Response<Full<Bytes>>;

type BoxFuture = Pin<Box<dyn Future<Output = TestResponse> + Send>>;
type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture + Send + Sync>;

/// Builds a rustls server config for `chain` and `key` with the default provider, TLS 1.2 and
/// 1.3, and ALPN `h2` and `http/1.1`.
///
/// # Panics
/// Panics when the key does not match the certificate (a broken test).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> ServerConfig {
    crate::install_default_provider();
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Builds a rustls server config that requires a client certificate chaining to `client_roots`.
///
/// # Panics
/// Panics on a broken test setup.
pub fn mtls_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: rustls::RootCertStore,
) -> ServerConfig {
    crate::install_default_provider();
    let verifier = WebPkiClientVerifier::builder(Arc::new(client_roots))
        .build()
        .expect("client verifier");
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Counters shared between a running server and the test.
#[derive(Debug, Default)]
pub struct Counters {
    /// TCP connections accepted.
    pub accepted: AtomicUsize,
    /// TLS handshakes completed (equals `accepted` for plain HTTP).
    pub handshakes: AtomicUsize,
    /// TLS handshakes that failed.
    pub handshake_failures: AtomicUsize,
    /// HTTP requests that reached the handler.
    pub requests: AtomicUsize,
}

/// A running test server. Stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    counters: Arc<Counters>,
    last_error: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts an HTTPS server answering `200 hello` to every request.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn https(config: ServerConfig) -> Self {
        Self::https_with(config, |_req| async { hello() }).await
    }

    /// Starts an HTTPS server with `handler`.
    pub async fn https_with<F, Fut>(config: ServerConfig, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TestResponse> + Send + 'static,
    {
        Self::start(Some(TlsAcceptor::from(Arc::new(config))), handler).await
    }

    /// Starts a plain-HTTP server with `handler`.
    pub async fn http_with<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TestResponse> + Send + 'static,
    {
        Self::start(None, handler).await
    }

    async fn start<F, Fut>(tls: Option<TlsAcceptor>, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TestResponse> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let counters = Arc::new(Counters::default());
        let last_error = Arc::new(Mutex::new(None));
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let task = tokio::spawn(accept_loop(
            listener,
            tls,
            handler,
            counters.clone(),
            last_error.clone(),
        ));
        Self {
            addr,
            counters,
            last_error,
            task,
        }
    }

    /// The listening address (127.0.0.1 and a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://localhost:PORT{path}` (or `http://` for a plain server).
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.counters.handshakes.load(Ordering::SeqCst)
    }

    /// Requests that reached the handler so far.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// The last TLS handshake error the server saw, if any.
    pub fn last_handshake_error(&self) -> Option<String> {
        self.last_error.lock().expect("lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `200 OK` with body `hello`.
pub fn hello() -> TestResponse {
    Response::new(Full::new(Bytes::from_static(b"hello")))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    counters: Arc<Counters>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        let tls = tls.clone();
        let handler = handler.clone();
        let counters = counters.clone();
        let last_error = last_error.clone();
        tokio::spawn(async move {
            let service = {
                let counters = counters.clone();
                hyper::service::service_fn(move |req| {
                    counters.requests.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                })
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        counters.handshakes.fetch_add(1, Ordering::SeqCst);
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Err(err) => {
                        counters.handshake_failures.fetch_add(1, Ordering::SeqCst);
                        *last_error.lock().expect("lock") = Some(err.to_string());
                    }
                },
                None => {
                    counters.handshakes.fetch_add(1, Ordering::SeqCst);
                    let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                }
            }
        });
    }
}
