//! The server stack: audit → pre-auth rate limit → mTLS identity → verify signature →
//! verify DPoP → require bearer → per-identity rate limit → your service; [`serve_tls`] to run it,
//! [`RotatingCert`] to rotate its key and [`RequireClientIdentityLayer`] for the mTLS step.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
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
use tokio::net::TcpListener;
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

/// How long a client has to complete the TLS handshake, and then to send each request's
/// headers, before [`serve_tls`] drops the connection (slowloris protection).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `tracing` target of [`serve_tls`]'s connection events.
pub const TARGET: &str = "portcullis::server";

/// Serves `service` over TLS on `listener` until the task is dropped.
///
/// Each connection's requests carry the peer's [`SocketAddr`] and
/// [`PeerAddr`](portcullis_retry::rate_limit::PeerAddr) (for rate-limit and audit keys) and,
/// when the TLS config verified a client certificate (mTLS), its
/// [`PeerIdentity`]. HTTP/1.1 and HTTP/2 are served (ALPN).
///
/// # Security
/// A client gets [`HANDSHAKE_TIMEOUT`] to finish the TLS handshake and as long again to send
/// each request's headers; a failed or timed-out handshake is reported as a `tls.handshake`
/// failure event (target [`TARGET`], with `client.address` and `event.reason`) that the
/// audit collector picks up. Accept errors (such as running out of file descriptors) pause
/// the loop briefly instead of spinning.
pub async fn serve_tls<S, B>(listener: TcpListener, config: Arc<rustls::ServerConfig>, service: S)
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = TlsAcceptor::from(config);
    loop {
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
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    handshake_failed(peer, "handshake_failed", &err.to_string());
                    return;
                }
                Err(_) => {
                    handshake_failed(peer, "handshake_timeout", "no TLS handshake in time");
                    return;
                }
            };
            let svc = ServiceBuilder::new()
                .layer(PeerIdentityLayer::from_connection(tls.get_ref().1))
                .map_request(move |mut req: http::Request<Incoming>| {
                    req.extensions_mut().insert(peer);
                    req.extensions_mut()
                        .insert(portcullis_retry::rate_limit::PeerAddr(peer));
                    req
                })
                .service(service);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            let _ = builder
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
                .await;
        });
    }
}

fn handshake_failed(peer: SocketAddr, reason: &'static str, detail: &str) {
    tracing::info!(
        target: TARGET,
        detail,
        "event.kind" = "event",
        "event.category" = "network",
        "event.action" = "tls.handshake",
        "event.outcome" = "failure",
        "event.reason" = reason,
        "client.address" = %peer.ip(),
        "TLS handshake refused"
    );
}
