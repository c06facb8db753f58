use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{VerifyConfig, VerifySignatureLayer};
use super::reason::{REASON_HEADER, Reason, Rejection, VerifiedSignature};
use crate::body::Collect;
use crate::components::RequestParts;
use crate::digest::ExpectedDigest;
use crate::error::BoxError;
use crate::key::Algorithm;
use crate::params::{parse_signature, parse_signature_input};

/// Verifies each request's signature before calling the inner service. See
/// [`VerifySignatureLayer`].
#[derive(Debug, Clone)]
pub struct VerifySignature<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<VerifyConfig>,
}

impl<S> VerifySignature<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: &VerifySignatureLayer) -> Self {
        Self {
            inner,
            config: layer.config.clone(),
        }
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

/// What remains to check once the headers and the signature are verified.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) proof: VerifiedSignature,
    pub(crate) digest: Option<ExpectedDigest>,
    pub(crate) replay_partition: String,
    pub(crate) replay_key: String,
    pub(crate) replay_ttl: Duration,
}

fn values<'h>(headers: &'h HeaderMap, name: &str) -> Result<Vec<&'h str>, ()> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().map_err(|_| ()))
        .collect()
}

/// Checks the signature fields, key, policy and signature (everything but the body and replay).
pub(crate) fn check(config: &VerifyConfig, parts: &Parts) -> Result<Checked, Reason> {
    let inputs =
        values(&parts.headers, "signature-input").map_err(|_| Reason::MalformedSignatureInput)?;
    let sigs = values(&parts.headers, "signature").map_err(|_| Reason::MalformedSignature)?;
    if inputs.is_empty() || sigs.is_empty() {
        return Err(Reason::MissingSignature);
    }
    let inputs = parse_signature_input(&inputs).map_err(|_| Reason::MalformedSignatureInput)?;
    let sigs = parse_signature(&sigs).map_err(|_| Reason::MalformedSignature)?;
    let (label, params) = match &config.label {
        Some(l) => inputs
            .into_iter()
            .find(|(k, _)| k == l)
            .ok_or(Reason::MissingSignature)?,
        None => inputs.into_iter().next().ok_or(Reason::MissingSignature)?,
    };
    let signature = sigs
        .iter()
        .find(|(k, _)| *k == label)
        .map(|(_, s)| s)
        .ok_or(Reason::MalformedSignature)?;

    let keyid = params
        .keyid()
        .map_err(|_| Reason::MalformedSignatureInput)?
        .ok_or(Reason::MissingKeyid)?;
    let key = config.resolver.resolve(keyid).ok_or(Reason::UnknownKey)?;
    if let Some(alg) = params.alg().map_err(|_| Reason::MalformedSignatureInput)?
        && alg != key.algorithm().as_str()
    {
        return Err(Reason::AlgorithmMismatch);
    }
    if !config.algorithms.contains(&key.algorithm()) {
        return Err(Reason::AlgorithmNotAccepted);
    }
    for req in &config.required {
        if !params.components().iter().any(|c| covers(c, req)) {
            return Err(Reason::MissingComponent);
        }
    }

    let now = config.clock.now_unix();
    let created = params
        .created()
        .map_err(|_| Reason::MalformedSignatureInput)?
        .ok_or(Reason::MissingCreated)?;
    if created > now.saturating_add(config.skew.as_secs()) {
        return Err(Reason::CreatedInFuture);
    }
    if now.saturating_sub(created) > config.max_age.as_secs() {
        return Err(Reason::TooOld);
    }
    let expires = params
        .expires()
        .map_err(|_| Reason::MalformedSignatureInput)?;
    if let Some(exp) = expires
        && exp <= now
    {
        return Err(Reason::Expired);
    }
    let nonce = params
        .nonce()
        .map_err(|_| Reason::MalformedSignatureInput)?;
    if config.require_nonce && nonce.is_none() {
        return Err(Reason::MissingNonce);
    }
    let tag = params.tag().map_err(|_| Reason::MalformedSignatureInput)?;
    if let Some(want) = &config.tag
        && tag != Some(want.as_str())
    {
        return Err(Reason::WrongTag);
    }

    // The key's share of the replay cache is checked before the signature and the body cost
    // anything; only verified requests fill it, so nobody else can exhaust a key's share.
    let replay_partition = format!("sig:{keyid}");
    if config.replay.is_partition_full(&replay_partition) {
        return Err(Reason::ReplayQuotaExceeded);
    }

    let view = RequestParts::new(
        &parts.method,
        &parts.uri,
        &parts.headers,
        &config.default_scheme,
    );
    let base = params
        .signature_base(&view)
        .map_err(|_| Reason::MissingComponent)?;
    if !key.verify(base.as_bytes(), signature) {
        return Err(Reason::InvalidSignature);
    }

    let covers_digest = params
        .components()
        .iter()
        .any(|c| c.name() == "content-digest");
    let digest = if covers_digest {
        let v =
            values(&parts.headers, "content-digest").map_err(|_| Reason::MalformedContentDigest)?;
        Some(
            ExpectedDigest::from_field(&v)
                .map_err(|_| Reason::MalformedContentDigest)?
                .ok_or(Reason::MalformedContentDigest)?,
        )
    } else {
        None
    };

    let window = config.max_age + config.skew;
    let replay_ttl = match expires {
        Some(exp) => Duration::from_secs(exp.saturating_sub(now)).min(window),
        None => window,
    }
    .max(Duration::from_secs(1));
    let replay_key = replay_key(key.algorithm(), keyid, nonce, base.as_bytes());
    Ok(Checked {
        proof: VerifiedSignature {
            label,
            keyid: keyid.to_owned(),
            alg: key.algorithm(),
            components: params.components().to_vec(),
            created: Some(created),
            nonce: nonce.map(str::to_owned),
            tag: tag.map(str::to_owned),
        },
        digest,
        replay_partition,
        replay_key,
        replay_ttl,
    })
}

