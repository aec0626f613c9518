//! Validation and compilation of a trigger's filters into a tree that is evaluated per event.

use crate::cesql::Expression;
use crate::error::{FilterError, MapDialect};
use crate::jsonpath::JsonPathQuery;
use crate::spec::SubscriptionsApiFilter;
use sluice_core::topology::EventFilter;
use sluice_core::{AttrValue, Event};
use std::cell::OnceCell;
use std::collections::BTreeMap;

/// A trigger's filter, validated and compiled once; what the topology stores as
/// `Arc<dyn EventFilter>`. Evaluation is pure and allocation-free except where a JSONPath filter
/// has to parse the event's data (once per event, however many JSONPath filters there are).
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    /// `None` passes every event.
    root: Option<Node>,
}

/// Attribute name and expected value; `None` (Knative's `""`) only asks for presence.
type AttrPairs = Box<[(Box<str>, Option<Box<str>>)]>;
/// Attribute name and the value to compare with.
type Pairs = Box<[(Box<str>, Box<str>)]>;

#[derive(Debug, Clone)]
enum Node {
    /// Knative `filter.attributes`: every attribute must exist and equal the value; `None` (the
    /// value `""`) only asks for presence.
    Attributes(AttrPairs),
    Exact(Pairs),
    Prefix(Pairs),
    Suffix(Pairs),
    All(Box<[Node]>),
    Any(Box<[Node]>),
    Not(Box<Node>),
    Cesql(Expression),
    JsonPath(JsonPathQuery),
}

/// Per-event state shared by the nodes of one evaluation.
struct Ctx<'e> {
    event: &'e Event,
    /// The event's data parsed as JSON, parsed on first use.
    json: OnceCell<Option<serde_json::Value>>,
}

impl Ctx<'_> {
    fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| {
                let data = self.event.data()?;
                serde_json::from_slice(data).ok()
            })
            .as_ref()
    }
}

/// Calls `f` with the string form of an attribute (`specversion` included), or returns `None`
/// when the event does not have it. Integers are formatted on the stack.
#[inline]
fn with_attr<R>(event: &Event, name: &str, f: impl FnOnce(&str) -> R) -> Option<R> {
    if name == "specversion" {
        return Some(f(event.spec_version().as_str()));
    }
    Some(match event.get(name)? {
        AttrValue::String(s) => f(s),
        AttrValue::Boolean(b) => f(if *b { "true" } else { "false" }),
        AttrValue::Integer(i) => crate::cesql::with_int_str(*i, f),
    })
}

impl Node {
    fn eval(&self, cx: &Ctx<'_>) -> bool {
        let ev = cx.event;
        match self {
            Node::Attributes(pairs) => pairs.iter().all(|(k, v)| match v {
                None => ev.has(k),
                Some(v) => with_attr(ev, k, |a| a == &**v).unwrap_or(false),
            }),
            Node::Exact(pairs) => pairs
                .iter()
                .all(|(k, v)| with_attr(ev, k, |a| a == &**v).unwrap_or(false)),
            Node::Prefix(pairs) => pairs
                .iter()
                .all(|(k, v)| with_attr(ev, k, |a| a.starts_with(&**v)).unwrap_or(false)),
            Node::Suffix(pairs) => pairs
                .iter()
                .all(|(k, v)| with_attr(ev, k, |a| a.ends_with(&**v)).unwrap_or(false)),
            Node::All(nodes) => nodes.iter().all(|n| n.eval(cx)),
            Node::Any(nodes) => nodes.iter().any(|n| n.eval(cx)),
            Node::Not(n) => !n.eval(cx),
            Node::Cesql(e) => e.matches(ev),
            Node::JsonPath(q) => cx.json().is_some_and(|data| q.selects(data)),
        }
    }
}

impl CompiledFilter {
    /// The filter that passes every event.
    pub fn match_all() -> Self {
        CompiledFilter { root: None }
    }

    /// Whether this filter passes every event without looking at it.
    pub fn is_match_all(&self) -> bool {
        self.root.is_none()
    }

    /// Whether the event passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        match &self.root {
            None => true,
            Some(node) => node.eval(&Ctx {
                event,
                json: OnceCell::new(),
            }),
        }
    }
}

