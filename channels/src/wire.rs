//! How an [`Envelope`] is stored in a Kafka record or a NATS message: CloudEvents *binary*
//! content mode, plus two small Sluice headers that make the round trip lossless.
//!
//! ```text
//! ce_specversion: 1.0            (NATS: ce-specversion)      one header per attribute,
//! ce_id: 42                                                  value verbatim (Kafka) or
//! content-type: application/json  ← datacontenttype           percent-encoded (NATS)
//! ce_count: 7
//! traceparent: 00-…               ← envelope (pass-through) headers, by their own names
//! sluice_attrs: id,source,type,datacontenttype,count:i        attribute order and types
//! sluice_data: text | binary | none                           data presence and kind
//! payload: the data bytes
//! ```
//!
//! Binary mode keeps the payload as the producer's bytes (no base64, no JSON re-encoding) and
//! is what other CloudEvents consumers of the topic or stream (KafkaSource, eventing-natss)
//! understand. Binary mode alone loses three things the [`Event`] model keeps, so Sluice adds:
//!
//! - `sluice_attrs`: attribute names in their original order, `:i` / `:b` marking integer and
//!   boolean extension values (structured JSON can carry them typed; CESQL sees the type).
//!   NATS header maps are unordered, so without it the order would be lost there too.
//! - `sluice_data`: whether there is data at all (an empty body is not "no data") and whether
//!   it is opaque binary (`data_base64` in structured mode).
//!
//! Records written by someone else (no `sluice_*` headers) decode like an HTTP binary-mode
//! request: string attributes in header order, a non-empty payload is the data.
//!
//! Envelope headers travel under their own names; one that would be mistaken for an attribute
//! or a Sluice/NATS header (`ce_*`, `ce-*`, `content-type`, `sluice*`, `nats-*`) is stored as
//! `sluice_h_<name>` (NATS: `sluice-h-<name>`). NATS header maps do not keep the order of
//! different names, so on NATS envelope headers come back sorted by name (the relative order of
//! repeated names is kept), which HTTP treats as the same header set.
//!
//! On Kafka the `partitionkey` extension is also the record key ([`Encoded::key`]).
//!
//! **Trace context.** The W3C `traceparent` / `tracestate` headers are envelope headers like
//! any other (plain names, values as sent). With tracing on, the ingress stores there the
//! context of its `channel publish` span (`sluice_core::trace`), and the dispatcher that
//! reads the record, in this process or another replica, makes its `deliver` span that
//! span's child. A record without them (written before tracing, or by someone else)
//! decodes as always; its delivery starts a new trace.

use crate::ChannelError;
use bytes::Bytes;
use sluice_core::event::is_valid_attribute_name;
use sluice_core::http::{percent_decode, percent_encode};
use sluice_core::{AttrValue, Envelope, Event, SpecVersion};
use std::borrow::Cow;

/// The header naming of one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Prefix of attribute headers: `ce_` (Kafka binding) or `ce-` (NATS).
    pub attr_prefix: &'static str,
    /// Prefix of Sluice's own headers: `sluice_` or `sluice-`.
    pub meta_prefix: &'static str,
    /// Percent-encode values (NATS header values cannot hold CR/LF; Kafka's are bytes).
    pub escape_values: bool,
    /// Decoded envelope headers are sorted by name (the transport does not keep their order).
    pub sort_headers: bool,
}

/// Kafka: the CloudEvents Kafka protocol binding's `ce_` headers, raw UTF-8 values.
pub const KAFKA: Style = Style {
    attr_prefix: "ce_",
    meta_prefix: "sluice_",
    escape_values: false,
    sort_headers: false,
};

/// NATS: `ce-` headers with percent-encoded values (as the HTTP binding does).
pub const NATS: Style = Style {
    attr_prefix: "ce-",
    meta_prefix: "sluice-",
    escape_values: true,
    sort_headers: true,
};

/// An encoded envelope, ready for a transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
    /// The `partitionkey` extension (string form), the Kafka record key.
    pub key: Option<String>,
}

/// Why a stored record could not be turned back into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("ce_")
        || lower.starts_with("ce-")
        || lower == "content-type"
        || lower.starts_with("sluice")
        || lower.starts_with("nats-")
}

