//! Runs the CloudEvents SQL conformance kit (TCK) shipped in `../shared/cesql-tck/`.
//!
//! Every case is run; the only cases whose expectation is replaced are listed in [`EXCEPTIONS`],
//! each with the section of the CESQL v1 specification the TCK contradicts there. Missing
//! functions are found when the expression is compiled (spec §3.3 asks for compile-time checks
//! where possible), so a `missingFunction` case is satisfied by a compile error of that kind.

use serde_yaml::Value as Yaml;
use sluice_core::{AttrValue, Event, SpecVersion};
use sluice_filter::cesql::{EvalError, Expression, ParseErrorKind, Value};
use std::path::PathBuf;

/// A TCK case whose expectation contradicts the spec: the spec's behaviour is asserted instead.
struct Exception {
    file: &'static str,
    case: &'static str,
    /// Result and error the spec requires.
    result: Value<'static>,
    error: Option<EvalError>,
    why: &'static str,
}

const EXCEPTIONS: &[Exception] = &[Exception {
    file: "not_operator.yaml",
    case: "Invalid int cast",
    result: Value::Boolean(false),
    error: None,
    why: "TCK expects `NOT 10` to be true with a cast error. Spec §3.4.1 types NOT as \
          Boolean -> Boolean, §3.7 says a unary operator casts its operand to the parameter type, \
          and the §3.7 cast table defines Integer -> Boolean as `false` for 0 and `true` otherwise, \
          with no error. So NOT 10 = NOT true = false, without error.",
}];

fn tck_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/cesql-tck");
    assert!(
        dir.is_dir(),
        "the CESQL TCK is missing: expected the YAML files in {} (the shared/ folder beside the \
         repository, holding cesql-tck/ from cloudevents/spec cesql/cesql_tck)",
        dir.display()
    );
    dir
}

/// YAML reads `expression: TRUE` as a boolean and `expression: -10` as a number; the TCK means
/// the text.
fn scalar_text(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn expected_value(v: &Yaml) -> Value<'static> {
    match v {
        Yaml::Bool(b) => Value::Boolean(*b),
        Yaml::Number(n) => Value::Integer(
            n.as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .expect("integer result"),
        ),
        Yaml::String(s) => Value::String(s.clone().into()),
        other => panic!("unexpected result {other:?}"),
    }
}

fn expected_error(v: &Yaml) -> Result<ExpectedError, String> {
    let s = v.as_str().ok_or("error is not a string")?;
    Ok(match s {
        "parse" => ExpectedError::Compile(ParseErrorKind::Syntax),
        "missingFunction" => ExpectedError::Compile(ParseErrorKind::MissingFunction),
        "math" => ExpectedError::Eval(EvalError::Math),
        "cast" => ExpectedError::Eval(EvalError::Cast),
        "missingAttribute" => ExpectedError::Eval(EvalError::MissingAttribute),
        "functionEvaluation" => ExpectedError::Eval(EvalError::FunctionEvaluation),
        other => return Err(format!("unknown error kind {other:?}")),
    })
}

#[derive(Debug, PartialEq)]
enum ExpectedError {
    Compile(ParseErrorKind),
    Eval(EvalError),
}

/// Event attributes keep the type YAML gives them (`mybool: true` is a CloudEvents Boolean,
/// `myint: 10` an Integer); strings are kept verbatim, so a `time` keeps its offset.
fn attr_value(v: &Yaml) -> AttrValue {
    match v {
        Yaml::Bool(b) => AttrValue::Boolean(*b),
        Yaml::Number(n) => AttrValue::Integer(n.as_i64().expect("integer attribute")),
        Yaml::String(s) => AttrValue::String(s.clone()),
        other => panic!("unexpected attribute value {other:?}"),
    }
}

