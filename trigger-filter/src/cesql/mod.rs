//! CloudEvents SQL (CESQL) v1, written from the specification
//! (<https://github.com/cloudevents/spec/blob/main/cesql/spec.md>).
//!
//! [`Expression::parse`] lexes, parses, resolves function calls and folds constant
//! subexpressions once; [`Expression::evaluate`] then walks the tree per event, borrowing
//! attribute values from the event instead of copying them.
//!
//! Evaluation returns a value and, possibly, an error ([`Evaluation`]), as the spec's §3.3
//! describes; a filter passes only on `Boolean(true)` with no error (§1.2).
//!
//! Choices where the spec leaves room (each documented in the crate README):
//! - unknown functions and wrong arities are rejected when the expression is compiled
//!   ([`ParseErrorKind::MissingFunction`]), as §3.3 recommends, instead of failing every event;
//! - integer overflow in `+`, `-`, `*`, `/` and unary `-` gives the two's-complement result and a
//!   [`EvalError::Math`], like `ABS` does in §3.5.2;
//! - a `\` in a `LIKE` pattern escapes only `%` and `_`; before anything else it is literal;
//! - attribute names are matched case-insensitively (`EXISTS SOURCE`), as the TCK expects;
//! - `IS_BOOL` and `IS_INT`, from the Go and Java SDKs, are available.

mod ast;
mod func;
mod lexer;
mod like;
mod parser;
mod value;

pub use value::{Type, Value};

pub(crate) use ast::with_int_str;

use ast::{Lit, Node};
use sluice_core::{Event, SpecVersion};
use std::fmt;

/// The kind of an evaluation error (spec §3.3). Parse and missing-function errors happen at
/// compile time instead ([`ParseError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvalError {
    /// Division or modulo by zero, integer overflow.
    Math,
    /// A value that cannot be cast to the type an operator or function needs.
    Cast,
    /// The expression reads an attribute the event does not have.
    MissingAttribute,
    /// A built-in function was called with arguments outside its domain.
    FunctionEvaluation,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EvalError::Math => "math error",
            EvalError::Cast => "cast error",
            EvalError::MissingAttribute => "missing attribute",
            EvalError::FunctionEvaluation => "function evaluation error",
        })
    }
}

/// What a compile-time error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseErrorKind {
    /// The text is not a CESQL expression (spec's _ParseError_).
    Syntax,
    /// A call to a function that does not exist or not with that many arguments (spec's
    /// _MissingFunctionError_, raised at compile time).
    MissingFunction,
}

/// Why an expression was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
    /// 0-based offset of the offending text, in characters (not bytes).
    pub offset: usize,
    /// 1-based line and column (in characters) of the offending text.
    pub line: usize,
    pub column: usize,
    /// The offending text (empty at the end of the input), at most 40 characters.
    pub found: String,
}

impl ParseError {
    pub(crate) fn syntax(src: &str, start: usize, end: usize, message: String) -> Self {
        Self::at(ParseErrorKind::Syntax, src, start, end, message)
    }

    pub(crate) fn missing_function(src: &str, start: usize, end: usize, message: String) -> Self {
        Self::at(ParseErrorKind::MissingFunction, src, start, end, message)
    }

    /// `start..end` are byte offsets into `src`.
    fn at(kind: ParseErrorKind, src: &str, start: usize, end: usize, message: String) -> Self {
        let (start, end) = (floor_char(src, start), floor_char(src, end.max(start)));
        let before = &src[..start];
        let offset = before.chars().count();
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = src[line_start..start].chars().count() + 1;
        let found: String = src[start..end].chars().take(40).collect();
        ParseError {
            kind,
            message,
            offset,
            line,
            column,
            found,
        }
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ParseErrorKind::Syntax => "syntax error",
            ParseErrorKind::MissingFunction => "missing function",
        };
        if self.line > 1 {
            write!(f, "{what} at line {}, ", self.line)?;
        } else {
            write!(f, "{what} at ")?;
        }
        write!(
            f,
            "column {} (character offset {}), ",
            self.column, self.offset
        )?;
        if self.found.is_empty() {
            write!(f, "at end of input: ")?;
        } else {
            write!(f, "at `{}`: ", self.found)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// The outcome of evaluating an expression: a value, and the first error raised, if any
/// (evaluation stops at the first error: the spec's "fail fast" mode, §4.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'a> {
    pub value: Value<'a>,
    pub error: Option<EvalError>,
}

/// A compiled CESQL expression. Cheap to evaluate, immutable, shareable across threads.
#[derive(Clone, PartialEq)]
pub struct Expression {
    source: Box<str>,
    root: Node,
}

impl Expression {
    /// Compiles an expression: syntax, function names and arities, constant folding.
    pub fn parse(source: &str) -> Result<Expression, ParseError> {
        let root = fold(parser::parse(source)?);
        Ok(Expression {
            source: source.into(),
            root,
        })
    }

    /// The text the expression was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression against an event.
    pub fn evaluate<'a>(&'a self, event: &'a Event) -> Evaluation<'a> {
        match self.root.eval(event) {
            Ok(value) => Evaluation { value, error: None },
            Err(fault) => Evaluation {
                value: fault.value,
                error: Some(fault.kind),
            },
        }
    }

    /// The filter predicate (spec §1.2): `true` only for a Boolean `true` without error.
    pub fn matches(&self, event: &Event) -> bool {
        matches!(self.root.eval(event), Ok(Value::Boolean(true)))
    }
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Expression {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expression::parse(s)
    }
}

/// Replaces every subtree that does not read the event, and evaluates without error, by its
/// value: `sequence = 2 * 5` compares against a literal 10 at run time. Subtrees that raise an
/// error are kept, so the error still surfaces (or is short-circuited away) per event.
fn fold(node: Node) -> Node {
    let node = match node {
        Node::Not(x) => Node::Not(Box::new(fold(*x))),
        Node::Neg(x) => Node::Neg(Box::new(fold(*x))),
        Node::Arith(op, l, r) => Node::Arith(op, Box::new(fold(*l)), Box::new(fold(*r))),
        Node::Cmp(op, l, r) => Node::Cmp(op, Box::new(fold(*l)), Box::new(fold(*r))),
        Node::Logic(op, l, r) => Node::Logic(op, Box::new(fold(*l)), Box::new(fold(*r))),
        Node::Like {
            expr,
            pattern,
            negated,
        } => Node::Like {
            expr: Box::new(fold(*expr)),
            pattern,
            negated,
        },
        Node::In { expr, set, negated } => Node::In {
            expr: Box::new(fold(*expr)),
            set: set.into_iter().map(fold).collect(),
            negated,
        },
        Node::Call(f, args) => Node::Call(f, args.into_iter().map(fold).collect()),
        leaf => leaf,
    };
    if matches!(node, Node::Lit(_)) || node.reads_event() {
        return node;
    }
    // The event is never read by a constant subtree; any valid event will do.
    let scratch = Event::new(SpecVersion::V10, "", "", "");
    let lit = node.eval(&scratch).ok().map(Lit::from_value);
    match lit {
        Some(lit) => Node::Lit(lit),
        None => node,
    }
}

#[cfg(test)]
mod tests;