impl Default for CompiledFilter {
    fn default() -> Self {
        Self::match_all()
    }
}

impl EventFilter for CompiledFilter {
    fn matches(&self, event: &Event) -> bool {
        CompiledFilter::matches(self, event)
    }
}

/// Validates and compiles a trigger's filters.
///
/// `attributes` is Knative's `spec.filter.attributes`, `filters` its `spec.filters`. A
/// non-empty `filters` wins and `attributes` is then ignored (but still validated, as Knative
/// does); `filters: []` falls back to `attributes`; neither filters anything. Errors name the
/// offending place, e.g. `filters[1].any[0].cesql`.
pub fn compile(
    attributes: Option<&BTreeMap<String, String>>,
    filters: &[SubscriptionsApiFilter],
) -> Result<CompiledFilter, FilterError> {
    let attrs = match attributes {
        Some(map) => compile_attributes(map)?,
        None => None,
    };
    if filters.is_empty() {
        return Ok(CompiledFilter { root: attrs });
    }
    let root = compile_list(filters, "filters", Node::All)?;
    Ok(CompiledFilter { root })
}

fn check_name(path: impl FnOnce() -> String, name: &str) -> Result<(), FilterError> {
    let b = name.as_bytes();
    let ok = b.first().is_some_and(u8::is_ascii_lowercase)
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(FilterError::InvalidAttributeName {
            path: path(),
            name: name.to_owned(),
        })
    }
}

fn compile_attributes(map: &BTreeMap<String, String>) -> Result<Option<Node>, FilterError> {
    let mut pairs = Vec::with_capacity(map.len());
    for (k, v) in map {
        check_name(|| format!("filter.attributes[{k:?}]"), k)?;
        let v = (!v.is_empty()).then(|| v.as_str().into());
        pairs.push((k.as_str().into(), v));
    }
    Ok((!pairs.is_empty()).then(|| Node::Attributes(pairs.into_boxed_slice())))
}

/// Compiles a list of filters combined by `combine` (AND for `filters` and `all`, OR for `any`).
///
/// Knative treats a filter that filters nothing (an empty `all` or `any`, or `not` around one)
/// as absent: it neither passes nor fails the list it is in, and a list of only such filters
/// filters nothing. `None` stands for that here, so `any: []` lets every event through, as it
/// does in Knative.
fn compile_list(
    list: &[SubscriptionsApiFilter],
    path: &str,
    combine: fn(Box<[Node]>) -> Node,
) -> Result<Option<Node>, FilterError> {
    let mut nodes = Vec::with_capacity(list.len());
    for (i, f) in list.iter().enumerate() {
        if let Some(n) = compile_one(f, &format!("{path}[{i}]"))? {
            nodes.push(n);
        }
    }
    Ok(match nodes.len() {
        0 => None,
        1 => nodes.pop(),
        _ => Some(combine(nodes.into_boxed_slice())),
    })
}

