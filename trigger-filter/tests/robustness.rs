//! Property tests: the CESQL parser never panics, whatever the text; evaluation never panics,
//! whatever the event; `matches` agrees with `evaluate`.
//!
//! The normal suite runs 2,000 cases per property. For a long run set `PROPTEST_CASES`, e.g.
//! `PROPTEST_CASES=1000000 cargo test --release -p sluice-filter --test robustness -- --nocapture`;
//! each property prints how many inputs it ran.

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sluice_core::{AttrValue, Event, SpecVersion};
use sluice_filter::cesql::{Expression, ParseErrorKind, Value};
use sluice_filter::{compile, SubscriptionsApiFilter};
use std::sync::atomic::{AtomicU64, Ordering};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Runs a property with the configured number of cases; returns how many inputs it ran.
fn check<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let ran = AtomicU64::new(0);
    let result = runner.run(&strategy, |v| {
        ran.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    println!("{name}: {} inputs", ran.load(Ordering::Relaxed));
}

const NAMES: &[&str] = &[
    "type",
    "source",
    "id",
    "subject",
    "time",
    "ext",
    "num",
    "flag",
    "specversion",
    "missing",
];

const FUNCS: &[&str] = &[
    "LENGTH",
    "CONCAT",
    "CONCAT_WS",
    "lower",
    "UPPER",
    "TRIM",
    "LEFT",
    "RIGHT",
    "SUBSTRING",
    "ABS",
    "INT",
    "bool",
    "STRING",
    "IS_BOOL",
    "IS_INT",
    "NOPE",
];

const TOKENS: &[&str] = &[
    "(",
    ")",
    ",",
    "AND",
    "or",
    "XoR",
    "NOT",
    "LIKE",
    "IN",
    "EXISTS",
    "TRUE",
    "false",
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "0",
    "1",
    "-1",
    "2147483647",
    "-2147483648",
    "2147483648",
    "99999999999999999999",
    "'abc'",
    "'a%b_c'",
    "'\\%'",
    "\"x\"",
    "''",
    "'",
    "\"",
    "\\",
    "type",
    "ext",
    "num",
    "flag",
    "missing",
    "LENGTH",
    "CONCAT_WS",
    "SUBSTRING",
    "ABS",
    "INT",
    "FOO",
    "my_ext",
    "é",
    "_",
    "!",
    "?",
    "\n",
];

/// Text that is anything at all, or a soup of CESQL tokens (which gets past the lexer and
/// exercises the parser's error paths).
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec((select(TOKENS), any::<bool>()), 0..40).prop_map(|toks| {
            let mut s = String::new();
            for (t, space) in toks {
                s.push_str(t);
                if space {
                    s.push(' ');
                }
            }
            s
        }),
    ]
}

fn string_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        select(vec![
            "",
            "5",
            "-7",
            "true",
            "FALSE",
            "a%b",
            "x_y",
            "2147483648"
        ])
        .prop_map(str::to_owned),
    ]
    .prop_map(|s| format!("'{}'", s.replace('\\', "/").replace('\'', "\\'")))
}

/// Syntactically valid CESQL (calls may have the wrong arity or name).
fn expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(|i| i.to_string()),
        select(vec!["TRUE", "false", "0", "1"]).prop_map(str::to_owned),
        string_literal(),
        select(NAMES).prop_map(str::to_owned),
        select(NAMES).prop_map(|n| format!("EXISTS {n}")),
    ];
    leaf.prop_recursive(6, 48, 4, |inner| {
        let ops = select(vec![
            "AND", "OR", "XOR", "=", "!=", "<>", "<", "<=", ">", ">=", "+", "-", "*", "/", "%",
        ]);
        prop_oneof![
            (inner.clone(), ops, inner.clone()).prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("NOT {a}")),
            inner.clone().prop_map(|a| format!("- {a}")),
            (inner.clone(), any::<bool>(), string_literal()).prop_map(|(a, not, p)| {
                format!("{a} {}LIKE {p}", if not { "NOT " } else { "" })
            }),
            (
                inner.clone(),
                any::<bool>(),
                prop::collection::vec(inner.clone(), 1..4)
            )
                .prop_map(|(a, not, set)| {
                    format!(
                        "{a} {}IN ({})",
                        if not { "NOT " } else { "" },
                        set.join(", ")
                    )
                }),
            (select(FUNCS), prop::collection::vec(inner, 0..4))
                .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
        ]
    })
}

