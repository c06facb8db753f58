use std::{fmt, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tower_service::Service;
use zeroize::Zeroizing;

use super::{Refresh, RefreshError, TokenResponse};
use crate::BoxError;

/// How the client authenticates to the token endpoint (RFC 6749 §2.3).
#[derive(Clone)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret (the default for
    /// confidential clients).
    Basic {
        /// The client id.
        client_id: String,
        /// The client secret.
        client_secret: SecretString,
    },
    /// `client_secret_post`: id and secret in the form body.
    Post {
        /// The client id.
        client_id: String,
        /// The client secret.
        client_secret: SecretString,
    },
    /// A public client (a mobile app): only `client_id` in the body.
    Public {
        /// The client id.
        client_id: String,
    },
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { client_id, .. } => f
                .debug_struct("Basic")
                .field("client_id", client_id)
                .field("client_secret", &"[REDACTED]")
                .finish(),
            Self::Post { client_id, .. } => f
                .debug_struct("Post")
                .field("client_id", client_id)
                .field("client_secret", &"[REDACTED]")
                .finish(),
            Self::Public { client_id } => f
                .debug_struct("Public")
                .field("client_id", client_id)
                .finish(),
        }
    }
}

/// The OAuth 2.0 refresh-token grant (RFC 6749 §6), sent through any tower HTTP service —
/// typically the pinned client — so the token endpoint gets the same TLS protections as the API.
///
/// Sends `POST` `application/x-www-form-urlencoded` `grant_type=refresh_token`, reads at most
/// 64 KiB of JSON, requires `token_type` Bearer, and maps an `invalid_grant` answer to
/// [`RefreshError::InvalidGrant`].
#[derive(Clone)]
pub struct OAuthRefresh<S> {
    client: S,
    endpoint: Uri,
    auth: ClientAuth,
    scope: Option<String>,
    max_response: usize,
}

impl<S> fmt::Debug for OAuthRefresh<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthRefresh")
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl<S> OAuthRefresh<S> {
    /// A refresh grant posted to `token_endpoint` through `client`.
    pub fn new(client: S, token_endpoint: Uri, auth: ClientAuth) -> Self {
        Self {
            client,
            endpoint: token_endpoint,
            auth,
            scope: None,
            max_response: 64 * 1024,
        }
    }

    /// Asks for a narrower `scope` on refresh (least privilege).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    fn request(&self, refresh_token: &SecretString) -> Result<Request<Full<Bytes>>, RefreshError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "refresh_token");
        form.append_pair("refresh_token", refresh_token.expose_secret());
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(header::ACCEPT, HeaderValue::from_static("application/json"));
        match &self.auth {
            ClientAuth::Basic {
                client_id,
                client_secret,
            } => {
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = Zeroizing::new(format!(
                    "{}:{}",
                    enc(client_id),
                    Zeroizing::new(enc(client_secret.expose_secret())).as_str()
                ));
                let mut value =
                    HeaderValue::try_from(format!("Basic {}", STANDARD.encode(pair.as_bytes())))
                        .map_err(|_| {
                            RefreshError::InvalidResponse("client credentials not encodable")
                        })?;
                value.set_sensitive(true);
                builder = builder.header(header::AUTHORIZATION, value);
            }
            ClientAuth::Post {
                client_id,
                client_secret,
            } => {
                form.append_pair("client_id", client_id);
                form.append_pair("client_secret", client_secret.expose_secret());
            }
            ClientAuth::Public { client_id } => {
                form.append_pair("client_id", client_id);
            }
        }
        let body = form.finish();
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| RefreshError::InvalidResponse("token endpoint URI is not usable"))
    }
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Only the registered OAuth error codes are echoed (RFC 6749 §5.2): a hostile or buggy
/// server could put anything, even the refresh token, in `error`.
fn safe_error_code(code: &str) -> Option<String> {
    const KNOWN: [&str; 8] = [
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "server_error",
        "temporarily_unavailable",
    ];
    Some(
        KNOWN
            .iter()
            .find(|k| **k == code)
            .map_or("unregistered_error", |k| k)
            .to_owned(),
    )
}

pub(crate) fn parse_token_response(
    status: u16,
    body: &[u8],
) -> Result<TokenResponse, RefreshError> {
    if status == 200 {
        // Never surface serde's message: it may quote the token.
        let parsed: SuccessBody = serde_json::from_slice(body)
            .map_err(|_| RefreshError::InvalidResponse("body is not an OAuth token response"))?;
        if !parsed.token_type.eq_ignore_ascii_case("bearer") {
            return Err(RefreshError::InvalidResponse("token_type is not Bearer"));
        }
        if parsed.access_token.is_empty() {
            return Err(RefreshError::InvalidResponse("empty access_token"));
        }
        let expires_in = match parsed.expires_in {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .map(Duration::from_secs)
                .ok_or(RefreshError::InvalidResponse(
                    "expires_in is not a non-negative integer",
                ))?
                .into(),
            // Some servers send the number as a string.
            Some(serde_json::Value::String(s)) => {
                Some(Duration::from_secs(s.parse().map_err(|_| {
                    RefreshError::InvalidResponse("expires_in is not a non-negative integer")
                })?))
            }
            Some(_) => {
                return Err(RefreshError::InvalidResponse(
                    "expires_in is not a non-negative integer",
                ));
            }
        };
        let mut resp = TokenResponse::new(parsed.access_token, expires_in);
        if let Some(rt) = parsed.refresh_token.filter(|rt| !rt.is_empty()) {
            resp = resp.with_refresh_token(rt);
        }
        return Ok(resp);
    }
    let error = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|e| safe_error_code(&e.error));
    if matches!(status, 400 | 401) && error.as_deref() == Some("invalid_grant") {
        return Err(RefreshError::InvalidGrant);
    }
    Err(RefreshError::Endpoint { status, error })
}

impl<S, B> Refresh for OAuthRefresh<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> impl Future<Output = Result<TokenResponse, RefreshError>> + Send {
        let request = self.request(refresh_token);
        let mut client = self.client.clone();
        let max = self.max_response;
        async move {
            let request = request?;
            std::future::poll_fn(|cx| client.poll_ready(cx))
                .await
                .map_err(|e| RefreshError::Transport(e.into()))?;
            let response = client
                .call(request)
                .await
                .map_err(|e| RefreshError::Transport(e.into()))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), max)
                .collect()
                .await
                .map_err(RefreshError::Transport)?
                .to_bytes();
            parse_token_response(status, &body)
        }
    }
}