fn compile_one(f: &SubscriptionsApiFilter, path: &str) -> Result<Option<Node>, FilterError> {
    let mut found = Vec::new();
    let dialects: [(&'static str, bool); 8] = [
        ("exact", f.exact.is_some()),
        ("prefix", f.prefix.is_some()),
        ("suffix", f.suffix.is_some()),
        ("all", f.all.is_some()),
        ("any", f.any.is_some()),
        ("not", f.not.is_some()),
        ("cesql", f.cesql.is_some()),
        ("jsonpath", f.jsonpath.is_some()),
    ];
    for (name, set) in dialects {
        if set {
            found.push(name);
        }
    }
    match found.len() {
        0 => {
            return Err(FilterError::NoDialect {
                path: path.to_owned(),
            })
        }
        1 => {}
        _ => {
            return Err(FilterError::MultipleDialects {
                path: path.to_owned(),
                found,
            })
        }
    }

    if let Some(m) = &f.exact {
        return compile_map(m, MapDialect::Exact, path).map(|p| Some(Node::Exact(p)));
    }
    if let Some(m) = &f.prefix {
        return compile_map(m, MapDialect::Prefix, path).map(|p| Some(Node::Prefix(p)));
    }
    if let Some(m) = &f.suffix {
        return compile_map(m, MapDialect::Suffix, path).map(|p| Some(Node::Suffix(p)));
    }
    if let Some(list) = &f.all {
        return compile_list(list, &format!("{path}.all"), Node::All);
    }
    if let Some(list) = &f.any {
        return compile_list(list, &format!("{path}.any"), Node::Any);
    }
    if let Some(inner) = &f.not {
        let inner = compile_one(inner, &format!("{path}.not"))?;
        return Ok(inner.map(|n| Node::Not(Box::new(n))));
    }
    if let Some(src) = &f.cesql {
        let path = format!("{path}.cesql");
        if src.trim().is_empty() {
            return Err(FilterError::EmptyExpression {
                path,
                dialect: "cesql",
            });
        }
        return match Expression::parse(src) {
            Ok(e) => Ok(Some(Node::Cesql(e))),
            Err(error) => Err(FilterError::Cesql {
                path,
                expression: src.clone(),
                error,
            }),
        };
    }
    if let Some(q) = &f.jsonpath {
        let path = format!("{path}.jsonpath");
        if q.trim().is_empty() {
            return Err(FilterError::EmptyExpression {
                path,
                dialect: "jsonpath",
            });
        }
        return JsonPathQuery::compile(q, path).map(|q| Some(Node::JsonPath(q)));
    }
    unreachable!("exactly one dialect was found above")
}

fn compile_map(
    m: &BTreeMap<String, String>,
    dialect: MapDialect,
    path: &str,
) -> Result<Pairs, FilterError> {
    if m.is_empty() {
        return Err(FilterError::EmptyMap {
            path: format!("{path}.{dialect}"),
            dialect,
        });
    }
    let mut pairs = Vec::with_capacity(m.len());
    for (k, v) in m {
        let key_path = || format!("{path}.{dialect}[{k:?}]");
        check_name(key_path, k)?;
        if v.is_empty() {
            return Err(FilterError::EmptyValue {
                path: key_path(),
                dialect,
                name: k.clone(),
            });
        }
        pairs.push((k.as_str().into(), v.as_str().into()));
    }
    Ok(pairs.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::SpecVersion;

    fn event() -> Event {
        let mut e = Event::new(
            SpecVersion::V10,
            "id-1",
            "https://shop.example.com/orders",
            "com.example.order.created",
        );
        e.set("subject", "order/42");
        e.set("region", "eu-west");
        e.set("count", AttrValue::Integer(7));
        e.set("flag", AttrValue::Boolean(true));
        e.set("empty", "");
        e.set_data(
            br#"{"order": {"total": 120, "items": [{"sku": "a", "qty": 2}]}}"#.to_vec(),
            false,
        );
        e
    }

    fn filters(yaml: &str) -> Vec<SubscriptionsApiFilter> {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn attributes_table() {
        let ev = event();
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], true),
            (&[("type", "com.example.order.created")], true),
            (&[("type", "com.example.order.Created")], false),
            (&[("type", "com.example.order")], false),
            (&[("specversion", "1.0")], true),
            (&[("subject", "")], true),
            (&[("empty", "")], true),
            (&[("time", "")], false),
            (&[("count", "7")], true),
            (&[("flag", "true")], true),
            (&[("region", "eu-west"), ("subject", "order/42")], true),
            (&[("region", "eu-west"), ("subject", "order/43")], false),
        ];
        for (pairs, want) in cases {
            let f = compile(Some(&attrs(pairs)), &[]).unwrap();
            assert_eq!(f.matches(&ev), *want, "{pairs:?}");
        }
        assert!(compile(Some(&attrs(&[])), &[]).unwrap().is_match_all());
        assert!(compile(None, &[]).unwrap().is_match_all());
    }

    #[test]
    fn dialects_table() {
        let ev = event();
        let cases: &[(&str, bool)] = &[
            ("[{exact: {type: com.example.order.created}}]", true),
            (
                "[{exact: {type: com.example.order.created, region: eu}}]",
                false,
            ),
            ("[{exact: {count: 7}}]", true),
            ("[{exact: {specversion: '1.0'}}]", true),
            ("[{exact: {missing: x}}]", false),
            ("[{prefix: {type: com.example.}}]", true),
            ("[{prefix: {type: com.other.}}]", false),
            ("[{prefix: {missing: x}}]", false),
            ("[{suffix: {source: /orders}}]", true),
            ("[{suffix: {source: /order}}]", false),
            ("[{suffix: {count: '7'}}]", true),
            (
                "[{all: [{prefix: {type: com.}}, {suffix: {type: .created}}]}]",
                true,
            ),
            (
                "[{all: [{prefix: {type: com.}}, {suffix: {type: .deleted}}]}]",
                false,
            ),
            (
                "[{any: [{prefix: {type: org.}}, {suffix: {type: .created}}]}]",
                true,
            ),
            (
                "[{any: [{prefix: {type: org.}}, {suffix: {type: .deleted}}]}]",
                false,
            ),
            ("[{not: {exact: {region: us}}}]", true),
            ("[{not: {exact: {region: eu-west}}}]", false),
            ("[{not: {exact: {missing: x}}}]", true),
            ("[{cesql: \"region LIKE 'eu-%' AND count > 5\"}]", true),
            ("[{sql: \"region LIKE 'us-%'\"}]", false),
            ("[{cesql: \"missing = 'x'\"}]", false),
            ("[{cesql: \"NOT (missing = 'x')\"}]", false),
            ("[{cesql: \"'true'\"}]", false),
            ("[{cesql: true}]", true),
            // RFC 9535: a filter selector tests the members of the object or array it is applied to.
            ("[{jsonpath: '$[?@.total > 100]'}]", true),
            ("[{jsonpath: '$[?@.total > 200]'}]", false),
            ("[{jsonpath: '$.order.items[?@.qty > 1]'}]", true),
            ("[{jsonpath: '$.order.items[?(@.qty > 1)]'}]", true),
            ("[{jsonpath: '$.order.items[?@.qty > 5]'}]", false),
            ("[{jsonpath: '$.order[?@ > 100]'}]", true),
            ("[{jsonpath: '$.order.items[0].sku'}]", true),
            ("[{jsonpath: '$.nothing'}]", false),
            // The list is ANDed.
            ("[{prefix: {type: com.}}, {exact: {region: eu-west}}]", true),
            ("[{prefix: {type: com.}}, {exact: {region: us}}]", false),
            // Knative: an empty all/any filters nothing, on its own or inside a list.
            ("[{any: []}]", true),
            ("[{all: []}]", true),
            ("[{not: {any: []}}]", true),
            ("[{any: []}, {exact: {region: us}}]", false),
            ("[{any: [{any: []}, {exact: {region: us}}]}]", false),
            ("[{all: [{all: []}, {exact: {region: eu-west}}]}]", true),
        ];
        for (yaml, want) in cases {
            let f = compile(None, &filters(yaml)).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            assert_eq!(f.matches(&ev), *want, "{yaml}");
            let shared: std::sync::Arc<dyn EventFilter> = std::sync::Arc::new(f);
            assert_eq!(shared.matches(&ev), *want, "{yaml} as dyn EventFilter");
        }
    }

    #[test]
    fn filters_take_precedence_over_attributes() {
        let ev = event();
        let no = attrs(&[("region", "us")]);
        let yes = filters("[{exact: {region: eu-west}}]");
        assert!(compile(Some(&no), &yes).unwrap().matches(&ev));
        assert!(!compile(Some(&no), &[]).unwrap().matches(&ev));
        // Still validated, as Knative does.
        let bad = attrs(&[("Region", "us")]);
        assert_eq!(
            compile(Some(&bad), &yes).unwrap_err().path(),
            "filter.attributes[\"Region\"]"
        );
    }

    #[test]
    fn jsonpath_needs_json_data() {
        let f = compile(None, &filters("[{jsonpath: '$.a'}]")).unwrap();
        let mut ev = event();
        ev.set_data(br#"{"a": null}"#.to_vec(), false);
        assert!(f.matches(&ev), "a null node is still a node");
        ev.set_data(b"not json".to_vec(), false);
        assert!(!f.matches(&ev));
        ev.set_data(vec![0xff, 0xfe], true);
        assert!(!f.matches(&ev));
        ev.clear_data();
        assert!(!f.matches(&ev));
        // Several JSONPath filters share one parse of the data.
        let f = compile(
            None,
            &filters("[{jsonpath: '$.order'}, {not: {jsonpath: '$.refund'}}]"),
        )
        .unwrap();
        assert!(f.matches(&event()));
    }

    #[test]
    fn validation_messages() {
        // (yaml filters, attributes, path, part of the message)
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static str,
            &'static str,
        );
        let cases: &[Case] = &[
            (
                "[]",
                &[("Bad-Key", "x")],
                "filter.attributes[\"Bad-Key\"]",
                "did you mean \"badkey\"?",
            ),
            (
                "[]",
                &[("1abc", "x")],
                "filter.attributes[\"1abc\"]",
                "^[a-z][a-z0-9]*$",
            ),
            (
                "[]",
                &[("", "x")],
                "filter.attributes[\"\"]",
                "the name is empty",
            ),
            (
                "[{exact: {Type: a}}]",
                &[],
                "filters[0].exact[\"Type\"]",
                "did you mean \"type\"?",
            ),
            ("[{exact: {}}]", &[], "filters[0].exact", "`exact` is empty"),
            (
                "[{prefix: {}}]",
                &[],
                "filters[0].prefix",
                "`prefix` is empty",
            ),
            (
                "[{exact: {'': a}}]",
                &[],
                "filters[0].exact[\"\"]",
                "invalid attribute name",
            ),
            (
                "[{exact: {type: ''}}]",
                &[],
                "filters[0].exact[\"type\"]",
                "EXISTS type",
            ),
            (
                "[{prefix: {type: ''}}]",
                &[],
                "filters[0].prefix[\"type\"]",
                "every value starts with",
            ),
            (
                "[{suffix: {type: ''}}]",
                &[],
                "filters[0].suffix[\"type\"]",
                "every value ends with",
            ),
            ("[{}]", &[], "filters[0]", "no filter dialect set"),
            (
                "[{exact: {a: b}}, {exact: {a: b}, cesql: 'true'}]",
                &[],
                "filters[1]",
                "2 dialects set (exact, cesql)",
            ),
            (
                "[{any: [{exact: {a: b}}, {cesql: 'a = '}]}]",
                &[],
                "filters[0].any[1].cesql",
                "column 5",
            ),
            (
                "[{not: {all: [{prefix: {'a_b': x}}]}}]",
                &[],
                "filters[0].not.all[0].prefix[\"a_b\"]",
                "did you mean \"ab\"?",
            ),
            (
                "[{cesql: ''}]",
                &[],
                "filters[0].cesql",
                "empty cesql expression",
            ),
            (
                "[{cesql: 'FOO(1)'}]",
                &[],
                "filters[0].cesql",
                "unknown function FOO",
            ),
            (
                "[{jsonpath: ''}]",
                &[],
                "filters[0].jsonpath",
                "empty jsonpath expression",
            ),
            (
                "[{jsonpath: '$.a[?@.b >]'}]",
                &[],
                "filters[0].jsonpath",
                "invalid JSONPath query",
            ),
            (
                "[{jsonpath: 'a.b'}]",
                &[],
                "filters[0].jsonpath",
                "column 1 (character offset 0), at `a.b`: a query starts with `$`",
            ),
        ];
        let mut failures = Vec::new();
        for (yaml, pairs, path, msg) in cases {
            let a = attrs(pairs);
            match compile(Some(&a), &filters(yaml)) {
                Ok(f) => failures.push(format!("{yaml} {pairs:?}: compiled: {f:?}")),
                Err(e) => {
                    let text = e.to_string();
                    if e.path() != *path || !text.contains(msg) || !text.starts_with(path) {
                        failures.push(format!("{yaml} {pairs:?}: path {:?}: {text}", e.path()));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn cesql_error_display() {
        let e = compile(
            None,
            &filters("[{all: [{cesql: \"type = 'a' AND (source = 'b'\"}]}]"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "filters[0].all[0].cesql: invalid CESQL expression: syntax error at column 29 \
             (character offset 28), at end of input: expected `)` to close the `(` at column 16; \
             expression: \"type = 'a' AND (source = 'b'\""
        );
        let FilterError::Cesql { error, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!((error.offset, error.column), (28, 29));
    }
}
