//! The client stack: audit → rate limit → retry → bearer token → sign → pinned hyper client.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_pin::{PinnedConnector, PinnedTls};
use tower::layer::util::Identity;
use tower_layer::Layer;

/// The pinned hyper client at the bottom of a [`ClientBuilder`] stack.
pub type PinnedClient<B = Full<Bytes>> = Client<PinnedConnector, B>;

/// Starts a client stack with no layer.
pub fn builder() -> ClientBuilder {
    ClientBuilder {
        tls: None,
        connect_to: None,
        tokens: Identity::new(),
        sign: Identity::new(),
        retry: Identity::new(),
        rate_limit: Identity::new(),
        audit: Identity::new(),
    }
}

/// Builds the client stack. Each step is optional and takes the layer of the crate that owns
/// it (or any tower layer in that place); the order is fixed whatever the call order.
#[derive(Clone, Debug)]
pub struct ClientBuilder<
    Tok = Identity,
    Sig = Identity,
    Ret = Identity,
    Rl = Identity,
    Aud = Identity,
> {
    tls: Option<PinnedTls>,
    connect_to: Option<SocketAddr>,
    tokens: Tok,
    sign: Sig,
    retry: Ret,
    rate_limit: Rl,
    audit: Aud,
}

impl<Tok, Sig, Ret, Rl, Aud> ClientBuilder<Tok, Sig, Ret, Rl, Aud> {
    /// Connects through pinned TLS ([`ClientBuilder::build`] makes the hyper client).
    pub fn pinned(mut self, tls: PinnedTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Dials `addr` for every request while verifying the certificate (and pins) for the
    /// URI's host, like curl's `--connect-to`.
    pub fn connect_to(mut self, addr: SocketAddr) -> Self {
        self.connect_to = Some(addr);
        self
    }

    /// Injects bearer tokens (e.g. `portcullis::token::BearerLayer`).
    pub fn tokens<L>(self, layer: L) -> ClientBuilder<L, Sig, Ret, Rl, Aud> {
        ClientBuilder {
            tls: self.tls,
            connect_to: self.connect_to,
            tokens: layer,
            sign: self.sign,
            retry: self.retry,
            rate_limit: self.rate_limit,
            audit: self.audit,
        }
    }

    /// Signs each request (e.g. `portcullis::attest::SignLayer`, or a DPoP layer).
    pub fn sign<L>(self, layer: L) -> ClientBuilder<Tok, L, Ret, Rl, Aud> {
        ClientBuilder {
            tls: self.tls,
            connect_to: self.connect_to,
            tokens: self.tokens,
            sign: layer,
            retry: self.retry,
            rate_limit: self.rate_limit,
            audit: self.audit,
        }
    }

    /// Retries transient failures (e.g. `portcullis::retry::retry::RetryLayer`).
    pub fn retry<L>(self, layer: L) -> ClientBuilder<Tok, Sig, L, Rl, Aud> {
        ClientBuilder {
            tls: self.tls,
            connect_to: self.connect_to,
            tokens: self.tokens,
            sign: self.sign,
            retry: layer,
            rate_limit: self.rate_limit,
            audit: self.audit,
        }
    }

    /// Limits the request rate (e.g. `portcullis::retry::rate_limit::ClientRateLimitLayer`).
    pub fn rate_limit<L>(self, layer: L) -> ClientBuilder<Tok, Sig, Ret, L, Aud> {
        ClientBuilder {
            tls: self.tls,
            connect_to: self.connect_to,
            tokens: self.tokens,
            sign: self.sign,
            retry: self.retry,
            rate_limit: layer,
            audit: self.audit,
        }
    }

    /// Records each request (e.g. `Auditor::client_layer()`).
    pub fn audit<L>(self, layer: L) -> ClientBuilder<Tok, Sig, Ret, Rl, L> {
        ClientBuilder {
            tls: self.tls,
            connect_to: self.connect_to,
            tokens: self.tokens,
            sign: self.sign,
            retry: self.retry,
            rate_limit: self.rate_limit,
            audit: layer,
        }
    }

    /// Stacks the layers over `inner` (any HTTP client service).
    pub fn service<S>(&self, inner: S) -> Aud::Service
    where
        Sig: Layer<S>,
        Tok: Layer<Sig::Service>,
        Ret: Layer<Tok::Service>,
        Rl: Layer<Ret::Service>,
        Aud: Layer<Rl::Service>,
    {
        let signed = self.sign.layer(inner);
        let authorized = self.tokens.layer(signed);
        let retried = self.retry.layer(authorized);
        let limited = self.rate_limit.layer(retried);
        self.audit.layer(limited)
    }

    /// Stacks the layers over a pinned hyper-util client (HTTP/1.1 and HTTP/2) with request
    /// body type `B`.
    ///
    /// # Errors
    /// [`MissingTls`] when [`ClientBuilder::pinned`] was not called: a preset stack never
    /// falls back to unpinned TLS.
    pub fn build<B>(&self) -> Result<Aud::Service, MissingTls>
    where
        B: http_body::Body + Send + 'static + Unpin,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Sig: Layer<PinnedClient<B>>,
        Tok: Layer<Sig::Service>,
        Ret: Layer<Tok::Service>,
        Rl: Layer<Ret::Service>,
        Aud: Layer<Rl::Service>,
    {
        let tls = self.tls.as_ref().ok_or(MissingTls)?;
        let mut connector = tls.connector();
        if let Some(addr) = self.connect_to {
            connector = connector.connect_to(addr);
        }
        let client: PinnedClient<B> = Client::builder(TokioExecutor::new()).build(connector);
        Ok(self.service(client))
    }
}

/// [`ClientBuilder::build`] was called without pinned TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingTls;

impl std::fmt::Display for MissingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client stack needs pinned TLS: call .pinned(PinnedTls) before .build()")
    }
}

impl std::error::Error for MissingTls {}