impl Style {
    fn meta(&self, name: &str) -> String {
        format!("{}{name}", self.meta_prefix)
    }

    fn escaped_header_prefix(&self) -> String {
        let sep = &self.meta_prefix[self.meta_prefix.len() - 1..];
        format!("{}h{sep}", self.meta_prefix)
    }

    fn value<'a>(&self, v: &'a str) -> Cow<'a, str> {
        if self.escape_values {
            percent_encode(v)
        } else {
            Cow::Borrowed(v)
        }
    }

    fn unvalue<'a>(&self, name: &str, v: &'a [u8]) -> Result<Cow<'a, str>, DecodeError> {
        let decoded = if self.escape_values {
            percent_decode(v)
        } else {
            std::str::from_utf8(v).ok().map(Cow::Borrowed)
        };
        decoded.ok_or_else(|| DecodeError(format!("header `{name}` is not valid UTF-8")))
    }
}

/// Encodes an envelope. Fails only for an attribute name that is not `[a-z0-9]+` (events are
/// validated at the ingress, so this means a bug upstream).
pub fn encode(envelope: &Envelope, style: &Style) -> Result<Encoded, ChannelError> {
    let event = &envelope.event;
    let mut headers = Vec::with_capacity(event.attributes().count() + envelope.headers.len() + 3);
    headers.push((
        format!("{}specversion", style.attr_prefix),
        event.spec_version().as_str().to_owned(),
    ));
    let mut order = String::new();
    let mut key = None;
    for (name, value) in event.attributes() {
        if !is_valid_attribute_name(name) {
            return Err(ChannelError::Config(format!(
                "event attribute name `{name}` cannot be stored: names are lower-case letters and digits"
            )));
        }
        if !order.is_empty() {
            order.push(',');
        }
        order.push_str(name);
        match value {
            AttrValue::Integer(_) => order.push_str(":i"),
            AttrValue::Boolean(_) => order.push_str(":b"),
            AttrValue::String(_) => {}
        }
        let text = value.to_string_form();
        if name == "partitionkey" {
            key = Some(text.clone().into_owned());
        }
        let hname = if name == "datacontenttype" {
            "content-type".to_owned()
        } else {
            format!("{}{name}", style.attr_prefix)
        };
        headers.push((hname, style.value(&text).into_owned()));
    }
    for (name, value) in &envelope.headers {
        let hname = if is_reserved_header(name) {
            format!("{}{name}", style.escaped_header_prefix())
        } else {
            name.clone()
        };
        headers.push((hname, style.value(value).into_owned()));
    }
    headers.push((style.meta("attrs"), order));
    let (kind, payload) = match event.data() {
        None => ("none", Bytes::new()),
        Some(d) if event.data_is_binary() => ("binary", d.clone()),
        Some(d) => ("text", d.clone()),
    };
    headers.push((style.meta("data"), kind.to_owned()));
    Ok(Encoded {
        headers,
        payload,
        key,
    })
}

