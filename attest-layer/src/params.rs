//! Signature parameters, the `Signature-Input` and `Signature` fields, and the signature base
//! (RFC 9421 §2.3, §2.5, §4), serialized and parsed as structured fields with `sfv`.

use std::fmt;

use crate::components::{Component, RequestParts};
use crate::error::HeaderError;

/// The covered components and parameters of one signature: one member of `Signature-Input`.
#[derive(Clone, PartialEq)]
pub struct SignatureParams {
    components: Vec<Component>,
    params: sfv::Parameters,
}

impl fmt::Debug for SignatureParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.serialize())
    }
}

/// A parameter key from a fixed lowercase name (checked when the constant is built).
fn key(name: &'static str) -> sfv::Key {
    sfv::KeyRef::constant(name).to_owned()
}

impl SignatureParams {
    /// Parameters covering `components`, with no parameters yet. Parameters are serialized
    /// in the order they are set.
    pub fn new(components: Vec<Component>) -> Self {
        Self {
            components,
            params: sfv::Parameters::new(),
        }
    }

    fn set(mut self, name: &'static str, value: sfv::BareItem) -> Self {
        self.params.insert(key(name), value);
        self
    }

    fn set_str(self, name: &'static str, value: &str) -> Result<Self, HeaderError> {
        let s = sfv::String::from_string(value.to_owned())
            .map_err(|(e, _)| HeaderError::SignatureInput(format!("{name}: {e}")))?;
        Ok(self.set(name, sfv::BareItem::String(s)))
    }

    fn set_int(self, name: &'static str, value: u64) -> Result<Self, HeaderError> {
        let i = sfv::Integer::try_from(value)
            .map_err(|e| HeaderError::SignatureInput(format!("{name}: {e}")))?;
        Ok(self.set(name, sfv::BareItem::Integer(i)))
    }

    /// Sets `created` (UNIX seconds).
    ///
    /// # Errors
    /// When the value is out of the structured-field integer range.
    pub fn with_created(self, t: u64) -> Result<Self, HeaderError> {
        self.set_int("created", t)
    }

    /// Sets `expires` (UNIX seconds).
    ///
    /// # Errors
    /// When the value is out of the structured-field integer range.
    pub fn with_expires(self, t: u64) -> Result<Self, HeaderError> {
        self.set_int("expires", t)
    }

    /// Sets `nonce`.
    ///
    /// # Errors
    /// When the value is not printable ASCII.
    pub fn with_nonce(self, nonce: &str) -> Result<Self, HeaderError> {
        self.set_str("nonce", nonce)
    }

    /// Sets `keyid`.
    ///
    /// # Errors
    /// When the value is not printable ASCII.
    pub fn with_keyid(self, keyid: &str) -> Result<Self, HeaderError> {
        self.set_str("keyid", keyid)
    }

    /// Sets `alg`.
    ///
    /// # Errors
    /// Never for registry names; kept fallible like the other setters.
    pub fn with_alg(self, alg: &str) -> Result<Self, HeaderError> {
        self.set_str("alg", alg)
    }

    /// Sets `tag`.
    ///
    /// # Errors
    /// When the value is not printable ASCII.
    pub fn with_tag(self, tag: &str) -> Result<Self, HeaderError> {
        self.set_str("tag", tag)
    }

    /// The covered components, in order.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    fn int(&self, name: &str) -> Option<Result<u64, HeaderError>> {
        self.params.get(name).map(|v| {
            v.as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| {
                    HeaderError::SignatureInput(format!(
                        "parameter {name} must be a non-negative integer"
                    ))
                })
        })
    }

    fn string(&self, name: &str) -> Option<Result<&str, HeaderError>> {
        self.params.get(name).map(|v| {
            v.as_string().map(|s| s.as_str()).ok_or_else(|| {
                HeaderError::SignatureInput(format!("parameter {name} must be a string"))
            })
        })
    }

    /// `created`, if present.
    ///
    /// # Errors
    /// When present but not a non-negative integer.
    pub fn created(&self) -> Result<Option<u64>, HeaderError> {
        self.int("created").transpose()
    }

    /// `expires`, if present.
    ///
    /// # Errors
    /// When present but not a non-negative integer.
    pub fn expires(&self) -> Result<Option<u64>, HeaderError> {
        self.int("expires").transpose()
    }

    /// `nonce`, if present.
    ///
    /// # Errors
    /// When present but not a string.
    pub fn nonce(&self) -> Result<Option<&str>, HeaderError> {
        self.string("nonce").transpose()
    }

    /// `keyid`, if present.
    ///
    /// # Errors
    /// When present but not a string.
    pub fn keyid(&self) -> Result<Option<&str>, HeaderError> {
        self.string("keyid").transpose()
    }

    /// `alg`, if present.
    ///
    /// # Errors
    /// When present but not a string.
    pub fn alg(&self) -> Result<Option<&str>, HeaderError> {
        self.string("alg").transpose()
    }

    /// `tag`, if present.
    ///
    /// # Errors
    /// When present but not a string.
    pub fn tag(&self) -> Result<Option<&str>, HeaderError> {
        self.string("tag").transpose()
    }

    fn inner_list(&self) -> sfv::InnerList {
        sfv::InnerList::with_params(
            self.components.iter().map(|c| c.item().clone()).collect(),
            self.params.clone(),
        )
    }

    /// The serialized inner list with parameters: the value of `@signature-params`.
    pub fn serialize(&self) -> String {
        let mut ser = sfv::ListSerializer::new();
        ser.members([&sfv::ListEntry::InnerList(self.inner_list())]);
        ser.finish().unwrap_or_default()
    }

    /// The signature base for `req` (RFC 9421 §2.5): one line per covered component, then
    /// the `@signature-params` line, without a trailing newline.
    ///
    /// # Errors
    /// When a component is covered twice or missing from the request.
    pub fn signature_base(&self, req: &RequestParts<'_>) -> Result<String, HeaderError> {
        let mut base = String::with_capacity(256);
        for (i, c) in self.components.iter().enumerate() {
            if self.components[..i]
                .iter()
                .any(|p| p.identifier() == c.identifier())
            {
                return Err(HeaderError::Component {
                    component: c.identifier().to_owned(),
                    reason: "covered more than once".into(),
                });
            }
            base.push_str(c.identifier());
            base.push_str(": ");
            base.push_str(&c.value(req)?);
            base.push('\n');
        }
        base.push_str("\"@signature-params\": ");
        base.push_str(&self.serialize());
        Ok(base)
    }

    fn from_inner_list(list: &sfv::InnerList) -> Result<Self, HeaderError> {
        let components = list
            .items
            .iter()
            .map(Component::from_item)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HeaderError::SignatureInput(e.to_string()))?;
        let me = Self {
            components,
            params: list.params.clone(),
        };
        // Type-check the registered parameters up front.
        me.created()?;
        me.expires()?;
        me.nonce()?;
        me.keyid()?;
        me.alg()?;
        me.tag()?;
        Ok(me)
    }
}

