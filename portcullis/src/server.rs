//! The server stack: audit → pre-auth rate limit → [mTLS identity] → verify signature →
//! require bearer → per-identity rate limit → your service; and [`serve_tls`] to run it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis_pin::PeerIdentityLayer;
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
        signatures: Identity::new(),
        bearer: Identity::new(),
        per_identity: Identity::new(),
    }
}

/// Builds the server stack. Each step is optional; the order is fixed whatever the call order.
#[derive(Clone, Debug)]
pub struct ServerBuilder<
    Aud = Identity,
    Pre = Identity,
    Sig = Identity,
    Bea = Identity,
    Per = Identity,
> {
    audit: Aud,
    pre_auth: Pre,
    signatures: Sig,
    bearer: Bea,
    per_identity: Per,
}

impl<Aud, Pre, Sig, Bea, Per> ServerBuilder<Aud, Pre, Sig, Bea, Per> {
    /// Records each request (e.g. `Auditor::server_layer()`), outermost so refusals are
    /// recorded too.
    pub fn audit<L>(self, layer: L) -> ServerBuilder<L, Pre, Sig, Bea, Per> {
        ServerBuilder {
            audit: layer,
            pre_auth: self.pre_auth,
            signatures: self.signatures,
            bearer: self.bearer,
            per_identity: self.per_identity,
        }
    }

    /// Limits unauthenticated traffic, keyed by peer address, before any verification work.
    pub fn pre_auth_rate_limit<L>(self, layer: L) -> ServerBuilder<Aud, L, Sig, Bea, Per> {
        ServerBuilder {
            audit: self.audit,
            pre_auth: layer,
            signatures: self.signatures,
            bearer: self.bearer,
            per_identity: self.per_identity,
        }
    }

    /// Verifies RFC 9421 signatures (e.g. `VerifySignatureLayer`).
    pub fn verify_signatures<L>(self, layer: L) -> ServerBuilder<Aud, Pre, L, Bea, Per> {
        ServerBuilder {
            audit: self.audit,
            pre_auth: self.pre_auth,
            signatures: layer,
            bearer: self.bearer,
            per_identity: self.per_identity,
        }
    }

    /// Validates bearer tokens (e.g. `RequireBearerLayer`).
    pub fn require_bearer<L>(self, layer: L) -> ServerBuilder<Aud, Pre, Sig, L, Per> {
        ServerBuilder {
            audit: self.audit,
            pre_auth: self.pre_auth,
            signatures: self.signatures,
            bearer: layer,
            per_identity: self.per_identity,
        }
    }

    /// Limits each verified identity (keyed on what the layers above put in extensions).
    pub fn identity_rate_limit<L>(self, layer: L) -> ServerBuilder<Aud, Pre, Sig, Bea, L> {
        ServerBuilder {
            audit: self.audit,
            pre_auth: self.pre_auth,
            signatures: self.signatures,
            bearer: self.bearer,
            per_identity: layer,
        }
    }

    /// Stacks the layers over `inner`.
    pub fn service<S>(&self, inner: S) -> Aud::Service
    where
        Per: Layer<S>,
        Bea: Layer<Per::Service>,
        Sig: Layer<Bea::Service>,
        Pre: Layer<Sig::Service>,
        Aud: Layer<Pre::Service>,
    {
        let limited = self.per_identity.layer(inner);
        let authorized = self.bearer.layer(limited);
        let verified = self.signatures.layer(authorized);
        let admitted = self.pre_auth.layer(verified);
        self.audit.layer(admitted)
    }
}

/// How long a client has to complete the TLS handshake, and then to send each request's
/// headers, before [`serve_tls`] drops the connection (slowloris protection).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `tracing` target of [`serve_tls`]'s connection events.
pub const TARGET: &str = "portcullis::server";

/// Serves `service` over TLS on `listener` until the task is dropped.
///
/// Each connection's requests carry the peer's [`SocketAddr`](std::net::SocketAddr) and
/// [`PeerAddr`](portcullis_retry::rate_limit::PeerAddr) (for rate-limit and audit keys) and,
/// when the TLS config verified a client certificate (mTLS), its
/// [`PeerIdentity`](portcullis_pin::PeerIdentity). HTTP/1.1 and HTTP/2 are served (ALPN).
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
