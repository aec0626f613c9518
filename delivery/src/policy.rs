//! The pure decisions of delivery: how an answer is classified, how long to wait before the
//! next attempt, and what the dead-letter event looks like. No I/O here, so every rule of
//! SEMANTICS.md §4 is a table test.

use base64::Engine as _;
use sluice_core::delivery::{BackoffPolicy, DeliveryPolicy};
use sluice_core::Event;
use std::time::Duration;

/// How one HTTP answer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx: accepted (a body may still turn it into a failure, see [`crate::Outcome`]).
    Success,
    /// 404, 408, 409, 429, 5xx (and connection errors, timeouts): try again.
    Retryable,
    /// 1xx, 3xx, other 4xx: retrying cannot help; straight to the dead-letter sink.
    Terminal,
}

/// Classifies an HTTP status code (Knative's retry table).
pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Success,
        404 | 408 | 409 | 429 | 500..=599 => Class::Retryable,
        _ => Class::Terminal,
    }
}

/// The backoff before retry `k` (1-based), before jitter and cap: `delay·k` (linear) or
/// `delay·2^(k-1)` (exponential).
pub fn base_backoff(policy: BackoffPolicy, delay: Duration, k: u32) -> Duration {
    let k = k.max(1);
    match policy {
        BackoffPolicy::Linear => delay.saturating_mul(k),
        BackoffPolicy::Exponential => {
            let factor = 1u32.checked_shl(k - 1).unwrap_or(u32::MAX);
            delay.saturating_mul(factor)
        }
    }
}

