//! ISO 8601 durations as Knative writes them (`PT0.2S`, `PT1M30S`, `P1DT2H`).

use std::time::Duration;

/// Parses `P[nD][T[nH][nM][n[.f]S]]` (weeks `nW` too). Years and months are refused: their
/// length is not fixed.
pub fn parse(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not an ISO 8601 duration (examples: PT0.2S, PT30S, PT5M, P1D)");
    let rest = s.strip_prefix('P').ok_or_else(err)?;
    if rest.is_empty() || rest == "T" {
        return Err(err());
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return Err(err()),
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut scan = |part: &str, units: &[(char, f64)]| -> Result<(), String> {
        let mut num = String::new();
        let mut next_unit = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                num.push(if c == ',' { '.' } else { c });
                continue;
            }
            let idx = units[next_unit..]
                .iter()
                .position(|(u, _)| *u == c)
                .map(|i| i + next_unit)
                .ok_or_else(|| {
                    if c == 'Y' || (c == 'M' && units[0].0 == 'W') {
                        format!(
                            "{s:?}: years and months have no fixed length; use days (P30D) instead"
                        )
                    } else {
                        err()
                    }
                })?;
            let value: f64 = num.parse().map_err(|_| err())?;
            total += value * units[idx].1;
            num.clear();
            next_unit = idx + 1;
        }
        if num.is_empty() {
            Ok(())
        } else {
            Err(err())
        }
    };
    scan(date, &[('W', 604_800.0), ('D', 86_400.0)])?;
    if let Some(t) = time {
        scan(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_knative_durations() {
        let ms = Duration::from_millis;
        for (s, want) in [
            ("PT0.2S", ms(200)),
            ("PT1S", ms(1000)),
            ("PT1.5S", ms(1500)),
            ("PT0,5S", ms(500)),
            ("PT1M30S", ms(90_000)),
            ("PT2H", ms(7_200_000)),
            ("P1D", ms(86_400_000)),
            ("P1DT1S", ms(86_401_000)),
            ("P1W", ms(604_800_000)),
        ] {
            assert_eq!(parse(s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        for s in ["", "P", "PT", "0.2S", "PT0.2", "PTS", "1s", "PT1S2", "P1DT"] {
            let e = parse(s).unwrap_err();
            assert!(e.contains("ISO 8601"), "{s}: {e}");
        }
        assert!(parse("P1M").unwrap_err().contains("months"));
        assert!(parse("P1Y").unwrap_err().contains("years"));
    }
}
