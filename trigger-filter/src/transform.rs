//! JSONata transformations of whole events (EventTransform, SEMANTICS.md §12).
//!
//! ```text
//! Event ──structured JSON──▶ JSONata expression ──▶ JSON object ──decode──▶ Event
//! ```
//!
//! The expression sees the event as CloudEvents structured mode writes it (`specversion`,
//! `id`, `source`, `type`, extensions, and `data` as JSON — or `data_base64`) and must
//! produce a CloudEvent object: a result that is not one is an error, never a half-valid
//! event. [`check`] is what loading runs, so a syntax error refuses the resource with its
//! position; [`apply`] parses again per call (jsonata-rs ties a parsed expression to a
//! per-evaluation arena), bounded in depth and time so one expression cannot hold a worker.

use sluice_core::Event;

/// The deepest an evaluation may recurse.
const MAX_DEPTH: usize = 200;
/// The longest one evaluation may run, in milliseconds.
const TIME_LIMIT_MS: usize = 1_000;

/// Why a transformation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The expression does not parse: `S0xxx @ <position>: <what>`.
    #[error("invalid JSONata expression: {0}")]
    Syntax(String),
    /// Evaluating it failed (a type error, the time limit...).
    #[error("the JSONata expression failed on this event: {0}")]
    Evaluation(String),
    /// It produced something that is not a CloudEvent.
    #[error("the JSONata expression must produce a CloudEvent object (with specversion, id, source and type); it produced {0}")]
    NotAnEvent(String),
}

/// Checks that `expression` parses (at load time).
pub fn check(expression: &str) -> Result<(), TransformError> {
    let arena = bumpalo::Bump::new();
    jsonata_rs::JsonAta::new(expression, &arena)
        .map(|_| ())
        .map_err(|e| TransformError::Syntax(e.to_string()))
}

/// Applies `expression` to `event`; the result is the new event.
pub fn apply(expression: &str, event: &Event) -> Result<Event, TransformError> {
    let input = sluice_core::http::encode_structured(event);
    let input = String::from_utf8(input)
        .map_err(|e| TransformError::Evaluation(format!("the event is not UTF-8 JSON: {e}")))?;
    let output = {
        let arena = bumpalo::Bump::new();
        let jsonata = jsonata_rs::JsonAta::new(expression, &arena)
            .map_err(|e| TransformError::Syntax(e.to_string()))?;
        let value = jsonata
            .evaluate_timeboxed(Some(&input), Some(MAX_DEPTH), Some(TIME_LIMIT_MS))
            .map_err(|e| TransformError::Evaluation(e.to_string()))?;
        if !value.is_object() {
            let shown = if value.is_undefined() {
                "nothing".to_string()
            } else {
                value.serialize(false)
            };
            return Err(TransformError::NotAnEvent(shown));
        }
        value.serialize(false)
    };
    sluice_core::http::decode_structured(output.as_bytes())
        .map_err(|e| TransformError::NotAnEvent(format!("an object that is not one ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::SpecVersion;

    fn event() -> Event {
        let mut e = Event::new(SpecVersion::V10, "1", "/src", "com.example.order");
        e.set_data(r#"{"total": 42, "items": ["a", "b"]}"#, false);
        e.set("datacontenttype", "application/json");
        e
    }

    #[test]
    fn reshapes_attributes_and_data() {
        let out = apply(
            r#"{"specversion": "1.0", "id": id, "source": source, "type": type & ".priced",
                "datacontenttype": "application/json",
                "data": {"amount": data.total * 2, "count": $count(data.items)}}"#,
            &event(),
        )
        .unwrap();
        assert_eq!(
            out.get("type").unwrap().to_string_form(),
            "com.example.order.priced"
        );
        assert_eq!(out.id(), "1");
        let data: serde_json::Value = serde_json::from_slice(out.data().unwrap()).unwrap();
        assert_eq!(data, serde_json::json!({"amount": 84, "count": 2}));
    }

    #[test]
    fn the_identity_keeps_the_event() {
        let out = apply("$", &event()).unwrap();
        assert_eq!(
            out.get("type").unwrap().to_string_form(),
            "com.example.order"
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        match check(r#"{"a": 1"#) {
            Err(TransformError::Syntax(m)) => assert!(m.contains('@'), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(check("$uppercase(type)").is_ok());
        assert!(matches!(
            apply("data.total", &event()),
            Err(TransformError::NotAnEvent(m)) if m == "42"
        ));
        assert!(matches!(
            apply(r#"{"id": "x"}"#, &event()),
            Err(TransformError::NotAnEvent(_))
        ));
        assert!(matches!(
            apply("data.nothing", &event()),
            Err(TransformError::NotAnEvent(m)) if m == "nothing"
        ));
    }
}
