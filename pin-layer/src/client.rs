//! Client side: a pinned rustls config, a hyper connector, and runtime policy swaps.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::{ClientConfig, NamedGroup, RootCertStore};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::observe::{Observers, PinCheck, PinReport};
use crate::pin::Pin as KeyPin;
use crate::policy::PinPolicy;
use crate::verify::{
    CONNECTION, ConnSlot, PinFailure, PinVerifier, Shared, UnpinnableHost, trust_anchor,
};

/// Pinned TLS for clients: one policy, many ways to use it.
///
/// - [`PinnedTls::client_config`]: a `rustls::ClientConfig` for reqwest, tonic or any rustls
///   user;
/// - [`PinnedTls::https_connector`]: a hyper-rustls `HttpsConnector` (HTTP/1.1 and HTTP/2);
/// - [`PinnedTls::connector`]: a [`PinnedConnector`] that also puts the connection's
///   [`PinnedPeer`] in every response's extensions and retires pooled connections when the
///   policy changes.
///
/// Cloning is cheap; clones share the policy, so [`PinnedTls::set_policy`] on one is seen by
/// all and by every config and connector made from them.
#[derive(Clone, Debug)]
pub struct PinnedTls {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    config: Arc<ClientConfig>,
    sessions: Arc<SwappableSessions>,
    connections: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    /// The check of each host's last full handshake under the current policy, shown for
    /// connections that resume its session.
    last_checks: Mutex<HashMap<String, PinCheck>>,
    next_connection: AtomicU64,
    generation: AtomicU64,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedTls")
            .field("shared", &self.shared)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// TLS protocol versions a client accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsVersions {
    /// TLS 1.2 and TLS 1.3 (the default; nothing older is ever offered).
    #[default]
    Tls12AndUp,
    /// TLS 1.3 only.
    Tls13Only,
}

impl PinnedTls {
    /// Starts a client configuration with `policy`.
    pub fn builder(policy: PinPolicy) -> PinnedTlsBuilder {
        PinnedTlsBuilder {
            policy,
            roots: RootCertStore::empty(),
            anchor_certs: HashMap::new(),
            crls: Vec::new(),
            versions: TlsVersions::default(),
            client_auth: None,
            observers: Observers::default(),
            record_chain: false,
        }
    }

    /// A rustls client config that verifies and pins, sharing this policy. ALPN offers `h2`
    /// and `http/1.1`.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::clone(&self.inner.config)
    }

    /// A hyper-rustls connector over hyper-util's `HttpConnector`, HTTPS only, HTTP/1.1 and
    /// HTTP/2.
    ///
    /// Policy swaps apply to its new handshakes and discard its TLS sessions; connections
    /// already in a hyper pool stay until they close. Use [`PinnedTls::connector`] to retire
    /// them too.
    pub fn https_connector(
        &self,
    ) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
        let mut config = self.client_config();
        config.alpn_protocols.clear(); // hyper-rustls sets them from the enabled versions
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_all_versions()
            .build()
    }

    /// A [`PinnedConnector`] for hyper-util's client.
    pub fn connector(&self) -> PinnedConnector {
        PinnedConnector {
            tls: self.clone(),
            connect_to: None,
        }
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<PinPolicy> {
        self.inner.shared.policy()
    }

    /// Replaces the policy on the live client. New handshakes use `policy`; TLS sessions and
    /// pooled connections (of [`PinnedConnector`]) made under the old one are not reused.
    pub fn set_policy(&self, policy: PinPolicy) {
        {
            let mut slot = self
                .inner
                .shared
                .policy
                .write()
                .unwrap_or_else(|e| e.into_inner());
            *slot = Arc::new(policy);
            self.inner.sessions.reset();
            self.inner
                .last_checks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
        }
        let old = std::mem::take(
            &mut *self
                .inner
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        // Wake every live connection: its next read sees the new generation and ends the
        // connection, so hyper's pool drops it instead of reusing it.
        for waker in old.values() {
            waker.wake();
        }
        tracing::info!(
            target: crate::observe::TARGET,
            retired_connections = old.len(),
            event.kind = "event",
            event.category = "configuration",
            event.action = "tls.pin.policy_swap",
            event.outcome = "success",
            "pin policy replaced"
        );
    }

    /// How many times the policy was replaced.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }
}

/// Builds a [`PinnedTls`].
pub struct PinnedTlsBuilder {
    policy: PinPolicy,
    roots: RootCertStore,
    anchor_certs: HashMap<KeyPin, KeyPin>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    versions: TlsVersions,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    observers: Observers,
    record_chain: bool,
}

impl fmt::Debug for PinnedTlsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedTlsBuilder")
            .field("roots", &self.roots.len())
            .field("versions", &self.versions)
            .finish_non_exhaustive()
    }
}

