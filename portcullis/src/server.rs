//! The server stack: audit → pre-auth rate limit → mTLS identity → verify signature →
//! verify DPoP → require bearer → per-identity rate limit → your service; [`serve_tls`] (or
//! [`serve_tls_with`] and [`ServeOptions`]) to run it with every connection phase bounded,
//! [`RotatingCert`] to rotate its key and [`RequireClientIdentityLayer`] for the mTLS step.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis_pin::{PeerIdentity, PeerIdentityLayer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::layer::util::Identity;
use tower::{Service, ServiceBuilder};
use tower_layer::Layer;

/// Starts a server stack with no layer.
pub fn builder() -> ServerBuilder {
    ServerBuilder {
        audit: Identity::new(),
        pre_auth: Identity::new(),
        mtls: Identity::new(),
        signatures: Identity::new(),
        dpop: Identity::new(),
        bearer: Identity::new(),
        per_identity: Identity::new(),
    }
}

/// Builds the server stack. Each step is optional; the order is fixed whatever the call order:
/// audit → pre-auth rate limit → mTLS identity → verify signature → verify DPoP → require
/// bearer → per-identity rate limit → service.
#[derive(Clone, Debug)]
pub struct ServerBuilder<
    Aud = Identity,
    Pre = Identity,
    Mtl = Identity,
    Sig = Identity,
    Dpo = Identity,
    Bea = Identity,
    Per = Identity,
> {
    audit: Aud,
    pre_auth: Pre,
    mtls: Mtl,
    signatures: Sig,
    dpop: Dpo,
    bearer: Bea,
    per_identity: Per,
}

impl<Aud, Pre, Mtl, Sig, Dpo, Bea, Per> ServerBuilder<Aud, Pre, Mtl, Sig, Dpo, Bea, Per> {
    /// Records each request (e.g. `Auditor::server_layer()`), outermost so refusals are
    /// recorded too.
    pub fn audit<L>(self, layer: L) -> ServerBuilder<L, Pre, Mtl, Sig, Dpo, Bea, Per> {
        ServerBuilder {
            audit: layer,
            pre_auth: self.pre_auth,
            mtls: self.mtls,
            signatures: self.signatures,
            dpop: self.dpop,
            bearer: self.bearer,
            per_identity: self.per_identity,
        }
    }

    /// Limits unauthenticated traffic, keyed by peer address, before any verification work.
    pub fn pre_auth_rate_limit<L>(
        self,
        layer: L,
    ) -> ServerBuilder<Aud, L, Mtl, Sig, Dpo, Bea, Per> {
        ServerBuilder {
            audit: self.audit,
            pre_auth: layer,
            mtls: self.mtls,
            signatures: self.signatures,
            dpop: self.dpop,
            bearer: self.bearer,
            per_identity: self.per_identity,
        }
    }

    /// Checks the mTLS client identity that [`serve_tls`] put in the extensions (e.g.
    /// [`RequireClientIdentityLayer`]).
    pub fn mtls_identity<L>(self, layer: L) -> ServerBuilder<Aud, Pre, L, Sig, Dpo, Bea, Per> {
        ServerBuilder {
            audit: self.audit,
            pre_auth: self.pre_auth,
            mtls: layer,
            signatures: self.signatures,
            dpop: self.dpop,
            bearer: self.bearer,
            per_identity: self.per_identity,
        }
    }

    /// Verifies RFC 9421 signatures (e.g. `VerifySignatureLayer`).
    pub fn verify_signatures<L>(self, layer: L) -> ServerBuilder<Aud, Pre, Mtl, L, Dpo, Bea, Per> {
        ServerBuilder {
            audit: self.audit,
            pre_auth: self.pre_auth,
            mtls: self.mtls,
            signatures: layer,
            dpop: self.dpop,
            bearer: self.bearer,
            per_identity: self.per_identity,
        }
    }

