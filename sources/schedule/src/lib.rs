//! # sluice-schedule
//!
//! A PingSource's `schedule` and `timezone`, parsed once and asked one question: *when is the
//! first tick after this instant?*
//!
//! ```text
//! "CRON_TZ=Europe/Paris 0 9 * * 1-5" ──parse──▶ Schedule ──next_after(t)──▶ t' > t (UTC)
//!  timezone: "Europe/Paris"          (validated once, in sluice-crds)   (pure; the scheduler loop
//!                                                                        in sluice-sources waits)
//! ```
//!
//! What is accepted, as Knative's PingSource (robfig/cron) accepts it:
//!
//! - 5 fields `minute hour day-of-month month day-of-week`, or 6 with leading seconds;
//!   day-of-week 0–7 (0 and 7 are Sunday) or `SUN`–`SAT`, months `JAN`–`DEC`; when both
//!   day-of-month and day-of-week are restricted, either may match (Vixie cron);
//! - descriptors `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`),
//!   `@hourly`, and `@every <duration>` with a Go duration (`90s`, `1h30m`), which, as in
//!   robfig/cron, ticks every duration counted from the second before (not aligned to the
//!   clock) and is rounded down to whole seconds, at least one;
//! - the time zone from `timezone` or a `CRON_TZ=<zone> ` (or `TZ=<zone> `) prefix, an IANA
//!   name; UTC when neither is given.
//!
//! Patterns are evaluated by the `croner` crate (POSIX/Vixie semantics, DST-aware: a tick that
//! falls in a skipped hour fires once when the gap ends, a tick in a repeated hour fires once). The `cron` crate was
//! not used because it numbers weekdays 1–7 from Sunday and ANDs day-of-month with
//! day-of-week, so `0 9 * * 1-5` would silently mean Sunday to Thursday.

use chrono::{DateTime, TimeZone as _, Timelike as _, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use std::time::{Duration, SystemTime};

/// The zone a schedule is read in when neither `timezone` nor `CRON_TZ=` names one. Knative
/// uses the system zone of its adapter pod, which is UTC in practice; embedded mode picks UTC
/// explicitly so a schedule means the same on every machine.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// Why a schedule or time zone was refused. The messages are shown to users verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the schedule is empty; write a cron pattern such as `*/5 * * * *`, `*/10 * * * * *` (leading seconds) or `@hourly`")]
    Empty,
    #[error("`{schedule}` is not a valid cron schedule: {reason} (use 5 fields `minute hour day-of-month month day-of-week`, 6 with leading seconds, or @yearly, @monthly, @weekly, @daily, @hourly, @every <duration>)")]
    Pattern { schedule: String, reason: String },
    #[error("`@every {0}` needs a Go duration such as 30s, 5m or 1h30m")]
    Every(String),
    #[error(
        "unknown time zone `{0}`: use an IANA name such as UTC, Europe/Paris or America/New_York"
    )]
    UnknownTimezone(String),
    #[error("the schedule's prefix says CRON_TZ={prefix} but `timezone` is `{field}`; name the time zone in one place")]
    ConflictingTimezones { prefix: String, field: String },
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The pattern without a `CRON_TZ=` prefix.
    pattern: String,
    tz: Tz,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron(Box<croner::Cron>),
    /// `@every`: whole seconds, at least one.
    Every(Duration),
}

