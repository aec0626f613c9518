//! Concurrency over time windows: the metric the KPA decides on.
//!
//! The activator tells the [`ConcurrencyWindows`] every time the number of requests it holds
//! (queued or in flight) changes; the time between changes, weighted by the count, goes into
//! one-second buckets. The average over a window is the area of the buckets it covers divided
//! by the time they cover — Knative's "average concurrency per second over the window". Time
//! is passed in (tokio's `Instant`), so tests run on paused time.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

const BUCKET: Duration = Duration::from_secs(1);

/// Time-weighted concurrency in one-second buckets, kept for the longest window asked about.
#[derive(Debug, Clone)]
pub struct ConcurrencyWindows {
    start: Instant,
    /// (bucket index since `start`, request-seconds in it), oldest first.
    buckets: VecDeque<(u64, f64)>,
    /// Concurrency since `last`.
    current: u64,
    last: Instant,
    keep: Duration,
}

impl ConcurrencyWindows {
    /// Windows up to `keep` long can be asked about.
    pub fn new(now: Instant, keep: Duration) -> Self {
        ConcurrencyWindows {
            start: now,
            buckets: VecDeque::new(),
            current: 0,
            last: now,
            keep: keep.max(BUCKET),
        }
    }

    /// The concurrency now.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// The concurrency changed to `value` at `now`.
    pub fn set(&mut self, now: Instant, value: u64) {
        self.advance(now);
        self.current = value;
    }

    fn index(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.start).as_nanos() / BUCKET.as_nanos()) as u64
    }

    fn bucket_start(&self, index: u64) -> Instant {
        self.start + BUCKET * index as u32
    }

    /// Accounts the time from `last` to `now` at the current concurrency.
    fn advance(&mut self, now: Instant) {
        if now <= self.last {
            return;
        }
        let mut t = self.last;
        while t < now {
            let i = self.index(t);
            let end = self.bucket_start(i + 1).min(now);
            let area = self.current as f64 * (end - t).as_secs_f64();
            match self.buckets.back_mut() {
                Some((j, a)) if *j == i => *a += area,
                _ => self.buckets.push_back((i, area)),
            }
            t = end;
        }
        self.last = now;
        let oldest = self.index(now).saturating_sub(self.keep.as_secs() + 1);
        while self.buckets.front().is_some_and(|&(i, _)| i < oldest) {
            self.buckets.pop_front();
        }
    }

    /// The average concurrency over the last `window` (or since the start, if younger).
    pub fn average(&mut self, now: Instant, window: Duration) -> f64 {
        self.advance(now);
        let from = now
            .checked_sub(window)
            .map_or(self.start, |f| f.max(self.start));
        let first = self.index(from);
        let span = now
            .saturating_duration_since(self.bucket_start(first))
            .as_secs_f64();
        if span <= 0.0 {
            return self.current as f64;
        }
        let area: f64 = self
            .buckets
            .iter()
            .filter(|&&(i, _)| i >= first)
            .map(|&(_, a)| a)
            .sum();
        area / span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[tokio::test(start_paused = true)]
    async fn steady_concurrency_averages_to_itself() {
        let t0 = Instant::now();
        let mut w = ConcurrencyWindows::new(t0, S(60));
        w.set(t0, 10);
        tokio::time::advance(S(30)).await;
        let now = Instant::now();
        assert!((w.average(now, S(60)) - 10.0).abs() < 1e-9);
        assert!((w.average(now, S(6)) - 10.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_shows_in_the_panic_window_first() {
        let t0 = Instant::now();
        let mut w = ConcurrencyWindows::new(t0, S(60));
        w.set(t0, 1);
        tokio::time::advance(S(54)).await;
        w.set(Instant::now(), 61);
        tokio::time::advance(S(6)).await;
        let now = Instant::now();
        // Panic window: 6 s at 61.
        assert!((w.average(now, S(6)) - 61.0).abs() < 1e-9);
        // Stable window: (54 × 1 + 6 × 61) / 60 = 7.
        assert!((w.average(now, S(60)) - 7.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn old_demand_leaves_the_window() {
        let t0 = Instant::now();
        let mut w = ConcurrencyWindows::new(t0, S(10));
        w.set(t0, 5);
        tokio::time::advance(Duration::from_millis(500)).await;
        w.set(Instant::now(), 0);
        // Half a second at 5 over the first second and a half.
        tokio::time::advance(S(1)).await;
        let avg = w.average(Instant::now(), S(10));
        assert!((avg - 2.5 / 1.5).abs() < 1e-9, "{avg}");
        tokio::time::advance(S(20)).await;
        assert_eq!(w.average(Instant::now(), S(10)), 0.0);
        // Buckets older than the longest window are dropped.
        assert!(w.buckets.len() <= 12, "{}", w.buckets.len());
    }

    #[tokio::test(start_paused = true)]
    async fn fractions_of_a_second_are_weighted() {
        let t0 = Instant::now();
        let mut w = ConcurrencyWindows::new(t0, S(60));
        tokio::time::advance(S(3)).await;
        w.set(Instant::now(), 4);
        tokio::time::advance(Duration::from_millis(250)).await;
        w.set(Instant::now(), 0);
        tokio::time::advance(Duration::from_millis(750)).await;
        // 4 × 0.25 s = 1 request-second over 4 s.
        assert!((w.average(Instant::now(), S(60)) - 0.25).abs() < 1e-9);
        assert_eq!(w.current(), 0);
    }
}
