//! The bodies of Sluice's fuzz targets: one function per target, taking the fuzzer's bytes.
//!
//! Why a library: the cargo-fuzz binaries in `fuzz/fuzz_targets/` (nightly, libFuzzer) and the
//! stable replay test in `tests/replay.rs` (part of `cargo test --workspace`) call the very same
//! functions, so every corpus entry — including each crash that was found and fixed — is
//! checked on every test run, with or without nightly.
//!
//! Each function must never panic and must finish quickly for any input; where it is cheap it
//! also asserts an invariant (a panic here is a finding):
//!
//! - [`http_decode`]: the CloudEvents HTTP decoder (binary, structured, batch) and the header
//!   percent-coding. Whatever decodes re-encodes in the same mode and decodes to the same
//!   event; a binary-mode event keeps its attributes through the structured encoding, a
//!   structured one its attributes (as strings) and data through the binary encoding;
//!   `percent_decode(percent_encode(s)) == s`.
//! - [`cesql`]: CESQL parse, then evaluate against fixed events; `matches` agrees with
//!   `evaluate`, and evaluation is deterministic.
//! - [`jsonpath`]: the `jsonpath` filter dialect: compile the query, match it against data.
//! - [`yaml_load`]: the YAML resource loader (multi-document) and the conversion to a
//!   topology; strict and lenient loading agree.
//!
//! Input layouts (so that corpus files stay readable and easy to write by hand) are described
//! on each function.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sluice_core::event::AttrValue;
use sluice_core::http as ce;
use sluice_core::{Event, SpecVersion};
use sluice_filter::cesql::{Expression, Value};
use sluice_filter::{compile, SubscriptionsApiFilter};

/// The largest input a target looks at. Bigger inputs only make each execution slower
/// without reaching new code (libFuzzer's default `-max_len` is 4096 anyway).
const MAX_INPUT: usize = 64 * 1024;

/// The CloudEvents HTTP decoder.
///
/// Layout: an HTTP header block, then a blank line, then the body, like a request without its
/// request line:
///
/// ```text
/// ce-specversion: 1.0
/// ce-id: 1
/// content-type: application/json
///
/// {"body": true}
/// ```
///
/// Lines that are not a valid `name: value` header are skipped; input without a blank line is
/// all headers and no body.
pub fn http_decode(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let (head, body) = match find(data, b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &data[data.len()..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii_start();
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        percent_coding(value.as_bytes());
        headers.append(name, value);
    }
    if let Ok(text) = std::str::from_utf8(body) {
        percent_round_trip(text);
    }

    let body = Bytes::copy_from_slice(body);
    let _ = ce::looks_like_event(&headers);
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes());
    let Ok(events) = ce::decode(&headers, body.clone()) else {
        return;
    };
    match ce::content_mode(ct) {
        ce::Mode::Binary => {
            assert_eq!(events.len(), 1);
            let event = &events[0];
            let mut out = HeaderMap::new();
            let out_body = ce::encode_binary(event, &mut out);
            let again = ce::decode_binary(&out, out_body).unwrap_or_else(|e| {
                panic!("a decoded binary event does not decode after encode_binary: {e}\n{event:?}\n{out:?}")
            });
            assert_same(event, &again, "binary -> encode_binary -> decode_binary");
            // Binary to structured (what a broker does for a structured subscriber): the
            // attributes survive as they are.
            let json = ce::encode_structured(event);
            let structured = ce::decode_structured(&json).unwrap_or_else(|e| {
                panic!(
                    "a binary event does not decode after encode_structured: {e}\n{event:?}\n{}",
                    String::from_utf8_lossy(&json)
                )
            });
            assert_eq!(
                sorted_attrs(event),
                sorted_attrs(&structured),
                "binary -> encode_structured -> decode_structured changed the attributes"
            );
        }
        ce::Mode::Structured => {
            assert_eq!(events.len(), 1);
            let event = &events[0];
            let json = ce::encode_structured(event);
            let again = ce::decode_structured(&json).unwrap_or_else(|e| {
                panic!(
                    "a structured event does not decode after encode_structured: {e}\n{event:?}\n{}",
                    String::from_utf8_lossy(&json)
                )
            });
            assert_same(event, &again, "structured -> encode -> decode");
            to_binary(event);
        }
        ce::Mode::Batch => {
            let json = ce::encode_batch(&events);
            let again = ce::decode_batch(&json).unwrap_or_else(|e| {
                panic!(
                    "a batch does not decode after encode_batch: {e}\n{}",
                    String::from_utf8_lossy(&json)
                )
            });
            assert_eq!(events.len(), again.len(), "batch length changed");
            for (a, b) in events.iter().zip(&again) {
                assert_same(a, b, "batch -> encode -> decode");
                to_binary(a);
            }
        }
    }
}

/// A structured event delivered in binary mode (what a broker does for most subscribers):
/// the attributes survive in their string form, the data byte for byte.
fn to_binary(event: &Event) {
    let mut headers = HeaderMap::new();
    let body = ce::encode_binary(event, &mut headers);
    let back = ce::decode_binary(&headers, body).unwrap_or_else(|e| {
        panic!(
            "a structured event does not decode after encode_binary: {e}\n{event:?}\n{headers:?}"
        )
    });
    let strings = |e: &Event| -> Vec<(String, String)> {
        sorted_attrs(e)
            .into_iter()
            .map(|(n, v)| (n, v.to_string_form().into_owned()))
            .collect()
    };
    assert_eq!(
        strings(event),
        strings(&back),
        "structured -> encode_binary -> decode_binary changed the attributes"
    );
    assert_eq!(
        event.data().filter(|d| !d.is_empty()),
        back.data(),
        "structured -> binary changed the data"
    );
}

