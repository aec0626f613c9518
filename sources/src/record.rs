//! A Kafka record → a CloudEvent: the pure mapping of a KafkaSource (SEMANTICS.md §6).
//!
//! Records that already are CloudEvents pass through as they are:
//!
//! - **binary** (CloudEvents Kafka binding): a `ce_specversion` header; every `ce_<name>`
//!   header is an attribute (value verbatim, UTF-8), `content-type` is `datacontenttype`, the
//!   value is the data;
//! - **structured**: a `content-type` starting `application/cloudevents` (not `-batch`); the
//!   value is a JSON event.
//!
//! Every other record becomes a `dev.knative.kafka.event`:
//!
//! | attribute | value |
//! |---|---|
//! | `id` | `partition:<p>/offset:<o>` |
//! | `source` | `/apis/v1/namespaces/<ns>/kafkasources/<name>#<topic>` |
//! | `subject` | `partition:<p>#<o>` |
//! | `time` | the record timestamp, RFC 3339 (absent when the record has none) |
//! | `datacontenttype` | the `content-type` header |
//! | `key`, `partitionkey` | the record key as a string (invalid UTF-8 replaced by U+FFFD) |
//! | `kafkaheader<name>` | every other header; the name lower-cased, characters outside `[a-z0-9]` removed |
//! | data | the record value |
//!
//! A record that claims to be a CloudEvent but is not a valid one (a `ce_specversion` of
//! `2.0`, a missing `ce_id`, a structured body that is not JSON) is mapped like any other
//! record instead of being dropped: the stream keeps moving and nothing is lost.

use bytes::Bytes;
use sluice_core::event::is_valid_attribute_name;
use sluice_core::topology::Key;
use sluice_core::{http as codec, AttrValue, Event, SpecVersion};

/// The CloudEvents type of records that are not CloudEvents.
pub const KAFKA_EVENT_TYPE: &str = "dev.knative.kafka.event";

/// One record as read from a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch (create or log-append time), if the record has one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Bytes>,
    /// Headers in record order; a header without a value has an empty one.
    pub headers: Vec<(String, Bytes)>,
    pub value: Option<Bytes>,
}

/// How a record was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// A binary-mode CloudEvent (`ce_*` headers), passed through.
    Binary,
    /// A structured-mode CloudEvent (`application/cloudevents+json`), passed through.
    Structured,
    /// Any other record, mapped to `dev.knative.kafka.event`.
    Plain,
}

/// The `source` of a KafkaSource's plain events for `topic`.
pub fn event_source(source: &Key, topic: &str) -> String {
    format!(
        "/apis/v1/namespaces/{}/kafkasources/{}#{topic}",
        source.namespace, source.name
    )
}

/// `kafkaheader` + the header name lower-cased with everything outside `[a-z0-9]` removed.
pub fn header_extension_name(header: &str) -> String {
    let mut name = String::with_capacity(11 + header.len());
    name.push_str("kafkaheader");
    name.extend(
        header
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
    );
    name
}

fn header<'a>(record: &'a Record, name: &str) -> Option<&'a Bytes> {
    record
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Maps a record read by the KafkaSource `source` to the event it delivers.
pub fn record_to_event(source: &Key, record: &Record) -> (Event, Mapping) {
    let content_type = header(record, "content-type").and_then(|v| std::str::from_utf8(v).ok());
    if let Some(ct) = content_type {
        let lower = ct.trim_start().to_ascii_lowercase();
        if lower.starts_with("application/cloudevents")
            && !lower.starts_with("application/cloudevents-batch")
        {
            if let Some(event) = record
                .value
                .as_deref()
                .and_then(|v| codec::decode_structured(v).ok())
            {
                return (event, Mapping::Structured);
            }
        }
    }
    if header(record, "ce_specversion").is_some() {
        if let Some(event) = binary_event(record) {
            return (event, Mapping::Binary);
        }
    }
    (plain_event(source, record), Mapping::Plain)
}

/// The CloudEvents Kafka binding's binary mode, or `None` if the headers do not make a valid
/// event.
fn binary_event(record: &Record) -> Option<Event> {
    let mut spec = None;
    let mut attrs: Vec<(String, String)> = Vec::with_capacity(record.headers.len());
    for (name, value) in &record.headers {
        let value = std::str::from_utf8(value).ok()?;
        let lower = name.to_ascii_lowercase();
        if lower == "content-type" {
            push_first(&mut attrs, "datacontenttype", value);
            continue;
        }
        let Some(attr) = lower.strip_prefix("ce_") else {
            continue; // not an attribute: other headers are not part of the event
        };
        if attr == "specversion" {
            spec.get_or_insert(SpecVersion::parse(value)?);
        } else {
            push_first(&mut attrs, attr, value);
        }
    }
    let get = |n: &str| attrs.iter().find(|(a, _)| a == n).map(|(_, v)| v.clone());
    let mut event = Event::new(spec?, get("id")?, get("source")?, get("type")?);
    for (name, value) in attrs {
        if !matches!(name.as_str(), "id" | "source" | "type") {
            event.set(name, AttrValue::String(value));
        }
    }
    if let Some(v) = record.value.as_ref().filter(|v| !v.is_empty()) {
        event.set_data(v.clone(), false);
    }
    event.validate().ok()?;
    Some(event)
}

