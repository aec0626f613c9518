//! The lossless CloudEvent model.
//!
//! An [`Event`] keeps every context attribute exactly as the producer wrote it: values are the
//! producer's strings (a `time` keeps its offset, a `source` is never normalised), the spec
//! version is never upgraded, and `data` is the raw bytes of the binary-mode body. Attribute
//! lookup is a linear scan over a short vector, which beats hashing for the ten or so attributes
//! an event carries and keeps the producer's order for re-encoding.

use bytes::Bytes;
use std::fmt;

/// The CloudEvents spec versions Sluice accepts. Events are never upgraded between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecVersion {
    V03,
    V10,
}

impl SpecVersion {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1.0" => Some(Self::V10),
            "0.3" => Some(Self::V03),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V10 => "1.0",
            Self::V03 => "0.3",
        }
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An attribute value. Binary mode only ever produces strings; structured JSON may carry
/// extension values as JSON booleans or integers, which are kept typed so they re-encode as
/// they came and so CESQL sees their CloudEvents type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    String(String),
    Integer(i64),
    Boolean(bool),
}

impl AttrValue {
    /// The canonical string form (what a binary-mode header would carry).
    pub fn to_string_form(&self) -> std::borrow::Cow<'_, str> {
        match self {
            AttrValue::String(s) => std::borrow::Cow::Borrowed(s),
            AttrValue::Integer(i) => std::borrow::Cow::Owned(i.to_string()),
            AttrValue::Boolean(b) => std::borrow::Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::String(s.to_owned())
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::String(s)
    }
}

/// The attributes every event must carry (besides `specversion`).
pub const REQUIRED: [&str; 3] = ["id", "source", "type"];

/// The broker's loop guard (SEMANTICS.md §2): set by the ingress, read back for replies,
/// never shown to subscribers.
pub const TTL_ATTRIBUTE: &str = "knativebrokerttl";

/// Attributes defined by the core spec (1.0 and 0.3); everything else is an extension.
pub fn is_context_attribute(name: &str) -> bool {
    matches!(
        name,
        "specversion"
            | "id"
            | "source"
            | "type"
            | "datacontenttype"
            | "dataschema"
            | "subject"
            | "time"
            | "schemaurl"
            | "datacontentencoding"
    )
}

/// Whether `name` is a legal attribute name: lower-case ASCII letters and digits only
/// (CloudEvents 1.0 §"Attribute Naming Convention").
pub fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A CloudEvent. Construct with [`Event::new`] or the codecs in [`crate::http`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    spec: SpecVersion,
    /// Every attribute except `specversion`, in arrival order. Names are unique.
    attrs: Vec<(String, AttrValue)>,
    data: Option<Bytes>,
    /// The data came as `data_base64` (or is otherwise opaque binary): structured encoding must
    /// emit `data_base64` rather than a JSON value or string.
    data_binary: bool,
}

impl Event {
    /// A new event with the three required attributes.
    pub fn new(
        spec: SpecVersion,
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
    ) -> Self {
        Event {
            spec,
            attrs: vec![
                ("id".into(), AttrValue::String(id.into())),
                ("source".into(), AttrValue::String(source.into())),
                ("type".into(), AttrValue::String(ty.into())),
            ],
            data: None,
            data_binary: false,
        }
    }

    /// An event with no attributes yet; the codecs fill it and then call [`Event::validate`].
    pub(crate) fn empty(spec: SpecVersion) -> Self {
        Event {
            spec,
            attrs: Vec::with_capacity(8),
            data: None,
            data_binary: false,
        }
    }

    pub fn spec_version(&self) -> SpecVersion {
        self.spec
    }

    pub fn id(&self) -> &str {
        self.get_str("id").unwrap_or("")
    }

    pub fn source(&self) -> &str {
        self.get_str("source").unwrap_or("")
    }

    pub fn ty(&self) -> &str {
        self.get_str("type").unwrap_or("")
    }