/// The replay cache key: SHA-256 over the algorithm, the key id and the nonce, or the whole
/// signature base when there is no nonce. Never the signature bytes: a signature is not
/// unique to its message (ECDSA's `(r, n - s)` verifies too, and randomised signers give a
/// new one each time), while the signed message is what must not be accepted twice.
fn replay_key(alg: Algorithm, keyid: &str, nonce: Option<&str>, base: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(alg.as_str().as_bytes());
    field(keyid.as_bytes());
    match nonce {
        Some(n) => {
            field(b"nonce");
            field(n.as_bytes());
        }
        None => {
            field(b"base");
            field(base);
        }
    }
    format!("sig:{}", URL_SAFE_NO_PAD.encode(ctx.finish()))
}

/// Whether the signed component `signed` covers what the policy's `required` one does
/// (RFC 9421 §2.2): `@target-uri` is the whole target URI (scheme, authority, path and
/// query); `@request-target` is the request target (path and query in origin form).
pub(crate) fn covers(
    signed: &crate::components::Component,
    required: &crate::components::Component,
) -> bool {
    if signed.identifier() == required.identifier() {
        return true;
    }
    matches!(
        (signed.name(), required.name()),
        ("@target-uri", "@scheme" | "@authority" | "@path" | "@query")
            | ("@request-target", "@path" | "@query")
    )
}

/// The refusal response: status, stable reason, `WWW-Authenticate` and `Accept-Signature`
/// saying what a signature must have, and a security event.
pub(crate) fn reject<ResBody: Default>(
    config: &VerifyConfig,
    parts: &Parts,
    reason: Reason,
    keyid: Option<&str>,
) -> Response<ResBody> {
    tracing::warn!(
        target: "portcullis::attest",
        {
            "event.kind" = "alert",
            "event.category" = "authentication",
            "event.action" = "signature.verify",
            "event.outcome" = "failure",
            "event.reason" = reason.as_str(),
            "http.request.method" = parts.method.as_str(),
            "url.path" = parts.uri.path(),
            "http.response.status_code" = reason.status().as_u16(),
            "user.id" = keyid.unwrap_or(""),
        },
        "refused request signature"
    );
    let mut res = Response::new(ResBody::default());
    *res.status_mut() = reason.status();
    res.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    if reason.status() == http::StatusCode::UNAUTHORIZED {
        // RFC 9110 §11.6.1: every 401 carries a challenge; it names the reason and what is
        // required, in words and, in Accept-Signature, as RFC 9421 §5.1 parameters.
        let challenge = format!(
            "Signature realm=\"api\", error=\"{}\", error_description=\"{}; required: {}\"",
            reason.as_str(),
            reason.description(),
            config.requirements
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            res.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
        }
        if let Some(v) = config
            .accept_signature
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            res.headers_mut().insert("accept-signature", v);
        }
    }
    res.extensions_mut().insert(Rejection::new(reason));
    res
}

pub(crate) fn accepted(parts: &Parts, proof: &VerifiedSignature) {
    tracing::info!(
        target: "portcullis::attest",
        {
            "event.kind" = "event",
            "event.category" = "authentication",
            "event.action" = "signature.verify",
            "event.outcome" = "success",
            "http.request.method" = parts.method.as_str(),
            "url.path" = parts.uri.path(),
            "user.id" = proof.keyid(),
        },
        "verified request signature"
    );
}

impl<S, B, ResBody> Service<Request<B>> for VerifySignature<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
    B: Body,
    B::Error: Into<BoxError>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        match check(&self.config, &parts) {
            Err(reason) => ResponseFuture::rejected(reject(&self.config, &parts, reason, None)),
            Ok(checked) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let hasher = checked.digest.as_ref().map(ExpectedDigest::hasher);
                let collect = Collect::new(body, self.config.max_body, hasher);
                ResponseFuture::reading(collect, parts, checked, inner, self.config.clone())
            }
        }
    }
}

#[cfg(test)]
mod coverage_tests {
    use super::covers;
    use crate::components::Component;

    fn c(name: &str) -> Component {
        Component::new(name).unwrap()
    }

    #[test]
    fn target_uri_covers_authority_path_and_query_request_target_only_path_and_query() {
        for required in ["@authority", "@path", "@query", "@scheme"] {
            assert!(covers(&c("@target-uri"), &c(required)), "{required}");
        }
        assert!(covers(&c("@request-target"), &c("@path")));
        assert!(covers(&c("@request-target"), &c("@query")));
        assert!(
            !covers(&c("@request-target"), &c("@authority")),
            "the request target in origin form has no authority"
        );
        assert!(!covers(&c("@target-uri"), &c("@method")));
        assert!(
            !covers(&c("@path"), &c("@target-uri")),
            "not the other way round"
        );
        assert!(!covers(&c("host"), &c("@authority")));
    }
}
