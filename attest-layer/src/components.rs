//! Covered components (RFC 9421 §2): HTTP fields and derived components, and their values.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, Method, Uri};

use crate::error::HeaderError;

/// The derived components this crate can put into a request's signature base.
const DERIVED: [&str; 7] = [
    "@method",
    "@authority",
    "@scheme",
    "@target-uri",
    "@request-target",
    "@path",
    "@query",
];

/// One covered component: an HTTP field name (lowercase) or a derived component such as
/// `@method`, with its parameters (`name` for `@query-param`, `bs`).
#[derive(Clone, PartialEq)]
pub struct Component {
    item: sfv::Item,
    name: String,
    query_name: Option<String>,
    bs: bool,
    id: String,
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

fn component_error(component: &str, reason: impl Into<String>) -> HeaderError {
    HeaderError::Component {
        component: component.to_owned(),
        reason: reason.into(),
    }
}

impl Component {
    /// A component by name: a derived component (`@method`, `@authority`, `@scheme`,
    /// `@target-uri`, `@request-target`, `@path`, `@query`) or an HTTP field name.
    ///
    /// # Errors
    /// For an unknown derived component, `@query-param` (use [`Component::query_param`])
    /// or a name that is not a lowercase field name.
    pub fn new(name: &str) -> Result<Self, HeaderError> {
        let s = sfv::String::from_string(name.to_owned())
            .map_err(|(e, _)| component_error(name, e.to_string()))?;
        Self::from_item(&sfv::Item::new(s))
    }

    /// The `@query-param` component for the query parameter `name` (RFC 9421 §2.2.8).
    ///
    /// # Errors
    /// When `name` cannot be carried in a structured-field string.
    pub fn query_param(name: &str) -> Result<Self, HeaderError> {
        let mut params = sfv::Parameters::new();
        let value = sfv::String::from_string(name.to_owned())
            .map_err(|(e, _)| component_error("@query-param", e.to_string()))?;
        params.insert(
            sfv::Key::from_string("name".into())
                .map_err(|(e, _)| component_error("@query-param", e.to_string()))?,
            sfv::BareItem::String(value),
        );
        let s = sfv::String::from_string("@query-param".into())
            .map_err(|(e, _)| component_error("@query-param", e.to_string()))?;
        Self::from_item(&sfv::Item::with_params(s, params))
    }

    /// The same field, wrapped as a byte sequence per line (`;bs`, RFC 9421 §2.1.3).
    ///
    /// # Errors
    /// For a derived component, which cannot carry `bs`.
    pub fn byte_sequence(self) -> Result<Self, HeaderError> {
        let mut item = self.item;
        if let Ok(k) = sfv::Key::from_string("bs".into()) {
            item.params.insert(k, sfv::BareItem::Boolean(true));
        }
        Self::from_item(&item)
    }

