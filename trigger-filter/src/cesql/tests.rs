//! Table tests for the CESQL engine. The full conformance kit runs in `tests/tck.rs`.

use super::*;
use sluice_core::AttrValue;

fn event() -> Event {
    let mut e = Event::new(SpecVersion::V10, "id-1", "/shop", "com.example.created");
    e.set("subject", "order/42");
    e.set("priority", "5");
    e.set("region", "eu");
    e.set("flag", AttrValue::Boolean(true));
    e.set("count", AttrValue::Integer(7));
    e.set("big", AttrValue::Integer(1 << 40));
    e.set("unicode", "héllo wörld");
    e
}

fn eval(src: &str) -> (Value<'static>, Option<EvalError>) {
    let e = Expression::parse(src).unwrap_or_else(|err| panic!("{src}: {err}"));
    let ev = event();
    let r = e.evaluate(&ev);
    (r.value.into_owned(), r.error)
}

fn b(v: bool) -> Value<'static> {
    Value::Boolean(v)
}
fn i(v: i32) -> Value<'static> {
    Value::Integer(v)
}
fn s(v: &str) -> Value<'static> {
    Value::String(v.to_owned().into())
}

#[test]
fn evaluation_table() {
    use EvalError::*;
    let cases: Vec<(&str, Value<'static>, Option<EvalError>)> = vec![
        // attributes, typed as the event carries them
        ("specversion", s("1.0"), None),
        ("type", s("com.example.created"), None),
        ("TYPE", s("com.example.created"), None),
        ("flag", b(true), None),
        ("count", i(7), None),
        ("big", s("1099511627776"), None),
        ("missing", b(false), Some(MissingAttribute)),
        ("EXISTS subject AND EXISTS specversion", b(true), None),
        ("EXISTS time", b(false), None),
        // implicit casts (§3.7)
        ("priority = 5", b(true), None),
        ("priority > 4 AND priority < 6", b(true), None),
        ("count = '7'", b(true), None),
        ("flag = 'true'", b(true), None),
        ("flag = 1", b(true), None),
        ("'abc' = 1", b(false), Some(Cast)),
        ("1 = 'abc'", b(false), None),
        ("region IN ('us', 'eu')", b(true), None),
        ("region NOT IN ('us', 'eu')", b(false), None),
        ("count IN ('x', 7)", b(false), Some(Cast)),
        ("count IN (7, 'x')", b(true), None),
        ("count IN (1, missing)", b(false), Some(MissingAttribute)),
        // arithmetic and overflow
        ("2147483647 + 1", i(-2147483648), Some(Math)),
        ("-2147483648 - 1", i(2147483647), Some(Math)),
        ("65536 * 65536", i(0), Some(Math)),
        ("-2147483648 / -1", i(-2147483648), Some(Math)),
        ("-2147483648 % -1", i(0), None),
        ("-(-2147483648)", i(-2147483648), Some(Math)),
        ("-7 / 2", i(-3), None),
        ("-7 % 2", i(-1), None),
        ("7 % -2", i(1), None),
        ("1 - -1", i(2), None),
        ("1 -1", i(0), None),
        ("(1 + 2) * 3 - 4 / 2", i(7), None),
        ("'a' + 1", i(0), Some(Cast)),
        ("(1 / 0) = 0", b(false), Some(Math)),
        // logic: short-circuit, and AND/OR/XOR on one level, left to right (§3.6)
        ("false AND missing", b(false), None),
        ("true OR missing", b(true), None),
        ("missing OR true", b(false), Some(MissingAttribute)),
        ("true OR false AND false", b(false), None),
        ("false AND false OR true", b(true), None),
        ("true XOR true XOR true", b(true), None),
        ("NOT true = false", b(true), None),
        ("NOT 'x'", b(false), Some(Cast)),
        ("NOT 10", b(false), None),
        // LIKE on characters
        ("unicode LIKE 'h_llo w_rld'", b(true), None),
        ("unicode LIKE 'h%'", b(true), None),
        ("type NOT LIKE '%.deleted'", b(true), None),
        ("NOT type LIKE '%.deleted'", b(false), Some(Cast)),
        ("count LIKE '_'", b(true), None),
        // functions
        ("LENGTH(unicode)", i(11), None),
        ("UPPER(unicode)", s("HÉLLO WÖRLD"), None),
        ("lower('ÀB')", s("àb"), None),
        ("LEFT(unicode, 2)", s("hé"), None),
        ("RIGHT(unicode, 3)", s("rld"), None),
        ("SUBSTRING(unicode, 2, 4)", s("éllo"), None),
        ("SUBSTRING(unicode, -5)", s("wörld"), None),
        ("SUBSTRING('abc', 1, 2147483647)", s("abc"), None),
        (
            "SUBSTRING('abc', -2147483648)",
            s(""),
            Some(FunctionEvaluation),
        ),
        ("SUBSTRING('abc', 0, -1)", s(""), Some(FunctionEvaluation)),
        ("TRIM('\u{2003} x \u{00A0}')", s("x"), None),
        ("CONCAT(1, TRUE, 'x')", s("1truex"), None),
        ("CONCAT_WS('-', region, count)", s("eu-7"), None),
        ("LEFT('abc', 'x')", s(""), Some(Cast)),
        ("LENGTH(missing)", i(0), Some(MissingAttribute)),
        ("ABS(-5) + ABS(-2147483648)", i(0), Some(Math)),
        ("INT('+12')", i(12), None),
        ("INT(' 12')", i(0), Some(Cast)),
        ("BOOL('yes')", b(false), Some(Cast)),
        ("STRING(count)", s("7"), None),
        (
            "IS_INT(priority) AND IS_INT(count) AND NOT IS_INT(region)",
            b(true),
            None,
        ),
        (
            "IS_BOOL('False') AND IS_BOOL(flag) AND NOT IS_BOOL(1)",
            b(true),
            None,
        ),
        ("INT(hop) < INT(ttl)", b(false), Some(MissingAttribute)),
    ];
    let mut failures = Vec::new();
    for (src, want, want_err) in cases {
        let got = eval(src);
        if got != (want.clone(), want_err) {
            failures.push(format!("{src}: got {got:?}, want {:?}", (want, want_err)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn matches_only_on_true_without_error() {
    let ev = event();
    let m = |src: &str| Expression::parse(src).unwrap().matches(&ev);
    assert!(m("type = 'com.example.created'"));
    assert!(!m("type = 'com.example.deleted'"));
    assert!(!m("'true'"), "a String is not a Boolean");
    assert!(!m("1"));
    assert!(!m("missing = ''"));
    assert!(!m("NOT (missing = 'x')"), "an error fails the filter");
    assert!(!m("LEFT('abc', -1) = 'abc'"), "an error fails the filter");
}

#[test]
fn constants_are_folded() {
    let e = Expression::parse("priority = 2 + 3").unwrap();
    let Node::Cmp(_, _, r) = &e.root else {
        panic!("{:?}", e.root)
    };
    assert_eq!(**r, Node::Lit(Lit::Int(5)));
    // Subtrees with errors stay, so the error still shows per event.
    let e = Expression::parse("false AND 1 / 0 = 0").unwrap();
    assert!(!e.matches(&event()));
    assert_eq!(e.evaluate(&event()).error, None);
}

#[test]
fn parse_errors() {
    use ParseErrorKind::*;
    // (expression, kind, column, found, part of the message)
    let cases: &[(&str, ParseErrorKind, usize, &str, &str)] = &[
        ("", Syntax, 1, "", "empty expression"),
        ("ABC(", Syntax, 5, "", "expected a value"),
        ("LENGTH('a'", Syntax, 11, "", "expected `,` or `)`"),
        ("(a = b", Syntax, 7, "", "close the `(` at column 1"),
        ("a = ", Syntax, 5, "", "expected a value"),
        ("a == b", Syntax, 4, "=", "expected a value"),
        ("a = b c", Syntax, 7, "c", "after a complete expression"),
        ("x LIKE 123", Syntax, 8, "123", "string literal"),
        ("x LIKE y", Syntax, 8, "y", "string literal"),
        ("x IN ()", Syntax, 7, ")", "at least one value"),
        ("x IN 'a'", Syntax, 6, "'a'", "expected `(`"),
        ("x NOT y", Syntax, 3, "NOT", "LIKE or IN"),
        ("EXISTS 1", Syntax, 8, "1", "attribute name"),
        ("EXISTS AND", Syntax, 8, "AND", "attribute name"),
        ("a AND OR b", Syntax, 7, "OR", "keyword OR"),
        ("my_ext = 1", Syntax, 1, "my_ext", "invalid attribute name"),
        ("2147483648", Syntax, 1, "2147483648", "32-bit"),
        ("-2147483649", Syntax, 1, "-2147483649", "32-bit"),
        (
            "99999999999999999999999",
            Syntax,
            1,
            "99999999999999999999999",
            "32-bit",
        ),
        ("+x", Syntax, 1, "+", "unary `+`"),
        ("'abc", Syntax, 1, "'abc", "unterminated"),
        ("a && b", Syntax, 3, "&", "AND"),
        ("type = 'x'\nAND ?", Syntax, 5, "?", "unexpected character"),
        ("FOO(1)", MissingFunction, 1, "FOO", "unknown function FOO"),
        (
            "CONCAT_WS()",
            MissingFunction,
            1,
            "CONCAT_WS",
            "CONCAT_WS(delimiter",
        ),
        (
            "substring('a')",
            MissingFunction,
            1,
            "substring",
            "SUBSTRING(x, pos) or SUBSTRING(x, pos, len)",
        ),
        (
            "x = ABS(1, 2)",
            MissingFunction,
            5,
            "ABS",
            "does not take 2 arguments",
        ),
        ("F1(x)", Syntax, 1, "F1", "invalid function name"),
    ];
    let mut failures = Vec::new();
    for (src, kind, column, found, msg) in cases {
        match Expression::parse(src) {
            Ok(e) => failures.push(format!("{src:?}: parsed as {e:?}")),
            Err(e) => {
                if e.kind != *kind
                    || e.column != *column
                    || e.found != *found
                    || !e.message.contains(msg)
                {
                    failures.push(format!("{src:?}: {e:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let e = Expression::parse("type = 'x'\nAND ?").unwrap_err();
    assert_eq!((e.line, e.column, e.offset), (2, 5, 15));
    assert_eq!(
        e.to_string(),
        "syntax error at line 2, column 5 (character offset 15), at `?`: unexpected character '?' (identifiers are ASCII letters and digits)"
    );
    let e = Expression::parse("é = 1 AND ab(").unwrap_err();
    assert_eq!(e.offset, 0);
    let e = Expression::parse("'é' = 1 AND ab(").unwrap_err();
    assert_eq!((e.offset, e.column), (15, 16), "offsets count characters");
}

#[test]
fn depth_is_bounded() {
    let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(Expression::parse(&deep)
        .unwrap_err()
        .message
        .contains("nested"));
    let nots = format!("{}true", "NOT ".repeat(5000));
    assert!(Expression::parse(&nots).is_err());
    let negs = format!("{}1", "-".repeat(5000));
    assert!(Expression::parse(&negs).is_err());
    let chain = vec!["a"; 5000].join(" + ");
    assert!(Expression::parse(&chain).is_err());
    let ok = vec!["a = 1"; 50].join(" OR ");
    assert!(Expression::parse(&ok).is_ok());
}
