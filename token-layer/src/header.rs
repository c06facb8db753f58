//! Parsers for the `Authorization: Bearer` and `WWW-Authenticate: Bearer` headers (RFC 6750).

use std::fmt;

/// Longest bearer token accepted from the network.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why an `Authorization` header is not a usable bearer credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizationError {
    /// The header uses another scheme (Basic, ...; `DPoP` where only Bearer is parsed).
    #[error("authorization scheme is not Bearer")]
    NotBearer,
    /// The header is not `Bearer <b64token>` or `DPoP <b64token>` (RFC 6750 §2.1).
    #[error(
        "authorization header is not `Bearer <token>` or `DPoP <token>` with a b64token (RFC 6750 §2.1)"
    )]
    Malformed,
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("bearer token longer than 8 KiB")]
    TooLong,
}

/// The scheme an access token is presented under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenScheme {
    /// `Authorization: Bearer <token>` (RFC 6750).
    Bearer,
    /// `Authorization: DPoP <token>`: a token bound to a key, with a `DPoP` proof (RFC 9449 §7.1).
    Dpop,
}

impl TokenScheme {
    /// The scheme as written in `Authorization` and `WWW-Authenticate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "Bearer",
            Self::Dpop => "DPoP",
        }
    }
}

/// Extracts the token of `Authorization: Bearer <token>`: scheme case-insensitive, one or
/// more spaces, then a `b64token` (`ALPHA / DIGIT / - . _ ~ + /` then any `=`).
///
/// # Errors
///
/// [`AuthorizationError`] naming what was wrong; never the token.
pub fn parse_authorization(value: &[u8]) -> Result<&str, AuthorizationError> {
    match parse_credentials(value)? {
        (TokenScheme::Bearer, token) => Ok(token),
        (TokenScheme::Dpop, _) => Err(AuthorizationError::NotBearer),
    }
}

/// Extracts the scheme and token of `Authorization: Bearer <token>` or
/// `Authorization: DPoP <token>` (RFC 9449 §7.1): scheme case-insensitive, one or more
/// spaces, then a `b64token`.
///
/// # Errors
///
/// [`AuthorizationError`] naming what was wrong; never the token.
pub fn parse_credentials(value: &[u8]) -> Result<(TokenScheme, &str), AuthorizationError> {
    let scheme_of = |s: &[u8]| {
        if s.eq_ignore_ascii_case(b"bearer") {
            Some(TokenScheme::Bearer)
        } else if s.eq_ignore_ascii_case(b"dpop") {
            Some(TokenScheme::Dpop)
        } else {
            None
        }
    };
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return Err(if scheme_of(value).is_some() {
            AuthorizationError::Malformed
        } else {
            AuthorizationError::NotBearer
        });
    };
    let Some(scheme) = scheme_of(&value[..space]) else {
        return Err(AuthorizationError::NotBearer);
    };
    let token = value[space..].trim_ascii_start();
    if token.is_empty() {
        return Err(AuthorizationError::Malformed);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthorizationError::TooLong);
    }
    let body_end = token.iter().position(|&b| b == b'=').unwrap_or(token.len());
    let (body, pad) = token.split_at(body_end);
    let body_ok = !body.is_empty()
        && body.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !body_ok || pad.iter().any(|&b| b != b'=') {
        return Err(AuthorizationError::Malformed);
    }
    // All bytes checked are ASCII.
    let token = std::str::from_utf8(token).map_err(|_| AuthorizationError::Malformed)?;
    Ok((scheme, token))
}

/// A `Bearer` challenge from `WWW-Authenticate` (RFC 6750 §3).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BearerChallenge {
    /// `realm`
    pub realm: Option<String>,
    /// `error` (`invalid_token`, `insufficient_scope`, `invalid_request`)
    pub error: Option<String>,
    /// `scope`
    pub scope: Option<String>,
}

impl fmt::Debug for BearerChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerChallenge")
            .field("realm", &self.realm)
            .field("error", &self.error)
            .field("scope", &self.scope)
            .finish()
    }
}

impl BearerChallenge {
    /// Whether the server said the token is invalid (expired, revoked, malformed).
    pub fn is_invalid_token(&self) -> bool {
        self.error.as_deref() == Some("invalid_token")
    }
}

