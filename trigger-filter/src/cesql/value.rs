//! CESQL values, their types and the casts between them (spec §3.1, §3.7).

use std::borrow::Cow;
use std::fmt;

/// The three CESQL types (spec §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Boolean,
    Integer,
    String,
}

impl Type {
    /// The type's zero value (spec §3.1), returned beside an error.
    pub(crate) fn zero(self) -> Value<'static> {
        match self {
            Type::Boolean => Value::Boolean(false),
            Type::Integer => Value::Integer(0),
            Type::String => Value::String(Cow::Borrowed("")),
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Boolean => "Boolean",
            Type::Integer => "Integer",
            Type::String => "String",
        })
    }
}

/// A CESQL value. Strings borrow from the event or from the expression whenever they can, so
/// evaluating an expression that only compares attributes allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Boolean(bool),
    /// 32-bit, as the spec requires.
    Integer(i32),
    String(Cow<'a, str>),
}

impl<'a> Value<'a> {
    pub fn ty(&self) -> Type {
        match self {
            Value::Boolean(_) => Type::Boolean,
            Value::Integer(_) => Type::Integer,
            Value::String(_) => Type::String,
        }
    }

    /// Detaches the value from the event and expression it borrows from.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Boolean(b) => Value::Boolean(b),
            Value::Integer(i) => Value::Integer(i),
            Value::String(s) => Value::String(Cow::Owned(s.into_owned())),
        }
    }

    /// `x -> Boolean` (spec §3.7). `None` is a cast error.
    pub(crate) fn to_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            Value::Integer(i) => Some(*i != 0),
            Value::String(s) => str_to_bool(s),
        }
    }

    /// `x -> Integer` (spec §3.7). `None` is a cast error.
    pub(crate) fn to_int(&self) -> Option<i32> {
        match self {
            Value::Boolean(b) => Some(i32::from(*b)),
            Value::Integer(i) => Some(*i),
            Value::String(s) => str_to_int(s),
        }
    }

    /// `x -> String` (spec §3.7); never fails. Allocates only for integers.
    pub(crate) fn into_string(self) -> Cow<'a, str> {
        match self {
            Value::Boolean(b) => Cow::Borrowed(bool_str(b)),
            Value::Integer(i) => Cow::Owned(i.to_string()),
            Value::String(s) => s,
        }
    }

    /// Calls `f` with the value's string form without allocating (integers are formatted into a
    /// stack buffer): `LIKE` and `=` against a string use it on every event.
    pub(crate) fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Value::Boolean(b) => f(bool_str(*b)),
            Value::Integer(i) => {
                let mut buf = IntBuf::new();
                f(buf.format(i64::from(*i)))
            }
            Value::String(s) => f(s),
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::String(s) => write!(f, "{s:?}"),
        }
    }
}

pub(crate) fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// `String -> Boolean`: the lower-case form must be exactly `true` or `false`. Only ASCII letters
/// lower-case to the ASCII letters of those words (the Kelvin sign lower-cases to `k`, which
/// neither word has), so an ASCII case-insensitive comparison is exact and allocation-free.
pub(crate) fn str_to_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// `String -> Integer`: base 10, optional leading `+` or `-`, no spaces, must fit 32 bits.
pub(crate) fn str_to_int(s: &str) -> Option<i32> {
    // `i32::from_str` accepts exactly that grammar: an optional sign then ASCII digits.
    s.parse::<i32>().ok()
}

/// A stack buffer that formats an integer without allocating.
pub(crate) struct IntBuf([u8; 20]);

impl IntBuf {
    pub(crate) fn new() -> Self {
        IntBuf([0; 20])
    }

    pub(crate) fn format(&mut self, v: i64) -> &str {
        let mut n = v.unsigned_abs();
        let mut pos = self.0.len();
        loop {
            pos -= 1;
            self.0[pos] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if v < 0 {
            pos -= 1;
            self.0[pos] = b'-';
        }
        // Only ASCII digits and '-' were written.
        std::str::from_utf8(&self.0[pos..]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_buf_formats_like_display() {
        for v in [0, 1, -1, 42, -2147483648, 2147483647, i64::MIN, i64::MAX] {
            assert_eq!(IntBuf::new().format(v), v.to_string());
        }
    }

    #[test]
    fn string_casts() {
        let table: &[(&str, Option<i32>, Option<bool>)] = &[
            ("1", Some(1), None),
            ("+1", Some(1), None),
            ("-1", Some(-1), None),
            ("2147483647", Some(i32::MAX), None),
            ("2147483648", None, None),
            ("-2147483648", Some(i32::MIN), None),
            (" 1", None, None),
            ("1 ", None, None),
            ("", None, None),
            ("0x10", None, None),
            ("true", None, Some(true)),
            ("TRUE", None, Some(true)),
            ("False", None, Some(false)),
            ("yes", None, None),
            ("\u{212A}", None, None),
        ];
        for (s, int, b) in table {
            assert_eq!(str_to_int(s), *int, "int of {s:?}");
            assert_eq!(str_to_bool(s), *b, "bool of {s:?}");
        }
    }

    #[test]
    fn other_casts() {
        assert_eq!(Value::Integer(0).to_bool(), Some(false));
        assert_eq!(Value::Integer(-5).to_bool(), Some(true));
        assert_eq!(Value::Boolean(true).to_int(), Some(1));
        assert_eq!(Value::Integer(-7).into_string(), "-7");
        assert_eq!(Value::Boolean(false).into_string(), "false");
        assert_eq!(Value::Integer(-7).with_str(str::to_owned), "-7");
    }
}