    pub fn datacontenttype(&self) -> Option<&str> {
        self.get_str("datacontenttype")
    }

    /// Looks up any attribute by name, `specversion` included (as a string).
    pub fn get(&self, name: &str) -> Option<&AttrValue> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The attribute as a string if it is one (`specversion` too).
    pub fn get_str(&self, name: &str) -> Option<&str> {
        if name == "specversion" {
            return Some(self.spec.as_str());
        }
        self.get(name).and_then(AttrValue::as_str)
    }

    /// Whether the attribute is present (`specversion` always is).
    pub fn has(&self, name: &str) -> bool {
        name == "specversion" || self.get(name).is_some()
    }

    /// Sets an attribute, replacing an existing value in place (keeping its position).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<AttrValue>) {
        let name = name.into();
        let value = value.into();
        if let Some(slot) = self.attrs.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            self.attrs.push((name, value));
        }
    }

    /// Removes an attribute, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<AttrValue> {
        let pos = self.attrs.iter().position(|(n, _)| n == name)?;
        Some(self.attrs.remove(pos).1)
    }

    /// All attributes except `specversion`, in order.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &AttrValue)> {
        self.attrs.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Extension attributes only.
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &AttrValue)> {
        self.attributes().filter(|(n, _)| !is_context_attribute(n))
    }

    /// The raw data: the binary-mode body.
    pub fn data(&self) -> Option<&Bytes> {
        self.data.as_ref()
    }

    /// Whether the data is opaque binary (structured encoding uses `data_base64`).
    pub fn data_is_binary(&self) -> bool {
        self.data_binary
    }

    /// Sets the data. `binary` marks opaque bytes that must be base64 in structured mode.
    pub fn set_data(&mut self, data: impl Into<Bytes>, binary: bool) {
        self.data = Some(data.into());
        self.data_binary = binary;
    }

    pub fn clear_data(&mut self) {
        self.data = None;
        self.data_binary = false;
    }

    /// Checks the rules every event must meet: required attributes present and non-empty,
    /// legal attribute names, and what the HTTP encodings cannot carry losslessly. Codecs
    /// call this once, at the edge.
    pub fn validate(&self) -> Result<(), crate::Error> {
        self.validate_stored()?;
        // The JSON event format keeps the payload in the member `data`: an attribute of
        // that name (possible from a `ce-data` header) would be lost or overwrite the data
        // when the event is delivered in structured mode (found by the http_decode fuzz
        // target), so it is refused at the edge like any other unrepresentable name.
        if self.attrs.iter().any(|(name, _)| name == "data") {
            return Err(crate::Error::ReservedAttributeName("data".to_string()));
        }
        // Binary mode carries `datacontenttype` verbatim in `Content-Type`, which cannot hold
        // control characters: such a value (from a percent-encoded `ce-datacontenttype` or a
        // structured event) was silently dropped on binary delivery (found by fuzzing).
        if let Some(ct) = self.datacontenttype() {
            if ct.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(crate::Error::InvalidDataContentType(ct.to_owned()));
            }
        }
        Ok(())
    }

    /// The rules an event read back from storage must meet: required attributes present and
    /// non-empty, legal attribute names. Looser than [`Event::validate`] on purpose: an event
    /// stored (and answered 202) before an edge rule was added must still be delivered, not
    /// dropped by the reader.
    pub fn validate_stored(&self) -> Result<(), crate::Error> {
        for req in REQUIRED {
            match self.get(req) {
                None => {
                    return Err(crate::Error::MissingAttribute(req));
                }
                Some(AttrValue::String(s)) if s.is_empty() => {
                    return Err(crate::Error::EmptyAttribute(req));
                }
                Some(AttrValue::String(_)) => {}
                Some(_) => return Err(crate::Error::AttributeNotString(req.to_string())),
            }
        }
        for (name, _) in &self.attrs {
            if !is_valid_attribute_name(name) {
                return Err(crate::Error::InvalidAttributeName(name.clone()));
            }
        }
        Ok(())
    }
}
