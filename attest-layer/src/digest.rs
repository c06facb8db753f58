//! RFC 9530 `Content-Digest`: computing, parsing and checking it while the body streams.

use aws_lc_rs::{constant_time, digest};

use crate::error::HeaderError;

/// A `Content-Digest` hash algorithm from the RFC 9530 registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DigestAlgorithm {
    /// `sha-256`.
    Sha256,
    /// `sha-512`.
    Sha512,
}

impl DigestAlgorithm {
    /// The registry key, such as `sha-256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha-256",
            Self::Sha512 => "sha-512",
        }
    }

    fn from_key(k: &str) -> Option<Self> {
        match k {
            "sha-256" => Some(Self::Sha256),
            "sha-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    fn lc(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }
}

/// The `Content-Digest` field value for `body`, such as `sha-256=:...:`.
pub fn content_digest(alg: DigestAlgorithm, body: &[u8]) -> String {
    let mut h = DigestHasher::new(&[alg]);
    h.update(body);
    h.header_value()
}

/// Parses a `Content-Digest` field into `(algorithm key, digest bytes)` pairs.
///
/// # Errors
/// [`HeaderError::ContentDigest`] when it is not a dictionary of byte sequences.
pub fn parse_content_digest(values: &[&str]) -> Result<Vec<(String, Vec<u8>)>, HeaderError> {
    let text = values.join(", ");
    let dict: sfv::Dictionary = sfv::Parser::new(&text)
        .parse()
        .map_err(|e| HeaderError::ContentDigest(e.to_string()))?;
    dict.iter()
        .map(|(k, v)| match v {
            sfv::ListEntry::Item(sfv::Item {
                bare_item: sfv::BareItem::ByteSequence(b),
                ..
            }) => Ok((k.as_str().to_owned(), b.clone())),
            _ => Err(HeaderError::ContentDigest(format!(
                "member {:?} must be a byte sequence",
                k.as_str()
            ))),
        })
        .collect()
}

/// Hashes a body chunk by chunk with one or more algorithms.
#[derive(Clone)]
pub(crate) struct DigestHasher {
    ctx: Vec<(DigestAlgorithm, digest::Context)>,
}

impl std::fmt::Debug for DigestHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ctx.iter().map(|(a, _)| a))
            .finish()
    }
}

impl DigestHasher {
    pub(crate) fn new(algs: &[DigestAlgorithm]) -> Self {
        Self {
            ctx: algs
                .iter()
                .map(|a| (*a, digest::Context::new(a.lc())))
                .collect(),
        }
    }

    pub(crate) fn update(&mut self, chunk: &[u8]) {
        for (_, c) in &mut self.ctx {
            c.update(chunk);
        }
    }

    pub(crate) fn finish(self) -> Vec<(DigestAlgorithm, Vec<u8>)> {
        self.ctx
            .into_iter()
            .map(|(a, c)| (a, c.finish().as_ref().to_vec()))
            .collect()
    }

    pub(crate) fn header_value(self) -> String {
        let mut ser = sfv::DictSerializer::new();
        for (alg, d) in self.finish() {
            ser.bare_item(
                sfv::KeyRef::constant(alg.as_str()),
                sfv::RefBareItem::ByteSequence(&d),
            );
        }
        ser.finish().unwrap_or_default()
    }
}

/// What the server expects of a body from its `Content-Digest` field.
#[derive(Debug, Clone)]
pub(crate) struct ExpectedDigest {
    expected: Vec<(DigestAlgorithm, Vec<u8>)>,
}

impl ExpectedDigest {
    /// The supported digests in the field; `Ok(None)` if none is supported.
    pub(crate) fn from_field(values: &[&str]) -> Result<Option<Self>, HeaderError> {
        let parsed = parse_content_digest(values)?;
        let expected: Vec<_> = parsed
            .into_iter()
            .filter_map(|(k, v)| DigestAlgorithm::from_key(&k).map(|a| (a, v)))
            .collect();
        Ok(if expected.is_empty() {
            None
        } else {
            Some(Self { expected })
        })
    }

    pub(crate) fn hasher(&self) -> DigestHasher {
        let algs: Vec<_> = self.expected.iter().map(|(a, _)| *a).collect();
        DigestHasher::new(&algs)
    }

    /// Compares every expected digest with the computed ones, in constant time.
    pub(crate) fn matches(&self, computed: &[(DigestAlgorithm, Vec<u8>)]) -> bool {
        self.expected.iter().all(|(alg, want)| {
            computed
                .iter()
                .find(|(a, _)| a == alg)
                .is_some_and(|(_, got)| constant_time::verify_slices_are_equal(got, want).is_ok())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_9530_examples() {
        // RFC 9530 §2 / RFC 9421 B.2: the digests of `{"hello": "world"}`.
        let body = b"{\"hello\": \"world\"}";
        assert_eq!(
            content_digest(DigestAlgorithm::Sha256, body),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        assert_eq!(
            content_digest(DigestAlgorithm::Sha512, body),
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
        );
    }

    #[test]
    fn expected_digest_needs_every_supported_member_to_match() {
        let body = b"abc";
        let field = format!(
            "{}, md5=:AAAA:",
            content_digest(DigestAlgorithm::Sha256, body)
        );
        let exp = ExpectedDigest::from_field(&[&field]).unwrap().unwrap();
        let mut h = exp.hasher();
        h.update(b"ab");
        h.update(b"c");
        assert!(exp.matches(&h.finish()));
        let mut h = exp.hasher();
        h.update(b"abd");
        assert!(!exp.matches(&h.finish()));
        assert!(
            ExpectedDigest::from_field(&["md5=:AAAA:"])
                .unwrap()
                .is_none(),
            "no supported algorithm"
        );
        assert!(ExpectedDigest::from_field(&["sha-256=abc"]).is_err());
    }
}