fn joined(values: &[&str]) -> String {
    values.join(", ")
}

/// Parses `Signature-Input` field values into `(label, params)` pairs, in order.
///
/// # Errors
/// [`HeaderError::SignatureInput`] for anything that is not a dictionary of inner lists of
/// valid component identifiers.
pub fn parse_signature_input(
    values: &[&str],
) -> Result<Vec<(String, SignatureParams)>, HeaderError> {
    let text = joined(values);
    let dict: sfv::Dictionary = sfv::Parser::new(&text)
        .parse()
        .map_err(|e| HeaderError::SignatureInput(e.to_string()))?;
    if dict.is_empty() {
        return Err(HeaderError::SignatureInput("empty dictionary".into()));
    }
    dict.iter()
        .map(|(label, entry)| match entry {
            sfv::ListEntry::InnerList(list) => Ok((
                label.as_str().to_owned(),
                SignatureParams::from_inner_list(list)?,
            )),
            sfv::ListEntry::Item(_) => Err(HeaderError::SignatureInput(format!(
                "member {:?} must be an inner list",
                label.as_str()
            ))),
        })
        .collect()
}

/// Parses `Signature` field values into `(label, signature bytes)` pairs, in order.
///
/// # Errors
/// [`HeaderError::Signature`] for anything that is not a dictionary of byte sequences.
pub fn parse_signature(values: &[&str]) -> Result<Vec<(String, Vec<u8>)>, HeaderError> {
    let text = joined(values);
    let dict: sfv::Dictionary = sfv::Parser::new(&text)
        .parse()
        .map_err(|e| HeaderError::Signature(e.to_string()))?;
    if dict.is_empty() {
        return Err(HeaderError::Signature("empty dictionary".into()));
    }
    dict.iter()
        .map(|(label, entry)| match entry {
            sfv::ListEntry::Item(sfv::Item {
                bare_item: sfv::BareItem::ByteSequence(b),
                ..
            }) => Ok((label.as_str().to_owned(), b.clone())),
            _ => Err(HeaderError::Signature(format!(
                "member {:?} must be a byte sequence",
                label.as_str()
            ))),
        })
        .collect()
}

fn label_key(label: &str) -> Result<sfv::Key, HeaderError> {
    sfv::Key::from_string(label.to_owned())
        .map_err(|(e, _)| HeaderError::SignatureInput(format!("label {label:?}: {e}")))
}

/// Serializes one `Signature-Input` member: `label=(...);params`.
///
/// # Errors
/// When `label` is not a valid structured-field key (lowercase, digits, `_-.*`).
pub fn serialize_signature_input(
    label: &str,
    params: &SignatureParams,
) -> Result<String, HeaderError> {
    let mut ser = sfv::DictSerializer::new();
    let entry = sfv::ListEntry::InnerList(params.inner_list());
    ser.members([(label_key(label)?, &entry)]);
    Ok(ser.finish().unwrap_or_default())
}

/// Serializes one `Signature` member: `label=:base64:`.
///
/// # Errors
/// When `label` is not a valid structured-field key.
pub fn serialize_signature(label: &str, signature: &[u8]) -> Result<String, HeaderError> {
    let mut ser = sfv::DictSerializer::new();
    let entry = sfv::ListEntry::Item(sfv::Item::new(sfv::BareItem::ByteSequence(
        signature.to_vec(),
    )));
    ser.members([(label_key(label)?, &entry)]);
    Ok(ser.finish().unwrap_or_default())
}

/// Serializes an `Accept-Signature` member (RFC 9421 §5.1) asking for `components` with
/// `created`, optionally `nonce`, `tag` and `alg`.
pub(crate) fn serialize_accept_signature(
    label: &str,
    components: &[Component],
    nonce: bool,
    tag: Option<&str>,
) -> Option<String> {
    let mut params = sfv::Parameters::new();
    params.insert(key("created"), sfv::BareItem::Boolean(true));
    if nonce {
        params.insert(key("nonce"), sfv::BareItem::Boolean(true));
    }
    if let Some(tag) = tag.and_then(|t| sfv::String::from_string(t.to_owned()).ok()) {
        params.insert(key("tag"), sfv::BareItem::String(tag));
    }
    let list = sfv::InnerList::with_params(
        components.iter().map(|c| c.item().clone()).collect(),
        params,
    );
    let mut ser = sfv::DictSerializer::new();
    let entry = sfv::ListEntry::InnerList(list);
    ser.members([(label_key(label).ok()?, &entry)]);
    ser.finish()
}