fn build_event(case: &Yaml) -> Event {
    let mut event = match case.get("event") {
        Some(Yaml::Mapping(m)) => {
            let get = |k: &str| {
                m.get(k)
                    .and_then(scalar_text)
                    .unwrap_or_else(|| panic!("event without {k}"))
            };
            let spec = SpecVersion::parse(&get("specversion")).expect("specversion");
            let mut e = Event::new(spec, get("id"), get("source"), get("type"));
            for (k, v) in m {
                let k = k.as_str().expect("attribute name");
                if !matches!(k, "specversion" | "id" | "source" | "type") {
                    e.set(k, attr_value(v));
                }
            }
            e
        }
        // "If absent, when testing the expression, any valid event can be passed."
        _ => Event::new(SpecVersion::V10, "tck-id", "/tck/source", "com.example.tck"),
    };
    if let Some(Yaml::Mapping(m)) = case.get("eventOverrides") {
        for (k, v) in m {
            event.set(k.as_str().expect("attribute name"), attr_value(v));
        }
    }
    event
}

/// Runs one case; `Err` describes a failure.
fn run_case(file: &str, case: &Yaml) -> Result<(), String> {
    let name = case.get("name").and_then(Yaml::as_str).unwrap_or("?");
    let expr = case
        .get("expression")
        .and_then(scalar_text)
        .ok_or("no expression")?;
    let exception = EXCEPTIONS.iter().find(|e| e.file == file && e.case == name);
    let (want_result, want_error) = match exception {
        Some(x) => (Some(x.result.clone()), x.error.map(ExpectedError::Eval)),
        None => (
            case.get("result").map(expected_value),
            case.get("error").map(expected_error).transpose()?,
        ),
    };

    let compiled = match Expression::parse(&expr) {
        Ok(e) => e,
        Err(e) => {
            return if want_error == Some(ExpectedError::Compile(e.kind)) {
                Ok(())
            } else {
                Err(format!(
                    "{expr:?}: compile error {e}; expected result {want_result:?}, error {want_error:?}"
                ))
            };
        }
    };
    if let Some(ExpectedError::Compile(k)) = want_error {
        return Err(format!("{expr:?}: compiled, but expected a {k:?} error"));
    }
    let event = build_event(case);
    let got = compiled.evaluate(&event);
    let got_error = got.error.map(ExpectedError::Eval);
    if got_error != want_error {
        return Err(format!(
            "{expr:?}: error {got_error:?}, expected {want_error:?} (value {:?})",
            got.value
        ));
    }
    if let Some(want) = want_result {
        if got.value != want {
            return Err(format!(
                "{expr:?}: value {:?}, expected {want:?} (error {got_error:?})",
                got.value
            ));
        }
    }
    Ok(())
}

#[test]
fn cesql_tck() {
    let dir = tck_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read TCK dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());

    let suites: Vec<(String, Vec<Yaml>)> = files
        .iter()
        .map(|path| {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(path).expect("read TCK file");
            let doc: Yaml = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let cases = doc
                .get("tests")
                .and_then(Yaml::as_sequence)
                .unwrap_or_else(|| panic!("{file}: no tests"))
                .clone();
            (file, cases)
        })
        .collect();
    let total: usize = suites.iter().map(|(_, cases)| cases.len()).sum();

    let (mut run, mut passed, mut exceptions_used) = (0, 0, 0);
    let mut failures = Vec::new();
    for (file, cases) in &suites {
        for case in cases {
            run += 1;
            let name = case.get("name").and_then(Yaml::as_str).unwrap_or("?");
            if EXCEPTIONS.iter().any(|x| x.file == file && x.case == name) {
                exceptions_used += 1;
            }
            match run_case(file, case) {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!("{file} / {name}: {e}")),
            }
        }
    }

    println!(
        "CESQL TCK: ran {run} of {total} cases found in {} files: {passed} passed, \
         {exceptions_used} of them checked against the spec's expectation instead of the TCK's:",
        files.len()
    );
    for x in EXCEPTIONS {
        println!("  - {} / {}: {}", x.file, x.case, x.why);
    }
    assert!(
        failures.is_empty(),
        "{} of {total} TCK cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        exceptions_used,
        EXCEPTIONS.len(),
        "an exception names a case the TCK no longer has"
    );
    assert_eq!(run, total, "every case found must have run");
    assert_eq!(passed, total, "every case must pass");
}
