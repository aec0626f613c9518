//! The compiled expression tree and its evaluation.
//!
//! Evaluation follows the spec's error rules (§3.2, §3.3) in "fail fast" mode (§4.1), which is
//! what the spec asks of filters (§1.2): an operator or function whose operand raised an error
//! does no work and returns the zero value of its own return type, carrying the error up; one
//! that raises an error itself returns the value the spec defines for that case (`ABS`, `LEFT`,
//! `RIGHT`, `SUBSTRING`, division by zero). The error travels in `Err`, so a matching event never
//! pays for it.

use super::func::Func;
use super::like::LikePattern;
use super::value::{IntBuf, Type, Value};
use super::EvalError;
use sluice_core::{AttrValue, Event};
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lit {
    Bool(bool),
    Int(i32),
    Str(Box<str>),
}

impl Lit {
    fn value(&self) -> Value<'_> {
        match self {
            Lit::Bool(b) => Value::Boolean(*b),
            Lit::Int(i) => Value::Integer(*i),
            Lit::Str(s) => Value::String(Cow::Borrowed(s)),
        }
    }

    pub(crate) fn from_value(v: Value<'_>) -> Lit {
        match v {
            Value::Boolean(b) => Lit::Bool(b),
            Value::Integer(i) => Lit::Int(i),
            Value::String(s) => Lit::Str(s.into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Mul,
    Div,
    Mod,
    Add,
    Sub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogicOp {
    And,
    Or,
    Xor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Lit(Lit),
    /// A context attribute or extension, name lower-cased.
    Attr(Box<str>),
    Exists(Box<str>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Arith(ArithOp, Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    Logic(LogicOp, Box<Node>, Box<Node>),
    Like {
        expr: Box<Node>,
        pattern: LikePattern,
        negated: bool,
    },
    In {
        expr: Box<Node>,
        set: Vec<Node>,
        negated: bool,
    },
    Call(Func, Vec<Node>),
}

/// An error raised while evaluating, with the value the failing subexpression returns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fault<'a> {
    pub kind: EvalError,
    pub value: Value<'a>,
}

impl<'a> Fault<'a> {
    pub(crate) fn new(kind: EvalError, value: Value<'a>) -> Self {
        Fault { kind, value }
    }

    /// The same error, seen from a parent whose return type is `ty`.
    fn retyped(self, ty: Type) -> Self {
        Fault {
            kind: self.kind,
            value: ty.zero(),
        }
    }
}

pub(crate) type Eval<'a> = Result<Value<'a>, Fault<'a>>;

/// Looks an attribute up, borrowing its value from the event. CESQL sees an attribute as the
/// CloudEvents type the event carries it with (structured JSON may carry typed extensions);
/// an integer outside the 32-bit range is not a CESQL Integer, so it is seen as a String.
pub(crate) fn lookup<'a>(event: &'a Event, name: &str) -> Option<Value<'a>> {
    if name == "specversion" {
        return Some(Value::String(Cow::Borrowed(event.spec_version().as_str())));
    }
    Some(match event.get(name)? {
        AttrValue::String(s) => Value::String(Cow::Borrowed(s)),
        AttrValue::Boolean(b) => Value::Boolean(*b),
        AttrValue::Integer(i) => match i32::try_from(*i) {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::String(Cow::Owned(i.to_string())),
        },
    })
}

impl Node {
    /// Whether the node reads the event; the others are folded to literals at compile time.
    pub(crate) fn reads_event(&self) -> bool {
        match self {
            Node::Lit(_) => false,
            Node::Attr(_) | Node::Exists(_) => true,
            Node::Not(x) | Node::Neg(x) | Node::Like { expr: x, .. } => x.reads_event(),
            Node::Arith(_, l, r) | Node::Cmp(_, l, r) | Node::Logic(_, l, r) => {
                l.reads_event() || r.reads_event()
            }
            Node::In { expr, set, .. } => expr.reads_event() || set.iter().any(Node::reads_event),
            Node::Call(_, args) => args.iter().any(Node::reads_event),
        }
    }

    /// Evaluates a child whose error this node reports with its own return type's zero value.
    #[inline]
    fn sub<'a>(&'a self, event: &'a Event, parent: Type) -> Eval<'a> {
        self.eval(event).map_err(|f| f.retyped(parent))
    }

    #[inline]
    fn int_operand<'a>(&'a self, event: &'a Event, parent: Type) -> Result<i32, Fault<'a>> {
        let v = self.sub(event, parent)?;
        v.to_int()
            .ok_or_else(|| Fault::new(EvalError::Cast, parent.zero()))
    }

    #[inline]
    fn bool_operand<'a>(&'a self, event: &'a Event) -> Result<bool, Fault<'a>> {
        let v = self.sub(event, Type::Boolean)?;
        v.to_bool()
            .ok_or_else(|| Fault::new(EvalError::Cast, Value::Boolean(false)))
    }

    pub(crate) fn eval<'a>(&'a self, event: &'a Event) -> Eval<'a> {
        const B: Type = Type::Boolean;
        const I: Type = Type::Integer;
        match self {
            Node::Lit(l) => Ok(l.value()),
            Node::Attr(name) => lookup(event, name).ok_or(Fault::new(
                EvalError::MissingAttribute,
                // §3.2: when the type cannot be known, assume Boolean.
                Value::Boolean(false),
            )),
            Node::Exists(name) => Ok(Value::Boolean(event.has(name))),
            Node::Not(x) => Ok(Value::Boolean(!x.bool_operand(event)?)),
            Node::Neg(x) => {
                let i = x.int_operand(event, I)?;
                match i.checked_neg() {
                    Some(n) => Ok(Value::Integer(n)),
                    None => Err(Fault::new(EvalError::Math, Value::Integer(i))),
                }
            }
            Node::Arith(op, l, r) => {
                let a = l.int_operand(event, I)?;
                let b = r.int_operand(event, I)?;
                arith(*op, a, b)
            }
            Node::Cmp(op @ (CmpOp::Eq | CmpOp::Ne), l, r) => {
                let a = l.sub(event, B)?;
                let b = r.sub(event, B)?;
                let eq = equals(&a, &b)?;
                Ok(Value::Boolean(eq == (*op == CmpOp::Eq)))
            }
            Node::Cmp(op, l, r) => {
                let a = l.int_operand(event, B)?;
                let b = r.int_operand(event, B)?;
                Ok(Value::Boolean(match op {
                    CmpOp::Lt => a < b,
                    CmpOp::Le => a <= b,
                    CmpOp::Gt => a > b,
                    _ => a >= b,
                }))
            }
            Node::Logic(op, l, r) => {
                let a = l.bool_operand(event)?;
                // §3.4.2: AND and OR short-circuit.
                match (op, a) {
                    (LogicOp::And, false) => return Ok(Value::Boolean(false)),
                    (LogicOp::Or, true) => return Ok(Value::Boolean(true)),
                    _ => {}
                }
                let b = r.bool_operand(event)?;
                Ok(Value::Boolean(match op {
                    LogicOp::Xor => a != b,
                    _ => b,
                }))
            }
            Node::Like {
                expr,
                pattern,
                negated,
            } => {
                let v = expr.sub(event, B)?;
                let m = v.with_str(|s| pattern.matches(s));
                Ok(Value::Boolean(m != *negated))
            }
            Node::In { expr, set, negated } => {
                let x = expr.sub(event, B)?;
                // §3.4.5: the left operand's type is the target type of every element. Like a
                // chain of ORs, the first match ends the search.
                for item in set {
                    let y = item.sub(event, B)?;
                    if equals_as(&x, &y)? {
                        return Ok(Value::Boolean(!*negated));
                    }
                }
                Ok(Value::Boolean(*negated))
            }
            Node::Call(func, args) => func.call(args, event),
        }
    }
}

fn arith<'a>(op: ArithOp, a: i32, b: i32) -> Eval<'a> {
    let (checked, wrapped) = match op {
        ArithOp::Add => (a.checked_add(b), a.wrapping_add(b)),
        ArithOp::Sub => (a.checked_sub(b), a.wrapping_sub(b)),
        ArithOp::Mul => (a.checked_mul(b), a.wrapping_mul(b)),
        ArithOp::Div | ArithOp::Mod if b == 0 => {
            return Err(Fault::new(EvalError::Math, Value::Integer(0)));
        }
        ArithOp::Div => (a.checked_div(b), a.wrapping_div(b)),
        // MIN % -1 is 0 mathematically; only Rust's checked_rem calls it an overflow.
        ArithOp::Mod => (Some(a.wrapping_rem(b)), a.wrapping_rem(b)),
    };
    match checked {
        Some(v) => Ok(Value::Integer(v)),
        // The result does not fit 32 bits: the two's-complement value and a MathError.
        None => Err(Fault::new(EvalError::Math, Value::Integer(wrapped))),
    }
}

/// `x = y` (§3.4.2, §3.7): `=` is ambiguous, so the right operand's type picks the definition and
/// the left operand is cast to it.
fn equals<'a>(x: &Value<'_>, y: &Value<'_>) -> Result<bool, Fault<'a>> {
    match y {
        Value::Boolean(b) => x
            .to_bool()
            .map(|a| a == *b)
            .ok_or(Fault::new(EvalError::Cast, Value::Boolean(false))),
        Value::Integer(i) => x
            .to_int()
            .map(|a| a == *i)
            .ok_or(Fault::new(EvalError::Cast, Value::Boolean(false))),
        Value::String(s) => Ok(x.with_str(|a| a == s)),
    }
}

/// `x IN (...)`: like `=`, but the left operand's type is the target (§3.7).
fn equals_as<'a>(x: &Value<'_>, y: &Value<'_>) -> Result<bool, Fault<'a>> {
    match x {
        Value::Boolean(a) => y
            .to_bool()
            .map(|b| *a == b)
            .ok_or(Fault::new(EvalError::Cast, Value::Boolean(false))),
        Value::Integer(a) => y
            .to_int()
            .map(|b| *a == b)
            .ok_or(Fault::new(EvalError::Cast, Value::Boolean(false))),
        Value::String(a) => Ok(y.with_str(|b| a == b)),
    }
}

/// Formats an integer into a stack buffer; re-exported for the attribute filters.
pub(crate) fn with_int_str<R>(i: i64, f: impl FnOnce(&str) -> R) -> R {
    let mut buf = IntBuf::new();
    f(buf.format(i))
}
