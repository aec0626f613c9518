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
