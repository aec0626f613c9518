//! The CloudEvents HTTP protocol binding (1.0.2) and JSON event format, both directions.
//!
//! Content mode is chosen from `Content-Type` alone (SEMANTICS.md §2): a media type starting
//! `application/cloudevents-batch` is batched, one starting `application/cloudevents`
//! (case-insensitive) is structured, anything else is binary. Binary header values are
//! percent-decoded exactly once with the lenient rules Go senders need (a `%` not followed by
//! two hex digits is kept), and percent-encoded on the way out.
//!
//! Structured JSON is parsed with `serde_json`'s `RawValue`, so `data` is kept as the
//! producer's exact JSON text instead of being parsed into a tree and printed again.

use crate::event::{AttrValue, Event, SpecVersion};
use crate::Error;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Media type of a structured-mode event.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// Media type of a batch.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json; charset=utf-8";

/// How a request carries its event(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
    Batch,
}

/// Picks the content mode from the `Content-Type` header value.
pub fn content_mode(content_type: Option<&[u8]>) -> Mode {
    let Some(ct) = content_type else {
        return Mode::Binary;
    };
    if starts_with_ignore_case(ct, b"application/cloudevents-batch") {
        Mode::Batch
    } else if starts_with_ignore_case(ct, b"application/cloudevents") {
        Mode::Structured
    } else {
        Mode::Binary
    }
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Decodes the event(s) in a request (or a reply). Every returned event is validated.
pub fn decode(headers: &HeaderMap, body: Bytes) -> Result<Vec<Event>, Error> {
    let ct = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    match content_mode(ct) {
        Mode::Batch => decode_batch(&body),
        Mode::Structured => {
            let ct = ct.unwrap_or_default();
            // `application/cloudevents+json`, possibly with parameters; other formats
            // (avro, protobuf) are not supported.
            let format = std::str::from_utf8(ct).unwrap_or("").to_ascii_lowercase();
            let media = format.split(';').next().unwrap_or("").trim();
            if media != "application/cloudevents+json" && media != "application/cloudevents" {
                return Err(Error::UnsupportedFormat(media.to_string()));
            }
            Ok(vec![decode_structured(&body)?])
        }
        Mode::Binary => Ok(vec![decode_binary(headers, body)?]),
    }
}

/// Whether the headers carry a binary-mode event or a structured/batched content type, i.e.
/// whether a response body should be read as a CloudEvent.
pub fn looks_like_event(headers: &HeaderMap) -> bool {
    headers.contains_key("ce-specversion")
        || !matches!(
            content_mode(headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes)),
            Mode::Binary
        )
}

/// Decodes a binary-mode event: `ce-*` headers are the attributes, the body is the data and
/// `Content-Type` is `datacontenttype`.
pub fn decode_binary(headers: &HeaderMap, body: Bytes) -> Result<Event, Error> {
    let spec = match headers.get("ce-specversion") {
        Some(v) => {
            let v = decode_header_value("ce-specversion", v)?;
            SpecVersion::parse(&v).ok_or_else(|| Error::BadSpecVersion(v.into_owned()))?
        }
        None => {
            let any_ce = headers.keys().any(|k| k.as_str().starts_with("ce-"));
            return Err(if any_ce {
                Error::MissingSpecVersion
            } else {
                Error::NotACloudEvent
            });
        }
    };
    let mut event = Event::empty(spec);
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attr == "specversion" || event.has(attr) {
            continue;
        }
        let value = decode_header_value(name.as_str(), value)?;
        event.set(attr.to_owned(), AttrValue::String(value.into_owned()));
    }
    // Content-Type is an ordinary HTTP header, not a `ce-` one: it is taken verbatim, never
    // percent-decoded (a `%` in a multipart boundary is data).
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = std::str::from_utf8(ct.as_bytes()).map_err(|_| Error::InvalidHeaderEncoding {
            header: "content-type".to_string(),
        })?;
        event.set("datacontenttype", AttrValue::String(ct.to_owned()));
    }
    if !body.is_empty() {
        event.set_data(body, false);
    }
    event.validate()?;
    Ok(event)
}

