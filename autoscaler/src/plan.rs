//! From a decision to actions on replicas, as a pure function: how many to start, which
//! starting ones to abandon, which ready ones to drain.
//!
//! - Requests waiting with no replica wanted (a poke before the windows saw them) still get
//!   one replica: held requests are never left without a way out.
//! - Scaling down stops replicas that are still starting first (they hold no request), then
//!   drains ready ones with the fewest requests in flight, the newest first among equals (so
//!   long-lived replicas keep their warm state). Draining ones are not counted: they already
//!   left.

use crate::gate::ReplicaId;

/// What to do with the replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New replicas to start.
    pub start: u32,
    /// Starting replicas to stop at once.
    pub abandon: Vec<ReplicaId>,
    /// Ready replicas to drain (no new requests), then stop.
    pub drain: Vec<ReplicaId>,
}

/// The plan to go from `starting` + `ready` (id, requests in flight) replicas to `desired`,
/// with `queued` requests waiting in the activator.
pub fn plan(
    desired: u32,
    queued: usize,
    starting: &[ReplicaId],
    ready: &[(ReplicaId, u32)],
) -> Plan {
    let desired = if queued > 0 { desired.max(1) } else { desired } as usize;
    let current = starting.len() + ready.len();
    let mut out = Plan::default();
    if desired > current {
        out.start = (desired - current) as u32;
    } else if desired < current {
        let mut excess = current - desired;
        let mut newest_first = starting.to_vec();
        newest_first.sort_unstable_by(|a, b| b.cmp(a));
        for id in newest_first.into_iter().take(excess) {
            out.abandon.push(id);
            excess -= 1;
        }
        let mut victims = ready.to_vec();
        victims.sort_unstable_by_key(|&(id, in_flight)| (in_flight, std::cmp::Reverse(id)));
        out.drain = victims.into_iter().take(excess).map(|(id, _)| id).collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        struct Case {
            desired: u32,
            queued: usize,
            starting: &'static [ReplicaId],
            ready: &'static [(ReplicaId, u32)],
            want: Plan,
        }
        let p = |start, abandon: &[ReplicaId], drain: &[ReplicaId]| Plan {
            start,
            abandon: abandon.to_vec(),
            drain: drain.to_vec(),
        };
        let table = [
            // Steady.
            Case {
                desired: 2,
                queued: 0,
                starting: &[],
                ready: &[(1, 0), (2, 5)],
                want: p(0, &[], &[]),
            },
            // Up from zero.
            Case {
                desired: 3,
                queued: 0,
                starting: &[],
                ready: &[],
                want: p(3, &[], &[]),
            },
            // Starting replicas count: no double start.
            Case {
                desired: 3,
                queued: 0,
                starting: &[4],
                ready: &[(1, 0)],
                want: p(1, &[], &[]),
            },
            // Requests held while the decision still says zero: one replica anyway.
            Case {
                desired: 0,
                queued: 5,
                starting: &[],
                ready: &[],
                want: p(1, &[], &[]),
            },
            Case {
                desired: 0,
                queued: 5,
                starting: &[7],
                ready: &[],
                want: p(0, &[], &[]),
            },
            // Down: starting ones go first, newest first.
            Case {
                desired: 1,
                queued: 0,
                starting: &[5, 6],
                ready: &[(1, 3)],
                want: p(0, &[6, 5], &[]),
            },
            Case {
                desired: 1,
                queued: 0,
                starting: &[5],
                ready: &[(1, 3), (2, 0)],
                want: p(0, &[5], &[2]),
            },
            // Then the ready ones with the fewest in flight, newest among equals.
            Case {
                desired: 1,
                queued: 0,
                starting: &[],
                ready: &[(1, 2), (2, 1), (3, 1)],
                want: p(0, &[], &[3, 2]),
            },
            // To zero.
            Case {
                desired: 0,
                queued: 0,
                starting: &[],
                ready: &[(1, 0)],
                want: p(0, &[], &[1]),
            },
        ];
        for (i, c) in table.iter().enumerate() {
            assert_eq!(
                plan(c.desired, c.queued, c.starting, c.ready),
                c.want,
                "case {i}"
            );
        }
    }
}
