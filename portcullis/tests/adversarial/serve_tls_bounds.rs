//! Threat: clients hold `serve_tls` connections open for ever (never starting TLS, silent
//! after the handshake with or without ALPN, an HTTP/2 preface with no stream, a dripped
//! HTTP/1 head, idle keep-alive, a dead HTTP/2 peer) until the server has no connection left.
//! Defence: `ServeOptions` bounds every phase and caps open connections, and each connection
//! it ends or refuses is a `portcullis::server` event naming the bound.
//!
//! Real TLS on loopback with short bounds; each wait gives up after `GIVE_UP`, so on a server
//! without the bounds a test fails instead of hanging.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis::server::{ConnectionBound, ServeOptions, serve_tls_with};
use rustls::pki_types::ServerName;
use testkit::pki::TestPki;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tower::service_fn;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

const HANDSHAKE: Duration = Duration::from_millis(300);
const HEADER: Duration = Duration::from_millis(400);
const KEEP_ALIVE: Duration = Duration::from_millis(800);
/// How long `/slow` takes: longer than every idle bound, so only request tracking keeps it.
const SLOW: Duration = Duration::from_millis(1000);
/// A server without the bound under test would keep the connection past this.
const GIVE_UP: Duration = Duration::from_secs(4);
/// A bound long enough to stay out of the way of the one under test.
const LONG: Duration = Duration::from_secs(60);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// --- The server under attack -------------------------------------------------------------

