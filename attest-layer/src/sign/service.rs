use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Request, request::Parts};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{SignConfig, SignLayer};
use crate::body::Collect;
use crate::components::{Component, RequestParts};
use crate::digest::{DigestAlgorithm, DigestHasher};
use crate::error::{BoxError, HeaderError, SignError};
use crate::key::SigningKey;
use crate::params::{SignatureParams, serialize_signature, serialize_signature_input};

/// Signs each request, then calls the inner service with the signed request. See
/// [`SignLayer`].
#[derive(Debug, Clone)]
pub struct Sign<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<SignConfig>,
}

impl<S> Sign<S> {
    /// Wraps `inner`, signing with `key` and the default settings.
    pub fn new(inner: S, key: SigningKey) -> Self {
        Self {
            inner,
            config: SignLayer::new(key).config,
        }
    }

    /// A [`SignLayer`] signing with `key`.
    pub fn layer(key: SigningKey) -> SignLayer {
        SignLayer::new(key)
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

impl<S, B> Service<Request<B>> for Sign<S>
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let hasher = DigestHasher::new(&[self.config.digest]);
        ResponseFuture::collecting(
            Collect::new(body, self.config.max_body, Some(hasher)),
            parts,
            inner,
            self.config.clone(),
        )
    }
}

fn random_nonce() -> Result<String, SignError> {
    let mut n = [0u8; 16];
    aws_lc_rs::rand::fill(&mut n).map_err(|_| SignError::HeaderValue("nonce"))?;
    Ok(URL_SAFE_NO_PAD.encode(n))
}

/// Adds `Content-Digest` (when there is a body), `Signature-Input` and `Signature` to `parts`.
pub(crate) fn sign_parts(
    config: &SignConfig,
    parts: &mut Parts,
    body_len: usize,
    digests: Vec<(DigestAlgorithm, Vec<u8>)>,
) -> Result<(), SignError> {
    let components = match &config.components {
        Some(c) => c.clone(),
        None => {
            let d = &config.defaults;
            let mut c: Vec<Component> = d.iter().take(4).cloned().collect();
            let wanted = [
                body_len > 0,
                parts.headers.contains_key(CONTENT_TYPE),
                parts.headers.contains_key(AUTHORIZATION),
            ];
            c.extend(
                d.iter()
                    .skip(4)
                    .zip(wanted)
                    .filter(|(_, w)| *w)
                    .map(|(comp, _)| comp.clone()),
            );
            c
        }
    };
    let covers_digest = components.iter().any(|c| c.name() == "content-digest");
    if body_len > 0 || covers_digest {
        let mut hasher_value = sfv::DictSerializer::new();
        for (alg, d) in &digests {
            let _ = hasher_value.bare_item(
                sfv::KeyRef::constant(alg.as_str()),
                sfv::RefBareItem::ByteSequence(d),
            );
        }
        let value = hasher_value
            .finish()
            .ok_or(SignError::HeaderValue("content-digest"))?;
        let value =
            HeaderValue::from_str(&value).map_err(|_| SignError::HeaderValue("content-digest"))?;
        parts.headers.insert("content-digest", value);
    }

    let created = config.clock.now_unix();
    let mut params = SignatureParams::new(components).with_created(created)?;
    if let Some(ttl) = config.expires_in {
        params = params.with_expires(created.saturating_add(ttl.as_secs().max(1)))?;
    }
    if config.nonce {
        params = params.with_nonce(&random_nonce()?)?;
    }
    params = params.with_keyid(config.key.keyid())?;
    if config.include_alg {
        params = params.with_alg(config.key.algorithm().as_str())?;
    }
    if let Some(tag) = &config.tag {
        params = params.with_tag(tag)?;
    }
    let base = params.signature_base(&RequestParts::new(
        &parts.method,
        &parts.uri,
        &parts.headers,
        &config.default_scheme,
    ))?;
    let signature = config.key.sign(base.as_bytes())?;
    let input = serialize_signature_input(&config.label, &params)?;
    let sig = serialize_signature(&config.label, &signature)?;
    let to_value = |s: String, name: &'static str| {
        HeaderValue::try_from(s).map_err(|_| SignError::HeaderValue(name))
    };
    parts
        .headers
        .insert("signature-input", to_value(input, "signature-input")?);
    parts
        .headers
        .insert("signature", to_value(sig, "signature")?);
    tracing::trace!(target: "portcullis::attest", keyid = config.key.keyid(), "signed request");
    Ok(())
}

impl From<sfv::Error> for HeaderError {
    fn from(e: sfv::Error) -> Self {
        HeaderError::SignatureInput(e.to_string())
    }
}

pub(crate) fn into_request(parts: Parts, body: Bytes) -> Request<Full<Bytes>> {
    Request::from_parts(parts, Full::new(body))
}
