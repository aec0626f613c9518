//! A precedence-climbing parser for CESQL v1 (spec §2 grammar, §3.6 precedence).
//!
//! Precedence, tightest first (§3.6): function calls; unary `NOT` and `-`; `LIKE`, `EXISTS`,
//! `IN`; `*` `/` `%`; `+` `-`; comparisons; `AND` `OR` `XOR`. Operators of equal precedence
//! group left to right — including `AND`, `OR` and `XOR`, which the spec puts on one level, so
//! `a OR b AND c` is `(a OR b) AND c`.
//!
//! Recursion is bounded ([`MAX_DEPTH`]): a hostile expression gets a parse error, never a stack
//! overflow, and the evaluator (also recursive) only ever sees shallow trees.

use super::ast::{ArithOp, CmpOp, Lit, LogicOp, Node};
use super::func::{Func, SIGNATURES};
use super::lexer::{tokenize, Tok, Token};
use super::like::LikePattern;
use super::ParseError;

/// The deepest nesting accepted, in parentheses, operators and calls alike. Real filters stay
/// under ten.
pub(crate) const MAX_DEPTH: u32 = 100;

const BP_LOGIC: u8 = 10;
const BP_CMP: u8 = 20;
const BP_ADD: u8 = 30;
const BP_MUL: u8 = 40;
const BP_POSTFIX: u8 = 50;
const BP_UNARY: u8 = 60;

const KEYWORDS: &[&str] = &[
    "AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE",
];

fn is_kw(w: &str, kw: &str) -> bool {
    w.eq_ignore_ascii_case(kw)
}

fn is_keyword(w: &str) -> bool {
    KEYWORDS.iter().any(|k| is_kw(w, k))
}

fn is_digits(w: &str) -> bool {
    w.bytes().all(|b| b.is_ascii_digit())
}

enum Infix {
    Logic(LogicOp),
    Cmp(CmpOp),
    Arith(ArithOp),
    Like(bool),
    In(bool),
}

struct Parser<'s> {
    src: &'s str,
    toks: Vec<Token<'s>>,
    pos: usize,
    nesting: u32,
}

pub(crate) fn parse(src: &str) -> Result<Node, ParseError> {
    let toks = tokenize(src)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        nesting: 0,
    };
    if p.peek().tok == Tok::Eof {
        return Err(p.err(
            p.pos,
            "empty expression: write a boolean expression such as type = 'com.example.created'"
                .into(),
        ));
    }
    let (node, _) = p.expr(0)?;
    if p.peek().tok != Tok::Eof {
        let what = p.text(p.pos).to_owned();
        return Err(p.err(
            p.pos,
            format!("unexpected `{what}` after a complete expression (missing an operator such as AND, OR or =?)"),
        ));
    }
    Ok(node)
}

