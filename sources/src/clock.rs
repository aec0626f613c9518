//! Wall-clock time for schedules, behind a trait so tests can run on tokio's paused clock.
//!
//! A cron schedule is about the wall clock (09:00 in Paris), but waiting must use tokio time
//! (DESIGN.md principle 4), so the PingSource loop asks a [`Clock`] what time it is and sleeps
//! with `tokio::time::sleep`. [`SystemClock`] is the real one. [`TokioClock`] derives the wall
//! clock from tokio's clock, so under `#[tokio::test(start_paused = true)]` a test can run
//! days of schedule in milliseconds, and [`TokioClock::jump`] simulates a wall clock that
//! leaps forward (a suspended laptop, a paused process).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Tells the wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that advances with tokio's clock (paused or not), from a chosen start.
#[derive(Debug)]
pub struct TokioClock {
    start_wall: SystemTime,
    start: Instant,
    /// Added by [`TokioClock::jump`].
    skew: Mutex<Duration>,
}

impl TokioClock {
    /// A clock that reads `wall` now and advances with tokio time.
    pub fn starting_at(wall: SystemTime) -> Self {
        TokioClock {
            start_wall: wall,
            start: Instant::now(),
            skew: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the wall clock forward by `by` without tokio time passing.
    pub fn jump(&self, by: Duration) {
        *self.skew.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        let skew = *self.skew.lock().unwrap_or_else(|e| e.into_inner());
        self.start_wall + self.start.elapsed() + skew
    }
}
