//! Escape hatches for tests and local development. Nothing here belongs in production.

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::Empty;
use tower_service::Service;

use super::keys::{Jwks, JwksUriError, check_jwks_uri};
use crate::BoxError;

/// A key set fetched over plain `http` from a loopback issuer (`127.0.0.0/8`, `::1` or
/// `localhost`), for test servers; `https` URIs are accepted too. Everything else about it is
/// [`Jwks::from_uri`].
///
/// # Security
///
/// Keys fetched in the clear can be replaced by anyone who can reach the connection; only the
/// loopback interface is allowed, so the keys never cross a network.
///
/// # Errors
///
/// [`JwksUriError`] when `uri` has no host, is neither `http` nor `https`, or is `http` to a
/// host that is not loopback.
pub fn jwks_from_loopback_http<S, B>(client: S, uri: Uri) -> Result<Jwks, JwksUriError>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    check_jwks_uri(&uri, true)?;
    Ok(Jwks::from_checked_uri(client, uri))
}
