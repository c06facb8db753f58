//! How a response or an error is classified: success, transient (worth another attempt) or
//! final (never retried, in particular every security failure).
//!
//! Classification is deny-by-default: an error is only transient when it is recognised as a
//! connection failure that happened before any byte of the request was sent, or as a
//! per-attempt timeout of this crate. Anything with a [`rustls::Error`] in its source chain
//! (certificate and pin failures included) is final.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header};

/// The verdict on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The attempt succeeded (or failed in a way that another attempt cannot fix) and its
    /// answer is returned as is.
    Success,
    /// The attempt failed in a way that another attempt may fix.
    Transient {
        /// The delay the server asked for (`Retry-After`), if any.
        retry_after: Option<Duration>,
    },
    /// The attempt failed and must not be repeated.
    Final {
        /// Why, in a few lowercase words (also used as `event.reason`).
        reason: &'static str,
    },
}

/// Classifies a response by its status code.
///
/// 502, 503, 504, 429 and 408 are transient (with `Retry-After` when present); 401 and 403
/// (which is how signature, token and attestation rejections come back) are final; every
/// other status is a success as far as retrying is concerned.
pub fn classify_status(status: StatusCode, headers: &HeaderMap) -> Outcome {
    match status {
        StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT
        | StatusCode::TOO_MANY_REQUESTS
        | StatusCode::REQUEST_TIMEOUT => Outcome::Transient {
            retry_after: retry_after(headers, SystemTime::now()),
        },
        StatusCode::UNAUTHORIZED => Outcome::Final {
            reason: "401 unauthorized is a security rejection",
        },
        StatusCode::FORBIDDEN => Outcome::Final {
            reason: "403 forbidden is a security rejection",
        },
        _ => Outcome::Success,
    }
}

/// Classifies an error from the inner service (deny by default: unknown errors are final).
pub fn classify_error(err: &(dyn StdError + 'static)) -> Outcome {
    if is_security_failure(err) {
        return Outcome::Final {
            reason: "tls or certificate failure is never retried",
        };
    }
    if any_in_chain(err, &mut |e| e.is::<crate::retry::AttemptTimedOut>()) {
        return Outcome::Transient { retry_after: None };
    }
    if any_in_chain(err, &mut |e| e.is::<crate::retry::DeadlineExceeded>()) {
        return Outcome::Final {
            reason: "overall retry deadline exceeded",
        };
    }
    if is_connect_error(err) {
        return Outcome::Transient { retry_after: None };
    }
    Outcome::Final {
        reason: "error not known to be safe to retry",
    }
}

/// Returns `true` when a [`rustls::Error`] (a certificate, pin or other TLS failure) is
/// anywhere in the error's source chain, including inside `std::io::Error`s.
pub fn is_security_failure(err: &(dyn StdError + 'static)) -> bool {
    any_in_chain(err, &mut |e| e.is::<rustls::Error>())
}

/// Returns `true` for failures to establish a connection, before any byte of the request was
/// sent: hyper-util's connect errors and `ConnectionRefused` I/O errors (never TLS failures).
pub fn is_connect_error(err: &(dyn StdError + 'static)) -> bool {
    !is_security_failure(err)
        && any_in_chain(err, &mut |e| {
            if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                return e.is_connect();
            }
            if let Some(e) = e.downcast_ref::<std::io::Error>() {
                return e.kind() == std::io::ErrorKind::ConnectionRefused;
            }
            false
        })
}

/// Returns `true` for transport failures (I/O, connection, timeout), which a circuit breaker
/// counts; security failures are not transport failures.
pub fn is_transport_error(err: &(dyn StdError + 'static)) -> bool {
    !is_security_failure(err)
        && any_in_chain(err, &mut |e| {
            e.is::<std::io::Error>()
                || e.is::<hyper_util::client::legacy::Error>()
                || e.is::<hyper::Error>()
                || e.is::<tower::timeout::error::Elapsed>()
                || e.is::<crate::retry::AttemptTimedOut>()
                || e.is::<crate::retry::DeadlineExceeded>()
        })
}

/// Walks the source chain, looking inside `io::Error`s too (whose `source()` skips the
/// wrapped error itself).
fn any_in_chain(
    err: &(dyn StdError + 'static),
    pred: &mut dyn FnMut(&(dyn StdError + 'static)) -> bool,
) -> bool {
    let mut current = Some(err);
    let mut depth = 0;
    while let Some(e) = current {
        if pred(e) {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && depth < 32
        {
            depth += 1;
            if any_in_chain(inner, pred) {
                return true;
            }
        }
        depth += 1;
        if depth > 64 {
            return false;
        }
        current = e.source();
    }
    false
}

/// Parses `Retry-After` (delay-seconds or HTTP-date) relative to `now`.
///
/// Returns `None` when absent or malformed; a date in the past gives a zero delay.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers("7"), now),
            Some(Duration::from_secs(7))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            retry_after(&headers(&date), now),
            Some(Duration::from_secs(42))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert_eq!(retry_after(&headers(&past), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&headers("-3"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn statuses() {
        let h = HeaderMap::new();
        for s in [502, 503, 504, 429, 408] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(
                matches!(classify_status(s, &h), Outcome::Transient { .. }),
                "{s}"
            );
        }
        for s in [401, 403] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(
                matches!(classify_status(s, &h), Outcome::Final { .. }),
                "{s}"
            );
        }
        for s in [200, 201, 404, 500] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(classify_status(s, &h), Outcome::Success, "{s}");
        }
    }

    #[test]
    fn rustls_error_inside_io_error_is_final() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let boxed: Box<dyn StdError + Send + Sync> = Box::new(io);
        assert!(is_security_failure(&*boxed));
        assert!(matches!(classify_error(&*boxed), Outcome::Final { .. }));
        assert!(!is_transport_error(&*boxed));

        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            classify_error(&refused),
            Outcome::Transient { .. }
        ));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(classify_error(&reset), Outcome::Final { .. }));
        assert!(is_transport_error(&reset));
    }
}