fn attr_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        any::<String>().prop_map(AttrValue::String),
        select(vec![
            "",
            "0",
            "-1",
            "+5",
            "2147483647",
            "-2147483648",
            "2147483648",
            "true",
            "False",
            "é",
            "a%b",
            " 7",
        ])
        .prop_map(|s| AttrValue::String(s.to_owned())),
        any::<i64>().prop_map(AttrValue::Integer),
        (-3i64..3).prop_map(AttrValue::Integer),
        any::<bool>().prop_map(AttrValue::Boolean),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        any::<bool>(),
        prop::collection::vec((select(NAMES), attr_value()), 0..8),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
    )
        .prop_map(|(v03, attrs, data)| {
            let spec = if v03 {
                SpecVersion::V03
            } else {
                SpecVersion::V10
            };
            let mut e = Event::new(spec, "id", "/src", "t");
            for (name, value) in attrs {
                // `specversion` is not an ordinary attribute; `missing` stays missing.
                if name != "specversion" && name != "missing" {
                    e.set(name, value);
                }
            }
            if let Some(d) = data {
                e.set_data(d, true);
            }
            e
        })
}

fn consistent(e: &Expression, ev: &Event) -> Result<(), TestCaseError> {
    let r = e.evaluate(ev);
    let want = r.value == Value::Boolean(true) && r.error.is_none();
    prop_assert_eq!(e.matches(ev), want, "{:?}: {:?}", e, r);
    Ok(())
}

#[test]
fn parsing_arbitrary_text_never_panics() {
    let parsed = AtomicU64::new(0);
    check("parse(arbitrary text)", any_text(), |text| {
        if let Ok(e) = Expression::parse(&text) {
            parsed.fetch_add(1, Ordering::Relaxed);
            // Whatever parsed must evaluate too.
            let ev = Event::new(SpecVersion::V10, "id", "/src", "t");
            consistent(&e, &ev)?;
        }
        // The filter compiler, JSONPath included, must not panic either.
        for f in [
            SubscriptionsApiFilter {
                cesql: Some(text.clone()),
                ..Default::default()
            },
            SubscriptionsApiFilter {
                jsonpath: Some(text.clone()),
                ..Default::default()
            },
        ] {
            let _ = compile(None, &[f]);
        }
        Ok(())
    });
    println!("  of which parsed: {}", parsed.load(Ordering::Relaxed));
}

#[test]
fn evaluating_on_arbitrary_events_never_panics() {
    let (parsed, matched) = (AtomicU64::new(0), AtomicU64::new(0));
    check(
        "evaluate(valid expression, arbitrary event)",
        (expression(), event()),
        |(src, ev)| {
            let e = match Expression::parse(&src) {
                Ok(e) => e,
                Err(err) => {
                    // The generator only writes valid syntax; only calls can be wrong.
                    prop_assert_eq!(
                        err.kind,
                        ParseErrorKind::MissingFunction,
                        "{}: {}",
                        src,
                        err
                    );
                    return Ok(());
                }
            };
            parsed.fetch_add(1, Ordering::Relaxed);
            if e.matches(&ev) {
                matched.fetch_add(1, Ordering::Relaxed);
            }
            consistent(&e, &ev)
        },
    );
    println!(
        "  of which parsed (the rest call a function with the wrong arity): {}, matched: {}",
        parsed.load(Ordering::Relaxed),
        matched.load(Ordering::Relaxed)
    );
}

#[test]
fn compiled_filters_never_panic_on_arbitrary_events() {
    let filters: Vec<SubscriptionsApiFilter> = serde_yaml::from_str(
        r#"
- any:
  - exact: {type: t, num: "5"}
  - prefix: {source: /}
  - not: {suffix: {ext: x}}
- cesql: "INT(num) + LENGTH(ext) > 0 OR flag OR subject LIKE '%_%'"
- jsonpath: "$..*"
"#,
    )
    .unwrap();
    let f = compile(None, &filters).unwrap();
    check("filter.matches(arbitrary event)", event(), |ev| {
        let _ = f.matches(&ev);
        Ok(())
    });
}
