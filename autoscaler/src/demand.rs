//! What counts as demand for a Service: the concurrency the KPA's windows average.
//!
//! Knative counts the requests a revision is serving plus those its activator holds. That
//! misses the load an event mesh knows best: events waiting in a trigger's channel for the
//! sink. The dispatcher only takes as many as its `concurrency` lets it (100 by default, 1
//! per lane when ordered), so with a slow sink thousands of events can wait in the channel
//! while the activator sees a steady, small concurrency and the sink never scales.
//! SEMANTICS.md §7 (**Sluice**): backlog counts as demand.
//!
//! The rule: `demand = in_flight + min(queued + backlog, cap)`, with the cap the activator's
//! queue bound ([`DEFAULT_QUEUE_CAPACITY`], 10 000).
//!
//! - An event waiting in a channel is counted exactly like a request waiting in the
//!   activator, one for one: both are work that waits for a replica slot, and in both cases
//!   the replica count needed to serve them at `target` per replica is
//!   `⌈waiting ÷ target⌉`. Counting backlog any lighter (say ÷ `containerConcurrency`) would
//!   make the same events scale the sink differently depending on whether the dispatcher
//!   had already pushed them into the activator or not.
//! - Waiting work (activator queue and backlog together) is capped at the activator's queue
//!   bound: it is the most the activator alone could ever report, so a big backlog never asks
//!   for more than a burst of held requests would. `max-scale` still bounds the result, and
//!   the KPA's ×1000-per-tick limit bounds how fast it gets there.
//! - In-flight requests are never capped: they are what the replicas are doing.

use crate::gate::DEFAULT_QUEUE_CAPACITY;

/// Most waiting work (activator queue + channel backlog) counted as demand.
pub const WAITING_CAP: u64 = DEFAULT_QUEUE_CAPACITY as u64;

/// The demand the windows record: requests in flight at replicas, requests queued in the
/// activator, events waiting in channels for the Service.
pub fn demand(in_flight: u64, queued: u64, backlog: u64) -> u64 {
    in_flight + (queued + backlog).min(WAITING_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_table() {
        // (in flight, queued in the activator, backlog in channels, demand)
        let table: &[(u64, u64, u64, u64)] = &[
            (0, 0, 0, 0),
            // Knative's rule when nothing waits in a channel.
            (3, 2, 0, 5),
            // A backlog alone asks for replicas (scale from zero on a backlog).
            (0, 0, 7, 7),
            // One for one, like a request held by the activator: cc=1, dispatcher
            // concurrency 1, 99 events waiting → demand 100, not 1.
            (1, 0, 99, 100),
            // Waiting work is capped at the activator's queue bound...
            (0, 0, 50_000, WAITING_CAP),
            (0, 4_000, 8_000, WAITING_CAP),
            // ...in-flight requests are not.
            (20, 0, 50_000, 20 + WAITING_CAP),
        ];
        for &(in_flight, queued, backlog, want) in table {
            assert_eq!(
                demand(in_flight, queued, backlog),
                want,
                "in flight {in_flight}, queued {queued}, backlog {backlog}"
            );
        }
    }
}