    /// Verifies DPoP proofs (RFC 9449, e.g. `VerifyDpopLayer`). It runs before the bearer step,
    /// which reads the verified proof to enforce a token's `cnf.jkt` binding: a bound token
    /// without a matching proof is refused there.
    pub fn verify_dpop<L>(self, layer: L) -> ServerBuilder<Aud, Pre, Mtl, Sig, L, Bea, Per> {
        ServerBuilder {
            audit: self.audit,
            pre_auth: self.pre_auth,
            mtls: self.mtls,
            signatures: self.signatures,
            dpop: layer,
            bearer: self.bearer,
            per_identity: self.per_identity,
        }
    }

    /// Validates access tokens (e.g. `RequireBearerLayer`), as `Bearer` or, bound to the
    /// DPoP step's proof, as `DPoP`.
    pub fn require_bearer<L>(self, layer: L) -> ServerBuilder<Aud, Pre, Mtl, Sig, Dpo, L, Per> {
        ServerBuilder {
            audit: self.audit,
            pre_auth: self.pre_auth,
            mtls: self.mtls,
            signatures: self.signatures,
            dpop: self.dpop,
            bearer: layer,
            per_identity: self.per_identity,
        }
    }

    /// Limits each verified identity (keyed on what the layers above put in extensions).
    pub fn identity_rate_limit<L>(
        self,
        layer: L,
    ) -> ServerBuilder<Aud, Pre, Mtl, Sig, Dpo, Bea, L> {
        ServerBuilder {
            audit: self.audit,
            pre_auth: self.pre_auth,
            mtls: self.mtls,
            signatures: self.signatures,
            dpop: self.dpop,
            bearer: self.bearer,
            per_identity: layer,
        }
    }

    /// Stacks the layers over `inner`.
    pub fn service<S>(&self, inner: S) -> Aud::Service
    where
        Per: Layer<S>,
        Bea: Layer<Per::Service>,
        Dpo: Layer<Bea::Service>,
        Sig: Layer<Dpo::Service>,
        Mtl: Layer<Sig::Service>,
        Pre: Layer<Mtl::Service>,
        Aud: Layer<Pre::Service>,
    {
        let limited = self.per_identity.layer(inner);
        let authorized = self.bearer.layer(limited);
        let possessed = self.dpop.layer(authorized);
        let verified = self.signatures.layer(possessed);
        let identified = self.mtls.layer(verified);
        let admitted = self.pre_auth.layer(identified);
        self.audit.layer(admitted)
    }
}

type AllowList = Arc<dyn Fn(&PeerIdentity) -> bool + Send + Sync>;

/// Requires a verified mTLS client identity: the [`PeerIdentity`] that [`serve_tls`] puts in
/// the request extensions when the TLS config verified a client certificate. Requests without
/// one, or whose identity the allow-list refuses, get `403 Forbidden` with a
/// `portcullis-reason` header (`missing_client_certificate` or `client_not_allowed`) and never
/// reach the inner service.
///
/// Use it with a rustls config whose client verifier allows unauthenticated clients on some
/// routes, or to restrict which verified clients may call this service.
#[derive(Clone)]
pub struct RequireClientIdentityLayer {
    allow: Option<AllowList>,
}

impl std::fmt::Debug for RequireClientIdentityLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireClientIdentityLayer")
            .field("allow_list", &self.allow.is_some())
            .finish()
    }
}

impl Default for RequireClientIdentityLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequireClientIdentityLayer {
    /// Requires any verified client certificate.
    pub fn new() -> Self {
        Self { allow: None }
    }

    /// Also requires `allow` to accept the identity (e.g. a SAN or key pin allow-list).
    pub fn allow(mut self, allow: impl Fn(&PeerIdentity) -> bool + Send + Sync + 'static) -> Self {
        self.allow = Some(Arc::new(allow));
        self
    }
}

