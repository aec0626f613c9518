//! Pure bookkeeping: what happened to every scheduled event (sent, acknowledged, delivered
//! how many times), latency summaries, and the formatting the report uses.

use hdrhistogram::Histogram;

/// What the producer side learned about one scheduled event.
pub mod send_status {
    /// Not sent (the run stopped before its slot).
    pub const NOT_SENT: u8 = 0;
    /// 2xx: the broker (or the sink, for the baseline) took it.
    pub const ACCEPTED: u8 = 1;
    /// 503: refused by backpressure.
    pub const REFUSED: u8 = 2;
    /// Any other status, or a transport error.
    pub const FAILED: u8 = 3;
}

/// The outcome of one load step, counted from the per-event send statuses and the
/// per-(event, subscriber) delivery counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Events scheduled and sent.
    pub sent: u64,
    /// Sent and acknowledged with 2xx.
    pub accepted: u64,
    /// Sent and refused with 503.
    pub refused: u64,
    /// Sent and answered with another status or not answered.
    pub failed: u64,
    /// Distinct (event, subscriber) pairs that arrived at the sink.
    pub delivered: u64,
    /// (acknowledged event, subscriber) pairs that never arrived: lost.
    pub lost: u64,
    /// (event, subscriber) pairs that arrived more than once (each counted once).
    pub duplicated: u64,
    /// Deliveries of events that were not acknowledged (refused or failed, yet delivered).
    pub unacknowledged_delivered: u64,
}

/// Counts lost and duplicated deliveries. `status[seq]` is the send status of event `seq`;
/// `deliveries[seq * fanout + k]` is how often subscriber `k` received it.
pub fn account(status: &[u8], deliveries: &[u8], fanout: usize) -> Accounting {
    assert_eq!(status.len() * fanout, deliveries.len());
    let mut a = Accounting::default();
    for (seq, &s) in status.iter().enumerate() {
        match s {
            send_status::NOT_SENT => {}
            send_status::ACCEPTED => a.accepted += 1,
            send_status::REFUSED => a.refused += 1,
            _ => a.failed += 1,
        }
        if s != send_status::NOT_SENT {
            a.sent += 1;
        }
        for &d in &deliveries[seq * fanout..(seq + 1) * fanout] {
            if d > 0 {
                a.delivered += 1;
                if s != send_status::ACCEPTED {
                    a.unacknowledged_delivered += 1;
                }
            }
            if d > 1 {
                a.duplicated += 1;
            }
            if d == 0 && s == send_status::ACCEPTED {
                a.lost += 1;
            }
        }
    }
    a
}

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of one histogram (microseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Microseconds as milliseconds with three decimals: `1234` → `1.234`.
pub fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// A signed difference in microseconds as milliseconds: `+0.120`, `-0.030`.
pub fn delta_ms(a_us: u64, b_us: u64) -> String {
    let d = a_us as i64 - b_us as i64;
    let sign = if d < 0 { '-' } else { '+' };
    let d = d.unsigned_abs();
    format!("{sign}{}.{:03}", d / 1000, d % 1000)
}

/// `value / base` with two decimals and a trailing `×`, or `n/a` when the base is zero.
pub fn ratio(value: f64, base: f64) -> String {
    if base <= 0.0 || !base.is_finite() || !value.is_finite() {
        return "n/a".into();
    }
    format!("{:.2}×", value / base)
}

/// A rate with thousands separators: `20000` → `20 000`.
pub fn rate(r: u64) -> String {
    let s = r.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// Bytes as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The median of some values (the lower middle for an even count); `None` when empty.
pub fn median(values: &[u64]) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get((v.len().max(1) - 1) / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::send_status::*;
    use super::*;

    #[test]
    fn accounting_counts_lost_duplicated_and_unacknowledged() {
        // fanout 2: events 0..4
        let status = [ACCEPTED, ACCEPTED, REFUSED, NOT_SENT, FAILED];
        let deliveries = [
            1, 1, // 0: both subscribers once
            0, 2, // 1: lost at k=0, duplicated at k=1
            0, 0, // 2: refused, not delivered: fine
            0, 0, // 3: never sent
            1, 0, // 4: failed (e.g. timeout) but delivered once
        ];
        let a = account(&status, &deliveries, 2);
        assert_eq!(
            a,
            Accounting {
                sent: 4,
                accepted: 2,
                refused: 1,
                failed: 1,
                delivered: 4,
                lost: 1,
                duplicated: 1,
                unacknowledged_delivered: 1,
            }
        );
    }

    #[test]
    fn accounting_of_a_clean_run() {
        let a = account(&[ACCEPTED; 3], &[1; 3], 1);
        assert_eq!(
            (a.accepted, a.delivered, a.lost, a.duplicated),
            (3, 3, 0, 0)
        );
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50, 500);
        assert_eq!(l.p99, 990);
        assert_eq!(l.max, 1000);
        assert_eq!(Latency::of(&histogram()), Latency::default());
    }

    #[test]
    fn formatting() {
        assert_eq!(ms(1234), "1.234");
        assert_eq!(ms(7), "0.007");
        assert_eq!(delta_ms(1500, 1380), "+0.120");
        assert_eq!(delta_ms(1000, 1030), "-0.030");
        assert_eq!(ratio(15_000.0, 30_000.0), "0.50×");
        assert_eq!(ratio(1.0, 0.0), "n/a");
        assert_eq!(rate(20000), "20\u{202f}000");
        assert_eq!(rate(999), "999");
        assert_eq!(rate(1234567), "1\u{202f}234\u{202f}567");
        assert_eq!(mib(15 * 1024), "15.0 MiB");
        assert_eq!(median(&[5, 1, 3]), Some(3));
        assert_eq!(median(&[4, 1, 3, 2]), Some(2));
        assert_eq!(median(&[]), None);
    }
}