impl Schedule {
    /// Parses `schedule` (optionally prefixed `CRON_TZ=<zone> `) in `timezone` (an IANA name;
    /// `None` or empty means the prefix's zone, else UTC).
    pub fn parse(schedule: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let (prefix_tz, pattern) = split_tz_prefix(schedule.trim());
        let field_tz = timezone.map(str::trim).filter(|t| !t.is_empty());
        let tz_name = match (prefix_tz, field_tz) {
            (Some(p), Some(f)) if p != f => {
                return Err(ScheduleError::ConflictingTimezones {
                    prefix: p.to_string(),
                    field: f.to_string(),
                })
            }
            (Some(p), _) => p,
            (None, Some(f)) => f,
            (None, None) => DEFAULT_TIMEZONE,
        };
        let tz: Tz = tz_name
            .parse()
            .map_err(|_| ScheduleError::UnknownTimezone(tz_name.to_string()))?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let kind = if let Some(every) = strip_prefix_ignore_case(pattern, "@every") {
            let every = every.trim();
            let d = parse_go_duration(every).ok_or_else(|| ScheduleError::Every(every.into()))?;
            // robfig/cron: below a second becomes a second, fractions of a second are dropped.
            Kind::Every(Duration::from_secs(d.as_secs().max(1)))
        } else {
            let fields = pattern.split_whitespace().count();
            if !pattern.starts_with('@') && fields != 5 && fields != 6 {
                return Err(ScheduleError::Pattern {
                    schedule: schedule.trim().to_string(),
                    reason: format!("it has {fields} fields"),
                });
            }
            let normalized = if pattern.eq_ignore_ascii_case("@midnight") {
                "@daily"
            } else {
                pattern
            };
            let cron = CronParser::builder()
                .seconds(Seconds::Optional)
                .year(Year::Disallowed)
                .build()
                .parse(normalized)
                .map_err(|e| ScheduleError::Pattern {
                    schedule: schedule.trim().to_string(),
                    reason: e.to_string(),
                })?;
            Kind::Cron(Box::new(cron))
        };
        Ok(Schedule {
            pattern: pattern.to_string(),
            tz,
            kind,
        })
    }

    /// The first tick strictly after `after`, or `None` if there is none (a pattern such as
    /// `0 0 30 2 *` never matches).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Every(d) => {
                // robfig/cron's ConstantDelaySchedule: from the whole second of `after`.
                let base = after.with_nanosecond(0)?;
                Some(base + chrono::Duration::from_std(*d).ok()?)
            }
            Kind::Cron(cron) => {
                let local = self.tz.from_utc_datetime(&after.naive_utc());
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
                    // croner steps whole seconds from `after`'s second; never answer `after`
                    // itself or earlier.
                    .filter(|t| *t > after)
            }
        }
    }

    /// The time zone the pattern is read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The pattern, without a `CRON_TZ=` prefix.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl sluice_core::topology::TickSchedule for Schedule {
    fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        Schedule::next_after(self, DateTime::<Utc>::from(after)).map(SystemTime::from)
    }
}

/// `CRON_TZ=Europe/Paris 0 9 * * *` → (`Europe/Paris`, `0 9 * * *`); `TZ=` is accepted too.
fn split_tz_prefix(s: &str) -> (Option<&str>, &str) {
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return match rest.split_once(char::is_whitespace) {
                Some((tz, pattern)) => (Some(tz), pattern),
                None => (Some(rest), ""),
            };
        }
    }
    (None, s)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    let rest = &s[prefix.len()..];
    (head.eq_ignore_ascii_case(prefix)
        && (rest.is_empty() || rest.starts_with(char::is_whitespace)))
    .then_some(rest)
}