/// Repeated headers: the first one counts (as in HTTP binary mode).
fn push_first(attrs: &mut Vec<(String, String)>, name: &str, value: &str) {
    if !attrs.iter().any(|(n, _)| n == name) {
        attrs.push((name.to_string(), value.to_string()));
    }
}

fn plain_event(source: &Key, r: &Record) -> Event {
    let mut e = Event::new(
        SpecVersion::V10,
        format!("partition:{}/offset:{}", r.partition, r.offset),
        event_source(source, &r.topic),
        KAFKA_EVENT_TYPE,
    );
    e.set("subject", format!("partition:{}#{}", r.partition, r.offset));
    if let Some(time) = r
        .timestamp_ms
        .filter(|ms| *ms >= 0)
        .and_then(chrono::DateTime::from_timestamp_millis)
    {
        e.set(
            "time",
            time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        );
    }
    if let Some(ct) = header(r, "content-type") {
        e.set("datacontenttype", String::from_utf8_lossy(ct).into_owned());
    }
    if let Some(key) = &r.key {
        let key = String::from_utf8_lossy(key).into_owned();
        e.set("key", key.clone());
        e.set("partitionkey", key);
    }
    for (name, value) in &r.headers {
        if name.eq_ignore_ascii_case("content-type") {
            continue;
        }
        let ext = header_extension_name(name);
        debug_assert!(is_valid_attribute_name(&ext));
        e.set(ext, String::from_utf8_lossy(value).into_owned());
    }
    if let Some(v) = &r.value {
        e.set_data(v.clone(), false);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> Key {
        Key::new("shop", "orders")
    }

    fn rec(headers: &[(&str, &str)], key: Option<&str>, value: Option<&str>) -> Record {
        Record {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_709_287_200_123),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        }
    }

    fn attrs(e: &Event) -> Vec<(String, String)> {
        let mut v: Vec<_> = e
            .attributes()
            .map(|(n, v)| (n.to_string(), v.to_string_form().into_owned()))
            .collect();
        v.push(("specversion".into(), e.spec_version().to_string()));
        v.sort();
        v
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = p
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn mapping_table() {
        struct Case {
            name: &'static str,
            record: Record,
            mapping: Mapping,
            attrs: &'static [(&'static str, &'static str)],
            data: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "plain record: key, headers, content type, timestamp",
                record: rec(
                    &[
                        ("content-type", "application/json"),
                        ("X-Trace-Id", "abc"),
                        ("retry_count", "3"),
                    ],
                    Some("customer-7"),
                    Some("{\"total\":42}"),
                ),
                mapping: Mapping::Plain,
                attrs: &[
                    ("specversion", "1.0"),
                    ("id", "partition:2/offset:41"),
                    (
                        "source",
                        "/apis/v1/namespaces/shop/kafkasources/orders#orders",
                    ),
                    ("type", "dev.knative.kafka.event"),
                    ("subject", "partition:2#41"),
                    ("time", "2024-03-01T10:00:00.123Z"),
                    ("datacontenttype", "application/json"),
                    ("key", "customer-7"),
                    ("partitionkey", "customer-7"),
                    ("kafkaheaderxtraceid", "abc"),
                    ("kafkaheaderretrycount", "3"),
                ],
                data: Some("{\"total\":42}"),
            },
            Case {
                name: "plain record without key, headers, value or timestamp",
                record: Record {
                    timestamp_ms: None,
                    ..rec(&[], None, None)
                },
                mapping: Mapping::Plain,
                attrs: &[
                    ("specversion", "1.0"),
                    ("id", "partition:2/offset:41"),
                    (
                        "source",
                        "/apis/v1/namespaces/shop/kafkasources/orders#orders",
                    ),
                    ("type", "dev.knative.kafka.event"),
                    ("subject", "partition:2#41"),
                ],
                data: None,
            },
            Case {
                name: "binary CloudEvent passes through, other headers are not attributes",
                record: rec(
                    &[
                        ("ce_specversion", "1.0"),
                        ("ce_id", "order-1"),
                        ("ce_source", "/shop"),
                        ("ce_type", "com.example.order"),
                        ("ce_time", "2024-01-01T00:00:00+05:30"),
                        ("ce_myext", "v a%20l"),
                        ("content-type", "application/json"),
                        ("traceparent", "00-1-2-01"),
                    ],
                    Some("k"),
                    Some("{\"a\":1}"),
                ),
                mapping: Mapping::Binary,
                attrs: &[
                    ("specversion", "1.0"),
                    ("id", "order-1"),
                    ("source", "/shop"),
                    ("type", "com.example.order"),
                    ("time", "2024-01-01T00:00:00+05:30"),
                    ("myext", "v a%20l"),
                    ("datacontenttype", "application/json"),
                ],
                data: Some("{\"a\":1}"),
            },
            Case {
                name: "binary CloudEvent 0.3 is not upgraded",
                record: rec(
                    &[
                        ("ce_specversion", "0.3"),
                        ("ce_id", "x"),
                        ("ce_source", "/s"),
                        ("ce_type", "t"),
                    ],
                    None,
                    Some(""),
                ),
                mapping: Mapping::Binary,
                attrs: &[
                    ("specversion", "0.3"),
                    ("id", "x"),
                    ("source", "/s"),
                    ("type", "t"),
                ],
                data: None,
            },
            Case {
                name: "structured CloudEvent passes through",
                record: rec(
                    &[(
                        "content-type",
                        "application/cloudevents+json; charset=utf-8",
                    )],
                    Some("k"),
                    Some(
                        r#"{"specversion":"1.0","id":"s-1","source":"/s","type":"com.example.s","datacontenttype":"application/json","count":7,"data":{"x":1}}"#,
                    ),
                ),
                mapping: Mapping::Structured,
                attrs: &[
                    ("specversion", "1.0"),
                    ("id", "s-1"),
                    ("source", "/s"),
                    ("type", "com.example.s"),
                    ("datacontenttype", "application/json"),
                    ("count", "7"),
                ],
                data: Some("{\"x\":1}"),
            },
            Case {
                name: "a bad specversion makes a plain record, its headers extensions",
                record: rec(
                    &[("ce_specversion", "2.0"), ("ce_id", "x")],
                    None,
                    Some("v"),
                ),
                mapping: Mapping::Plain,
                attrs: &[
                    ("specversion", "1.0"),
                    ("id", "partition:2/offset:41"),
                    (
                        "source",
                        "/apis/v1/namespaces/shop/kafkasources/orders#orders",
                    ),
                    ("type", "dev.knative.kafka.event"),
                    ("subject", "partition:2#41"),
                    ("time", "2024-03-01T10:00:00.123Z"),
                    ("kafkaheadercespecversion", "2.0"),
                    ("kafkaheaderceid", "x"),
                ],
                data: Some("v"),
            },
            Case {
                name: "a binary event without ce_type is a plain record",
                record: rec(
                    &[
                        ("ce_specversion", "1.0"),
                        ("ce_id", "x"),
                        ("ce_source", "/s"),
                    ],
                    None,
                    None,
                ),
                mapping: Mapping::Plain,
                attrs: &[
                    ("specversion", "1.0"),
                    ("id", "partition:2/offset:41"),
                    (
                        "source",
                        "/apis/v1/namespaces/shop/kafkasources/orders#orders",
                    ),
                    ("type", "dev.knative.kafka.event"),
                    ("subject", "partition:2#41"),
                    ("time", "2024-03-01T10:00:00.123Z"),
                    ("kafkaheadercespecversion", "1.0"),
                    ("kafkaheaderceid", "x"),
                    ("kafkaheadercesource", "/s"),
                ],
                data: None,
            },
            Case {
                name:
                    "a structured content type with a body that is not an event is a plain record",
                record: rec(
                    &[("content-type", "application/cloudevents+json")],
                    None,
                    Some("not json"),
                ),
                mapping: Mapping::Plain,
                attrs: &[
                    ("specversion", "1.0"),
                    ("id", "partition:2/offset:41"),
                    (
                        "source",
                        "/apis/v1/namespaces/shop/kafkasources/orders#orders",
                    ),
                    ("type", "dev.knative.kafka.event"),
                    ("subject", "partition:2#41"),
                    ("time", "2024-03-01T10:00:00.123Z"),
                    ("datacontenttype", "application/cloudevents+json"),
                ],
                data: Some("not json"),
            },
        ];
        for c in cases {
            let (event, mapping) = record_to_event(&src(), &c.record);
            assert_eq!(mapping, c.mapping, "{}", c.name);
            assert_eq!(attrs(&event), pairs(c.attrs), "{}", c.name);
            assert_eq!(
                event
                    .data()
                    .map(|d| String::from_utf8_lossy(d).into_owned()),
                c.data.map(str::to_string),
                "{}",
                c.name
            );
            event.validate().unwrap();
        }
    }

    #[test]
    fn header_names_become_extension_names() {
        for (header, want) in [
            ("X-Trace-Id", "kafkaheaderxtraceid"),
            ("retry_count", "kafkaheaderretrycount"),
            ("UPPER", "kafkaheaderupper"),
            ("a.b/c:d", "kafkaheaderabcd"),
            ("Ünïcode9", "kafkaheaderncode9"),
            ("---", "kafkaheader"),
        ] {
            assert_eq!(header_extension_name(header), want, "{header}");
        }
    }

    #[test]
    fn keys_that_are_not_utf8_are_kept_lossily() {
        let mut r = rec(&[], None, Some("v"));
        r.key = Some(Bytes::from_static(&[0x66, 0xff, 0x6f]));
        let (e, _) = record_to_event(&src(), &r);
        assert_eq!(e.get_str("key"), Some("f\u{fffd}o"));
    }
}