impl<'s> Parser<'s> {
    fn peek(&self) -> &Token<'s> {
        &self.toks[self.pos]
    }

    fn peek_at(&self, i: usize) -> &Token<'s> {
        &self.toks[i.min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> usize {
        let i = self.pos;
        if i + 1 < self.toks.len() {
            self.pos += 1;
        }
        i
    }

    fn text(&self, i: usize) -> &'s str {
        let t = &self.toks[i];
        &self.src[t.start..t.end]
    }

    fn err(&self, i: usize, message: String) -> ParseError {
        let t = &self.toks[i];
        ParseError::syntax(self.src, t.start, t.end, message)
    }

    fn column_of(&self, i: usize) -> usize {
        self.src[..self.toks[i].start].chars().count() + 1
    }

    fn check_depth(&self, depth: u32, at: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.err(
                at,
                format!("expression nested more than {MAX_DEPTH} levels deep: split it into several filters"),
            ));
        }
        Ok(())
    }

    /// Parses an expression whose operators all bind at least as tightly as `min_bp`.
    /// Returns the node and its depth.
    fn expr(&mut self, min_bp: u8) -> Result<(Node, u32), ParseError> {
        self.nesting += 1;
        self.check_depth(self.nesting, self.pos)?;
        let (mut lhs, mut depth) = self.prefix()?;
        loop {
            let op_at = self.pos;
            let (bp, infix, width) = match &self.peek().tok {
                Tok::Word(w) if is_kw(w, "AND") => (BP_LOGIC, Infix::Logic(LogicOp::And), 1),
                Tok::Word(w) if is_kw(w, "OR") => (BP_LOGIC, Infix::Logic(LogicOp::Or), 1),
                Tok::Word(w) if is_kw(w, "XOR") => (BP_LOGIC, Infix::Logic(LogicOp::Xor), 1),
                Tok::Word(w) if is_kw(w, "LIKE") => (BP_POSTFIX, Infix::Like(false), 1),
                Tok::Word(w) if is_kw(w, "IN") => (BP_POSTFIX, Infix::In(false), 1),
                Tok::Word(w) if is_kw(w, "NOT") => match &self.peek_at(self.pos + 1).tok {
                    Tok::Word(n) if is_kw(n, "LIKE") => (BP_POSTFIX, Infix::Like(true), 2),
                    Tok::Word(n) if is_kw(n, "IN") => (BP_POSTFIX, Infix::In(true), 2),
                    _ => {
                        return Err(self.err(
                            self.pos,
                            "NOT after a value must be followed by LIKE or IN (to negate a condition, put NOT before it: NOT (a = b))".into(),
                        ))
                    }
                },
                Tok::Eq => (BP_CMP, Infix::Cmp(CmpOp::Eq), 1),
                Tok::Ne => (BP_CMP, Infix::Cmp(CmpOp::Ne), 1),
                Tok::Lt => (BP_CMP, Infix::Cmp(CmpOp::Lt), 1),
                Tok::Le => (BP_CMP, Infix::Cmp(CmpOp::Le), 1),
                Tok::Gt => (BP_CMP, Infix::Cmp(CmpOp::Gt), 1),
                Tok::Ge => (BP_CMP, Infix::Cmp(CmpOp::Ge), 1),
                Tok::Plus => (BP_ADD, Infix::Arith(ArithOp::Add), 1),
                Tok::Minus => (BP_ADD, Infix::Arith(ArithOp::Sub), 1),
                Tok::Star => (BP_MUL, Infix::Arith(ArithOp::Mul), 1),
                Tok::Slash => (BP_MUL, Infix::Arith(ArithOp::Div), 1),
                Tok::Percent => (BP_MUL, Infix::Arith(ArithOp::Mod), 1),
                _ => break,
            };
            if bp < min_bp {
                break;
            }
            for _ in 0..width {
                self.bump();
            }
            let (node, d) = match infix {
                Infix::Logic(op) => {
                    let (rhs, rd) = self.expr(bp + 1)?;
                    (Node::Logic(op, Box::new(lhs), Box::new(rhs)), depth.max(rd))
                }
                Infix::Cmp(op) => {
                    let (rhs, rd) = self.expr(bp + 1)?;
                    (Node::Cmp(op, Box::new(lhs), Box::new(rhs)), depth.max(rd))
                }
                Infix::Arith(op) => {
                    let (rhs, rd) = self.expr(bp + 1)?;
                    (Node::Arith(op, Box::new(lhs), Box::new(rhs)), depth.max(rd))
                }
                Infix::Like(negated) => {
                    let i = self.bump();
                    let Tok::Str(pattern) = &self.toks[i].tok else {
                        return Err(self.err(
                            i,
                            "the pattern after LIKE must be a string literal, e.g. LIKE 'com.example.%' (spec §3.4.3)".into(),
                        ));
                    };
                    let pattern = LikePattern::compile(pattern);
                    (
                        Node::Like {
                            expr: Box::new(lhs),
                            pattern,
                            negated,
                        },
                        depth,
                    )
                }
                Infix::In(negated) => {
                    let open = self.bump();
                    if self.toks[open].tok != Tok::LParen {
                        return Err(self.err(
                            open,
                            "expected `(` after IN: write a parenthesised list such as IN ('a', 'b')".into(),
                        ));
                    }
                    if self.peek().tok == Tok::RParen {
                        return Err(self.err(
                            self.pos,
                            "IN needs at least one value in its list (spec §2.3)".into(),
                        ));
                    }
                    let (set, sd) = self.list(open, "IN list")?;
                    (
                        Node::In {
                            expr: Box::new(lhs),
                            set,
                            negated,
                        },
                        depth.max(sd),
                    )
                }
            };
            lhs = node;
            depth = d + 1;
            self.check_depth(depth, op_at)?;
        }
        self.nesting -= 1;
        Ok((lhs, depth))
    }

    /// Parses `expr (, expr)* )` after the `(` at `open`; returns the items and their depth.
    fn list(&mut self, open: usize, what: &str) -> Result<(Vec<Node>, u32), ParseError> {
        let mut items = Vec::new();
        let mut depth = 0;
        loop {
            let (item, d) = self.expr(0)?;
            items.push(item);
            depth = depth.max(d);
            let i = self.bump();
            match self.toks[i].tok {
                Tok::Comma => {}
                Tok::RParen => return Ok((items, depth)),
                _ => {
                    let col = self.column_of(open);
                    let found = if self.toks[i].tok == Tok::Eof {
                        "end of input".to_owned()
                    } else {
                        format!("`{}`", self.text(i))
                    };
                    return Err(self.err(
                        i,
                        format!("expected `,` or `)` in the {what} opened at column {col}, found {found}"),
                    ));
                }
            }
        }
    }

    fn prefix(&mut self) -> Result<(Node, u32), ParseError> {
        let i = self.bump();
        let tok = self.toks[i].tok.clone();
        match tok {
            Tok::LParen => {
                let (e, d) = self.expr(0)?;
                let close = self.bump();
                if self.toks[close].tok != Tok::RParen {
                    let col = self.column_of(i);
                    return Err(self.err(
                        close,
                        format!("expected `)` to close the `(` at column {col}"),
                    ));
                }
                Ok((e, d))
            }
            Tok::Str(s) => Ok((Node::Lit(Lit::Str(s.into())), 0)),
            Tok::Minus | Tok::Plus => {
                let next = self.peek();
                if let Tok::Word(w) = next.tok {
                    if is_digits(w) && next.start == self.toks[i].end {
                        // A signed integer literal (§2.2), so -2147483648 is representable.
                        let at = self.bump();
                        let negative = tok == Tok::Minus;
                        return self.int_literal(w, negative, i, at);
                    }
                }
                if tok == Tok::Plus {
                    return Err(self.err(
                        i,
                        "unary `+` is not part of CESQL: write the value without it".into(),
                    ));
                }
                let (x, d) = self.expr(BP_UNARY)?;
                Ok((Node::Neg(Box::new(x)), d + 1))
            }
            Tok::Word(w) => self.word(w, i),
            Tok::Eof => Err(self.err(i, "expected a value, found end of input".into())),
            _ => {
                let what = self.text(i);
                Err(self.err(
                    i,
                    format!("expected a value (attribute, literal, function call, NOT, - or `(`), found `{what}`"),
                ))
            }
        }
    }

    fn int_literal(
        &self,
        digits: &str,
        negative: bool,
        sign_at: usize,
        at: usize,
    ) -> Result<(Node, u32), ParseError> {
        let magnitude: Option<i64> = digits.parse().ok();
        let value = magnitude
            .map(|m| if negative { -m } else { m })
            .and_then(|v| i32::try_from(v).ok());
        match value {
            Some(v) => Ok((Node::Lit(Lit::Int(v)), 0)),
            None => {
                let t0 = &self.toks[sign_at];
                let t1 = &self.toks[at];
                Err(ParseError::syntax(
                    self.src,
                    t0.start.min(t1.start),
                    t1.end,
                    "integer literal out of the 32-bit range -2147483648..2147483647 (spec §2.2)"
                        .into(),
                ))
            }
        }
    }

    fn word(&mut self, w: &'s str, i: usize) -> Result<(Node, u32), ParseError> {
        if is_digits(w) {
            return self.int_literal(w, false, i, i);
        }
        if is_kw(w, "TRUE") || is_kw(w, "FALSE") {
            return Ok((Node::Lit(Lit::Bool(is_kw(w, "TRUE"))), 0));
        }
        if is_kw(w, "NOT") {
            let (x, d) = self.expr(BP_UNARY)?;
            return Ok((Node::Not(Box::new(x)), d + 1));
        }
        if is_kw(w, "EXISTS") {
            let at = self.bump();
            return match self.toks[at].tok {
                Tok::Word(name) if !is_keyword(name) && !is_digits(name) => {
                    let name = self.attribute_name(name, at)?;
                    Ok((Node::Exists(name), 0))
                }
                _ => Err(self.err(
                    at,
                    "expected an attribute name after EXISTS, e.g. EXISTS subject".into(),
                )),
            };
        }
        if is_keyword(w) {
            return Err(self.err(
                i,
                format!(
                    "expected a value, found the keyword {}",
                    w.to_ascii_uppercase()
                ),
            ));
        }
        if self.peek().tok == Tok::LParen {
            return self.call(w, i);
        }
        let name = self.attribute_name(w, i)?;
        Ok((Node::Attr(name), 0))
    }

    /// Attribute names are lower-case letters and digits (§2.2); keywords are case-insensitive,
    /// and so, in practice, are names (`EXISTS SOURCE` in the TCK), so they are lower-cased.
    fn attribute_name(&self, w: &str, i: usize) -> Result<Box<str>, ParseError> {
        if w.contains('_') {
            return Err(self.err(
                i,
                format!(
                    "invalid attribute name `{w}`: attribute names have only letters and digits (a function call needs parentheses)"
                ),
            ));
        }
        Ok(w.to_ascii_lowercase().into_boxed_str())
    }

    fn call(&mut self, name: &'s str, at: usize) -> Result<(Node, u32), ParseError> {
        let valid = name.as_bytes()[0].is_ascii_alphabetic()
            && name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_');
        if !valid {
            return Err(self.err(
                at,
                format!("invalid function name `{name}`: function names have only letters and `_`"),
            ));
        }
        let open = self.bump();
        let (args, depth) = if self.peek().tok == Tok::RParen {
            self.bump();
            (Vec::new(), 0)
        } else {
            self.list(
                open,
                &format!("argument list of {}", name.to_ascii_uppercase()),
            )?
        };
        match Func::resolve(name, args.len()) {
            Some(f) => Ok((Node::Call(f, args), depth + 1)),
            None => {
                let upper = name.to_ascii_uppercase();
                let n = args.len();
                let plural = if n == 1 { "" } else { "s" };
                let message = if Func::name_exists(name) {
                    let forms: Vec<&str> = SIGNATURES
                        .iter()
                        .copied()
                        .filter(|s| s.split('(').next() == Some(upper.as_str()))
                        .collect();
                    format!(
                        "function {upper} does not take {n} argument{plural}: use {}",
                        forms.join(" or ")
                    )
                } else {
                    format!(
                        "unknown function {upper}; the built-in functions are {}",
                        SIGNATURES.join(", ")
                    )
                };
                let t = &self.toks[at];
                Err(ParseError::missing_function(
                    self.src, t.start, t.end, message,
                ))
            }
        }
    }
}