impl PinnedTlsBuilder {
    /// Trusts these root certificates (in addition to any given before). Certificate
    /// fingerprint pins can then match them as trust anchors too.
    ///
    /// # Errors
    /// A certificate that is not a valid trust anchor.
    pub fn root_certificates<'a>(
        mut self,
        certs: impl IntoIterator<Item = CertificateDer<'a>>,
    ) -> Result<Self, BuildError> {
        for cert in certs {
            let (anchor, spki_pin, cert_pin) = trust_anchor(&cert)?;
            self.anchor_certs.insert(spki_pin, cert_pin);
            self.roots.roots.push(anchor);
        }
        Ok(self)
    }

    /// Trusts the roots of `store` (in addition to any given before).
    pub fn root_store(mut self, store: RootCertStore) -> Self {
        self.roots.roots.extend(store.roots);
        self
    }

    /// Trusts the operating system's roots (in addition to any given before).
    ///
    /// # Errors
    /// No root could be loaded.
    pub fn native_roots(mut self) -> Result<Self, BuildError> {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = self.roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(BuildError::NoRoots);
        }
        Ok(self)
    }

    /// Checks revocation against these CRLs (each certificate of the chain but the root).
    pub fn crls(
        mut self,
        crls: impl IntoIterator<Item = CertificateRevocationListDer<'static>>,
    ) -> Self {
        self.crls.extend(crls);
        self
    }

    /// Accepts TLS 1.3 only (TLS 1.2 is accepted by default; older versions never are).
    pub fn tls13_only(mut self) -> Self {
        self.versions = TlsVersions::Tls13Only;
        self
    }

    /// Presents this client certificate chain and key when a server asks (mTLS).
    pub fn client_auth_cert(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.client_auth = Some((chain, key));
        self
    }

    /// Keeps the verified chain (pins, subjects, expiry) in each [`PinCheck`], for diagnostics.
    /// Off by default: it parses every certificate of the chain on each handshake.
    pub fn record_verified_chain(mut self) -> Self {
        self.record_chain = true;
        self
    }

    /// Calls `f` after each successful check of a pinned host ("onValidCertificate").
    pub fn on_match(mut self, f: impl Fn(&PinCheck) + Send + Sync + 'static) -> Self {
        self.observers.on_match.push(Arc::new(f));
        self
    }

    /// Calls `f` on each pin violation, enforced or report-only ("onBadCertificate").
    pub fn on_violation(mut self, f: impl Fn(&PinFailure) + Send + Sync + 'static) -> Self {
        self.observers.on_violation.push(Arc::new(f));
        self
    }

    /// Calls `f` with each distinct violation report, for sending to a report URI.
    pub fn on_report(mut self, f: impl Fn(&PinReport) + Send + Sync + 'static) -> Self {
        self.observers.on_report.push(Arc::new(f));
        self
    }

    /// Builds the client configuration with rustls' default provider (aws-lc-rs, post-quantum
    /// hybrid key exchange first).
    ///
    /// # Errors
    /// No trusted roots, an unparsable CRL, or a client certificate that rustls refuses.
    pub fn build(self) -> Result<PinnedTls, BuildError> {
        if self.roots.is_empty() {
            return Err(BuildError::NoRoots);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut shared = Shared::new(
            self.roots.roots,
            self.anchor_certs,
            self.crls,
            provider.signature_verification_algorithms,
            self.policy,
            self.observers,
        )
        .map_err(|e| BuildError::InvalidCrl(e.to_string()))?;
        shared.record_chain = self.record_chain;
        let shared = Arc::new(shared);
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.versions {
            TlsVersions::Tls12AndUp => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersions::Tls13Only => &[&rustls::version::TLS13],
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(BuildError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                shared: shared.clone(),
            }));
        let mut config = match self.client_auth {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(BuildError::Tls)?,
            None => builder.with_no_client_auth(),
        };
        let sessions = Arc::new(SwappableSessions::default());
        config.resumption = Resumption::store(sessions.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(PinnedTls {
            inner: Arc::new(Inner {
                shared,
                config: Arc::new(config),
                sessions,
                connections: Mutex::new(HashMap::new()),
                last_checks: Mutex::new(HashMap::new()),
                next_connection: AtomicU64::new(0),
                generation: AtomicU64::new(0),
            }),
        })
    }
}