/// Percent-decoding a header value, and the encode/decode round trip of what it decodes to.
fn percent_coding(raw: &[u8]) {
    let decoded = ce::percent_decode(raw);
    if !raw.contains(&b'%') {
        assert_eq!(
            decoded.as_deref().map(str::as_bytes),
            std::str::from_utf8(raw).ok().map(str::as_bytes),
            "a value without `%` must decode to itself"
        );
    }
    if let Some(text) = decoded {
        percent_round_trip(&text);
    }
}

fn percent_round_trip(text: &str) {
    let encoded = ce::percent_encode(text);
    assert!(
        encoded.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "percent_encode must produce visible ASCII only: {encoded:?}"
    );
    assert!(
        HeaderValue::from_str(&encoded).is_ok(),
        "an encoded value must be a valid header value: {encoded:?}"
    );
    assert_eq!(
        ce::percent_decode(encoded.as_bytes()).as_deref(),
        Some(text),
        "percent_decode(percent_encode(s)) != s"
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn sorted_attrs(e: &Event) -> Vec<(String, AttrValue)> {
    let mut v: Vec<_> = e
        .attributes()
        .map(|(n, v)| (n.to_owned(), v.clone()))
        .collect();
    v.push(("specversion".into(), e.spec_version().as_str().into()));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Same attributes (in any order: binary mode sets `datacontenttype` from `Content-Type` after
/// the `ce-` headers), same data, same binary flag.
fn assert_same(a: &Event, b: &Event, what: &str) {
    assert_eq!(
        sorted_attrs(a),
        sorted_attrs(b),
        "{what}: attributes differ\n{a:?}\n{b:?}"
    );
    assert_eq!(a.data(), b.data(), "{what}: data differs\n{a:?}\n{b:?}");
    assert_eq!(
        a.data_is_binary(),
        b.data_is_binary(),
        "{what}: the binary flag differs\n{a:?}\n{b:?}"
    );
}

/// Events a CESQL expression is evaluated against: one as a binary request makes it (string
/// attributes and extensions), one as structured JSON does (integer and boolean extensions).
fn cesql_events() -> &'static [Event] {
    static EVENTS: std::sync::OnceLock<Vec<Event>> = std::sync::OnceLock::new();
    EVENTS.get_or_init(|| {
        let mut binary = Event::new(SpecVersion::V10, "1", "/shop/eu", "com.example.order");
        binary.set("subject", "order-42");
        binary.set("time", "2024-02-29T12:00:00Z");
        binary.set("priority", "5");
        binary.set("region", "eu-west");
        binary.set("flag", "TRUE");
        binary.set("datacontenttype", "application/json");
        binary.set_data(&b"{\"total\": 9.5}"[..], false);
        let structured = ce::decode_structured(
            br#"{"specversion":"1.0","id":"2","source":"s","type":"t","count":-2147483648,
                 "big":2147483647,"ok":true,"no":false,"empty":"","data":null}"#,
        )
        .expect("the fixed structured event is valid");
        vec![binary, structured]
    })
}

/// CESQL: parse the whole input as an expression; evaluate what parses.
pub fn cesql(data: &[u8]) {
    if data.len() > 4096 {
        return;
    }
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = Expression::parse(source) else {
        return;
    };
    assert_eq!(expr.source(), source);
    for event in cesql_events() {
        let first = expr.evaluate(event);
        let again = expr.evaluate(event);
        assert_eq!(first, again, "evaluation is not deterministic: {source:?}");
        let passes = matches!(first.value, Value::Boolean(true)) && first.error.is_none();
        assert_eq!(
            expr.matches(event),
            passes,
            "matches() disagrees with evaluate() for {source:?}: {first:?}"
        );
    }
}

/// The `jsonpath` filter: the first line is the query, the rest the event's data (matched as
/// JSON, whatever it is).
pub fn jsonpath(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let filters = [SubscriptionsApiFilter {
        jsonpath: Some(query.to_owned()),
        ..Default::default()
    }];
    let filter = match compile(None, &filters) {
        Ok(f) => f,
        Err(e) => {
            // The error must render (it points into the query by character offset).
            let _ = e.to_string();
            return;
        }
    };
    let mut event = Event::new(SpecVersion::V10, "1", "/fuzz", "fuzz");
    event.set("datacontenttype", "application/json");
    event.set_data(Bytes::copy_from_slice(body), false);
    let first = filter.matches(&event);
    assert_eq!(
        filter.matches(&event),
        first,
        "matching is not deterministic"
    );
    if serde_json::from_slice::<serde_json::Value>(body).is_err() {
        assert!(!first, "data that is not JSON must fail a jsonpath filter");
    }
}

/// The YAML resource loader: the input is one YAML file (any number of documents), loaded
/// strictly and leniently, then converted into a topology.
pub fn yaml_load(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let strict = sluice_crds::parse_yaml(text, "fuzz.yaml");
    let (loaded, errors) = sluice_crds::parse_yaml_lenient(text, "fuzz.yaml");
    for e in &errors {
        let _ = e.to_string();
    }
    match &strict {
        Ok(resources) => {
            assert!(errors.is_empty(), "strict loading passed, lenient did not");
            assert_eq!(resources.len(), loaded.len());
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(!errors.is_empty(), "strict loading failed, lenient did not");
        }
    }
    for l in &loaded {
        let _ = l.describe();
    }
    let defaults = sluice_crds::Defaults::new(
        url::Url::parse("http://127.0.0.1:8080").expect("a valid fixed URL"),
    );
    let (_topology, build_errors) = sluice_crds::build_lenient(&loaded, &defaults);
    for e in &build_errors {
        let _ = e.to_string();
    }
    let _ = sluice_crds::external_refs(&loaded);
}
