use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http::header::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use tower_layer::Layer;
use tower_service::Service;

use super::DEFAULT_HEADER;

/// Hands the client the current attestation token the platform produced (App Check,
/// Play Integrity, App Attest), or `None` when there is none yet.
///
/// Closures `Fn() -> Option<SecretString>` implement it; `()` never attaches a token.
pub trait AttestationProvider: Send + Sync + 'static {
    /// The token to attach to the next request.
    fn token(&self) -> Option<SecretString>;
}

impl AttestationProvider for () {
    fn token(&self) -> Option<SecretString> {
        None
    }
}

impl<F> AttestationProvider for F
where
    F: Fn() -> Option<SecretString> + Send + Sync + 'static,
{
    fn token(&self) -> Option<SecretString> {
        self()
    }
}

/// Attaches the provider's attestation token to each request (header `x-firebase-appcheck`
/// unless another is set).
#[derive(Clone)]
pub struct AttachAttestationLayer {
    provider: Arc<dyn AttestationProvider>,
    header: HeaderName,
}

impl std::fmt::Debug for AttachAttestationLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachAttestationLayer")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl AttachAttestationLayer {
    /// Attaches tokens from `provider`.
    pub fn new(provider: impl AttestationProvider) -> Self {
        Self {
            provider: Arc::new(provider),
            header: HeaderName::from_static(DEFAULT_HEADER),
        }
    }

    /// Uses another header name.
    #[must_use]
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }
}

impl<S> Layer<S> for AttachAttestationLayer {
    type Service = AttachAttestation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttachAttestation {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`AttachAttestationLayer`].
#[derive(Clone, Debug)]
pub struct AttachAttestation<S> {
    inner: S,
    layer: AttachAttestationLayer,
}

impl<S> AttachAttestation<S> {
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

impl<S, B> Service<Request<B>> for AttachAttestation<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(token) = self.layer.provider.token()
            && let Ok(mut v) = HeaderValue::from_str(token.expose_secret())
        {
            v.set_sensitive(true);
            req.headers_mut().insert(self.layer.header.clone(), v);
        }
        self.inner.call(req)
    }
}