/// A pinned client configuration that could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No trusted root was given: standard validation needs at least one.
    #[error("no trusted roots: add root_certificates, root_store or native_roots")]
    NoRoots,
    /// A root certificate cannot serve as a trust anchor.
    #[error("invalid root certificate: {0}")]
    InvalidRoot(String),
    /// A CRL cannot be parsed.
    #[error("invalid certificate revocation list: {0}")]
    InvalidCrl(String),
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Tls(rustls::Error),
    /// The pins break a policy rule (no pins, or a single pin without the named opt-out).
    #[error("invalid pins: {0}")]
    Policy(#[from] crate::PolicyError),
}

/// TLS sessions that are all forgotten when the policy changes: a resumed session skips
/// certificate verification, so it must never outlive the policy it was verified under.
#[derive(Debug)]
struct SwappableSessions {
    inner: RwLock<Arc<ClientSessionMemoryCache>>,
}

const SESSION_CACHE_SIZE: usize = 256;

impl Default for SwappableSessions {
    fn default() -> Self {
        Self {
            inner: RwLock::new(Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE))),
        }
    }
}

impl SwappableSessions {
    fn current(&self) -> Arc<ClientSessionMemoryCache> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reset(&self) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE));
    }
}

impl ClientSessionStore for SwappableSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.current().set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.current().kx_hint(server_name)
    }
    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.current().set_tls12_session(server_name, value)
    }
    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.current().tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.current().remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.current().insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.current().take_tls13_ticket(server_name)
    }
}

/// What a pinned connection proved, in each response's extensions (hyper-util's client copies
/// it there) and returned by [`PinnedStream::peer`].
///
/// Only this crate constructs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedPeer {
    check: Option<PinCheck>,
    resumed: bool,
    generation: u64,
}

impl PinnedPeer {
    /// The certificate check: of this handshake, or for a resumed session, of the full
    /// handshake that established it under the same policy.
    pub fn check(&self) -> Option<&PinCheck> {
        self.check.as_ref()
    }

    /// The pin that matched, if the host is pinned and the handshake was full.
    pub fn matched_pin(&self) -> Option<&KeyPin> {
        self.check.as_ref().and_then(PinCheck::matched_pin)
    }

    /// Whether the TLS session was resumed.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The policy generation the connection was verified under.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

const MAX_REMEMBERED_HOSTS: usize = 1024;

/// A hyper-util connector: TCP, then TLS with the pinned config, HTTPS only.
#[derive(Clone, Debug)]
pub struct PinnedConnector {
    tls: PinnedTls,
    connect_to: Option<SocketAddr>,
}

impl PinnedConnector {
    /// Connects every request to `addr` while verifying the certificate for the URI's host
    /// (curl's `--connect-to`).
    pub fn connect_to(mut self, addr: SocketAddr) -> Self {
        self.connect_to = Some(addr);
        self
    }

    /// The pinned configuration.
    pub fn pinned_tls(&self) -> &PinnedTls {
        &self.tls
    }

