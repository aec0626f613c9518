//! The KPA decision (Knative Serving's request-concurrency autoscaler), as a function of the
//! observed concurrency, the ready replicas and the time. No I/O and no clock of its own: the
//! caller passes `now`, so every rule of SEMANTICS.md §7 is a table test.
//!
//! Every tick (2 s):
//! - target per replica = `target` × `utilization` (default 100 × 0.7 = 70);
//! - desired (stable) = ⌈stable-window average ÷ target⌉, desired (panic) = ⌈panic-window
//!   average ÷ target⌉, both kept within [⌊ready ÷ 2⌋, ⌈ready × 1000⌉] (`ready` counted as at
//!   least 1);
//! - with `activation-scale` n > 1, any non-zero desire is at least n;
//! - panic starts when panic desired ÷ ready ≥ threshold (200 %) and ends one stable window
//!   after the last tick over the threshold; while panicking the result never decreases;
//! - `scale-down-delay`: the result is the highest decision of the last delay;
//! - then `min-scale` / `max-scale`; `initial-scale` holds for the first stable window;
//! - scale to zero only once the decision has been zero for the grace period.

use sluice_core::topology::ScalingSpec;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// What the metrics say at one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Average concurrency over the stable window.
    pub stable: f64,
    /// Average concurrency over the panic window.
    pub panic: f64,
    /// Replicas ready to take requests now.
    pub ready: u32,
}

/// The outcome of one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Replicas wanted.
    pub desired: u32,
    /// In panic mode.
    pub panic: bool,
}

/// The panic window: `panic-window-percentage` of the stable window (at least 1 s).
pub fn panic_window(spec: &ScalingSpec) -> Duration {
    spec.stable_window
        .mul_f64(spec.panic_window_percentage / 100.0)
        .max(Duration::from_secs(1))
}

/// The decider of one Service: the spec and the little state the rules need (panic start,
/// the highest decision while panicking, the scale-down-delay history, when zero was first
/// decided).
#[derive(Debug, Clone)]
pub struct Decider {
    spec: ScalingSpec,
    created: Instant,
    panic_since: Option<Instant>,
    max_panic: u32,
    /// (time, decision) of the last `scale-down-delay`.
    delayed: VecDeque<(Instant, u32)>,
    zero_since: Option<Instant>,
}

impl Decider {
    pub fn new(spec: ScalingSpec, now: Instant) -> Self {
        Decider {
            spec,
            created: now,
            panic_since: None,
            max_panic: 0,
            delayed: VecDeque::new(),
            zero_since: None,
        }
    }

    pub fn spec(&self) -> &ScalingSpec {
        &self.spec
    }