impl<S> Layer<S> for RequireClientIdentityLayer {
    type Service = RequireClientIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireClientIdentity {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RequireClientIdentityLayer`].
#[derive(Clone, Debug)]
pub struct RequireClientIdentity<S> {
    inner: S,
    layer: RequireClientIdentityLayer,
}

impl<S> RequireClientIdentity<S> {
    /// Wraps `inner`, requiring any verified client certificate.
    pub fn new(inner: S) -> Self {
        RequireClientIdentityLayer::new().layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequireClientIdentity<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let verdict = match req.extensions().get::<PeerIdentity>() {
            None => Err("missing_client_certificate"),
            Some(id) if self.layer.allow.as_ref().is_some_and(|allow| !allow(id)) => {
                Err("client_not_allowed")
            }
            Some(_) => Ok(()),
        };
        match verdict {
            Ok(()) => ResponseFuture {
                state: State::Inner {
                    future: self.inner.call(req),
                },
            },
            Err(reason) => {
                let peer = req
                    .extensions()
                    .get::<SocketAddr>()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                tracing::warn!(
                    target: TARGET,
                    reason,
                    "event.kind" = "event",
                    "event.category" = "authentication",
                    "event.action" = "mtls.identity",
                    "event.outcome" = "failure",
                    "event.reason" = reason,
                    "client.address" = peer,
                    "url.path" = req.uri().path(),
                    "request refused: no acceptable client certificate"
                );
                let mut res = http::Response::new(ResBody::default());
                *res.status_mut() = http::StatusCode::FORBIDDEN;
                res.headers_mut()
                    .insert("portcullis-reason", http::HeaderValue::from_static(reason));
                ResponseFuture {
                    state: State::Refused {
                        response: Some(res),
                    },
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequireClientIdentity`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] future: F },
        Refused { response: Option<http::Response<B>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => future.poll(cx),
            StateProj::Refused { response } => match response.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
        }
    }
}

/// A server certificate that can be replaced while the server runs: key rotation without a
/// restart. New handshakes get the new chain; established connections keep theirs.
///
/// Clients that pin a backup key (see [`PinPolicy`](portcullis_pin::PinPolicy)) keep working
/// across the rotation when the new key is that backup.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # testkit::install_default_provider();
/// # let pki = testkit::pki::TestPki::new();
/// # let next = pki.intermediate.issue_leaf();
/// use portcullis::server::RotatingCert;
///
/// let cert = RotatingCert::new(pki.server_chain(), pki.leaf.key_der())?;
/// let config = cert.server_config(); // for serve_tls
/// assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
/// cert.rotate(pki.chain_for(&next), next.key_der())?;
/// assert_eq!(cert.generation(), 1);
/// # Ok(())
/// # }
/// ```
pub struct RotatingCert {
    current: RwLock<Arc<CertifiedKey>>,
    generation: AtomicU64,
}

