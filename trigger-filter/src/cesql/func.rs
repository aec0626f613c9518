//! Built-in functions (spec §3.5), resolved by name and arity when the expression is compiled.

use super::ast::{Eval, Fault, Node};
use super::value::{str_to_bool, str_to_int, Type, Value};
use super::EvalError;
use sluice_core::Event;
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring2,
    Substring3,
    Abs,
    Int,
    Bool,
    String,
    IsBool,
    IsInt,
}

/// Every built-in with its arity, for error messages. `n` marks a variadic tail.
pub(crate) const SIGNATURES: &[&str] = &[
    "LENGTH(x)",
    "CONCAT(x1, ..., xn)",
    "CONCAT_WS(delimiter, x1, ..., xn)",
    "LOWER(x)",
    "UPPER(x)",
    "TRIM(x)",
    "LEFT(x, n)",
    "RIGHT(x, n)",
    "SUBSTRING(x, pos)",
    "SUBSTRING(x, pos, len)",
    "ABS(x)",
    "INT(x)",
    "BOOL(x)",
    "STRING(x)",
    "IS_BOOL(x)",
    "IS_INT(x)",
];

impl Func {
    /// Dispatches on the upper-cased name and the number of arguments (§3.5 overloading).
    pub(crate) fn resolve(name: &str, arity: usize) -> Option<Func> {
        let upper = name.to_ascii_uppercase();
        Some(match (upper.as_str(), arity) {
            ("LENGTH", 1) => Func::Length,
            ("CONCAT", _) => Func::Concat,
            ("CONCAT_WS", n) if n >= 1 => Func::ConcatWs,
            ("LOWER", 1) => Func::Lower,
            ("UPPER", 1) => Func::Upper,
            ("TRIM", 1) => Func::Trim,
            ("LEFT", 2) => Func::Left,
            ("RIGHT", 2) => Func::Right,
            ("SUBSTRING", 2) => Func::Substring2,
            ("SUBSTRING", 3) => Func::Substring3,
            ("ABS", 1) => Func::Abs,
            ("INT", 1) => Func::Int,
            ("BOOL", 1) => Func::Bool,
            ("STRING", 1) => Func::String,
            ("IS_BOOL", 1) => Func::IsBool,
            ("IS_INT", 1) => Func::IsInt,
            _ => return None,
        })
    }

    /// Whether any overload has this name (to tell "wrong arity" from "no such function").
    pub(crate) fn name_exists(name: &str) -> bool {
        let upper = name.to_ascii_uppercase();
        SIGNATURES
            .iter()
            .any(|s| s.split('(').next() == Some(upper.as_str()))
    }

    pub(crate) fn return_type(self) -> Type {
        match self {
            Func::Length | Func::Abs | Func::Int => Type::Integer,
            Func::Bool | Func::IsBool | Func::IsInt => Type::Boolean,
            _ => Type::String,
        }
    }