fn decode_header_value<'a>(name: &str, value: &'a HeaderValue) -> Result<Cow<'a, str>, Error> {
    percent_decode(value.as_bytes()).ok_or_else(|| Error::InvalidHeaderEncoding {
        header: name.to_string(),
    })
}

/// Percent-decodes a header value once. `%` followed by two hex digits (either case) becomes
/// that byte; any other `%` is kept as is, because Go senders do not encode it. The result must
/// be UTF-8, else `None`.
pub fn percent_decode(raw: &[u8]) -> Option<Cow<'_, str>> {
    if !raw.contains(&b'%') {
        return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex_val(raw[i + 1]), hex_val(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes an attribute value for a binary-mode header: space, `"`, `%` and every byte
/// outside U+0021–U+007E (so each UTF-8 byte of a non-ASCII character).
pub fn percent_encode(s: &str) -> Cow<'_, str> {
    fn needs(b: u8) -> bool {
        !(0x21..=0x7e).contains(&b) || b == b'"' || b == b'%'
    }
    if !s.bytes().any(needs) {
        return Cow::Borrowed(s);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if needs(b) {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        } else {
            out.push(b as char);
        }
    }
    Cow::Owned(out)
}

/// Writes a binary-mode event into `headers` and returns the body.
pub fn encode_binary(event: &Event, headers: &mut HeaderMap) -> Bytes {
    encode_binary_without(event, headers, None)
}

/// Like [`encode_binary`], leaving out the attribute `skip` (delivery leaves out the broker's
/// TTL this way instead of copying the event to remove it).
pub fn encode_binary_without(event: &Event, headers: &mut HeaderMap, skip: Option<&str>) -> Bytes {
    headers.insert(
        "ce-specversion",
        HeaderValue::from_static(event.spec_version().as_str()),
    );
    for (name, value) in event.attributes() {
        if Some(name) == skip {
            continue;
        }
        if name == "datacontenttype" {
            // Verbatim: Content-Type is not a `ce-` header, and parameters such as
            // `; charset=utf-8` or `boundary="a b"` must reach the subscriber as sent.
            // Bytes outside visible ASCII (possible only from a structured event) go out
            // as obs-text rather than being dropped.
            let ct = value.to_string_form();
            if let Ok(v) =
                HeaderValue::from_str(&ct).or_else(|_| HeaderValue::from_bytes(ct.as_bytes()))
            {
                headers.insert(CONTENT_TYPE, v);
            }
            continue;
        }
        let mut hname = String::with_capacity(3 + name.len());
        hname.push_str("ce-");
        hname.push_str(name);
        // Names are validated [a-z0-9]+ and values percent-encoded to visible ASCII, so both
        // conversions succeed; a failure would mean an unvalidated event, which we skip.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(hname.as_bytes()),
            HeaderValue::from_str(&percent_encode(&value.to_string_form())),
        ) {
            headers.insert(n, v);
        }
    }
    event.data().cloned().unwrap_or_default()
}

/// Whether a media type is JSON (`application/json`, `text/json`, `*+json`).
pub fn is_json_media_type(ct: &str) -> bool {
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// Encodes an event in the JSON event format (structured mode).
pub fn encode_structured(event: &Event) -> Vec<u8> {
    encode_structured_without(event, None)
}

/// Like [`encode_structured`], leaving out the attribute `skip`.
pub fn encode_structured_without(event: &Event, skip: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + event.data().map_or(0, |d| d.len()));
    write_structured(event, &mut out, skip);
    out
}

