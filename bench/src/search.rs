//! The search for the highest sustained rate: double while a step passes, halve while it
//! fails, then bisect between the best pass and the lowest failure until they are within
//! `precision` of each other. Pure, so the schedule is tested without running load.

/// State of one rate search (events per second).
#[derive(Debug, Clone)]
pub struct RateSearch {
    min: u64,
    max: u64,
    /// Stop when `(fail - pass) <= pass * precision`.
    precision: f64,
    /// Rates are rounded to multiples of this.
    granularity: u64,
    /// Highest passing rate so far.
    pass: Option<u64>,
    /// Lowest failing rate so far.
    fail: Option<u64>,
    next: Option<u64>,
    steps: u32,
    max_steps: u32,
}

impl RateSearch {
    pub fn new(start: u64, min: u64, max: u64, precision: f64, max_steps: u32) -> Self {
        let granularity = (min / 10).max(1);
        let start = start.clamp(min, max);
        RateSearch {
            min,
            max,
            precision,
            granularity,
            pass: None,
            fail: None,
            next: Some(start),
            steps: 0,
            max_steps,
        }
    }

    /// The rate to try next, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<u64> {
        self.next
    }

    /// The highest rate that passed, if any did.
    pub fn best(&self) -> Option<u64> {
        self.pass
    }

    /// True when the search stopped at `max` with every step passing (the true limit is
    /// higher than what was tried).
    pub fn capped(&self) -> bool {
        self.fail.is_none() && self.pass == Some(self.max)
    }

    fn round(&self, r: u64) -> u64 {
        (r / self.granularity * self.granularity).max(self.min)
    }

    /// Records the outcome of a step at `rate` and decides the next one.
    pub fn record(&mut self, rate: u64, passed: bool) {
        self.steps += 1;
        if passed {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
        self.next = if self.steps >= self.max_steps {
            None
        } else {
            match (self.pass, self.fail) {
                (Some(p), None) if p >= self.max => None,
                (Some(p), None) => Some(self.round(p.saturating_mul(2)).min(self.max)),
                (None, Some(f)) if f <= self.min => None,
                (None, Some(f)) => Some(self.round(f / 2)),
                (Some(p), Some(f)) => {
                    if f <= p || (f - p) as f64 <= p as f64 * self.precision {
                        None
                    } else {
                        let mid = self.round(p + (f - p) / 2);
                        (mid > p && mid < f).then_some(mid)
                    }
                }
                (None, None) => unreachable!("a step was just recorded"),
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a system that sustains up to `limit`; returns the rates tried.
    fn run(mut s: RateSearch, limit: u64) -> (Vec<u64>, RateSearch) {
        let mut tried = Vec::new();
        while let Some(r) = s.next_rate() {
            tried.push(r);
            s.record(r, r <= limit);
        }
        (tried, s)
    }

    #[test]
    fn doubles_then_bisects_to_within_the_precision() {
        let (tried, s) = run(RateSearch::new(1000, 500, 1_000_000, 0.05, 30), 23_000);
        assert_eq!(&tried[..6], &[1000, 2000, 4000, 8000, 16000, 32000]);
        // Then bisection between 16 000 and 32 000.
        assert_eq!(tried[6], 24000);
        assert_eq!(tried[7], 20000);
        let best = s.best().unwrap();
        assert!(best <= 23_000 && best as f64 >= 23_000.0 * 0.95, "{best}");
        assert!(!s.capped());
    }

    #[test]
    fn halves_when_the_start_fails() {
        let (tried, s) = run(RateSearch::new(8000, 500, 1_000_000, 0.1, 30), 1200);
        assert_eq!(&tried[..4], &[8000, 4000, 2000, 1000]);
        let best = s.best().unwrap();
        assert!((1090..=1200).contains(&best), "{best}");
    }

    #[test]
    fn stops_at_the_minimum_and_at_the_maximum() {
        let (tried, s) = run(RateSearch::new(1000, 500, 100_000, 0.1, 30), 10);
        assert_eq!(tried, vec![1000, 500]);
        assert_eq!(s.best(), None);

        let (tried, s) = run(RateSearch::new(1000, 500, 5000, 0.1, 30), u64::MAX);
        assert_eq!(tried, vec![1000, 2000, 4000, 5000]);
        assert_eq!(s.best(), Some(5000));
        assert!(s.capped());
    }

    #[test]
    fn stops_after_max_steps() {
        let (tried, s) = run(RateSearch::new(1000, 500, 1_000_000, 0.001, 5), 23_000);
        assert_eq!(tried.len(), 5);
        assert_eq!(s.best(), Some(16000));
    }
}