/// Parses a Go `time.Duration` string: a sequence of decimal numbers with units `ns`, `us`
/// (`µs`), `ms`, `s`, `m`, `h`, e.g. `1h30m`, `1.5s`. Negative durations are refused.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(schedule: &str, tz: Option<&str>, after: &str) -> String {
        let s = Schedule::parse(schedule, tz).unwrap_or_else(|e| panic!("{schedule}: {e}"));
        s.next_after(utc(after))
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "never".into())
    }

    #[test]
    fn next_tick_table() {
        // (schedule, timezone, after, expected next tick in UTC)
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            // 5 fields: minute granularity, second 0.
            (
                "* * * * *",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-01T10:01:00+00:00",
            ),
            (
                "* * * * *",
                None,
                "2024-03-01T10:00:59.999Z",
                "2024-03-01T10:01:00+00:00",
            ),
            (
                "*/15 * * * *",
                None,
                "2024-03-01T10:07:00Z",
                "2024-03-01T10:15:00+00:00",
            ),
            (
                "0 9 * * *",
                None,
                "2024-03-01T09:00:00Z",
                "2024-03-02T09:00:00+00:00",
            ),
            // Day-of-week as POSIX: 1-5 is Monday to Friday. 2024-03-02 is a Saturday.
            (
                "0 9 * * 1-5",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-04T09:00:00+00:00",
            ),
            (
                "0 9 * * MON-FRI",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-04T09:00:00+00:00",
            ),
            (
                "0 0 * * 0",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-03T00:00:00+00:00",
            ),
            (
                "0 0 * * 7",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-03T00:00:00+00:00",
            ),
            // Both day fields restricted: either matches (Vixie cron). 2024-03-04 is a Monday.
            (
                "0 0 15 * MON",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-04T00:00:00+00:00",
            ),
            // 6 fields: leading seconds.
            (
                "*/10 * * * * *",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-01T10:00:10+00:00",
            ),
            (
                "* * * * * *",
                None,
                "2024-03-01T10:00:00.500Z",
                "2024-03-01T10:00:01+00:00",
            ),
            (
                "30 0 * * * *",
                None,
                "2024-03-01T10:00:30Z",
                "2024-03-01T11:00:30+00:00",
            ),
            // Descriptors.
            (
                "@yearly",
                None,
                "2024-03-01T10:00:00Z",
                "2025-01-01T00:00:00+00:00",
            ),
            (
                "@annually",
                None,
                "2024-03-01T10:00:00Z",
                "2025-01-01T00:00:00+00:00",
            ),
            (
                "@monthly",
                None,
                "2024-03-01T10:00:00Z",
                "2024-04-01T00:00:00+00:00",
            ),
            (
                "@weekly",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-03T00:00:00+00:00",
            ),
            (
                "@daily",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-02T00:00:00+00:00",
            ),
            (
                "@midnight",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-02T00:00:00+00:00",
            ),
            (
                "@hourly",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-01T11:00:00+00:00",
            ),
            (
                "@HOURLY",
                None,
                "2024-03-01T10:00:00Z",
                "2024-03-01T11:00:00+00:00",
            ),
            // @every: from the whole second before, not aligned to the clock.
            (
                "@every 90s",
                None,
                "2024-03-01T10:00:00.700Z",
                "2024-03-01T10:01:30+00:00",
            ),
            (
                "@every 1h30m",
                None,
                "2024-03-01T10:00:05Z",
                "2024-03-01T11:30:05+00:00",
            ),
            (
                "@every 500ms",
                None,
                "2024-03-01T10:00:05Z",
                "2024-03-01T10:00:06+00:00",
            ),
            // Time zones: 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer.
            (
                "0 9 * * *",
                Some("Europe/Paris"),
                "2024-03-01T00:00:00Z",
                "2024-03-01T08:00:00+00:00",
            ),
            (
                "0 9 * * *",
                Some("Europe/Paris"),
                "2024-07-01T00:00:00Z",
                "2024-07-01T07:00:00+00:00",
            ),
            (
                "CRON_TZ=Europe/Paris 0 9 * * *",
                None,
                "2024-03-01T00:00:00Z",
                "2024-03-01T08:00:00+00:00",
            ),
            (
                "TZ=America/New_York 0 9 * * *",
                None,
                "2024-03-01T00:00:00Z",
                "2024-03-01T14:00:00+00:00",
            ),
            (
                "CRON_TZ=Asia/Kolkata @daily",
                None,
                "2024-03-01T00:00:00Z",
                "2024-03-01T18:30:00+00:00",
            ),
            // The same zone in the prefix and the field is not a conflict.
            (
                "CRON_TZ=Europe/Paris 0 9 * * *",
                Some("Europe/Paris"),
                "2024-03-01T00:00:00Z",
                "2024-03-01T08:00:00+00:00",
            ),
            // DST, Europe/Paris 2024-03-31: 02:00 jumps to 03:00. 02:30 does not exist that day;
            // as in Vixie cron the tick fires when the gap ends (03:00 CEST = 01:00Z), once.
            (
                "30 2 * * *",
                Some("Europe/Paris"),
                "2024-03-30T12:00:00Z",
                "2024-03-31T01:00:00+00:00",
            ),
            (
                "30 2 * * *",
                Some("Europe/Paris"),
                "2024-03-31T01:00:00Z",
                "2024-04-01T00:30:00+00:00",
            ),
            // DST, Europe/Paris 2024-10-27: 03:00 goes back to 02:00. 02:30 happens twice; a
            // fixed-time job fires once, at the first.
            (
                "30 2 * * *",
                Some("Europe/Paris"),
                "2024-10-26T12:00:00Z",
                "2024-10-27T00:30:00+00:00",
            ),
            (
                "30 2 * * *",
                Some("Europe/Paris"),
                "2024-10-27T00:30:00Z",
                "2024-10-28T01:30:00+00:00",
            ),
            // Leap day.
            (
                "0 0 29 2 *",
                None,
                "2024-03-01T00:00:00Z",
                "2028-02-29T00:00:00+00:00",
            ),
        ];
        for (schedule, tz, after, want) in cases {
            assert_eq!(
                &next(schedule, *tz, after),
                want,
                "{schedule} tz={tz:?} after {after}"
            );
        }
    }

    #[test]
    fn ticks_are_strictly_after_the_instant() {
        let s = Schedule::parse("* * * * * *", None).unwrap();
        let t = utc("2024-03-01T10:00:01Z");
        assert_eq!(s.next_after(t).unwrap(), utc("2024-03-01T10:00:02Z"));
    }

    #[test]
    fn invalid_schedules_say_why() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("", None, "empty"),
            ("   ", None, "empty"),
            ("* * * *", None, "not a valid cron schedule"),
            ("* * * * * * *", None, "it has 7 fields"),
            ("* * * *", None, "it has 4 fields"),
            ("61 * * * *", None, "not a valid cron schedule"),
            ("* 25 * * *", None, "not a valid cron schedule"),
            ("* * * * MOO", None, "not a valid cron schedule"),
            ("@fortnightly", None, "not a valid cron schedule"),
            ("@every", None, "@every"),
            ("@every 5 minutes", None, "Go duration"),
            ("@every -5s", None, "Go duration"),
            (
                "* * * * *",
                Some("Mars/Olympus_Mons"),
                "unknown time zone `Mars/Olympus_Mons`",
            ),
            (
                "CRON_TZ=Nowhere * * * * *",
                None,
                "unknown time zone `Nowhere`",
            ),
            ("CRON_TZ=Europe/Paris", None, "empty"),
            (
                "CRON_TZ=Europe/Paris * * * * *",
                Some("UTC"),
                "name the time zone in one place",
            ),
        ];
        for (schedule, tz, want) in cases {
            let e = Schedule::parse(schedule, *tz).unwrap_err().to_string();
            assert!(e.contains(want), "{schedule:?} tz={tz:?}: {e}");
        }
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        for (s, want) in [
            ("0", Some(ms(0))),
            ("1s", Some(ms(1000))),
            ("1.5s", Some(ms(1500))),
            ("1h30m", Some(ms(5_400_000))),
            ("2m3s", Some(ms(123_000))),
            ("300ms", Some(ms(300))),
            ("+10s", Some(ms(10_000))),
            ("", None),
            ("10", None),
            ("s", None),
            ("10x", None),
            ("-1s", None),
        ] {
            assert_eq!(parse_go_duration(s), want, "{s}");
        }
    }

    #[test]
    fn never_matching_patterns_have_no_next_tick() {
        let s = Schedule::parse("0 0 30 2 *", None).unwrap();
        assert_eq!(s.next_after(utc("2024-01-01T00:00:00Z")), None);
    }
}