    /// The decision at `now` for what was observed.
    pub fn decide(&mut self, now: Instant, obs: Observation) -> Decision {
        let spec = &self.spec;
        let target = (spec.target * spec.utilization).max(0.01);
        let ready = obs.ready.max(1) as f64;
        let max_up = (spec.max_scale_up_rate * ready).ceil();
        let max_down = (ready / spec.max_scale_down_rate).floor();
        let dspc = (obs.stable / target).ceil();
        let dppc = (obs.panic / target).ceil();
        let mut stable = dspc.max(max_down).min(max_up) as u32;
        let mut panic = dppc.max(max_down).min(max_up) as u32;
        if spec.activation_scale > 1 {
            if dspc > 0.0 && stable < spec.activation_scale {
                stable = spec.activation_scale;
            }
            if dppc > 0.0 && panic < spec.activation_scale {
                panic = spec.activation_scale;
            }
        }
        let over = dppc / ready >= spec.panic_threshold_percentage / 100.0;
        if over {
            self.panic_since = Some(now);
        } else if let Some(since) = self.panic_since {
            if now >= since + spec.stable_window {
                self.panic_since = None;
                self.max_panic = 0;
            }
        }
        let mut desired = if self.panic_since.is_some() {
            let d = stable.max(panic).max(self.max_panic);
            self.max_panic = d;
            d
        } else {
            stable
        };
        if !spec.scale_down_delay.is_zero() {
            self.delayed.push_back((now, desired));
            while let Some(&(t, _)) = self.delayed.front() {
                if t + spec.scale_down_delay <= now {
                    self.delayed.pop_front();
                } else {
                    break;
                }
            }
            desired = self
                .delayed
                .iter()
                .map(|&(_, d)| d)
                .max()
                .unwrap_or(desired);
        }
        // Bounds.
        if now < self.created + spec.stable_window {
            desired = desired.max(spec.initial_scale);
        }
        desired = desired.max(spec.min_scale);
        if spec.max_scale > 0 {
            desired = desired.min(spec.max_scale);
        }
        // Scale to zero only after the grace period.
        if desired == 0 {
            let since = *self.zero_since.get_or_insert(now);
            if obs.ready > 0 && now < since + spec.scale_to_zero_grace {
                desired = 1;
            }
        } else {
            self.zero_since = None;
        }
        Decision {
            desired,
            panic: self.panic_since.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ScalingSpec {
        ScalingSpec {
            initial_scale: 0,
            ..ScalingSpec::default()
        }
    }

    fn obs(stable: f64, panic: f64, ready: u32) -> Observation {
        Observation {
            stable,
            panic,
            ready,
        }
    }

    /// A decider created long ago (so initial-scale no longer holds) unless `fresh`.
    fn decider(spec: ScalingSpec) -> (Decider, Instant) {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(3600);
        (Decider::new(spec, t0), now)
    }

    #[test]
    fn stable_mode_table() {
        // (stable avg, panic avg, ready, want desired): target 100 × 0.7 = 70 per replica.
        let table: &[(f64, f64, u32, u32)] = &[
            (0.0, 0.0, 0, 0),
            (0.01, 0.01, 0, 1), // any demand at zero asks for one replica
            (70.0, 70.0, 1, 1),
            (70.1, 70.1, 1, 2),
            (140.0, 100.0, 2, 2),
            (350.0, 300.0, 4, 5),
            (10.0, 10.0, 4, 2), // down at most ÷2 per tick
            (10.0, 10.0, 5, 2), // ⌊5/2⌋
            (0.0, 0.0, 1, 1),   // zero waits for the grace period
        ];
        for &(s, p, ready, want) in table {
            let (mut d, now) = decider(spec());
            assert_eq!(
                d.decide(now, obs(s, p, ready)).desired,
                want,
                "stable {s} panic {p} ready {ready}"
            );
        }
    }

    #[test]
    fn container_concurrency_sets_the_target() {
        let s = ScalingSpec {
            target: 10.0,
            ..spec()
        };
        let (mut d, now) = decider(s);
        // 10 × 0.7 = 7 per replica: 21 in flight → 3.
        assert_eq!(d.decide(now, obs(21.0, 21.0, 3)).desired, 3);
        let s = ScalingSpec {
            target: 10.0,
            utilization: 1.0,
            ..spec()
        };
        let (mut d, now) = decider(s);
        assert_eq!(d.decide(now, obs(21.0, 21.0, 3)).desired, 3);
        assert_eq!(d.decide(now, obs(31.0, 31.0, 3)).desired, 4);
    }

    #[test]
    fn scale_up_is_limited_to_1000_times_ready() {
        let s = ScalingSpec {
            target: 1.0,
            utilization: 1.0,
            ..spec()
        };
        let (mut d, now) = decider(s);
        assert_eq!(d.decide(now, obs(5000.0, 5000.0, 0)).desired, 1000);
        assert_eq!(d.decide(now, obs(5000.0, 5000.0, 2)).desired, 2000);
        let s = ScalingSpec {
            target: 1.0,
            utilization: 1.0,
            max_scale_up_rate: 2.0,
            ..spec()
        };
        let (mut d, now) = decider(s);
        assert_eq!(d.decide(now, obs(50.0, 50.0, 3)).desired, 6);
    }

    #[test]
    fn panic_starts_at_twice_the_ready_capacity_and_never_scales_down() {
        let (mut d, t) = decider(spec());
        let s = Duration::from_secs;
        // 2 ready, panic window wants 4 (280/70): 4/2 = 200 % → panic.
        let got = d.decide(t, obs(70.0, 280.0, 2));
        assert_eq!(
            got,
            Decision {
                desired: 4,
                panic: true
            }
        );
        // Demand falls: still panicking, the decision does not decrease.
        let got = d.decide(t + s(2), obs(10.0, 10.0, 4));
        assert_eq!(
            got,
            Decision {
                desired: 4,
                panic: true
            }
        );
        // A higher panic demand raises it.
        let got = d.decide(t + s(4), obs(10.0, 800.0, 4));
        assert_eq!(
            got,
            Decision {
                desired: 12,
                panic: true
            }
        );
        // One stable window after the last tick over the threshold (t+4), panic ends.
        let got = d.decide(t + s(63), obs(10.0, 10.0, 12));
        assert!(got.panic);
        assert_eq!(got.desired, 12);
        let got = d.decide(t + s(64), obs(10.0, 10.0, 12));
        assert_eq!(
            got,
            Decision {
                desired: 6,
                panic: false
            }
        );
        // Just under the threshold: no panic.
        let (mut d, t) = decider(spec());
        let got = d.decide(t, obs(70.0, 210.0, 2)); // 3/2 = 150 %
        assert_eq!(
            got,
            Decision {
                desired: 1,
                panic: false
            }
        );
    }

    #[test]
    fn panic_threshold_percentage_is_read() {
        let (mut d, t) = decider(ScalingSpec {
            panic_threshold_percentage: 150.0,
            ..spec()
        });
        assert!(d.decide(t, obs(70.0, 210.0, 2)).panic); // 3/2 = 150 %
    }

    #[test]
    fn panic_window_is_a_percentage_of_the_stable_window() {
        assert_eq!(
            panic_window(&ScalingSpec::default()),
            Duration::from_secs(6)
        );
        let s = ScalingSpec {
            stable_window: Duration::from_secs(20),
            panic_window_percentage: 25.0,
            ..spec()
        };
        assert_eq!(panic_window(&s), Duration::from_secs(5));
    }

    #[test]
    fn activation_scale_applies_to_any_demand() {
        let (mut d, t) = decider(ScalingSpec {
            activation_scale: 3,
            ..spec()
        });
        assert_eq!(d.decide(t, obs(1.0, 1.0, 0)).desired, 3);
        let (mut d, t) = decider(ScalingSpec {
            activation_scale: 3,
            ..spec()
        });
        assert_eq!(d.decide(t, obs(0.0, 0.0, 0)).desired, 0);
    }

    #[test]
    fn min_max_and_initial_scale() {
        let (mut d, t) = decider(ScalingSpec {
            min_scale: 2,
            ..spec()
        });
        assert_eq!(d.decide(t, obs(0.0, 0.0, 2)).desired, 2);
        let (mut d, t) = decider(ScalingSpec {
            max_scale: 3,
            ..spec()
        });
        assert_eq!(d.decide(t, obs(1000.0, 100.0, 3)).desired, 3);
        // initial-scale holds for the first stable window only.
        let t0 = Instant::now();
        let mut d = Decider::new(
            ScalingSpec {
                initial_scale: 2,
                ..spec()
            },
            t0,
        );
        assert_eq!(
            d.decide(t0 + Duration::from_secs(2), obs(0.0, 0.0, 2))
                .desired,
            2
        );
        assert_eq!(
            d.decide(t0 + Duration::from_secs(60), obs(0.0, 0.0, 2))
                .desired,
            1
        );
    }

    #[test]
    fn scale_to_zero_after_the_grace_period() {
        let s = Duration::from_secs;
        let (mut d, t) = decider(ScalingSpec {
            scale_to_zero_grace: s(30),
            ..spec()
        });
        assert_eq!(d.decide(t, obs(0.0, 0.0, 1)).desired, 1);
        assert_eq!(d.decide(t + s(28), obs(0.0, 0.0, 1)).desired, 1);
        assert_eq!(d.decide(t + s(30), obs(0.0, 0.0, 1)).desired, 0);
        // Demand in between restarts the grace period.
        let (mut d, t) = decider(ScalingSpec {
            scale_to_zero_grace: s(30),
            ..spec()
        });
        assert_eq!(d.decide(t, obs(0.0, 0.0, 1)).desired, 1);
        assert_eq!(d.decide(t + s(20), obs(0.5, 0.5, 1)).desired, 1);
        assert_eq!(d.decide(t + s(40), obs(0.0, 0.0, 1)).desired, 1);
        assert_eq!(d.decide(t + s(70), obs(0.0, 0.0, 1)).desired, 0);
    }

    #[test]
    fn scale_down_delay_keeps_the_highest_recent_decision() {
        let s = Duration::from_secs;
        let (mut d, t) = decider(ScalingSpec {
            scale_down_delay: s(10),
            ..spec()
        });
        assert_eq!(d.decide(t, obs(350.0, 350.0, 5)).desired, 5);
        assert_eq!(d.decide(t + s(2), obs(70.0, 70.0, 5)).desired, 5);
        assert_eq!(d.decide(t + s(8), obs(70.0, 70.0, 5)).desired, 5);
        // 10 s after the decision for 5, the delay lets it go (to ⌊5/2⌋ = 2 at most this tick).
        assert_eq!(d.decide(t + s(10), obs(70.0, 70.0, 5)).desired, 2);
        // Increases are never delayed.
        assert_eq!(d.decide(t + s(12), obs(700.0, 100.0, 2)).desired, 10);
    }
}