impl std::fmt::Debug for RotatingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingCert")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl RotatingCert {
    /// Serves `chain` (leaf first) with `key`, using the process's default rustls provider
    /// (aws-lc-rs when none is installed).
    ///
    /// # Errors
    /// When the key cannot be loaded or does not match the leaf certificate.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, rustls::Error> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(certified(chain, key)?)),
            generation: AtomicU64::new(0),
        }))
    }

    /// Serves the chain in `chain_pem` (leaf first, as web servers expect) with the private
    /// key in `key_pem` (PKCS#8, PKCS#1 or SEC1 PEM).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # testkit::install_default_provider();
    /// # let pki = testkit::pki::TestPki::new();
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # std::fs::write(dir.join("chain.pem"), pki.leaf.cert_pem() + &pki.intermediate.cert_pem())?;
    /// # std::fs::write(dir.join("key.pem"), pki.leaf.key_pem())?;
    /// use portcullis::server::RotatingCert;
    ///
    /// let cert = RotatingCert::from_pem_files(dir.join("chain.pem"), dir.join("key.pem"))?;
    /// let config = std::sync::Arc::new(cert.server_config()); // for serve_tls
    /// # let _ = config;
    /// // A missing file says which one and what was expected:
    /// let err = RotatingCert::from_pem_files(dir.join("nope.pem"), dir.join("key.pem")).unwrap_err();
    /// assert!(err.to_string().starts_with("cannot read certificate chain"));
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`PemLoadError`] naming the file and what was wrong: unreadable, no certificate or no
    /// private key in it, or a key that does not match the leaf certificate.
    pub fn from_pem_files(
        chain_pem: impl AsRef<std::path::Path>,
        key_pem: impl AsRef<std::path::Path>,
    ) -> Result<Arc<Self>, PemLoadError> {
        let (chain, key) = load_pem_pair(chain_pem.as_ref(), key_pem.as_ref())?;
        Self::new(chain, key).map_err(PemLoadError::Mismatch)
    }

    /// [`RotatingCert::rotate`] from PEM files, as [`RotatingCert::from_pem_files`] reads
    /// them; on any error the current pair stays in place.
    ///
    /// # Errors
    /// As [`RotatingCert::from_pem_files`].
    pub fn rotate_from_pem_files(
        &self,
        chain_pem: impl AsRef<std::path::Path>,
        key_pem: impl AsRef<std::path::Path>,
    ) -> Result<(), PemLoadError> {
        let (chain, key) = load_pem_pair(chain_pem.as_ref(), key_pem.as_ref())?;
        self.rotate(chain, key).map_err(PemLoadError::Mismatch)
    }

    /// Replaces the chain and key for new handshakes. The old pair stays in place when the
    /// new one is invalid.
    ///
    /// # Errors
    /// When the key cannot be loaded or does not match the leaf certificate.
    pub fn rotate(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        let next = Arc::new(certified(chain, key)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(
            target: TARGET,
            generation,
            "event.kind" = "event",
            "event.category" = "configuration",
            "event.action" = "tls.certificate.rotate",
            "event.outcome" = "success",
            "server certificate rotated"
        );
        Ok(())
    }

    /// How many rotations happened.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A server config (no client authentication, ALPN `h2` and `http/1.1`) that presents
    /// the current certificate. For mTLS, pass this resolver to your own config builder.
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

/// Why [`RotatingCert::from_pem_files`] could not load a certificate chain and key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemLoadError {
    /// The certificate chain file could not be read or holds no PEM certificate.
    #[error(
        "cannot read certificate chain {path}: {detail} (expected PEM `CERTIFICATE` blocks, leaf first)"
    )]
    Chain {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error(
        "cannot read private key {path}: {detail} (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)"
    )]
    Key {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The key is not usable or does not match the leaf certificate.
    #[error("certificate and key do not make a usable pair: {0}")]
    Mismatch(#[source] rustls::Error),
}

fn load_pem_pair(
    chain_path: &std::path::Path,
    key_path: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PemLoadError> {
    use rustls_pki_types::pem::PemObject;
    let chain_err = |detail: String| PemLoadError::Chain {
        path: chain_path.to_owned(),
        detail,
    };
    let chain = CertificateDer::pem_file_iter(chain_path)
        .map_err(|e| chain_err(pem_detail(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| chain_err(pem_detail(&e)))?;
    if chain.is_empty() {
        return Err(chain_err("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| PemLoadError::Key {
        path: key_path.to_owned(),
        detail: pem_detail(&e),
    })?;
    Ok((chain, key))
}

fn pem_detail(err: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match err {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no matching PEM block in the file".into(),
        Error::MissingSectionEnd { .. } => "a PEM block has no END line".into(),
        Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        Error::Base64Decode(_) => "a PEM block is not valid base64".into(),
        _ => "the file is not valid PEM".into(),
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, rustls::Error> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    CertifiedKey::from_der(chain, key, &provider)
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}
/// The default bound on the TLS handshake and on reading a request head (see
/// [`ServeOptions`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `tracing` target of [`serve_tls`]'s connection events.
pub const TARGET: &str = "portcullis::server";

/// The bound that ended or refused a connection in [`serve_tls`]: [`as_str`](Self::as_str) is
/// the `event.reason` of its event and [`action`](Self::action) the `event.action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionBound {
    /// The TLS handshake did not finish within [`ServeOptions::handshake_timeout`].
    HandshakeTimeout,
    /// No complete request within [`ServeOptions::header_read_timeout`]: of the handshake for
    /// the first request, of its first byte for a later HTTP/1 request.
    HeaderReadTimeout,
    /// The connection stayed idle (no request in flight) for
    /// [`ServeOptions::keep_alive_timeout`].
    KeepAliveTimeout,
    /// An HTTP/2 peer left a keep-alive ping unanswered for
    /// [`ServeOptions::http2_keep_alive_timeout`].
    Http2KeepAliveTimeout,
    /// [`ServeOptions::max_connections`] connections were open: accepting paused.
    ConnectionLimit,
    /// [`ServeOptions::max_connections_per_ip`] connections were open from the peer's address:
    /// the new one was closed.
    PerIpConnectionLimit,
}

impl ConnectionBound {
    /// The `event.reason` of the event: `handshake_timeout`, `header_read_timeout`,
    /// `keep_alive_timeout`, `http2_keep_alive_timeout`, `connection_limit` or
    /// `per_ip_connection_limit`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::KeepAliveTimeout => "keep_alive_timeout",
            Self::Http2KeepAliveTimeout => "http2_keep_alive_timeout",
            Self::ConnectionLimit => "connection_limit",
            Self::PerIpConnectionLimit => "per_ip_connection_limit",
        }
    }

    /// The `event.action` of the event: `tls.handshake`, `http.connection` or `tcp.accept`.
    pub const fn action(self) -> &'static str {
        match self {
            Self::HandshakeTimeout => "tls.handshake",
            Self::HeaderReadTimeout | Self::KeepAliveTimeout | Self::Http2KeepAliveTimeout => {
                "http.connection"
            }
            Self::ConnectionLimit | Self::PerIpConnectionLimit => "tcp.accept",
        }
    }
}

impl std::fmt::Display for ConnectionBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long each phase of a connection may last in [`serve_tls_with`], and how many
/// connections may be open. [`serve_tls`] uses [`ServeOptions::default()`].
///
/// | phase | bound | default | nginx |
/// |---|---|---|---|
/// | TCP accept → TLS handshake done | [`handshake_timeout`](Self::handshake_timeout) | 10 s | `client_header_timeout` 60 s |
/// | handshake done → first request in (HTTP/1 head, or HTTP/2 stream opened), whatever arrives meanwhile: nothing, no ALPN, part of a preface, a preface and SETTINGS | [`header_read_timeout`](Self::header_read_timeout) | 10 s | `client_header_timeout` 60 s |
/// | HTTP/1: first byte of a later request → end of its head | [`header_read_timeout`](Self::header_read_timeout) | 10 s | `client_header_timeout` 60 s |
/// | HTTP/1: end of a response → first byte of the next request | [`keep_alive_timeout`](Self::keep_alive_timeout) | 60 s | `keepalive_timeout` 75 s |
/// | HTTP/2: no stream open (PING, SETTINGS and other frames do not count) | [`keep_alive_timeout`](Self::keep_alive_timeout) | 60 s | `keepalive_timeout` 75 s (`http2_idle_timeout` 3 min before 1.19.7) |
/// | HTTP/2: a keep-alive PING unanswered (a dead peer, also while streams are open) | [`http2_keep_alive_interval`](Self::http2_keep_alive_interval) + [`http2_keep_alive_timeout`](Self::http2_keep_alive_timeout) | 20 s + 20 s | none |
/// | connections open at once | [`max_connections`](Self::max_connections) | 512 | `worker_connections` 512 |
/// | connections open at once from one IP address | [`max_connections_per_ip`](Self::max_connections_per_ip) | off | `limit_conn` (off) |
///
/// The handshake and head bounds are tighter than nginx's: a TLS handshake and a request
/// head take a few round trips, so 10 s leaves room for slow mobile links while a client that
/// holds a connection slot without sending anything loses it six times sooner. The
/// keep-alive bound is a little under nginx's and equal to common load balancers' idle
/// timeout, so a balancer in front closes first.
///
/// # At the limits
/// When [`max_connections`](Self::max_connections) connections are open, the server stops
/// accepting: new connections wait in the kernel's listen backlog (their handshake bound
/// starts once accepted) and are accepted in arrival order as open ones close, which they do
/// within the bounds above. One `tcp.accept` event with reason `connection_limit` marks the
/// start of each such period. Past the backlog the kernel refuses or drops new connections.
///
/// A connection beyond [`max_connections_per_ip`](Self::max_connections_per_ip) is closed
/// right after accept, before any TLS, with a `tcp.accept` event, reason
/// `per_ip_connection_limit`. It is off by default because clients behind a proxy or NAT
/// share one address.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use portcullis::server::ServeOptions;
///
/// let options = ServeOptions::default()
///     .header_read_timeout(Duration::from_secs(5))
///     .keep_alive_timeout(Duration::from_secs(30))
///     .max_connections(2048)
///     .max_connections_per_ip(64);
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    keep_alive_timeout: Duration,
    http2_keep_alive_interval: Option<Duration>,
    http2_keep_alive_timeout: Duration,
    max_connections: usize,
    max_connections_per_ip: Option<usize>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_read_timeout: HANDSHAKE_TIMEOUT,
            keep_alive_timeout: Duration::from_secs(60),
            http2_keep_alive_interval: Some(Duration::from_secs(20)),
            http2_keep_alive_timeout: Duration::from_secs(20),
            max_connections: 512,
            max_connections_per_ip: None,
        }
    }
}

