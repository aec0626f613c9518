//! The broker loop guard, `knativebrokerttl` (SEMANTICS.md §2): absent → 255; present → one
//! less; a received value of 0 or below is exhausted and refused. A reply carries the TTL of
//! the event it answers, so each hop through a broker costs one and reply loops end.

use sluice_core::{AttrValue, Event};

pub use sluice_core::event::TTL_ATTRIBUTE;
/// The TTL given to events that arrive without one.
pub const DEFAULT_TTL: i64 = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("knativebrokerttl is {0}: this event has been through brokers too many times (a reply loop?) and is refused")]
    Exhausted(i64),
    #[error("knativebrokerttl is {0:?}; it must be a whole number")]
    Invalid(String),
}

/// Checks and updates the TTL of an arriving event; returns the stored value.
pub fn apply_ttl(event: &mut Event) -> Result<i64, TtlError> {
    let next = match event.get(TTL_ATTRIBUTE) {
        None => DEFAULT_TTL,
        Some(v) => {
            let n = match v {
                AttrValue::Integer(i) => *i,
                AttrValue::String(s) => s
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| TtlError::Invalid(s.clone()))?,
                AttrValue::Boolean(b) => return Err(TtlError::Invalid(b.to_string())),
            };
            if n <= 0 {
                return Err(TtlError::Exhausted(n));
            }
            n - 1
        }
    };
    event.set(TTL_ATTRIBUTE, AttrValue::String(next.to_string()));
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::SpecVersion;

    fn with(ttl: Option<AttrValue>) -> Event {
        let mut e = Event::new(SpecVersion::V10, "1", "s", "t");
        if let Some(v) = ttl {
            e.set(TTL_ATTRIBUTE, v);
        }
        e
    }

    #[test]
    fn ttl_table() {
        let s = |v: &str| Some(AttrValue::String(v.into()));
        let cases: Vec<(Option<AttrValue>, Result<i64, TtlError>)> = vec![
            (None, Ok(255)),
            (s("255"), Ok(254)),
            (s("1"), Ok(0)),
            (Some(AttrValue::Integer(3)), Ok(2)),
            (s("0"), Err(TtlError::Exhausted(0))),
            (s("-4"), Err(TtlError::Exhausted(-4))),
            (s("many"), Err(TtlError::Invalid("many".into()))),
        ];
        for (input, want) in cases {
            let mut e = with(input.clone());
            let got = apply_ttl(&mut e);
            assert_eq!(got, want, "{input:?}");
            if let Ok(n) = got {
                assert_eq!(e.get_str(TTL_ATTRIBUTE), Some(n.to_string().as_str()));
            }
        }
    }
}