    /// Connects to `uri` and returns the verified stream.
    ///
    /// # Errors
    /// A URI that is not `https://` with a host, a connection error, or the TLS handshake's
    /// error (a [`PinFailure`] among them).
    pub async fn connect(&self, uri: Uri) -> Result<PinnedStream, ConnectError> {
        match uri.scheme_str() {
            Some("https") => {}
            Some(other) => return Err(ConnectError::InsecureScheme(other.to_owned())),
            None => return Err(ConnectError::InvalidUri("no scheme")),
        }
        let host = uri.host().ok_or(ConnectError::InvalidUri("no host"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| ConnectError::InvalidUri("host is not a valid DNS name or IP address"))?;
        let tcp = match self.connect_to {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((host.as_str(), port)).await,
        }
        .map_err(ConnectError::Io)?;
        let _ = tcp.set_nodelay(true);
        let generation = self.tls.generation();
        let slot = Arc::new(ConnSlot {
            port,
            ..ConnSlot::default()
        });
        let handshake = TlsConnector::from(self.tls.inner.config.clone()).connect(server_name, tcp);
        let tls = CONNECTION
            .scope(slot.clone(), handshake)
            .await
            .map_err(ConnectError::Tls)?;
        let (_, conn) = tls.get_ref();
        let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        let h2 = conn.alpn_protocol() == Some(b"h2");
        let check = slot
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let check = {
            let mut last = self
                .tls
                .inner
                .last_checks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match check {
                Some(check) => {
                    if last.len() >= MAX_REMEMBERED_HOSTS {
                        last.clear();
                    }
                    last.insert(host.clone(), check.clone());
                    Some(check)
                }
                None => last.get(&host).cloned(),
            }
        };
        let peer = PinnedPeer {
            check,
            resumed,
            generation,
        };
        let id = self
            .tls
            .inner
            .next_connection
            .fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        self.tls
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, waker.clone());
        Ok(PinnedStream {
            io: TokioIo::new(tls),
            h2,
            peer,
            id,
            waker,
            tls: self.tls.clone(),
        })
    }
}

impl tower_service::Service<Uri> for PinnedConnector {
    type Response = PinnedStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<PinnedStream, ConnectError>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await })
    }
}

/// A connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URI is not `https://`: pinned clients never downgrade to plain HTTP.
    #[error("refusing {0}:// URI: a pinned client only speaks https://")]
    InsecureScheme(String),
    /// The URI has no usable host.
    #[error("invalid URI: {0}")]
    InvalidUri(&'static str),
    /// TCP connection failed (before any byte was sent).
    #[error("connection failed: {0}")]
    Io(#[source] io::Error),
    /// The TLS handshake failed: certificate validation, pin check or protocol.
    #[error("TLS handshake failed: {}", tls_message(.0))]
    Tls(#[source] io::Error),
}

fn tls_message(err: &io::Error) -> String {
    if let Some(failure) = PinFailure::find(err) {
        return failure.to_string();
    }
    if let Some(refused) = UnpinnableHost::find(err) {
        return refused.to_string();
    }
    err.to_string()
}

impl ConnectError {
    /// The pin failure behind this error, if that is what it was.
    pub fn pin_failure(&self) -> Option<&PinFailure> {
        PinFailure::find(self)
    }

    /// The refusal of a server name whose pins could not be looked up, if that is what it was.
    pub fn unpinnable_host(&self) -> Option<&UnpinnableHost> {
        UnpinnableHost::find(self)
    }

    /// The rustls error behind a TLS failure.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            Self::Tls(io) => io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
            _ => None,
        }
    }
}

pin_project_lite::pin_project! {
    /// A TLS stream made by [`PinnedConnector`].
    pub struct PinnedStream {
        #[pin]
        io: TokioIo<TlsStream<TcpStream>>,
        h2: bool,
        peer: PinnedPeer,
        id: u64,
        waker: Arc<AtomicWaker>,
        tls: PinnedTls,
    }

    impl PinnedDrop for PinnedStream {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Ok(mut live) = this.tls.inner.connections.lock() {
                live.remove(this.id);
            }
        }
    }
}

impl fmt::Debug for PinnedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl PinnedStream {
    /// What the handshake proved.
    pub fn peer(&self) -> &PinnedPeer {
        &self.peer
    }

    /// Whether the policy changed since this connection was verified.
    fn is_retired(&self) -> bool {
        self.tls.generation() != self.peer.generation
    }

    /// The rustls connection.
    pub fn tls_connection(&self) -> &rustls::ClientConnection {
        self.io.inner().get_ref().1
    }
}

fn retired() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "pin policy changed: connection verified under the old policy retired",
    )
}

impl Connection for PinnedStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new().extra(self.peer.clone());
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for PinnedStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_retired() {
            // End of stream: hyper closes the connection and its pool forgets it.
            return Poll::Ready(Ok(()));
        }
        self.waker.register(cx.waker());
        self.project().io.poll_read(cx, buf)
    }
}

impl hyper::rt::Write for PinnedStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_retired() {
            return Poll::Ready(Err(retired()));
        }
        self.project().io.poll_write(cx, buf)
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.is_retired() {
            return Poll::Ready(Err(retired()));
        }
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