impl ServeOptions {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a client has, from TCP accept, to finish the TLS handshake.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a client has to send its first request after the handshake (HTTP/1 head or
    /// HTTP/2 stream), and to finish each later HTTP/1 head once its first byte arrived. The
    /// connection is dropped when it runs out.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a connection that served a request may stay idle: on HTTP/1 until the next
    /// request's first byte, on HTTP/2 with no stream open. It is then shut down gracefully
    /// (HTTP/2 GOAWAY) and dropped after [`header_read_timeout`](Self::header_read_timeout)
    /// more if the client does not close it.
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.keep_alive_timeout = timeout;
        self
    }

    /// How often to ping an HTTP/2 peer that sent nothing (`None`: never).
    pub fn http2_keep_alive_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.http2_keep_alive_interval = interval.into();
        self
    }

    /// How long an HTTP/2 peer has to answer a keep-alive ping before the connection is
    /// closed, streams in flight included.
    pub fn http2_keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.http2_keep_alive_timeout = timeout;
        self
    }

    /// How many connections may be open at once (TLS handshakes included); see "At the
    /// limits" above.
    ///
    /// # Panics
    /// When `max` is 0 (the server would never accept).
    pub fn max_connections(mut self, max: usize) -> Self {
        assert!(max > 0, "max_connections must be at least 1");
        self.max_connections = max;
        self
    }

    /// How many connections may be open at once from one IP address (`None`: no per-address
    /// limit); see "At the limits" above.
    ///
    /// # Panics
    /// When `max` is `Some(0)` (every connection would be refused).
    pub fn max_connections_per_ip(mut self, max: impl Into<Option<usize>>) -> Self {
        let max = max.into();
        assert!(max != Some(0), "max_connections_per_ip must be at least 1");
        self.max_connections_per_ip = max;
        self
    }
}