/// Decodes a record's headers (in transport order) and payload.
pub fn decode<'a, I>(headers: I, payload: Bytes, style: &Style) -> Result<Envelope, DecodeError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let meta_attrs = style.meta("attrs");
    let meta_data = style.meta("data");
    let escaped = style.escaped_header_prefix();
    let mut spec = None;
    let mut values: Vec<(String, String)> = Vec::new();
    let mut order: Option<String> = None;
    let mut data_kind: Option<String> = None;
    let mut env_headers: Vec<(String, String)> = Vec::new();
    for (name, raw) in headers {
        let value = style.unvalue(name, raw)?.into_owned();
        if let Some(attr) = strip_prefix_ignore_case(name, style.attr_prefix) {
            let attr = attr.to_ascii_lowercase();
            if attr == "specversion" {
                spec =
                    Some(SpecVersion::parse(&value).ok_or_else(|| {
                        DecodeError(format!("unsupported specversion `{value}`"))
                    })?);
            } else if !values.iter().any(|(n, _)| *n == attr) {
                values.push((attr, value));
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            if !values.iter().any(|(n, _)| n == "datacontenttype") {
                values.push(("datacontenttype".into(), value));
            }
        } else if name == meta_attrs {
            order = Some(value);
        } else if name == meta_data {
            data_kind = Some(value);
        } else if let Some(original) = name.strip_prefix(escaped.as_str()) {
            env_headers.push((original.to_owned(), value));
        } else {
            env_headers.push((name.to_owned(), value));
        }
    }
    let spec = spec.ok_or_else(|| {
        DecodeError(format!(
            "not a CloudEvent: no `{}specversion` header",
            style.attr_prefix
        ))
    })?;
    let mut event = Event::new(spec, "", "", "");
    for required in ["id", "source", "type"] {
        event.remove(required);
    }
    match order {
        Some(order) if !order.is_empty() => {
            for item in order.split(',') {
                let (name, ty) = item.split_once(':').unwrap_or((item, ""));
                let pos = values
                    .iter()
                    .position(|(n, _)| n == name)
                    .ok_or_else(|| DecodeError(format!("attribute `{name}` has no header")))?;
                let (name, text) = values.swap_remove(pos);
                let value = match ty {
                    "" => AttrValue::String(text),
                    "i" => AttrValue::Integer(text.parse().map_err(|_| {
                        DecodeError(format!("attribute `{name}` is not an integer: `{text}`"))
                    })?),
                    "b" => AttrValue::Boolean(match text.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(DecodeError(format!(
                                "attribute `{name}` is not a boolean: `{text}`"
                            )))
                        }
                    }),
                    other => {
                        return Err(DecodeError(format!(
                            "attribute `{name}` has unknown type tag `{other}`"
                        )))
                    }
                };
                event.set(name, value);
            }
            // Attributes with a header but missing from the list (added by someone else).
            for (name, text) in values {
                event.set(name, AttrValue::String(text));
            }
        }
        _ => {
            for (name, text) in values {
                event.set(name, AttrValue::String(text));
            }
        }
    }
    match data_kind.as_deref() {
        Some("none") => {}
        Some("binary") => event.set_data(payload, true),
        Some("text") => event.set_data(payload, false),
        Some(other) => return Err(DecodeError(format!("unknown data kind `{other}`"))),
        None if payload.is_empty() => {}
        None => event.set_data(payload, false),
    }
    // Only what any stored event meets: records written before a newer edge rule (e.g. the
    // reserved `data` attribute) were answered 202 and must still be delivered.
    event
        .validate_stored()
        .map_err(|e| DecodeError(format!("invalid event: {e}")))?;
    if style.sort_headers {
        env_headers.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(Envelope::with_headers(event, env_headers))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() > prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rich() -> Envelope {
        let mut e = Event::new(SpecVersion::V10, "id-1", "/src", "com.example");
        // Attribute order differs from the usual, on purpose.
        e.remove("id");
        e.set("id", "id-1");
        e.set("datacontenttype", "text/plain; charset=utf-8");
        e.set("subject", "line1\nline 2 % 100 \"quoted\" é");
        e.set("count", AttrValue::Integer(-7));
        e.set("flag", AttrValue::Boolean(true));
        e.set("partitionkey", "k1");
        e.set_data(Bytes::from_static(b"hello"), false);
        Envelope::with_headers(
            e,
            vec![
                ("traceparent".into(), "00-abc-def-01".into()),
                ("x-request-id".into(), "r 1".into()),
                ("knative-foo".into(), "a".into()),
                ("knative-foo".into(), "b".into()),
                ("content-type".into(), "sneaky".into()),
                ("sluice_attrs".into(), "sneaky too".into()),
            ],
        )
    }

    fn roundtrip(env: &Envelope, style: &Style) -> Envelope {
        let enc = encode(env, style).unwrap();
        decode(
            enc.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            enc.payload,
            style,
        )
        .unwrap()
    }

    fn sorted(env: &Envelope) -> Envelope {
        let mut env = env.clone();
        env.headers.sort_by(|a, b| a.0.cmp(&b.0));
        env
    }

    #[test]
    fn kafka_round_trip_is_exact() {
        let env = rich();
        assert_eq!(roundtrip(&env, &KAFKA), env);
        let enc = encode(&env, &KAFKA).unwrap();
        assert_eq!(enc.key.as_deref(), Some("k1"));
        assert!(enc
            .headers
            .contains(&("content-type".into(), "text/plain; charset=utf-8".into())));
        assert!(enc.headers.contains(&("ce_id".into(), "id-1".into())));
    }

    #[test]
    fn nats_round_trip_is_exact_up_to_header_name_order() {
        let env = rich();
        let got = roundtrip(&env, &NATS);
        assert_eq!(got.event, env.event);
        assert_eq!(got, sorted(&env));
        // Values are single-line visible ASCII, as NATS headers require.
        let enc = encode(&env, &NATS).unwrap();
        assert!(enc
            .headers
            .iter()
            .all(|(_, v)| v.bytes().all(|b| (0x21..=0x7e).contains(&b))));
    }

    #[test]
    fn data_presence_and_kind_survive() {
        let mut e = Event::new(SpecVersion::V03, "1", "s", "t");
        let none = Envelope::new(e.clone());
        e.set_data(Bytes::new(), false);
        let empty = Envelope::new(e.clone());
        e.set_data(Bytes::from_static(&[0, 159, 146, 150]), true);
        let binary = Envelope::new(e);
        for style in [&KAFKA, &NATS] {
            for env in [&none, &empty, &binary] {
                assert_eq!(&roundtrip(env, style), env);
            }
        }
    }

    #[test]
    fn foreign_binary_records_decode_like_http() {
        let headers = [
            ("ce_specversion", &b"1.0"[..]),
            ("ce_type", b"t"),
            ("ce_id", b"1"),
            ("ce_source", b"s"),
            ("content-type", b"application/json"),
            ("x-other", b"v"),
        ];
        let env = decode(headers, Bytes::from_static(b"{}"), &KAFKA).unwrap();
        let names: Vec<_> = env.event.attributes().map(|(n, _)| n).collect();
        assert_eq!(names, ["type", "id", "source", "datacontenttype"]);
        assert_eq!(env.event.data().unwrap().as_ref(), b"{}");
        assert_eq!(env.headers, [("x-other".to_string(), "v".to_string())]);
    }

    /// The trace context the ingress stores survives both transports exactly, and a record
    /// without one still decodes (and carries none).
    #[test]
    fn trace_context_headers_survive_and_are_optional() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let env = Envelope::with_headers(
            Event::new(SpecVersion::V10, "1", "/s", "t"),
            vec![
                ("traceparent".into(), tp.into()),
                (
                    "tracestate".into(),
                    "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into(),
                ),
            ],
        );
        for style in [&KAFKA, &NATS] {
            let back = roundtrip(&env, style);
            assert_eq!(sorted(&back), sorted(&env), "{style:?}");
            let cx = sluice_core::trace::from_headers(&back.headers).expect("a context");
            assert_eq!(
                sluice_core::trace::format_traceparent(&cx).as_deref(),
                Some(tp)
            );
        }
        let old = Envelope::new(Event::new(SpecVersion::V10, "1", "/s", "t"));
        for style in [&KAFKA, &NATS] {
            let back = roundtrip(&old, style);
            assert_eq!(back, old);
            assert!(sluice_core::trace::from_headers(&back.headers).is_none());
        }
    }

    #[test]
    fn records_stored_before_a_newer_edge_rule_still_decode() {
        // An attribute named `data` is refused at the ingress now, but records written
        // before that rule were acknowledged: the reader must still deliver them.
        let mut e = Event::new(SpecVersion::V10, "1", "/s", "t");
        e.set("data", AttrValue::String("x".into()));
        assert!(e.validate().is_err());
        let old = Envelope::new(e);
        for style in [&KAFKA, &NATS] {
            assert_eq!(roundtrip(&old, style), old, "{style:?}");
        }
    }

    #[test]
    fn records_that_are_not_events_are_refused() {
        let headers = [("ce_id", &b"1"[..])];
        assert!(decode(headers, Bytes::new(), &KAFKA).is_err());
        let headers = [("ce_specversion", &b"1.0"[..]), ("ce_id", b"1")];
        assert!(decode(headers, Bytes::new(), &KAFKA).is_err());
    }
}
