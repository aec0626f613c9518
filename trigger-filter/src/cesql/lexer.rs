//! Splits an expression into tokens, each with its byte span for error positions.

use super::ParseError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok<'s> {
    /// A run of ASCII letters, digits and `_`: keyword, identifier, function name or integer;
    /// the parser tells them apart (it knows whether a `(` follows).
    Word(&'s str),
    /// A string literal, escapes already resolved.
    Str(String),
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    /// `!=` or `<>`.
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

#[derive(Debug, Clone)]
pub(crate) struct Token<'s> {
    pub tok: Tok<'s>,
    /// Byte offsets into the source.
    pub start: usize,
    pub end: usize,
}

pub(crate) fn tokenize(src: &str) -> Result<Vec<Token<'_>>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::with_capacity(src.len() / 3 + 1);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        let single = |tok| (tok, start + 1);
        let (tok, end) = match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'(' => single(Tok::LParen),
            b')' => single(Tok::RParen),
            b',' => single(Tok::Comma),
            b'+' => single(Tok::Plus),
            b'-' => single(Tok::Minus),
            b'*' => single(Tok::Star),
            b'/' => single(Tok::Slash),
            b'%' => single(Tok::Percent),
            b'=' => single(Tok::Eq),
            b'!' if bytes.get(i + 1) == Some(&b'=') => (Tok::Ne, i + 2),
            b'<' => match bytes.get(i + 1) {
                Some(b'>') => (Tok::Ne, i + 2),
                Some(b'=') => (Tok::Le, i + 2),
                _ => single(Tok::Lt),
            },
            b'>' => match bytes.get(i + 1) {
                Some(b'=') => (Tok::Ge, i + 2),
                _ => single(Tok::Gt),
            },
            b'\'' | b'"' => string_literal(src, i)?,
            b if b.is_ascii_alphanumeric() || b == b'_' => {
                let mut j = i + 1;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                (Tok::Word(&src[i..j]), j)
            }
            _ => {
                let c = src[i..].chars().next().unwrap_or('\u{FFFD}');
                if c.is_whitespace() {
                    // Unicode spaces (NBSP from a copy-paste, ...) separate tokens too.
                    i += c.len_utf8();
                    continue;
                }
                let hint = match c {
                    '!' => "`!` is only valid in `!=`; use NOT for negation",
                    '&' | '|' => "use AND / OR",
                    '`' => "string literals use '...' or \"...\"",
                    _ => "identifiers are ASCII letters and digits",
                };
                return Err(ParseError::syntax(
                    src,
                    i,
                    i + c.len_utf8(),
                    format!("unexpected character {c:?} ({hint})"),
                ));
            }
        };
        out.push(Token { tok, start, end });
        i = end;
    }
    out.push(Token {
        tok: Tok::Eof,
        start: src.len(),
        end: src.len(),
    });
    Ok(out)
}

/// Reads a `'...'` or `"..."` literal starting at `start`. A backslash always takes the next
/// character with it (so `\'` does not close a `'` string); only `\<quote>` is an escape, every
/// other pair is kept as written, because `LIKE` patterns give `\%` and `\_` their own meaning
/// (spec §2.2 and the TCK's `'ab\c' LIKE 'ab\c'`).
fn string_literal(src: &str, start: usize) -> Result<(Tok<'static>, usize), ParseError> {
    let quote = src.as_bytes()[start] as char;
    let mut value = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        if c == quote {
            return Ok((Tok::Str(value), start + 1 + off + 1));
        }
        if c == '\\' {
            match chars.next() {
                Some((_, q)) if q == quote => value.push(q),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            }
        } else {
            value.push(c);
        }
    }
    Err(ParseError::syntax(
        src,
        start,
        src.len(),
        format!("unterminated string literal: add the closing {quote} (write \\{quote} for a {quote} inside the string)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok<'_>> {
        tokenize(src).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn operators_and_words() {
        assert_eq!(
            toks("a<>b != c<=d>=e<f>g"),
            vec![
                Tok::Word("a"),
                Tok::Ne,
                Tok::Word("b"),
                Tok::Ne,
                Tok::Word("c"),
                Tok::Le,
                Tok::Word("d"),
                Tok::Ge,
                Tok::Word("e"),
                Tok::Lt,
                Tok::Word("f"),
                Tok::Gt,
                Tok::Word("g"),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("CONCAT_WS(x,1)"),
            vec![
                Tok::Word("CONCAT_WS"),
                Tok::LParen,
                Tok::Word("x"),
                Tok::Comma,
                Tok::Word("1"),
                Tok::RParen,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn strings() {
        assert_eq!(
            toks(r#"'a"b\'c'"#),
            vec![Tok::Str("a\"b'c".into()), Tok::Eof]
        );
        assert_eq!(
            toks(r#""a'b\"c""#),
            vec![Tok::Str("a'b\"c".into()), Tok::Eof]
        );
        assert_eq!(
            toks(r"'a\_b\\'"),
            vec![Tok::Str(r"a\_b\\".into()), Tok::Eof]
        );
        assert_eq!(toks("'é€'"), vec![Tok::Str("é€".into()), Tok::Eof]);
    }

    #[test]
    fn errors_have_positions() {
        let e = tokenize("a = 'abc").unwrap_err();
        assert_eq!((e.offset, e.column, e.found.as_str()), (4, 5, "'abc"));
        let e = tokenize("é && b").unwrap_err();
        assert_eq!((e.offset, e.column), (0, 1));
        let e = tokenize("ab && b").unwrap_err();
        assert_eq!((e.offset, e.column, e.found.as_str()), (3, 4, "&"));
        assert!(e.message.contains("AND"), "{}", e.message);
    }
}