/// Serves `service` over TLS on `listener` with the default [`ServeOptions`] until the task is
/// dropped; see [`serve_tls_with`].
pub async fn serve_tls<S, B>(listener: TcpListener, config: Arc<rustls::ServerConfig>, service: S)
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_tls_with(listener, config, service, ServeOptions::default()).await;
}

/// Serves `service` over TLS on `listener` until the task is dropped, each connection phase
/// bounded by `options`.
///
/// Each connection's requests carry the peer's [`SocketAddr`] and
/// [`PeerAddr`](portcullis_retry::rate_limit::PeerAddr) (for rate-limit and audit keys) and,
/// when the TLS config verified a client certificate (mTLS), its
/// [`PeerIdentity`]. HTTP/1.1 and HTTP/2 are served (ALPN).
///
/// # Security
/// No phase of a connection is unbounded while the server waits on the client: the TLS
/// handshake, the wait for the first request (whatever the protocol), each HTTP/1 head, the
/// idle time between requests (HTTP/1 keep-alive, HTTP/2 with no stream) and an unanswered
/// HTTP/2 ping each have a bound (see [`ServeOptions`]), and the number of open connections
/// is capped. A connection ended or refused by a bound is reported as an event (target
/// [`TARGET`], `event.action` and `event.reason` from [`ConnectionBound`], `client.address`),
/// at `info` level except the routine `keep_alive_timeout` (`debug`); a failed handshake is a
/// `tls.handshake` failure with reason `handshake_failed`. Accept errors (such as running
/// out of file descriptors) pause the loop briefly instead of spinning.
///
/// Time spent in your service (and reading a request body it asked for) is yours to bound,
/// e.g. with `tower::timeout`.
pub async fn serve_tls_with<S, B>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    service: S,
    options: ServeOptions,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = TlsAcceptor::from(config);
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(
        options.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let per_ip = options
        .max_connections_per_ip
        .map(|max| Arc::new(PerIp::new(max)));
    let mut at_limit = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                at_limit = false;
                slot
            }
            Err(_) => {
                if !at_limit {
                    at_limit = true;
                    tracing::warn!(
                        target: TARGET,
                        limit = options.max_connections,
                        "event.kind" = "event",
                        "event.category" = "network",
                        "event.action" = ConnectionBound::ConnectionLimit.action(),
                        "event.outcome" = "failure",
                        "event.reason" = ConnectionBound::ConnectionLimit.as_str(),
                        "connection limit reached; new connections wait in the listen backlog"
                    );
                }
                match slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    // The semaphore is never closed.
                    Err(_) => return,
                }
            }
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(
                    target: TARGET,
                    error = %err,
                    "event.kind" = "event",
                    "event.category" = "network",
                    "event.action" = "tcp.accept",
                    "event.outcome" = "failure",
                    "accept failed; pausing before the next accept"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip_slot = match &per_ip {
            None => None,
            Some(per_ip) => match per_ip.try_acquire(peer.ip()) {
                Some(ip_slot) => Some(ip_slot),
                None => {
                    closed_by(
                        peer,
                        ConnectionBound::PerIpConnectionLimit,
                        "too many connections from this address",
                    );
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        let options = options.clone();
        tokio::spawn(async move {
            serve_connection(acceptor, tcp, peer, service, &options).await;
            drop((slot, ip_slot));
        });
    }
}

/// Serves one accepted connection, enforcing the bounds of `options` on it.
async fn serve_connection<S, B>(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    service: S,
    options: &ServeOptions,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            handshake_failed(peer, &err.to_string());
            return;
        }
        Err(_) => {
            closed_by(
                peer,
                ConnectionBound::HandshakeTimeout,
                "no TLS handshake in time",
            );
            return;
        }
    };
    let activity = Arc::new(Activity::new(
        tls.get_ref().1.alpn_protocol() == Some(b"h2"),
    ));
    let svc = ServiceBuilder::new()
        .layer(PeerIdentityLayer::from_connection(tls.get_ref().1))
        .map_request(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(peer);
            req.extensions_mut()
                .insert(portcullis_retry::rate_limit::PeerAddr(peer));
            req
        })
        .service(service);
    let svc = Track {
        inner: svc,
        activity: activity.clone(),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The loop below times request heads on both protocols; hyper's own HTTP/1 header timer
    // would also run between requests and cut keep-alive short.
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.http2_keep_alive_interval)
        .keep_alive_timeout(options.http2_keep_alive_timeout);
    let io = Watched {
        inner: tls,
        activity: activity.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);

    let bound = loop {
        let deadline = activity.deadline(options);
        let expired = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                // With hyper's HTTP/1 header timer off, its only timeout is the HTTP/2 ping.
                let ping_unanswered = result.err().is_some_and(|err| {
                    err.downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout)
                });
                if ping_unanswered {
                    closed_by(
                        peer,
                        ConnectionBound::Http2KeepAliveTimeout,
                        "keep-alive ping unanswered",
                    );
                }
                return;
            }
            () = activity.went_idle.notified() => {}
            () = expired => match activity.deadline(options) {
                Some((at, bound)) if at <= Instant::now() => break bound,
                _ => {}
            },
        }
    };
    match bound {
        ConnectionBound::KeepAliveTimeout => {
            closed_by(peer, bound, "idle connection");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(options.header_read_timeout, conn).await;
        }
        _ => closed_by(peer, bound, "no complete request in time"),
    }
}