/// Encodes events as a JSON batch.
pub fn encode_batch(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * events.len());
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_structured(e, &mut out, None);
    }
    out.push(b']');
    out
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_structured(event: &Event, out: &mut Vec<u8>, skip: Option<&str>) {
    out.extend_from_slice(b"{\"specversion\":");
    write_json_str(out, event.spec_version().as_str());
    for (name, value) in event.attributes() {
        if Some(name) == skip {
            continue;
        }
        out.push(b',');
        write_json_str(out, name);
        out.push(b':');
        match value {
            AttrValue::String(s) => write_json_str(out, s),
            AttrValue::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
            AttrValue::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        }
    }
    if let Some(data) = event.data() {
        let json_ct = event.datacontenttype().is_none_or(is_json_media_type);
        if event.data_is_binary() {
            write_base64(out, data);
        } else if json_ct && is_json_text(data) {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(trim_ascii(data));
        } else if let Ok(s) = std::str::from_utf8(data) {
            out.extend_from_slice(b",\"data\":");
            write_json_str(out, s);
        } else {
            write_base64(out, data);
        }
    }
    out.push(b'}');
}

/// Whether `data` can go into a JSON document as it is: valid JSON *and* UTF-8. `serde_json`
/// skips over the inside of strings without checking their UTF-8 when it only validates, so a
/// body with a stray `\xff` inside a string passes the first check and, copied verbatim, would
/// make the whole structured event unreadable (found by the `http_decode` fuzz target).
fn is_json_text(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok()
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn write_base64(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(b",\"data_base64\":\"");
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(data)
            .as_bytes(),
    );
    out.push(b'"');
}

/// The members of a JSON object in document order, values left unparsed.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(10));
                while let Some((k, val)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    v.push((k, val));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Decodes one event in the JSON event format.
pub fn decode_structured(body: &[u8]) -> Result<Event, Error> {
    let members: Members = serde_json::from_slice(body)
        .map_err(|e| Error::Structured(format!("the body is not a JSON object: {e}")))?;
    event_from_members(members)
}

fn event_from_members(members: Members<'_>) -> Result<Event, Error> {
    let mut spec = None;
    for (k, v) in &members.0 {
        if k == "specversion" {
            let s: String = serde_json::from_str(v.get())
                .map_err(|_| Error::Structured("`specversion` must be a string".into()))?;
            spec = Some(SpecVersion::parse(&s).ok_or(Error::BadSpecVersion(s))?);
        }
    }
    let mut event = Event::empty(spec.ok_or(Error::MissingSpecVersion)?);
    let mut data: Option<&RawValue> = None;
    let mut data_base64: Option<&RawValue> = None;
    for (k, v) in members.0 {
        match &*k {
            "specversion" => {}
            "data" => data = Some(v),
            "data_base64" => data_base64 = Some(v),
            name => {
                let value: serde_json::Value = serde_json::from_str(v.get())
                    .map_err(|e| Error::Structured(format!("attribute `{name}`: {e}")))?;
                let value = match value {
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(s) => AttrValue::String(s),
                    serde_json::Value::Bool(b) => AttrValue::Boolean(b),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) if i >= i32::MIN as i64 && i <= i32::MAX as i64 => {
                            AttrValue::Integer(i)
                        }
                        _ => {
                            return Err(Error::Structured(format!(
                                "attribute `{name}` is the number {n}; CloudEvents integers are 32-bit whole numbers (send it as a string instead)"
                            )))
                        }
                    },
                    _ => {
                        return Err(Error::Structured(format!(
                            "attribute `{name}` must be a string, boolean or integer, not an object or array"
                        )))
                    }
                };
                event.set(name.to_owned(), value);
            }
        }
    }
    match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(Error::Structured(
                "both `data` and `data_base64` are present; send only one".into(),
            ))
        }
        (Some(raw), None) if raw.get() != "null" => {
            let json_ct = event.datacontenttype().is_none_or(is_json_media_type);
            if !json_ct && raw.get().starts_with('"') {
                // Text data of a non-JSON media type: the string's content is the data.
                let s: String = serde_json::from_str(raw.get())
                    .map_err(|e| Error::Structured(format!("`data`: {e}")))?;
                event.set_data(s, false);
            } else {
                event.set_data(Bytes::copy_from_slice(raw.get().as_bytes()), false);
            }
        }
        (None, Some(raw)) if raw.get() != "null" => {
            let s: Cow<str> = serde_json::from_str(raw.get())
                .map_err(|_| Error::Structured("`data_base64` must be a string".into()))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| {
                    Error::Structured(format!("`data_base64` is not valid base64: {e}"))
                })?;
            event.set_data(bytes, true);
        }
        _ => {}
    }
    event.validate()?;
    Ok(event)
}

