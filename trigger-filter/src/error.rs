//! The crate's one error type: why a trigger's filter was rejected, where, and how to fix it.

use crate::cesql::ParseError;
use std::fmt;

/// Where a dialect's map of attributes comes from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapDialect {
    Exact,
    Prefix,
    Suffix,
}

impl MapDialect {
    pub fn as_str(self) -> &'static str {
        match self {
            MapDialect::Exact => "exact",
            MapDialect::Prefix => "prefix",
            MapDialect::Suffix => "suffix",
        }
    }
}

impl fmt::Display for MapDialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A filter that cannot be compiled. Every variant carries `path`, the location of the problem
/// inside the trigger's spec (`filters[1].any[0].cesql`, `filter.attributes["Bad-Key"]`); the
/// caller prefixes the trigger's name. `Display` gives path, problem and fix in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    #[error("{path}: invalid attribute name {name:?}: CloudEvents attribute names are lower-case letters a-z and digits 0-9, starting with a letter (^[a-z][a-z0-9]*$){}", suggestion(name))]
    InvalidAttributeName { path: String, name: String },

    #[error("{path}: `{dialect}` is empty: give at least one attribute and its value, e.g. `{dialect}: {{type: com.example.created}}`, or remove it")]
    EmptyMap { path: String, dialect: MapDialect },

    #[error("{path}: empty value for attribute {name:?} in `{dialect}`: {}", empty_value_hint(*dialect, name))]
    EmptyValue {
        path: String,
        dialect: MapDialect,
        name: String,
    },

    #[error("{path}: no filter dialect set: give exactly one of exact, prefix, suffix, all, any, not, cesql (or sql), jsonpath")]
    NoDialect { path: String },

    #[error("{path}: {} dialects set ({}): each element of a filter list takes exactly one; to require all of them, make each its own element of the list (the elements are ANDed) or use `all: [...]`", found.len(), found.join(", "))]
    MultipleDialects {
        path: String,
        found: Vec<&'static str>,
    },

    #[error("{path}: empty {dialect} expression: write one, e.g. {example}, or remove the filter", example = empty_example(dialect))]
    EmptyExpression { path: String, dialect: &'static str },

    #[error("{path}: invalid CESQL expression: {error}; expression: {expression:?}")]
    Cesql {
        path: String,
        expression: String,
        #[source]
        error: ParseError,
    },

    #[error("{path}: invalid JSONPath query: {}{message}; query: {query:?} (RFC 9535 syntax, e.g. \"$.order[?@.total > 100]\")", jsonpath_position(*column, *offset, found.as_deref()))]
    JsonPath {
        path: String,
        query: String,
        message: String,
        /// 0-based character offset and 1-based column of the problem, when known.
        offset: Option<usize>,
        column: Option<usize>,
        found: Option<String>,
    },
}

impl FilterError {
    /// Where in the trigger's spec the problem is, e.g. `filters[1].any[0].cesql`.
    pub fn path(&self) -> &str {
        match self {
            FilterError::InvalidAttributeName { path, .. }
            | FilterError::EmptyMap { path, .. }
            | FilterError::EmptyValue { path, .. }
            | FilterError::NoDialect { path }
            | FilterError::MultipleDialects { path, .. }
            | FilterError::EmptyExpression { path, .. }
            | FilterError::Cesql { path, .. }
            | FilterError::JsonPath { path, .. } => path,
        }
    }
}

fn suggestion(name: &str) -> String {
    let fixed: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let ok = fixed.as_bytes().first().is_some_and(u8::is_ascii_lowercase);
    if ok && fixed != name {
        format!("; did you mean {fixed:?}?")
    } else if name.is_empty() {
        "; the name is empty".to_owned()
    } else {
        String::new()
    }
}

fn empty_value_hint(d: MapDialect, name: &str) -> String {
    let exists =
        format!("to require only that the attribute exists, use `cesql: \"EXISTS {name}\"`");
    match d {
        MapDialect::Exact => format!(
            "an exact match needs a value (Knative rejects an empty one too); {exists}, to match an empty value use `cesql: \"{name} = ''\"`"
        ),
        MapDialect::Prefix | MapDialect::Suffix => {
            let verb = if d == MapDialect::Prefix {
                "starts"
            } else {
                "ends"
            };
            format!("every value {verb} with \"\", so the filter would test nothing else; {exists}, otherwise give the {d}")
        }
    }
}

fn empty_example(dialect: &str) -> &'static str {
    if dialect == "jsonpath" {
        "\"$.order[?@.total > 100]\""
    } else {
        "\"type = 'com.example.created'\""
    }
}

fn jsonpath_position(column: Option<usize>, offset: Option<usize>, found: Option<&str>) -> String {
    let mut s = String::new();
    if let (Some(c), Some(o)) = (column, offset) {
        s.push_str(&format!("at column {c} (character offset {o}), "));
    }
    match found {
        Some("") => s.push_str("at end of input: "),
        Some(f) => s.push_str(&format!("at `{f}`: ")),
        None => {}
    }
    s
}
