use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{access_token_hash, htu, jwk_thumbprint};
use crate::clock::{Clock, SystemClock};
use crate::error::{BoxError, KeyError};
use crate::key::{Algorithm, SigningKey};

#[derive(Debug)]
struct DpopClientConfig {
    key: SigningKey,
    jwk: serde_json::Value,
    jkt: String,
    alg: &'static str,
    nonce: Mutex<Option<String>>,
    clock: Arc<dyn Clock>,
}

/// Adds a DPoP proof to every request (RFC 9449 §4) and handles server nonces.
///
/// The proof key must be asymmetric (ed25519 → `EdDSA`, P-256 → `ES256`). When the request
/// carries `Authorization: DPoP <token>`, the proof binds it with `ath`. A `DPoP-Nonce` from
/// the server is remembered and sent in later proofs; a `use_dpop_nonce` refusal is retried
/// once with a new proof.
#[derive(Debug, Clone)]
pub struct DpopLayer {
    config: Arc<DpopClientConfig>,
}

impl DpopLayer {
    /// Creates proofs with `key`.
    ///
    /// # Errors
    /// [`KeyError::Rejected`] for an HMAC key: DPoP needs an asymmetric key.
    pub fn new(key: SigningKey) -> Result<Self, KeyError> {
        let alg = match key.algorithm() {
            Algorithm::Ed25519 => "EdDSA",
            Algorithm::EcdsaP256Sha256 => "ES256",
            other => {
                return Err(KeyError::Rejected {
                    alg: other.as_str(),
                    reason: "dpop proofs need an asymmetric key".into(),
                });
            }
        };
        let mut jwk = key
            .verifying_key()
            .public_jwk(None)
            .ok_or_else(|| KeyError::Jwk("no public jwk".into()))?;
        if let Some(o) = jwk.as_object_mut() {
            o.remove("kid");
        }
        let jkt = jwk_thumbprint(&jwk)
            .ok_or_else(|| KeyError::Jwk("cannot compute thumbprint".into()))?;
        Ok(Self {
            config: Arc::new(DpopClientConfig {
                key,
                jwk,
                jkt,
                alg,
                nonce: Mutex::new(None),
                clock: Arc::new(SystemClock),
            }),
        })
    }

    /// Uses `clock` for `iat`.
    #[must_use]
    pub fn clock(self, clock: impl Clock) -> Self {
        let c = &self.config;
        let nonce = c.nonce.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Self {
            config: Arc::new(DpopClientConfig {
                key: c.key.clone(),
                jwk: c.jwk.clone(),
                jkt: c.jkt.clone(),
                alg: c.alg,
                nonce: Mutex::new(nonce),
                clock: Arc::new(clock),
            }),
        }
    }

    /// The JWK thumbprint of the proof key, to send as `dpop_jkt` when requesting tokens.
    pub fn jkt(&self) -> &str {
        &self.config.jkt
    }

    /// The server nonce currently sent in proofs, if any.
    pub fn nonce(&self) -> Option<String> {
        self.config
            .nonce
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl DpopClientConfig {
    fn proof(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Result<String, BoxError> {
        let htu = htu(
            uri,
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
            "https",
        )
        .ok_or("dpop: the request has no authority to put into htu")?;
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| "dpop: random generator failed")?;
        let mut claims = serde_json::json!({
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "htm": method.as_str(),
            "htu": htu,
            "iat": self.clock.now_unix(),
        });
        if let Some(token) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("DPoP "))
        {
            claims["ath"] = access_token_hash(token.trim()).into();
        }
        if let Some(n) = self.nonce.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            claims["nonce"] = n.into();
        }
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.key.sign(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// Remembers `DPoP-Nonce`; true when the response asks to retry with it.
    fn learn_nonce<B>(&self, res: &Response<B>) -> bool {
        let Some(nonce) = res
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let changed = {
            let mut n = self.nonce.lock().unwrap_or_else(|p| p.into_inner());
            let changed = n.as_deref() != Some(nonce);
            *n = Some(nonce.to_owned());
            changed
        };
        let asks = matches!(
            res.status(),
            StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST
        ) && res
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains("use_dpop_nonce")));
        asks && changed
    }
}

impl<S> Layer<S> for DpopLayer {
    type Service = DpopService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DpopService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`DpopLayer`].
#[derive(Debug, Clone)]
pub struct DpopService<S> {
    inner: S,
    config: Arc<DpopClientConfig>,
}

impl<S> DpopService<S> {
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

fn with_proof<B>(config: &DpopClientConfig, mut req: Request<B>) -> Result<Request<B>, BoxError> {
    let proof = config.proof(req.method(), req.uri(), req.headers())?;
    req.headers_mut()
        .insert("dpop", HeaderValue::try_from(proof)?);
    Ok(req)
}

fn copy<B: Clone>(req: &Request<B>) -> Request<B> {
    let mut r = Request::new(req.body().clone());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

impl<S, B, ResBody> Service<Request<B>> for DpopService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Clone,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = DpopResponseFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let retry = (copy(&req), self.inner.clone());
        match with_proof(&self.config, req) {
            Ok(req) => DpopResponseFuture {
                state: DpopState::First {
                    fut: inner.call(req),
                    retry: Some(retry),
                    config: self.config.clone(),
                },
            },
            Err(e) => DpopResponseFuture {
                state: DpopState::Failed { error: Some(e) },
            },
        }
    }
}

pin_project! {
    /// Response future of [`DpopService`].
    pub struct DpopResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: DpopState<S, B, S::Future>,
    }
}

pin_project! {
    #[project = DpopStateProj]
    enum DpopState<S, B, F> {
        First { #[pin] fut: F, retry: Option<(Request<B>, S)>, config: Arc<DpopClientConfig> },
        Retrying { req: Option<Request<B>>, svc: S, config: Arc<DpopClientConfig> },
        Second { #[pin] fut: F, config: Arc<DpopClientConfig> },
        Failed { error: Option<BoxError> },
    }
}

impl<S, B> std::fmt::Debug for DpopResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Future for DpopResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                DpopStateProj::First { fut, retry, config } => {
                    let res = ready!(fut.poll(cx)).map_err(Into::into)?;
                    if !config.learn_nonce(&res) {
                        return Poll::Ready(Ok(res));
                    }
                    let Some((req, svc)) = retry.take() else {
                        return Poll::Ready(Ok(res));
                    };
                    let config = config.clone();
                    this.state.set(DpopState::Retrying {
                        req: Some(req),
                        svc,
                        config,
                    });
                }
                DpopStateProj::Retrying { req, svc, config } => {
                    ready!(svc.poll_ready(cx)).map_err(Into::into)?;
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err("dpop future polled after completion".into()));
                    };
                    let config = config.clone();
                    let fut = svc.call(with_proof(&config, req)?);
                    this.state.set(DpopState::Second { fut, config });
                }
                DpopStateProj::Second { fut, config } => {
                    let res = ready!(fut.poll(cx)).map_err(Into::into)?;
                    config.learn_nonce(&res);
                    return Poll::Ready(Ok(res));
                }
                DpopStateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "dpop future polled after completion".into())));
                }
            }
        }
    }
}