/// What a connection is doing, shared by its IO (reads), its requests (in flight or not) and
/// the loop that enforces the bounds.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// When the first byte since the connection went idle arrived, as nanoseconds after
    /// `opened` plus one; 0 while none did.
    first_byte: AtomicU64,
    state: Mutex<ActivityState>,
    went_idle: Notify,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    requests: u64,
    idle_since: Instant,
    http2: bool,
}

impl Activity {
    fn new(http2: bool) -> Self {
        let now = Instant::now();
        Self {
            opened: now,
            first_byte: AtomicU64::new(0),
            state: Mutex::new(ActivityState {
                in_flight: 0,
                requests: 0,
                idle_since: now,
                http2,
            }),
            went_idle: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn on_read(&self) {
        if self.first_byte.load(Ordering::Relaxed) == 0 {
            let nanos = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            let _ = self.first_byte.compare_exchange(
                0,
                nanos + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn begin(self: &Arc<Self>, version: http::Version) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.requests += 1;
        state.http2 |= version == http::Version::HTTP_2;
        InFlight(self.clone())
    }

    fn end(&self) {
        let idle = {
            let mut state = self.state();
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                self.first_byte.store(0, Ordering::Relaxed);
                state.idle_since = Instant::now();
            }
            state.in_flight == 0
        };
        if idle {
            self.went_idle.notify_one();
        }
    }

    /// When the connection runs out of time, and which bound that is; `None` while a request
    /// is in flight.
    fn deadline(&self, options: &ServeOptions) -> Option<(Instant, ConnectionBound)> {
        let state = self.state();
        if state.in_flight > 0 {
            return None;
        }
        if state.requests == 0 {
            return Some((
                after(state.idle_since, options.header_read_timeout),
                ConnectionBound::HeaderReadTimeout,
            ));
        }
        let first_byte = self.first_byte.load(Ordering::Relaxed);
        if !state.http2 && first_byte != 0 {
            let at = after(self.opened, Duration::from_nanos(first_byte - 1));
            return Some((
                after(at, options.header_read_timeout),
                ConnectionBound::HeaderReadTimeout,
            ));
        }
        Some((
            after(state.idle_since, options.keep_alive_timeout),
            ConnectionBound::KeepAliveTimeout,
        ))
    }
}

/// `at + timeout`, or far in the future when that overflows.
fn after(at: Instant, timeout: Duration) -> Instant {
    at.checked_add(timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365 * 30))
}

/// A request in flight; the connection goes idle when the last one is dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

pin_project_lite::pin_project! {
    /// The connection's IO, noting when bytes arrive.
    struct Watched<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.on_read();
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Marks each request in flight from its head until its response body is done or dropped.
#[derive(Clone, Debug)]
struct Track<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Track<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<Tracked<ResBody>>;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let guard = self.activity.begin(req.version());
        TrackFuture {
            future: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    struct TrackFuture<F> {
        #[pin]
        future: F,
        guard: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(result.map(|res| res.map(|body| Tracked { body, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it ends or is dropped.
    struct Tracked<B> {
        #[pin]
        body: B,
        guard: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if frame.is_none() {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Open connections per client address.
#[derive(Debug)]
struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

/// One open connection from `ip`, released on drop.
#[derive(Debug)]
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self
            .per_ip
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

fn handshake_failed(peer: SocketAddr, detail: &str) {
    tracing::info!(
        target: TARGET,
        detail,
        "event.kind" = "event",
        "event.category" = "network",
        "event.action" = "tls.handshake",
        "event.outcome" = "failure",
        "event.reason" = "handshake_failed",
        "client.address" = %peer.ip(),
        "TLS handshake refused"
    );
}

/// Reports a connection that `bound` ended or refused.
fn closed_by(peer: SocketAddr, bound: ConnectionBound, detail: &str) {
    if bound == ConnectionBound::KeepAliveTimeout {
        tracing::debug!(
            target: TARGET,
            detail,
            "event.kind" = "event",
            "event.category" = "network",
            "event.action" = bound.action(),
            "event.outcome" = "success",
            "event.reason" = bound.as_str(),
            "client.address" = %peer.ip(),
            "idle connection closed"
        );
    } else {
        tracing::info!(
            target: TARGET,
            detail,
            "event.kind" = "event",
            "event.category" = "network",
            "event.action" = bound.action(),
            "event.outcome" = "failure",
            "event.reason" = bound.as_str(),
            "client.address" = %peer.ip(),
            "connection closed by a bound"
        );
    }
}
