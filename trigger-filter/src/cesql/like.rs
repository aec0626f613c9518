//! `LIKE` patterns (spec §3.4.3), compiled once when the expression is parsed.
//!
//! `%` matches any run of characters, `_` exactly one character (not byte), `\%` and `\_` match
//! the wildcard literally. The spec lets `\` escape only those two, so a `\` before anything else
//! (including another `\`) is a literal backslash. The common shapes (`abc`, `abc%`, `%abc`,
//! `%abc%`) become plain string comparisons; everything else runs a backtracking matcher that
//! needs no allocation and is O(pattern × value) in the worst case — no regex is built.

/// One element of a general pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    Lit(char),
    One,
    Many,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LikePattern {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    General(Box<[Elem]>),
}

impl LikePattern {
    pub(crate) fn compile(pattern: &str) -> Self {
        let mut elems: Vec<Elem> = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let e = match c {
                '\\' => match chars.peek() {
                    Some(&w @ ('%' | '_')) => {
                        chars.next();
                        Elem::Lit(w)
                    }
                    _ => Elem::Lit('\\'),
                },
                '%' => Elem::Many,
                '_' => Elem::One,
                c => Elem::Lit(c),
            };
            // `%%` is the same as `%`; collapsing keeps the matcher's backtracking short.
            if !(e == Elem::Many && elems.last() == Some(&Elem::Many)) {
                elems.push(e);
            }
        }

        let lits = |es: &[Elem]| -> Option<Box<str>> {
            es.iter()
                .map(|e| match e {
                    Elem::Lit(c) => Some(*c),
                    _ => None,
                })
                .collect::<Option<String>>()
                .map(String::into_boxed_str)
        };
        let n = elems.len();
        let starts_many = elems.first() == Some(&Elem::Many);
        let ends_many = n > 0 && elems[n - 1] == Elem::Many;
        if let Some(s) = lits(&elems) {
            return LikePattern::Exact(s);
        }
        if n == 1 {
            // A lone `%`.
            return LikePattern::Prefix("".into());
        }
        if ends_many && !starts_many {
            if let Some(s) = lits(&elems[..n - 1]) {
                return LikePattern::Prefix(s);
            }
        }
        if starts_many && !ends_many {
            if let Some(s) = lits(&elems[1..]) {
                return LikePattern::Suffix(s);
            }
        }
        if starts_many && ends_many {
            if let Some(s) = lits(&elems[1..n - 1]) {
                return LikePattern::Contains(s);
            }
        }
        LikePattern::General(elems.into_boxed_slice())
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            LikePattern::Exact(s) => value == &**s,
            LikePattern::Prefix(s) => value.starts_with(&**s),
            LikePattern::Suffix(s) => value.ends_with(&**s),
            LikePattern::Contains(s) => value.contains(&**s),
            LikePattern::General(elems) => general_match(elems, value),
        }
    }
}

/// The classic wildcard matcher: on a mismatch, retry from the most recent `%` with it
/// swallowing one more character. Remembering only the last `%` is enough, because anything an
/// earlier `%` could absorb the later one can absorb too.
fn general_match(pat: &[Elem], s: &str) -> bool {
    let mut p = 0;
    let mut i = 0;
    // (pattern index after the last `%`, value index that `%` has swallowed up to)
    let mut star: Option<(usize, usize)> = None;
    while let Some(c) = s[i..].chars().next() {
        match pat.get(p) {
            Some(Elem::Many) => {
                p += 1;
                star = Some((p, i));
                continue;
            }
            Some(Elem::One) => {
                p += 1;
                i += c.len_utf8();
                continue;
            }
            Some(Elem::Lit(l)) if *l == c => {
                p += 1;
                i += c.len_utf8();
                continue;
            }
            _ => {}
        }
        let Some((sp, si)) = star else {
            return false;
        };
        let Some(swallowed) = s[si..].chars().next() else {
            return false;
        };
        let ni = si + swallowed.len_utf8();
        star = Some((sp, ni));
        p = sp;
        i = ni;
    }
    pat[p..].iter().all(|e| *e == Elem::Many)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(
            LikePattern::compile("abc"),
            LikePattern::Exact("abc".into())
        );
        assert_eq!(
            LikePattern::compile("ab%"),
            LikePattern::Prefix("ab".into())
        );
        assert_eq!(
            LikePattern::compile("%ab"),
            LikePattern::Suffix("ab".into())
        );
        assert_eq!(
            LikePattern::compile("%ab%"),
            LikePattern::Contains("ab".into())
        );
        assert_eq!(LikePattern::compile("%"), LikePattern::Prefix("".into()));
        assert_eq!(LikePattern::compile("%%"), LikePattern::Prefix("".into()));
        assert_eq!(LikePattern::compile(""), LikePattern::Exact("".into()));
        assert_eq!(
            LikePattern::compile("a\\%"),
            LikePattern::Exact("a%".into())
        );
        assert_eq!(
            LikePattern::compile("a\\%%"),
            LikePattern::Prefix("a%".into())
        );
        assert_eq!(
            LikePattern::compile("a\\c"),
            LikePattern::Exact("a\\c".into())
        );
        assert!(matches!(
            LikePattern::compile("a_c"),
            LikePattern::General(_)
        ));
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            ("a%b%c", "abc", true),
            ("a%b%c", "azzzbzzzc", true),
            ("a%b%c", "azzzbzzz", false),
            ("a%b%c", "acb", false),
            ("_b%", "ab", true),
            ("_b%", "abcd1", true),
            ("_b%", "b", false),
            ("_b%", "acd", false),
            ("_b%", "aBc", false),
            ("abc\\%", "abc%", true),
            ("abc\\%", "abcd", false),
            ("a\\_b", "a_b", true),
            ("a\\_b", "azb", false),
            ("._._.", ".a.b.", true),
            ("._._.", "abcd.", false),
            ("%a%a%a%a%b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            ("%a%a%a%a%b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", true),
            // Characters, not bytes.
            ("_", "é", true),
            ("__", "é", false),
            ("%é_", "xxé€", true),
            ("h_llo%", "h\u{1F600}llo world", true),
            // A backslash before anything but a wildcard is literal.
            ("ab\\c", "ab\\c", true),
            ("ab\\c", "abc", false),
            ("a\\\\%", "a\\%", true),
            ("a\\", "a\\", true),
            ("%_", "", false),
            ("%", "", true),
            ("_%_", "ab", true),
            ("_%_", "a", false),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                LikePattern::compile(pattern).matches(value),
                *want,
                "{value:?} LIKE {pattern:?}"
            );
        }
    }
}
