//! The `jsonpath` dialect (a Sluice extension): an RFC 9535 query over the event's data.
//!
//! The query is parsed once, when the trigger is loaded. Per event the data is parsed as JSON
//! (by the caller, once for all the JSONPath filters of a trigger) and the filter passes when the
//! query selects at least one node.

use crate::error::FilterError;
use jsonpath_rust::parser::errors::JsonPathError;
use jsonpath_rust::parser::model::JpQuery;
use pest::error::InputLocation;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Clone)]
pub(crate) struct JsonPathQuery {
    source: Box<str>,
    query: JpQuery,
}

impl fmt::Debug for JsonPathQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JsonPath").field(&self.source).finish()
    }
}

impl JsonPathQuery {
    /// `path` is where the query sits in the trigger, for the error.
    pub(crate) fn compile(source: &str, path: String) -> Result<Self, FilterError> {
        if let Some(offset) = too_deep(source) {
            let column = source[..floor_char(source, offset)].chars().count() + 1;
            return Err(FilterError::JsonPath {
                path,
                query: source.to_owned(),
                message: format!(
                    "brackets and parentheses nest more than {MAX_DEPTH} deep; split the condition into several filters"
                ),
                offset: Some(source[..floor_char(source, offset)].chars().count()),
                column: Some(column),
                found: Some(source[floor_char(source, offset)..].chars().take(40).collect()),
            });
        }
        // The parser is a third-party crate fed with user input; a panic in it must become a
        // rejected trigger, not a crashed control loop.
        let parsed = catch_unwind(|| jsonpath_rust::parser::parse_json_path(source))
            .unwrap_or_else(|_| {
                Err(JsonPathError::InvalidJsonPath(
                    "the JSONPath parser failed on this query".into(),
                ))
            });
        match parsed {
            Ok(query) => Ok(JsonPathQuery {
                source: source.into(),
                query,
            }),
            Err(e) => Err(to_filter_error(source, path, e)),
        }
    }

    /// Whether the query selects at least one node of `data`.
    pub(crate) fn selects(&self, data: &serde_json::Value) -> bool {
        // As above: a panic inside the library on odd data fails this event's filter instead of
        // taking the dispatcher down.
        catch_unwind(AssertUnwindSafe(|| {
            jsonpath_rust::query::js_path_process(&self.query, data)
                .map(|nodes| !nodes.is_empty())
                .unwrap_or(false)
        }))
        .unwrap_or(false)
    }
}

/// How deep `(` and `[` may nest in a query. The parser (pest, a PEG) backtracks over nested
/// groups that do not close in time exponential in their depth: a query of a few hundred
/// bytes with ~20 unclosed `length(@[?` kept the control loop busy for over 10 s (found by
/// the `jsonpath` fuzz target). Real queries nest a handful of levels.
const MAX_DEPTH: usize = 12;

/// The byte offset of the first bracket past [`MAX_DEPTH`], ignoring quoted strings.
fn too_deep(source: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for (i, b) in source.bytes().enumerate() {
        if let Some(q) = quote {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                _ if b == q => quote = None,
                _ => {}
            }
            continue;
        }
        match b {
            b'\'' | b'"' => quote = Some(b),
            b'(' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
            }
            b')' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

fn to_filter_error(source: &str, path: String, e: JsonPathError) -> FilterError {
    let (message, span) = match &e {
        JsonPathError::PestError(pe) => {
            let span = match pe.location {
                InputLocation::Pos(p) => (p, p),
                InputLocation::Span((a, b)) => (a, b),
            };
            (pe.variant.message().into_owned(), Some(span))
        }
        other => (other.to_string(), None),
    };
    let message = if source.trim_start().starts_with('$') {
        message
    } else {
        "a query starts with `$`, the root of the data, e.g. `$.order.id`".to_owned()
    };
    let (offset, column, found) = match span {
        Some((start, end)) => {
            let start = floor_char(source, start);
            let end = floor_char(source, end.max(start));
            let before = &source[..start];
            let offset = before.chars().count();
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = source[line_start..start].chars().count() + 1;
            // A token-less position points at the rest of the input, which is what is offending.
            let text = if end > start {
                &source[start..end]
            } else {
                &source[start..]
            };
            let found: String = text.chars().take(40).collect();
            (Some(offset), Some(column), Some(found))
        }
        None => (None, None, None),
    };
    FilterError::JsonPath {
        path,
        query: source.to_owned(),
        message,
        offset,
        column,
        found,
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `jsonpath` fuzz target (minimized): unclosed nested groups made the
    /// parser backtrack for over 10 s. It is now refused before parsing.
    #[test]
    fn deeply_nested_queries_are_refused_before_parsing() {
        let query = format!("$[?{}@.a", "length(@[?".repeat(20));
        let err = JsonPathQuery::compile(&query, "filters[0].jsonpath".into()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("nest more than 12 deep"), "{text}");
        assert!(text.contains("filters[0].jsonpath"), "{text}");
    }

    #[test]
    fn depth_limit_table() {
        let cases: &[(&str, bool)] = &[
            ("$.order.items[?@.qty > 1]", true),
            ("$[?length(@.a[?@.b[?@.c[?@.d > 1]]]) > 0]", true),
            // Brackets inside string literals do not count.
            ("$[?@.a == '((((((((((((((((((((']", true),
            ("$[?@.a == \"[[[[[[[[[[[[[[[[[[[[\"]", true),
            (&format!("${}", "[0]".repeat(30)), true),
            (&format!("${}", "[?(".repeat(7)), false),
        ];
        for (query, ok) in cases {
            assert_eq!(too_deep(query).is_none(), *ok, "{query}");
        }
    }
}