/// The wait before retry `k`: the backoff plus `jitter` (a fraction in [0, 1) of up to 10%),
/// capped by `backoffMax`, and stretched to honour a `Retry-After` no longer than
/// `retryAfterMax` (wait = max(backoff, min(Retry-After, retryAfterMax))).
pub fn retry_wait(
    policy: &DeliveryPolicy,
    k: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let base = base_backoff(policy.backoff_policy, policy.backoff_delay, k);
    let jitter = jitter.clamp(0.0, 1.0);
    let with_jitter = base.saturating_add(base.mul_f64(0.1 * jitter));
    let backoff = with_jitter.min(policy.backoff_max);
    match (retry_after, policy.retry_after_max) {
        (Some(ra), Some(max)) => backoff.max(ra.min(max)),
        _ => backoff,
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait, then attempt again.
    Retry(Duration),
    /// No attempts left, or the failure is terminal: dead-letter (or drop).
    GiveUp,
}

/// Decides what follows failed attempt number `attempt` (1-based).
pub fn after_failure(
    policy: &DeliveryPolicy,
    attempt: u32,
    retryable: bool,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Next {
    if retryable && attempt <= policy.retry {
        Next::Retry(retry_wait(policy, attempt, retry_after, jitter))
    } else {
        Next::GiveUp
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Most of a failed response body kept in `knativeerrordata`.
pub const ERROR_DATA_LIMIT: usize = 1024;

/// The event sent to a dead-letter sink: the original, plus `knativeerrordest` (the URL that
/// failed), `knativeerrorcode` (the last HTTP status, if there was one) and
/// `knativeerrordata` (base64 of the response body cut to 1024 bytes, if not empty).
pub fn dead_letter_event(
    original: &Event,
    failed_url: &str,
    status: Option<u16>,
    body: &[u8],
) -> Event {
    let mut e = original.clone();
    e.set("knativeerrordest", failed_url);
    match status {
        Some(code) => e.set("knativeerrorcode", code.to_string()),
        None => {
            e.remove("knativeerrorcode");
        }
    }
    if body.is_empty() {
        e.remove("knativeerrordata");
    } else {
        let cut = &body[..body.len().min(ERROR_DATA_LIMIT)];
        e.set(
            "knativeerrordata",
            base64::engine::general_purpose::STANDARD.encode(cut),
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::SpecVersion;

    #[test]
    fn classification_table() {
        let table: &[(u16, Class)] = &[
            (100, Class::Terminal),
            (101, Class::Terminal),
            (200, Class::Success),
            (201, Class::Success),
            (202, Class::Success),
            (204, Class::Success),
            (299, Class::Success),
            (301, Class::Terminal),
            (302, Class::Terminal),
            (304, Class::Terminal),
            (400, Class::Terminal),
            (401, Class::Terminal),
            (403, Class::Terminal),
            (404, Class::Retryable),
            (405, Class::Terminal),
            (408, Class::Retryable),
            (409, Class::Retryable),
            (410, Class::Terminal),
            (413, Class::Terminal),
            (422, Class::Terminal),
            (429, Class::Retryable),
            (500, Class::Retryable),
            (502, Class::Retryable),
            (503, Class::Retryable),
            (504, Class::Retryable),
            (599, Class::Retryable),
        ];
        for (status, want) in table {
            assert_eq!(classify(*status), *want, "status {status}");
        }
    }

    fn policy(p: BackoffPolicy, delay_ms: u64) -> DeliveryPolicy {
        DeliveryPolicy {
            retry: 5,
            backoff_policy: p,
            backoff_delay: Duration::from_millis(delay_ms),
            ..DeliveryPolicy::default()
        }
    }

    #[test]
    fn backoff_schedules() {
        let ms = Duration::from_millis;
        let lin = policy(BackoffPolicy::Linear, 200);
        let exp = policy(BackoffPolicy::Exponential, 200);
        let table = [
            (&lin, 1, ms(200)),
            (&lin, 2, ms(400)),
            (&lin, 3, ms(600)),
            (&exp, 1, ms(200)),
            (&exp, 2, ms(400)),
            (&exp, 3, ms(800)),
            (&exp, 4, ms(1600)),
        ];
        for (p, k, want) in table {
            assert_eq!(
                retry_wait(p, k, None, 0.0),
                want,
                "{:?} k={k}",
                p.backoff_policy
            );
            // Jitter adds at most 10%.
            let j = retry_wait(p, k, None, 0.999);
            assert!(j >= want && j <= want + want / 10, "{j:?}");
        }
    }

    #[test]
    fn backoff_is_capped_and_never_overflows() {
        let mut p = policy(BackoffPolicy::Exponential, 1000);
        p.backoff_max = Duration::from_secs(5);
        assert_eq!(retry_wait(&p, 10, None, 0.5), Duration::from_secs(5));
        assert_eq!(retry_wait(&p, 200, None, 0.5), Duration::from_secs(5));
        p.backoff_max = Duration::MAX;
        assert!(retry_wait(&p, 200, None, 0.0) > Duration::from_secs(1 << 30));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_max() {
        let s = Duration::from_secs;
        let mut p = policy(BackoffPolicy::Linear, 1000);
        // Without retryAfterMax the header is ignored.
        assert_eq!(retry_wait(&p, 1, Some(s(30)), 0.0), s(1));
        p.retry_after_max = Some(s(10));
        assert_eq!(retry_wait(&p, 1, Some(s(30)), 0.0), s(10));
        assert_eq!(retry_wait(&p, 1, Some(s(5)), 0.0), s(5));
        // Backoff longer than Retry-After wins.
        assert_eq!(retry_wait(&p, 8, Some(s(5)), 0.0), s(8));
    }

    #[test]
    fn attempts_are_retry_plus_one() {
        let p = policy(BackoffPolicy::Linear, 10);
        for attempt in 1..=5 {
            assert!(matches!(
                after_failure(&p, attempt, true, None, 0.0),
                Next::Retry(_)
            ));
        }
        assert_eq!(after_failure(&p, 6, true, None, 0.0), Next::GiveUp);
        assert_eq!(after_failure(&p, 1, false, None, 0.0), Next::GiveUp);
    }

    #[test]
    fn retry_after_parsing() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn dead_letter_extensions() {
        let mut e = Event::new(SpecVersion::V10, "1", "s", "t");
        e.set_data("payload", false);
        let dl = dead_letter_event(&e, "http://sink/", Some(500), b"boom");
        assert_eq!(dl.get_str("knativeerrordest"), Some("http://sink/"));
        assert_eq!(dl.get_str("knativeerrorcode"), Some("500"));
        assert_eq!(dl.get_str("knativeerrordata"), Some("Ym9vbQ=="));
        assert_eq!(dl.data(), e.data());

        let dl = dead_letter_event(&e, "http://sink/", None, b"");
        assert!(!dl.has("knativeerrorcode"));
        assert!(!dl.has("knativeerrordata"));

        let big = vec![b'x'; 5000];
        let dl = dead_letter_event(&e, "http://sink/", Some(503), &big);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(dl.get_str("knativeerrordata").unwrap())
            .unwrap();
        assert_eq!(decoded.len(), ERROR_DATA_LIMIT);
    }
}