    pub(crate) fn call<'a>(self, args: &'a [Node], event: &'a Event) -> Eval<'a> {
        let ret = self.return_type();
        // Arguments are evaluated left to right; an error in one is the call's error, with the
        // call's zero value (§3.3).
        let arg = |i: usize| -> Eval<'a> {
            match args.get(i) {
                Some(n) => n.eval(event).map_err(|f| Fault::new(f.kind, ret.zero())),
                // Unreachable: arity was checked when the call was compiled.
                None => Err(Fault::new(EvalError::FunctionEvaluation, ret.zero())),
            }
        };
        let string = |i: usize| -> Result<Cow<'a, str>, Fault<'a>> { Ok(arg(i)?.into_string()) };
        let int = |i: usize| -> Result<i32, Fault<'a>> {
            arg(i)?
                .to_int()
                .ok_or_else(|| Fault::new(EvalError::Cast, ret.zero()))
        };
        let s = |c: Cow<'a, str>| Ok(Value::String(c));

        match self {
            Func::Length => {
                let x = string(0)?;
                let n = x.chars().count();
                Ok(Value::Integer(i32::try_from(n).unwrap_or(i32::MAX)))
            }
            Func::Concat => {
                if args.len() == 1 {
                    return s(string(0)?);
                }
                let mut out = String::new();
                for i in 0..args.len() {
                    out.push_str(&string(i)?);
                }
                s(Cow::Owned(out))
            }
            Func::ConcatWs => {
                let sep = string(0)?;
                if args.len() == 2 {
                    return s(string(1)?);
                }
                let mut out = String::new();
                for i in 1..args.len() {
                    if i > 1 {
                        out.push_str(&sep);
                    }
                    out.push_str(&string(i)?);
                }
                s(Cow::Owned(out))
            }
            Func::Lower => {
                let x = string(0)?;
                if x.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
                    return s(x);
                }
                s(Cow::Owned(x.to_lowercase()))
            }
            Func::Upper => {
                let x = string(0)?;
                if x.bytes().all(|b| b.is_ascii() && !b.is_ascii_lowercase()) {
                    return s(x);
                }
                s(Cow::Owned(x.to_uppercase()))
            }
            Func::Trim => {
                let x = string(0)?;
                // `str::trim` removes Unicode White_Space, as §3.5.1 asks.
                let end = x.trim_end().len();
                let start = end - x[..end].trim_start().len();
                s(slice(x, start, end))
            }
            Func::Left | Func::Right => {
                let x = string(0)?;
                let n = int(1)?;
                if n < 0 {
                    // §3.5.1: x itself, and an error.
                    return Err(Fault::new(EvalError::FunctionEvaluation, Value::String(x)));
                }
                let n = n as usize;
                let count = x.chars().count();
                if n >= count {
                    return s(x);
                }
                let (from, to) = if self == Func::Left {
                    (0, n)
                } else {
                    (count - n, count)
                };
                let (b0, b1) = (byte_at(&x, from), byte_at(&x, to));
                s(slice(x, b0, b1))
            }
            Func::Substring2 | Func::Substring3 => {
                let x = string(0)?;
                let pos = int(1)?;
                let len = if self == Func::Substring3 {
                    Some(int(2)?)
                } else {
                    None
                };
                let fail = || Err(Fault::new(EvalError::FunctionEvaluation, ret.zero()));
                if len.is_some_and(|l| l < 0) {
                    return fail();
                }
                let count = x.chars().count() as i64;
                let p = i64::from(pos);
                if p > count || p < -count {
                    return fail();
                }
                if p == 0 {
                    return s(Cow::Borrowed(""));
                }
                // 0-based index of the first character.
                let from = if p > 0 { p - 1 } else { count + p } as usize;
                let to = match len {
                    Some(l) => (from as i64 + i64::from(l)).min(count) as usize,
                    None => count as usize,
                };
                let (b0, b1) = (byte_at(&x, from), byte_at(&x, to));
                s(slice(x, b0, b1))
            }
            Func::Abs => {
                let x = int(0)?;
                match x.checked_abs() {
                    Some(v) => Ok(Value::Integer(v)),
                    // §3.5.2: the most negative value gives the most positive one and an error.
                    None => Err(Fault::new(EvalError::Math, Value::Integer(i32::MAX))),
                }
            }
            Func::Int => Ok(Value::Integer(int(0)?)),
            Func::Bool => {
                let v = arg(0)?;
                v.to_bool()
                    .map(Value::Boolean)
                    .ok_or_else(|| Fault::new(EvalError::Cast, Value::Boolean(false)))
            }
            Func::String => s(string(0)?),
            // Not in CESQL v1; kept from the Go and Java SDKs: whether the value is of that
            // type or a string that casts to it without error.
            Func::IsBool => Ok(Value::Boolean(match arg(0)? {
                Value::Boolean(_) => true,
                Value::Integer(_) => false,
                Value::String(x) => str_to_bool(&x).is_some(),
            })),
            Func::IsInt => Ok(Value::Boolean(match arg(0)? {
                Value::Integer(_) => true,
                Value::Boolean(_) => false,
                Value::String(x) => str_to_int(&x).is_some(),
            })),
        }
    }
}

/// The byte index of the `n`th character (or the end).
fn byte_at(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(b, _)| b)
}

/// A sub-slice that keeps borrowing when the input did.
fn slice(s: Cow<'_, str>, from: usize, to: usize) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[from..to]),
        Cow::Owned(mut o) => {
            o.truncate(to);
            o.drain(..from);
            Cow::Owned(o)
        }
    }
}