/// Decodes a batch: a JSON array of structured events. One bad event rejects the whole batch.
pub fn decode_batch(body: &[u8]) -> Result<Vec<Event>, Error> {
    let items: Vec<&RawValue> = serde_json::from_slice(body)
        .map_err(|e| Error::Batch(format!("the body is not a JSON array of events: {e}")))?;
    items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let members: Members =
                serde_json::from_str(raw.get()).map_err(|e| Error::BatchItem {
                    index,
                    source: Box::new(Error::Structured(format!("not a JSON object: {e}"))),
                })?;
            event_from_members(members).map_err(|e| Error::BatchItem {
                index,
                source: Box::new(e),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn mode_from_content_type() {
        assert_eq!(content_mode(None), Mode::Binary);
        assert_eq!(content_mode(Some(b"application/json")), Mode::Binary);
        assert_eq!(
            content_mode(Some(b"Application/CloudEvents+JSON; charset=utf-8")),
            Mode::Structured
        );
        assert_eq!(
            content_mode(Some(b"application/cloudevents-batch+json")),
            Mode::Batch
        );
    }

    #[test]
    fn percent_decoding_rules() {
        assert_eq!(percent_decode(b"a%20b").unwrap(), "a b");
        assert_eq!(percent_decode(b"%e2%82%ac").unwrap(), "€");
        assert_eq!(percent_decode(b"%E2%82%AC").unwrap(), "€");
        // A `%` not followed by two hex digits is kept (Go senders do not encode it).
        assert_eq!(percent_decode(b"100%").unwrap(), "100%");
        assert_eq!(percent_decode(b"100%zz").unwrap(), "100%zz");
        assert_eq!(percent_decode(b"%4").unwrap(), "%4");
        // Decoded once only.
        assert_eq!(percent_decode(b"%2541").unwrap(), "%41");
        // Invalid UTF-8 after decoding is rejected.
        assert!(percent_decode(b"%ff%fe").is_none());
    }

    #[test]
    fn percent_encoding_rules() {
        assert_eq!(percent_encode("plain-ascii_~"), "plain-ascii_~");
        assert_eq!(percent_encode("a b\"c%"), "a%20b%22c%25");
        assert_eq!(percent_encode("€"), "%E2%82%AC");
        assert_eq!(percent_encode("tab\there"), "tab%09here");
        for s in ["hello world", "€uro \"q\" 100%", "ünïcödé ✓", "%41", "a%zz"] {
            assert_eq!(percent_decode(percent_encode(s).as_bytes()).unwrap(), s);
        }
    }

    /// Issue 9 item 1: `application/json; charset=utf-8` arrived as
    /// `application/json;%20charset=utf-8`, which Go's mime.ParseMediaType refuses.
    #[test]
    fn content_type_passes_through_verbatim_both_ways() {
        for ct in [
            "application/json; charset=utf-8",
            "multipart/form-data; boundary=\"a b\"",
            "text/plain; x=100%25",
        ] {
            let h = hm(&[
                ("ce-specversion", b"1.0"),
                ("ce-id", b"1"),
                ("ce-source", b"s"),
                ("ce-type", b"t"),
                ("content-type", ct.as_bytes()),
            ]);
            let e = decode_binary(&h, Bytes::from_static(b"{}")).unwrap();
            assert_eq!(e.datacontenttype(), Some(ct));
            let mut out = HeaderMap::new();
            encode_binary(&e, &mut out);
            assert_eq!(out["content-type"], ct);
        }
        // From a structured event, where the value came as JSON text.
        let e = decode_structured(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"application/json; charset=utf-8","data":{}}"#,
        )
        .unwrap();
        let mut out = HeaderMap::new();
        encode_binary(&e, &mut out);
        assert_eq!(out["content-type"], "application/json; charset=utf-8");
    }

    #[test]
    fn encoding_can_leave_out_one_attribute() {
        let mut e = Event::new(SpecVersion::V10, "1", "s", "t");
        e.set("knativebrokerttl", "254");
        let mut out = HeaderMap::new();
        encode_binary_without(&e, &mut out, Some("knativebrokerttl"));
        assert!(out.get("ce-knativebrokerttl").is_none());
        assert_eq!(out["ce-id"], "1");
        let json = encode_structured_without(&e, Some("knativebrokerttl"));
        assert!(!String::from_utf8(json)
            .unwrap()
            .contains("knativebrokerttl"));
    }

    #[test]
    fn binary_round_trip_keeps_attributes_verbatim() {
        let h = hm(&[
            ("ce-specversion", b"1.0"),
            ("ce-id", b"1"),
            ("ce-source", b"/my source%20x"),
            ("ce-type", b"t"),
            ("ce-time", b"2024-01-02T03:04:05.123+05:30"),
            ("ce-myext", b"caf%C3%A9"),
            ("content-type", b"text/plain"),
        ]);
        let e = decode_binary(&h, Bytes::from_static(b"hi")).unwrap();
        assert_eq!(e.source(), "/my source x");
        assert_eq!(e.get_str("time"), Some("2024-01-02T03:04:05.123+05:30"));
        assert_eq!(e.get_str("myext"), Some("café"));
        assert_eq!(e.datacontenttype(), Some("text/plain"));
        let mut out = HeaderMap::new();
        let body = encode_binary(&e, &mut out);
        assert_eq!(body, "hi");
        assert_eq!(out["ce-source"], "/my%20source%20x");
        assert_eq!(out["ce-myext"], "caf%C3%A9");
        assert_eq!(out["content-type"], "text/plain");
        let again = decode_binary(&out, body).unwrap();
        assert_eq!(again, e);
    }

    #[test]
    fn spec_03_is_not_upgraded() {
        let h = hm(&[
            ("ce-specversion", b"0.3"),
            ("ce-id", b"1"),
            ("ce-source", b"s"),
            ("ce-type", b"t"),
            ("ce-schemaurl", b"http://x"),
        ]);
        let e = decode_binary(&h, Bytes::new()).unwrap();
        assert_eq!(e.spec_version(), SpecVersion::V03);
        let s = String::from_utf8(encode_structured(&e)).unwrap();
        assert!(s.starts_with(r#"{"specversion":"0.3""#), "{s}");
        assert!(s.contains(r#""schemaurl":"http://x""#));
    }

    #[test]
    fn binary_errors() {
        assert_eq!(
            decode_binary(&hm(&[]), Bytes::new()),
            Err(Error::NotACloudEvent)
        );
        assert_eq!(
            decode_binary(&hm(&[("ce-id", b"1")]), Bytes::new()),
            Err(Error::MissingSpecVersion)
        );
        assert_eq!(
            decode_binary(
                &hm(&[("ce-specversion", b"2.0"), ("ce-id", b"1")]),
                Bytes::new()
            ),
            Err(Error::BadSpecVersion("2.0".into()))
        );
        assert_eq!(
            decode_binary(
                &hm(&[
                    ("ce-specversion", b"1.0"),
                    ("ce-id", b"1"),
                    ("ce-type", b"t")
                ]),
                Bytes::new()
            ),
            Err(Error::MissingAttribute("source"))
        );
        assert!(matches!(
            decode_binary(
                &hm(&[
                    ("ce-specversion", b"1.0"),
                    ("ce-id", b"1"),
                    ("ce-source", b"s"),
                    ("ce-type", b"%ff")
                ]),
                Bytes::new()
            ),
            Err(Error::InvalidHeaderEncoding { .. })
        ));
        assert!(matches!(
            decode_binary(
                &hm(&[
                    ("ce-specversion", b"1.0"),
                    ("ce-id", b"1"),
                    ("ce-source", b"s"),
                    ("ce-type", b"t"),
                    ("ce-bad-name", b"x")
                ]),
                Bytes::new()
            ),
            Err(Error::InvalidAttributeName(_))
        ));
    }

    #[test]
    fn structured_json_data_is_kept_as_written() {
        let body = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2020-01-01T00:00:00-07:00","count":3,"flag":true,"datacontenttype":"application/json","data":{"b": 1, "a":[1,2]}}"#;
        let e = decode_structured(body).unwrap();
        assert_eq!(
            e.data().unwrap(),
            &Bytes::from_static(br#"{"b": 1, "a":[1,2]}"#)
        );
        assert_eq!(e.get("count"), Some(&AttrValue::Integer(3)));
        assert_eq!(e.get("flag"), Some(&AttrValue::Boolean(true)));
        assert_eq!(e.get_str("time"), Some("2020-01-01T00:00:00-07:00"));
        let again = decode_structured(&encode_structured(&e)).unwrap();
        assert_eq!(again, e);
        // To binary: the JSON text is the body, typed extensions become strings.
        let mut h = HeaderMap::new();
        let b = encode_binary(&e, &mut h);
        assert_eq!(b, Bytes::from_static(br#"{"b": 1, "a":[1,2]}"#));
        assert_eq!(h["ce-count"], "3");
        assert_eq!(h["content-type"], "application/json");
    }

    #[test]
    fn structured_text_and_base64_data() {
        let e = decode_structured(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/plain","data":"hello \"x\""}"#,
        )
        .unwrap();
        assert_eq!(e.data().unwrap(), "hello \"x\"");
        assert_eq!(decode_structured(&encode_structured(&e)).unwrap(), e);

        let e = decode_structured(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AAEC/w=="}"#,
        )
        .unwrap();
        assert_eq!(e.data().unwrap().as_ref(), &[0u8, 1, 2, 255]);
        assert!(e.data_is_binary());
        let s = String::from_utf8(encode_structured(&e)).unwrap();
        assert!(s.contains(r#""data_base64":"AAEC/w==""#), "{s}");

        // Binary body that is not UTF-8 goes out as data_base64.
        let h = hm(&[
            ("ce-specversion", b"1.0"),
            ("ce-id", b"1"),
            ("ce-source", b"s"),
            ("ce-type", b"t"),
            ("content-type", b"application/octet-stream"),
        ]);
        let e = decode_binary(&h, Bytes::from_static(&[0xff, 0x00])).unwrap();
        let back = decode_structured(&encode_structured(&e)).unwrap();
        assert_eq!(back.data(), e.data());
    }

    /// Found by the `http_decode` fuzz target: a `ce-data` header made an attribute `data`,
    /// which the structured encoding wrote beside (and then instead of) the event's data.
    #[test]
    fn an_attribute_named_data_is_refused() {
        let h = hm(&[
            ("ce-specversion", b"1.0"),
            ("ce-id", b"1"),
            ("ce-source", b"s"),
            ("ce-type", b"t"),
            ("ce-data", b"x"),
        ]);
        let err = decode_binary(&h, Bytes::from_static(b"body")).unwrap_err();
        assert!(
            matches!(&err, Error::ReservedAttributeName(n) if n == "data"),
            "{err}"
        );
        assert!(err.to_string().contains("ce-data"), "{err}");
        // Structured mode never makes one: `data` there is the data.
        let e = decode_structured(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":"x"}"#,
        )
        .unwrap();
        assert!(e.get("data").is_none());
    }

    /// Found by fuzzing: a `datacontenttype` with control characters could be accepted (from a
    /// percent-encoded `ce-datacontenttype` header or a structured event) but not sent in
    /// binary mode, where `Content-Type` carries it; it was dropped silently.
    #[test]
    fn datacontenttype_with_control_characters_is_refused() {
        let h = hm(&[
            ("ce-specversion", b"1.0"),
            ("ce-id", b"1"),
            ("ce-source", b"s"),
            ("ce-type", b"t"),
            ("ce-datacontenttype", b"text/plain%0A"),
        ]);
        let err = decode_binary(&h, Bytes::new()).unwrap_err();
        assert!(matches!(err, Error::InvalidDataContentType(_)), "{err}");
        let err = decode_structured(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"ab"}"#,
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidDataContentType(_)), "{err}");
        // A tab and non-ASCII text are fine (obs-text in the header).
        let e = decode_structured(
            "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"datacontenttype\":\"text/plain;\\tname=caf\u{e9}\"}".as_bytes(),
        )
        .unwrap();
        let mut out = HeaderMap::new();
        encode_binary(&e, &mut out);
        let back = decode_binary(&out, Bytes::new()).unwrap();
        assert_eq!(back.datacontenttype(), e.datacontenttype());
    }

    /// Found by the `http_decode` fuzz target: a JSON body with invalid UTF-8 inside a string
    /// passed serde_json's validation and was copied verbatim into `data`, so the structured
    /// event a broker delivered was not JSON at all. Such a body now goes out as base64.
    #[test]
    fn json_body_that_is_not_utf8_goes_out_as_base64() {
        for ct in [None, Some(&b"application/json"[..])] {
            let mut pairs: Vec<(&str, &[u8])> = vec![
                ("ce-specversion", b"1.0"),
                ("ce-id", b"1"),
                ("ce-source", b"s"),
                ("ce-type", b"t"),
            ];
            if let Some(ct) = ct {
                pairs.push(("content-type", ct));
            }
            let body = Bytes::from_static(b"{\"to\xff\xfetal\": 1}");
            let e = decode_binary(&hm(&pairs), body.clone()).unwrap();
            let json = encode_structured(&e);
            assert!(std::str::from_utf8(&json).is_ok(), "{json:?}");
            let back = decode_structured(&json).unwrap();
            assert_eq!(back.data(), Some(&body));
            assert!(back.data_is_binary());
            let batch = decode_batch(&encode_batch(std::slice::from_ref(&e))).unwrap();
            assert_eq!(batch[0].data(), Some(&body));
        }
    }

    #[test]
    fn structured_errors() {
        assert!(matches!(
            decode_structured(b"nope"),
            Err(Error::Structured(_))
        ));
        assert_eq!(
            decode_structured(br#"{"id":"1"}"#),
            Err(Error::MissingSpecVersion)
        );
        assert!(matches!(
            decode_structured(
                br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}"#
            ),
            Err(Error::Structured(_))
        ));
        assert!(matches!(
            decode_structured(br#"{"specversion":"1.0","id":"1","source":"s","type":"t","x":{}}"#),
            Err(Error::Structured(_))
        ));
        assert_eq!(
            decode_structured(br#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#),
            Err(Error::EmptyAttribute("id"))
        );
    }

    #[test]
    fn batch_decodes_each_or_rejects_all() {
        let ok = br#"[{"specversion":"1.0","id":"1","source":"s","type":"t"},{"specversion":"0.3","id":"2","source":"s","type":"t"}]"#;
        let events = decode_batch(ok).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].spec_version(), SpecVersion::V03);
        assert_eq!(decode_batch(&encode_batch(&events)).unwrap(), events);
        let bad = br#"[{"specversion":"1.0","id":"1","source":"s","type":"t"},{"specversion":"1.0","id":"2"}]"#;
        match decode_batch(bad) {
            Err(Error::BatchItem { index: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode_batch(b"{}"), Err(Error::Batch(_))));
    }
}
