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
    /// The current policy generation. Replaced (never changed in place) by `set_policy`.
    current: RwLock<Arc<Generation>>,
    connections: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    /// The check of each host's last full handshake, with the generation it was made under,
    /// shown for connections of that generation that resume its session.
    last_checks: Mutex<HashMap<String, (u64, PinCheck)>>,
    next_connection: AtomicU64,
    /// `current.number`, readable without the lock on every read and write of a connection.
    generation: AtomicU64,
}

/// One policy generation: the client config its connections are made with, whose certificate
/// verifier and session store belong to this generation alone.
///
/// # Why sessions are bound to a generation this way
/// A resumed TLS session skips certificate verification, so a session must only ever be
/// resumed under the policy it was verified under. rustls' session-store callbacks do not say
/// which connection is calling, and a TLS 1.3 ticket may arrive long after the handshake (on a
/// pooled keep-alive connection) or a TLS 1.2 session be stored a round trip after the
/// certificate was checked: a store that only knew "the current cache" filed those sessions
/// under whatever policy was current *then*. Instead, each generation has its own config with
/// its own [`GenerationSessions`], so a connection always stores into the store of the config
/// it was made with, fixed at connect time:
///
/// - `set_policy` retires the old generation's store before it publishes the new policy:
///   retiring drops the cache under its write lock, and every insert and take runs under its
///   read lock, so an insert either lands before (and is dropped with the cache) or finds the
///   store retired (and is dropped). No session of a retired store is ever handed out again.
/// - A connection of a config taken before a swap (a `client_config()` held by reqwest, an
///   `https_connector()`) verifies under the current policy but stores into its own, retired,
///   store: nothing it learns is kept. A store only accepts sessions while its generation is
///   current, and its config is only handed out once its generation is published, so every
///   session it holds was verified under its generation's policy.
/// - Each generation also has its own verifier instance, and rustls resumes a session only
///   under the verifier that verified it: a session can never cross generations even if it
///   were filed in the wrong store.
struct Generation {
    number: u64,
    config: Arc<ClientConfig>,
    sessions: Arc<GenerationSessions>,
}

impl Generation {
    /// Generation `number` of `shared`, with `template`'s settings but its own verifier and
    /// session store.
    fn new(number: u64, shared: &Arc<Shared>, template: &ClientConfig) -> Self {
        let mut config = template.clone();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(PinVerifier {
                shared: shared.clone(),
            }));
        let sessions = Arc::new(GenerationSessions::new(number));
        config.resumption = Resumption::store(sessions.clone());
        Self {
            number,
            config: Arc::new(config),
            sessions,
        }
    }
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
    ///
    /// Policy swaps apply to its new handshakes. Its TLS sessions belong to the policy
    /// generation current when it was taken: after [`PinnedTls::set_policy`] it no longer
    /// resumes or stores any session (each would skip the new pin check), so take a new config
    /// after a swap to resume sessions again.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::clone(&self.current().config)
    }

    /// A hyper-rustls connector over hyper-util's `HttpConnector`, HTTPS only, HTTP/1.1 and
    /// HTTP/2.
    ///
    /// Policy swaps apply to its new handshakes and end its TLS session resumption (as for
    /// [`PinnedTls::client_config`]); connections already in a hyper pool stay until they
    /// close. Use [`PinnedTls::connector`] to retire them too, and to keep resuming sessions
    /// across swaps.
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
    /// pooled connections (of [`PinnedConnector`]) made under the old one are not reused, and
    /// a TLS session that arrives later on a connection verified under the old one (a TLS 1.3
    /// ticket on a keep-alive connection) is dropped.
    pub fn set_policy(&self, policy: PinPolicy) {
        {
            let mut current = self
                .inner
                .current
                .write()
                .unwrap_or_else(|e| e.into_inner());
            // Retire first: from here on nothing the old generation's connections learn is
            // kept, whichever policy they were verified under.
            current.sessions.retire();
            *self
                .inner
                .shared
                .policy
                .write()
                .unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
            let next = Generation::new(current.number + 1, &self.inner.shared, &current.config);
            self.inner.generation.store(next.number, Ordering::SeqCst);
            *current = Arc::new(next);
            self.inner
                .last_checks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
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

    fn current(&self) -> Arc<Generation> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // The template for every generation, which brings its own verifier and session store.
        let first = Generation::new(0, &shared, &config);
        Ok(PinnedTls {
            inner: Arc::new(Inner {
                shared,
                current: RwLock::new(Arc::new(first)),
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

/// The TLS sessions of one policy generation (see [`Generation`]): kept while the generation
/// is current, all dropped when it is retired, and none accepted or handed out after that.
#[derive(Debug)]
struct GenerationSessions {
    generation: u64,
    /// `None` once retired. Every operation runs under the read lock and retiring takes the
    /// write lock, so none can straddle the retirement.
    cache: RwLock<Option<ClientSessionMemoryCache>>,
}

const SESSION_CACHE_SIZE: usize = 256;

impl GenerationSessions {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            cache: RwLock::new(Some(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE))),
        }
    }

    fn retire(&self) {
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Runs `f` on the cache while the generation is current; `None` once it is retired.
    fn with<R>(&self, f: impl FnOnce(&ClientSessionMemoryCache) -> R) -> Option<R> {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(f)
    }

    fn dropped(&self, what: &'static str) {
        tracing::debug!(
            target: crate::observe::TARGET,
            generation = self.generation,
            session = what,
            event.kind = "event",
            event.category = "network",
            event.action = "tls.pin.session_dropped",
            event.outcome = "success",
            "TLS session of a retired pin policy generation dropped"
        );
    }
}

impl ClientSessionStore for GenerationSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(|c| c.set_kx_hint(server_name, group));
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(|c| c.kx_hint(server_name)).flatten()
    }
    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        if self
            .with(|c| c.set_tls12_session(server_name, value))
            .is_none()
        {
            self.dropped("tls12_session");
        }
    }
    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.with(|c| c.tls12_session(server_name)).flatten()
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(|c| c.remove_tls12_session(server_name));
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        if self
            .with(|c| c.insert_tls13_ticket(server_name, value))
            .is_none()
        {
            self.dropped("tls13_ticket");
        }
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.with(|c| c.take_tls13_ticket(server_name)).flatten()
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
        // The connection belongs to this generation: its sessions go to this generation's
        // store, and it is retired as soon as another generation is current.
        let current = self.tls.current();
        let generation = current.number;
        let slot = Arc::new(ConnSlot {
            port,
            ..ConnSlot::default()
        });
        let handshake = TlsConnector::from(current.config.clone()).connect(server_name, tcp);
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
                    last.insert(host.clone(), (generation, check.clone()));
                    Some(check)
                }
                None => last
                    .get(&host)
                    .filter(|(g, _)| *g == generation)
                    .map(|(_, c)| c.clone()),
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