/// Finds the `Bearer` challenge in a `WWW-Authenticate` value, which may list several
/// challenges (`Basic realm="x", Bearer error="invalid_token"`). Returns `None` when there is
/// no well-formed Bearer challenge. Never panics; bounded work on any input.
pub fn parse_www_authenticate(value: &[u8]) -> Option<BearerChallenge> {
    if value.len() > 8 * 1024 {
        return None;
    }
    let mut p = Parser { s: value, i: 0 };
    loop {
        p.skip_ws_commas();
        let scheme = p.token()?;
        let is_bearer = scheme.eq_ignore_ascii_case(b"bearer");
        let mut challenge = BearerChallenge::default();
        // auth-params until the next challenge (a token not followed by '=').
        loop {
            p.skip_ws();
            if p.peek() == Some(b',') {
                p.skip_ws_commas();
            }
            if p.at_end() {
                break;
            }
            let param_start = p.i;
            let Some(name) = p.token() else {
                if is_bearer {
                    return Some(challenge);
                }
                break;
            };
            p.skip_ws();
            if p.peek() != Some(b'=') {
                // The next challenge starts here (or a token68 of another scheme).
                p.i = param_start;
                break;
            }
            p.i += 1;
            p.skip_ws();
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token().and_then(|t| String::from_utf8(t.to_vec()).ok())
            };
            let Some(value) = value else {
                if is_bearer {
                    return Some(challenge);
                }
                break;
            };
            if is_bearer {
                let slot = if name.eq_ignore_ascii_case(b"realm") {
                    &mut challenge.realm
                } else if name.eq_ignore_ascii_case(b"error") {
                    &mut challenge.error
                } else if name.eq_ignore_ascii_case(b"scope") {
                    &mut challenge.scope
                } else {
                    continue;
                };
                if slot.is_none() {
                    *slot = Some(value);
                }
            }
        }
        if is_bearer {
            return Some(challenge);
        }
        if p.at_end() {
            return None;
        }
        // Another scheme's challenge ended: either the next scheme starts at `p.i`, or
        // something unparsable (a token68) does; skip that up to the next comma.
        let before = p.i;
        let next_is_scheme = {
            let mut q = Parser { s: p.s, i: p.i };
            q.token().is_some() && {
                q.skip_ws();
                q.peek() != Some(b'=')
            }
        };
        if !next_is_scheme {
            while let Some(b) = p.peek() {
                if b == b',' {
                    break;
                }
                p.i += 1;
            }
        }
        if p.i == before && !next_is_scheme {
            p.i += 1;
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_ws_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        while let Some(b) = self.peek() {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if !tchar {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then(|| &self.s[start..self.i])
    }
    fn quoted(&mut self) -> Option<String> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let b = self.peek()?;
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    out.push(self.peek()?);
                    self.i += 1;
                }
                _ => out.push(b),
            }
        }
    }
}

/// Quotes `s` as an RFC 9110 quoted-string, dropping characters that cannot appear in one.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_accepts_only_bearer_b64token() {
        assert_eq!(
            parse_authorization(b"Bearer abc.DEF-_~+/=="),
            Ok("abc.DEF-_~+/==")
        );
        assert_eq!(parse_authorization(b"bearer   t"), Ok("t"));
        assert_eq!(
            parse_authorization(b"Basic abc"),
            Err(AuthorizationError::NotBearer)
        );
        assert_eq!(
            parse_authorization(b"Bearerabc"),
            Err(AuthorizationError::NotBearer)
        );
        assert_eq!(
            parse_authorization(b"Bearer"),
            Err(AuthorizationError::Malformed)
        );
        assert_eq!(
            parse_authorization(b"Bearer a=b"),
            Err(AuthorizationError::Malformed)
        );
        assert_eq!(
            parse_authorization(b"Bearer =="),
            Err(AuthorizationError::Malformed)
        );
        assert_eq!(
            parse_authorization(b"Bearer a b"),
            Err(AuthorizationError::Malformed)
        );
        let long = [b"Bearer ".as_slice(), &[b'a'; MAX_TOKEN_LEN + 1]].concat();
        assert_eq!(parse_authorization(&long), Err(AuthorizationError::TooLong));
    }

    #[test]
    fn www_authenticate_finds_the_bearer_challenge_among_others() {
        let c = parse_www_authenticate(
            b"Basic realm=\"a, b\", Bearer realm=\"api\", error=\"invalid_token\", scope=\"x y\"",
        )
        .unwrap();
        assert_eq!(c.realm.as_deref(), Some("api"));
        assert!(c.is_invalid_token());
        assert_eq!(c.scope.as_deref(), Some("x y"));
        let c = parse_www_authenticate(b"Negotiate abc==, Bearer error=invalid_token").unwrap();
        assert!(c.is_invalid_token());
        assert_eq!(
            parse_www_authenticate(b"Bearer").unwrap(),
            BearerChallenge::default()
        );
        assert!(parse_www_authenticate(b"Basic realm=\"x\"").is_none());
        assert!(parse_www_authenticate(b"").is_none());
    }

    #[test]
    fn quote_escapes_and_drops_controls() {
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\cd\"");
    }
}