    pub(crate) fn from_item(item: &sfv::Item) -> Result<Self, HeaderError> {
        let name = item
            .bare_item
            .as_string()
            .map(|s| s.as_str().to_owned())
            .ok_or_else(|| {
                component_error(
                    &format!("{:?}", item.bare_item),
                    "a component identifier must be a string",
                )
            })?;
        let mut query_name = None;
        let mut bs = false;
        for (key, value) in &item.params {
            match (key.as_str(), value) {
                ("name", sfv::BareItem::String(s)) if name == "@query-param" => {
                    query_name = Some(s.as_str().to_owned())
                }
                ("bs", sfv::BareItem::Boolean(true)) if !name.starts_with('@') => bs = true,
                (k, _) => {
                    return Err(component_error(
                        &name,
                        format!("unsupported component parameter {k:?}"),
                    ));
                }
            }
        }
        if name.starts_with('@') {
            if name == "@query-param" {
                if query_name.is_none() {
                    return Err(component_error(
                        &name,
                        "@query-param needs a name parameter",
                    ));
                }
            } else if !DERIVED.contains(&name.as_str()) {
                return Err(component_error(
                    &name,
                    "unsupported derived component for requests",
                ));
            }
        } else if name.is_empty()
            || !name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
            })
        {
            return Err(component_error(
                &name,
                "field names must be lowercase tokens",
            ));
        }
        let mut id = String::new();
        let ser = sfv::ItemSerializer::with_buffer(&mut id);
        let _ = ser
            .bare_item(&item.bare_item)
            .parameters(&item.params)
            .finish();
        Ok(Self {
            item: item.clone(),
            name,
            query_name,
            bs,
            id,
        })
    }

    /// The component name, such as `@method` or `content-digest`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The serialized identifier as it appears in the signature base, such as `"@method"`.
    pub fn identifier(&self) -> &str {
        &self.id
    }

    pub(crate) fn item(&self) -> &sfv::Item {
        &self.item
    }

    /// Whether this is a derived (`@`) component.
    pub fn is_derived(&self) -> bool {
        self.name.starts_with('@')
    }

    /// The component's value in `req`, as it goes into the signature base.
    ///
    /// # Errors
    /// [`HeaderError::MissingComponent`] when the request lacks the field or query parameter.
    pub fn value(&self, req: &RequestParts<'_>) -> Result<String, HeaderError> {
        let missing = || HeaderError::MissingComponent(self.id.clone());
        Ok(match self.name.as_str() {
            "@method" => req.method.as_str().to_owned(),
            "@authority" => req.authority().ok_or_else(missing)?,
            "@scheme" => req.scheme(),
            "@target-uri" => {
                let pq = req
                    .uri
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or("/");
                format!(
                    "{}://{}{}",
                    req.scheme(),
                    req.authority().ok_or_else(missing)?,
                    pq
                )
            }
            "@request-target" => req
                .uri
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/")
                .to_owned(),
            "@path" => {
                let p = req.uri.path();
                if p.is_empty() {
                    "/".to_owned()
                } else {
                    p.to_owned()
                }
            }
            "@query" => format!("?{}", req.uri.query().unwrap_or("")),
            "@query-param" => {
                let wanted = self
                    .query_name
                    .as_deref()
                    .map(percent_decode)
                    .ok_or_else(missing)?;
                let mut found = None;
                for pair in req
                    .uri
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .filter(|p| !p.is_empty())
                {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if percent_decode(k) == wanted {
                        if found.is_some() {
                            return Err(component_error(
                                &self.id,
                                "query parameter appears more than once",
                            ));
                        }
                        found = Some(percent_encode(&percent_decode(v)));
                    }
                }
                found.ok_or_else(missing)?
            }
            field => {
                let mut values = req.headers.get_all(field).iter().peekable();
                if values.peek().is_none() {
                    return Err(missing());
                }
                let mut out = String::new();
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    if self.bs {
                        out.push(':');
                        out.push_str(&STANDARD.encode(trim_ows(v.as_bytes())));
                        out.push(':');
                    } else {
                        let s = std::str::from_utf8(trim_ows(v.as_bytes())).map_err(|_| {
                            component_error(
                                &self.id,
                                "field value is not visible ASCII; cover it with ;bs",
                            )
                        })?;
                        if s.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                            return Err(component_error(
                                &self.id,
                                "field value holds control characters",
                            ));
                        }
                        out.push_str(s);
                    }
                }
                out
            }
        })
    }
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn percent_encode(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// The parts of a request that components are read from.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target as received or sent.
    pub uri: &'a Uri,
    /// The request header fields.
    pub headers: &'a HeaderMap,
    /// The scheme to assume when the URI carries none (a server behind TLS: `https`).
    pub default_scheme: &'a str,
}

impl<'a> RequestParts<'a> {
    /// Reads components from request parts.
    pub fn new(
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        default_scheme: &'a str,
    ) -> Self {
        Self {
            method,
            uri,
            headers,
            default_scheme,
        }
    }