struct Server {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bounds every test starts from; HTTP/2 pings off unless a test is about them.
fn options() -> ServeOptions {
    ServeOptions::default()
        .handshake_timeout(HANDSHAKE)
        .header_read_timeout(HEADER)
        .keep_alive_timeout(KEEP_ALIVE)
        .http2_keep_alive_interval(None)
}

/// `serve_tls_with` on 127.0.0.1: `/` answers `ok`, `/slow` after `SLOW`, `/hang` never.
async fn serve(pki: &TestPki, options: ServeOptions) -> Server {
    let config = testkit::server::server_config(pki.server_chain(), pki.leaf.key_der());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let app = service_fn(move |req: Request<Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            match req.uri().path() {
                "/slow" => tokio::time::sleep(SLOW).await,
                "/hang" => std::future::pending::<()>().await,
                _ => {}
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let task = tokio::spawn(serve_tls_with(listener, Arc::new(config), app, options));
    Server { addr, served, task }
}

// --- Clients -----------------------------------------------------------------------------

fn connector(pki: &TestPki, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    testkit::install_default_provider();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(pki.root_store())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A completed TLS handshake offering `alpn` (nothing sent after it).
async fn tls(addr: SocketAddr, pki: &TestPki, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    try_tls(addr, pki, alpn).await.expect("TLS handshake")
}

async fn try_tls(
    addr: SocketAddr,
    pki: &TestPki,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector(pki, alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Sends `GET path` with a hyper HTTP/1.1 client on `io` and returns the status and body.
async fn get_h1<T>(io: T, path: &str) -> (StatusCode, Bytes, H1Client)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, body, H1Client { _send: send, conn })
}

/// A kept-alive hyper HTTP/1.1 client connection; `conn` ends when the server closes it.
struct H1Client {
    _send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    conn: tokio::task::JoinHandle<hyper::Result<()>>,
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads until the server closes the connection (EOF or error); returns the time since
/// `started`, or fails the test after `GIVE_UP`.
async fn closed<R: AsyncRead + Unpin>(io: &mut R, started: Instant, what: &str) -> Duration {
    let mut buf = vec![0u8; 16 * 1024];
    let read_to_end = async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    assert!(
        tokio::time::timeout(GIVE_UP, read_to_end).await.is_ok(),
        "{what}: the server kept the connection open for {GIVE_UP:?}"
    );
    started.elapsed()
}

/// Runs `keep_busy` (a client sending frames or bytes) until the server closes `read`.
async fn closed_while<R, F>(read: &mut R, started: Instant, what: &str, keep_busy: F) -> Duration
where
    R: AsyncRead + Unpin,
    F: Future<Output = ()>,
{
    tokio::select! {
        elapsed = closed(read, started, what) => elapsed,
        () = keep_busy => closed(read, started, what).await,
    }
}

// --- Events ------------------------------------------------------------------------------

type Events = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

struct Capture(Events);

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((event.metadata().target().to_owned(), fields.0));
    }
}

/// Captures this thread's events (the test runtime is single-threaded, so the server's too).
fn capture() -> (Events, tracing::subscriber::DefaultGuard) {
    let events = Events::default();
    let guard = testkit::subscriber::set_default(
        tracing_subscriber::registry().with(Capture(events.clone())),
    );
    (events, guard)
}

/// Waits (briefly) for the server's event for `bound`, with the peer address when it has one.
async fn expect_event(events: &Events, bound: ConnectionBound) {
    let matches = |(target, fields): &(String, BTreeMap<String, String>)| {
        let field = |name: &str| fields.get(name).map(String::as_str);
        target == "portcullis::server"
            && field("event.action") == Some(bound.action())
            && field("event.reason") == Some(bound.as_str())
            && (bound == ConnectionBound::ConnectionLimit
                || field("client.address") == Some("127.0.0.1"))
    };
    for _ in 0..100 {
        if events.lock().unwrap().iter().any(matches) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no `{bound}` event; got {:?}",
        events.lock().unwrap().as_slice()
    );
}

fn no_event(events: &Events, bound: ConnectionBound) -> bool {
    !events
        .lock()
        .unwrap()
        .iter()
        .any(|(_, fields)| fields.get("event.reason").map(String::as_str) == Some(bound.as_str()))
}

// --- Each idle pattern is closed within its bound ----------------------------------------

#[tokio::test]
async fn a_client_that_never_starts_tls_is_dropped_at_the_handshake_bound() {
    let (events, _guard) = capture();
    let pki = TestPki::new();
    let server = serve(&pki, options()).await;

    let started = Instant::now();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let elapsed = closed(&mut tcp, started, "TCP without TLS").await;

    assert!(elapsed >= HANDSHAKE, "closed after {elapsed:?}");
    expect_event(&events, ConnectionBound::HandshakeTimeout).await;
}

#[tokio::test]
async fn silence_after_the_handshake_is_dropped_at_the_header_bound_whatever_the_alpn() {
    let (events, _guard) = capture();
    let pki = TestPki::new();
    let server = serve(&pki, options()).await;

    for alpn in [&[b"http/1.1".as_slice()][..], &[b"h2"], &[]] {
        let started = Instant::now();
        let mut silent = tls(server.addr, &pki, alpn).await;
        let what = format!("silent after the handshake, ALPN {alpn:?}");
        let elapsed = closed(&mut silent, started, &what).await;
        assert!(elapsed >= HEADER, "{what}: closed after {elapsed:?}");
    }
    expect_event(&events, ConnectionBound::HeaderReadTimeout).await;
    assert_eq!(server.served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_http2_preface_and_pings_without_a_stream_are_dropped_at_the_header_bound() {
    let (events, _guard) = capture();
    let pki = TestPki::new();
    let server = serve(&pki, options()).await;

    let started = Instant::now();
    let mut h2 = tls(server.addr, &pki, &[b"h2"]).await;
    h2.write_all(H2_PREFACE).await.unwrap();
    h2.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // SETTINGS
    h2.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(); // SETTINGS ACK
    let (mut read, mut write) = tokio::io::split(h2);
    // The client keeps talking (PING frames) but never opens a stream.
    let pings = async {
        while write.write_all(&frame(0x6, 0, 0, &[7; 8])).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let elapsed = closed_while(&mut read, started, "HTTP/2 without a stream", pings).await;

    assert!(elapsed >= HEADER, "closed after {elapsed:?}");
    expect_event(&events, ConnectionBound::HeaderReadTimeout).await;
    assert_eq!(server.served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_dripped_http1_head_is_dropped_at_the_header_bound() {
    let (events, _guard) = capture();
    let pki = TestPki::new();
    let server = serve(&pki, options()).await;

    // First request: the head starts at once and one more header line arrives every 50 ms.
    let started = Instant::now();
    let mut drip = tls(server.addr, &pki, &[b"http/1.1"]).await;
    drip.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let (mut read, mut write) = tokio::io::split(drip);
    let dripping = async {
        while write.write_all(b"X-Drip: 1\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let elapsed = closed_while(&mut read, started, "dripped first head", dripping).await;
    assert!(elapsed >= HEADER, "closed after {elapsed:?}");
    expect_event(&events, ConnectionBound::HeaderReadTimeout).await;

    // A later request on a kept-alive connection: its head gets the header bound from its
    // first byte, not the (longer) keep-alive bound.
    let mut conn = tls(server.addr, &pki, &[b"http/1.1"]).await;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"ok") {
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the first request was not answered");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    conn.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let (mut read, mut write) = tokio::io::split(conn);
    let dripping = async {
        while write.write_all(b"X-Drip: 1\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let elapsed = closed_while(&mut read, started, "dripped second head", dripping).await;
    assert!(elapsed >= HEADER, "closed after {elapsed:?}");
    assert!(no_event(&events, ConnectionBound::KeepAliveTimeout));
    assert_eq!(server.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_at_the_keep_alive_bound() {
    let (events, _guard) = capture();
    let pki = TestPki::new();
    let server = serve(&pki, options()).await;

    // A request slower than every idle bound is served: it is in flight, not idle.
    let io = tls(server.addr, &pki, &[b"http/1.1"]).await;
    let (status, body, client) = get_h1(io, "/slow").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));

    // Then the client keeps the connection and sends nothing.
    let idle = Instant::now();
    let ended = tokio::time::timeout(GIVE_UP, client.conn).await;
    assert!(
        ended.is_ok(),
        "an idle keep-alive connection stayed open for {GIVE_UP:?}"
    );
    let elapsed = idle.elapsed();
    assert!(
        elapsed >= KEEP_ALIVE - Duration::from_millis(100),
        "closed after {elapsed:?}"
    );
    expect_event(&events, ConnectionBound::KeepAliveTimeout).await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_at_the_keep_alive_bound_despite_its_pings() {
    let (events, _guard) = capture();
    let pki = TestPki::new();
    let server = serve(&pki, options()).await;

    // A real HTTP/2 client that pings every 50 ms, even while idle.
    let io = tls(server.addr, &pki, &[b"h2"]).await;
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(50))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("https://localhost/slow")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        &res.into_body().collect().await.unwrap().to_bytes()[..],
        b"ok"
    );

    let idle = Instant::now();
    let ended = tokio::time::timeout(GIVE_UP, conn).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection stayed open for {GIVE_UP:?}"
    );
    let elapsed = idle.elapsed();
    assert!(
        elapsed >= KEEP_ALIVE - Duration::from_millis(100),
        "closed after {elapsed:?}"
    );
    expect_event(&events, ConnectionBound::KeepAliveTimeout).await;
    drop(send);
}

#[tokio::test]
async fn an_http2_peer_that_stops_answering_pings_is_dropped_with_a_stream_open() {
    let (events, _guard) = capture();
    let pki = TestPki::new();
    let interval = Duration::from_millis(200);
    let server = serve(
        &pki,
        options()
            .http2_keep_alive_interval(interval)
            .http2_keep_alive_timeout(Duration::from_millis(200)),
    )
    .await;

    // Opens a stream to a handler that never answers, then never answers a PING either.
    let started = Instant::now();
    let mut h2 = tls(server.addr, &pki, &[b"h2"]).await;
    let mut headers = vec![0x82, 0x87]; // :method GET, :scheme https
    headers.extend_from_slice(&[0x04, 5]); // :path, literal
    headers.extend_from_slice(b"/hang");
    headers.extend_from_slice(&[0x01, 9]); // :authority, literal
    headers.extend_from_slice(b"localhost");
    h2.write_all(H2_PREFACE).await.unwrap();
    h2.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // SETTINGS
    h2.write_all(&frame(0x1, 0x5, 1, &headers)).await.unwrap(); // HEADERS, END_STREAM
    let elapsed = closed(&mut h2, started, "HTTP/2 peer ignoring pings").await;

    assert!(elapsed >= interval, "closed after {elapsed:?}");
    assert_eq!(
        server.served.load(Ordering::SeqCst),
        1,
        "the stream was open"
    );
    expect_event(&events, ConnectionBound::Http2KeepAliveTimeout).await;
}

// --- Connection limits -------------------------------------------------------------------

#[tokio::test]
async fn at_the_connection_limit_new_connections_wait_in_the_backlog_until_a_slot_frees() {
    let (events, _guard) = capture();
    let pki = TestPki::new();
    let limit = 4;
    let server = serve(
        &pki,
        options()
            .header_read_timeout(LONG)
            .keep_alive_timeout(LONG)
            .max_connections(limit),
    )
    .await;

    // limit - 1 idle connections held, and a normal client is still served on the last slot.
    let mut held = Vec::new();
    for _ in 0..limit - 1 {
        held.push(tls(server.addr, &pki, &[b"http/1.1"]).await);
    }
    let io = tls(server.addr, &pki, &[b"http/1.1"]).await;
    let (status, _, _kept_alive) = get_h1(io, "/").await;
    assert_eq!(status, StatusCode::OK);

    // At the limit: the next connection is not accepted (no TLS handshake happens) ...
    let waiting = try_tls(server.addr, &pki, &[b"http/1.1"]);
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a connection over the limit was accepted"
    );
    expect_event(&events, ConnectionBound::ConnectionLimit).await;

    // ... until a held connection closes; then it is accepted and served.
    drop(held.pop());
    let io = tokio::time::timeout(GIVE_UP, waiting)
        .await
        .expect("the waiting connection is accepted once a slot frees")
        .expect("TLS handshake");
    let (status, body, _) = get_h1(io, "/").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
}

#[tokio::test]
async fn over_the_per_ip_limit_a_connection_is_closed_at_once() {
    let (events, _guard) = capture();
    let pki = TestPki::new();
    let server = serve(
        &pki,
        options()
            .header_read_timeout(LONG)
            .max_connections_per_ip(2),
    )
    .await;

    let mut held = vec![
        tls(server.addr, &pki, &[b"http/1.1"]).await,
        tls(server.addr, &pki, &[b"http/1.1"]).await,
    ];
    let third = tokio::time::timeout(GIVE_UP, try_tls(server.addr, &pki, &[b"http/1.1"]))
        .await
        .expect("the connection over the per-IP limit is closed, not left waiting");
    assert!(
        third.is_err(),
        "a third connection from one address got TLS"
    );
    expect_event(&events, ConnectionBound::PerIpConnectionLimit).await;

    // Once one closes, the address may connect again.
    drop(held.pop());
    let deadline = Instant::now() + GIVE_UP;
    let io = loop {
        match try_tls(server.addr, &pki, &[b"http/1.1"]).await {
            Ok(io) => break io,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("no connection after a slot freed: {err}"),
        }
    };
    let (status, _, _) = get_h1(io, "/").await;
    assert_eq!(status, StatusCode::OK);
}