    fn scheme(&self) -> String {
        self.uri
            .scheme_str()
            .unwrap_or(self.default_scheme)
            .to_ascii_lowercase()
    }

    /// `@authority`: the URI authority or the `Host` field, lowercase, default port omitted.
    pub fn authority(&self) -> Option<String> {
        let raw = match self.uri.authority() {
            Some(a) => a.as_str().to_owned(),
            None => self
                .headers
                .get(http::header::HOST)?
                .to_str()
                .ok()?
                .trim()
                .to_owned(),
        };
        let raw = raw
            .rsplit_once('@')
            .map_or(raw.as_str(), |(_, h)| h)
            .to_ascii_lowercase();
        let scheme = self.scheme();
        let default = match scheme.as_str() {
            "https" => Some(":443"),
            "http" => Some(":80"),
            _ => None,
        };
        Some(match default {
            Some(port) if raw.ends_with(port) => raw[..raw.len() - port.len()].to_owned(),
            _ => raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(c: &Component, uri: &str, headers: &[(&str, &str)]) -> Result<String, HeaderError> {
        let uri: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        c.value(&RequestParts::new(&Method::GET, &uri, &h, "https"))
    }

    #[test]
    fn authority_is_lowercased_without_default_port() {
        let c = Component::new("@authority").unwrap();
        assert_eq!(
            value(&c, "https://WWW.Example.COM:443/", &[]).unwrap(),
            "www.example.com"
        );
        assert_eq!(
            value(&c, "http://example.com:8080/", &[]).unwrap(),
            "example.com:8080"
        );
        assert_eq!(
            value(&c, "/x", &[("host", "Example.com")]).unwrap(),
            "example.com"
        );
        assert!(matches!(
            value(&c, "/x", &[]),
            Err(HeaderError::MissingComponent(_))
        ));
    }

    #[test]
    fn query_and_query_param_follow_rfc_9421_2_2_7_and_2_2_8() {
        let q = Component::new("@query").unwrap();
        assert_eq!(value(&q, "https://e.com/p", &[]).unwrap(), "?");
        assert_eq!(
            value(&q, "https://e.com/p?param=value&foo=bar&baz=bat%2Dman", &[]).unwrap(),
            "?param=value&foo=bar&baz=bat%2Dman"
        );
        let uri = "https://e.com/parameters?var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something";
        let p = |n: &str| value(&Component::query_param(n).unwrap(), uri, &[]);
        assert_eq!(p("var").unwrap(), "this%20is%20a%20big%0Amultiline%20value");
        assert_eq!(p("bar").unwrap(), "with%20plus%20whitespace");
        assert_eq!(p("fa%C3%A7ade%22%3A%20").unwrap(), "something");
        assert!(matches!(p("nope"), Err(HeaderError::MissingComponent(_))));
        let twice = value(
            &Component::query_param("a").unwrap(),
            "https://e.com/?a=1&a=2",
            &[],
        );
        assert!(matches!(twice, Err(HeaderError::Component { .. })));
    }

    #[test]
    fn fields_are_combined_trimmed_and_can_be_wrapped_as_byte_sequences() {
        let c = Component::new("x-list").unwrap();
        let h = [("x-list", "  a, b "), ("x-list", "c")];
        assert_eq!(value(&c, "https://e.com/", &h).unwrap(), "a, b, c");
        let bs = Component::new("x-list").unwrap().byte_sequence().unwrap();
        assert_eq!(bs.identifier(), "\"x-list\";bs");
        assert_eq!(
            value(&bs, "https://e.com/", &h).unwrap(),
            ":YSwgYg==:, :Yw==:"
        );
    }

    #[test]
    fn invalid_identifiers_are_refused() {
        assert!(Component::new("Content-Type").is_err());
        assert!(Component::new("@status").is_err());
        assert!(Component::new("@query-param").is_err());
        assert!(Component::new("").is_err());
        assert!(Component::new("@method").unwrap().byte_sequence().is_err());
    }
}
