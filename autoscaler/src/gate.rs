//! The activator's decisions, as a state machine without I/O: which replica a request goes
//! to, when it must wait, when it is refused, who is released when a replica becomes ready
//! or finishes a request.
//!
//! - A request goes to the ready replica (not being removed) with the fewest requests in
//!   flight, if it has room: at most `containerConcurrency` each (0 = unlimited). So Sluice
//!   never sends a sink more than ready replicas × `containerConcurrency`.
//! - Otherwise it waits in a bounded FIFO queue (default 10 000); beyond that it is refused
//!   (the caller answers 503 with `Retry-After`).
//! - The first request that has to wait while no replica is ready pokes the autoscaler, so
//!   scaling from zero starts at once instead of at the next tick.
//! - A replica chosen for removal ([`Gate::drain`]) gets no new request; the caller stops it
//!   once [`Gate::in_flight_of`] is zero (which one: [`crate::plan`]).

use std::collections::{BTreeMap, VecDeque};

/// A replica's id (unique per Service).
pub type ReplicaId = u64;
/// A waiting request's id.
pub type WaitId = u64;

/// Default bound of the queue of waiting requests.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// What happens to an arriving request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Send it to this replica now.
    Dispatch(ReplicaId),
    /// It waits; `poke`: tell the autoscaler now (no replica is ready).
    Queued { poke: bool },
    /// The queue is full: 503.
    Refused,
}

#[derive(Debug, Clone, Default)]
struct Replica {
    in_flight: u32,
    draining: bool,
}

/// One Service's activator state.
#[derive(Debug, Clone)]
pub struct Gate {
    /// `containerConcurrency`; 0 = unlimited.
    concurrency: u32,
    capacity: usize,
    ready: BTreeMap<ReplicaId, Replica>,
    waiting: VecDeque<WaitId>,
}

impl Gate {
    pub fn new(container_concurrency: u32, capacity: usize) -> Self {
        Gate {
            concurrency: container_concurrency,
            capacity,
            ready: BTreeMap::new(),
            waiting: VecDeque::new(),
        }
    }

    /// `containerConcurrency` changed (a reload).
    pub fn set_concurrency(&mut self, container_concurrency: u32) -> Vec<(WaitId, ReplicaId)> {
        self.concurrency = container_concurrency;
        self.release()
    }

    /// Ready replicas that take new requests.
    pub fn ready(&self) -> u32 {
        self.ready.values().filter(|r| !r.draining).count() as u32
    }

    /// The ready replicas that take new requests, with their requests in flight.
    pub fn ready_replicas(&self) -> Vec<(ReplicaId, u32)> {
        self.ready
            .iter()
            .filter(|(_, r)| !r.draining)
            .map(|(id, r)| (*id, r.in_flight))
            .collect()
    }

    /// Requests waiting for a replica.
    pub fn queued(&self) -> usize {
        self.waiting.len()
    }

    /// Requests sent to replicas and not finished.
    pub fn in_flight(&self) -> u64 {
        self.ready.values().map(|r| r.in_flight as u64).sum()
    }

    /// Requests in flight at one replica (0 for one that is gone).
    pub fn in_flight_of(&self, id: ReplicaId) -> u32 {
        self.ready.get(&id).map_or(0, |r| r.in_flight)
    }

    /// How many requests may be in flight now: ready × `containerConcurrency`, `None` when
    /// unlimited.
    pub fn limit(&self) -> Option<u64> {
        (self.concurrency > 0).then(|| self.ready() as u64 * self.concurrency as u64)
    }

    fn pick(&self) -> Option<ReplicaId> {
        self.ready
            .iter()
            .filter(|(_, r)| {
                !r.draining && (self.concurrency == 0 || r.in_flight < self.concurrency)
            })
            .min_by_key(|(id, r)| (r.in_flight, **id))
            .map(|(id, _)| *id)
    }

    /// A request arrives (`id` names it if it has to wait).
    pub fn arrive(&mut self, id: WaitId) -> Arrival {
        if self.waiting.is_empty() {
            if let Some(r) = self.pick() {
                self.ready.get_mut(&r).expect("picked").in_flight += 1;
                return Arrival::Dispatch(r);
            }
        }
        if self.waiting.len() >= self.capacity {
            return Arrival::Refused;
        }
        let poke = self.ready() == 0 && self.waiting.is_empty();
        self.waiting.push_back(id);
        Arrival::Queued { poke }
    }

    /// Dispatches waiting requests while replicas have room, oldest first.
    fn release(&mut self) -> Vec<(WaitId, ReplicaId)> {
        let mut out = Vec::new();
        while !self.waiting.is_empty() {
            let Some(r) = self.pick() else { break };
            let w = self.waiting.pop_front().expect("not empty");
            self.ready.get_mut(&r).expect("picked").in_flight += 1;
            out.push((w, r));
        }
        out
    }

    /// A replica became ready: the waiting requests it can take go to it.
    pub fn add_replica(&mut self, id: ReplicaId) -> Vec<(WaitId, ReplicaId)> {
        self.ready.entry(id).or_default();
        self.release()
    }

    /// A request sent to `replica` finished: a waiting one may take its place.
    pub fn finish(&mut self, replica: ReplicaId) -> Vec<(WaitId, ReplicaId)> {
        if let Some(r) = self.ready.get_mut(&replica) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
        self.release()
    }

    /// A waiting request gave up (timeout, client gone). Returns whether it was waiting.
    pub fn cancel(&mut self, id: WaitId) -> bool {
        match self.waiting.iter().position(|&w| w == id) {
            Some(i) => {
                self.waiting.remove(i);
                true
            }
            None => false,
        }
    }

    /// `replica` is to be removed: it gets no new requests. Returns its requests in flight.
    pub fn drain(&mut self, replica: ReplicaId) -> u32 {
        match self.ready.get_mut(&replica) {
            Some(r) => {
                r.draining = true;
                r.in_flight
            }
            None => 0,
        }
    }

    /// `replica` is gone (stopped or crashed).
    pub fn remove(&mut self, replica: ReplicaId) {
        self.ready.remove(&replica);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_wait_at_zero_and_the_first_one_pokes() {
        let mut g = Gate::new(0, 10);
        assert_eq!(g.arrive(1), Arrival::Queued { poke: true });
        assert_eq!(g.arrive(2), Arrival::Queued { poke: false });
        assert_eq!(g.queued(), 2);
        // The first replica takes every waiting request (unlimited concurrency), in order.
        assert_eq!(g.add_replica(7), vec![(1, 7), (2, 7)]);
        assert_eq!((g.queued(), g.in_flight()), (0, 2));
        assert_eq!(g.arrive(3), Arrival::Dispatch(7));
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut g = Gate::new(0, 2);
        assert!(matches!(g.arrive(1), Arrival::Queued { .. }));
        assert!(matches!(g.arrive(2), Arrival::Queued { .. }));
        assert_eq!(g.arrive(3), Arrival::Refused);
        assert!(g.cancel(1));
        assert!(!g.cancel(1));
        assert!(matches!(g.arrive(3), Arrival::Queued { poke: false }));
    }

    #[test]
    fn in_flight_never_exceeds_ready_times_container_concurrency() {
        let mut g = Gate::new(2, 100);
        g.add_replica(1);
        g.add_replica(2);
        assert_eq!(g.limit(), Some(4));
        let mut dispatched = Vec::new();
        for id in 0..6 {
            match g.arrive(id) {
                Arrival::Dispatch(r) => dispatched.push(r),
                Arrival::Queued { poke } => assert!(!poke, "replicas are ready"),
                Arrival::Refused => panic!(),
            }
        }
        // Spread over both replicas, two each; two wait.
        dispatched.sort();
        assert_eq!(dispatched, vec![1, 1, 2, 2]);
        assert_eq!((g.in_flight(), g.queued()), (4, 2));
        // One finishes at replica 2: the oldest waiting request (4) takes the slot.
        assert_eq!(g.finish(2), vec![(4, 2)]);
        assert_eq!(g.in_flight(), 4);
        // A third replica takes the last one.
        assert_eq!(g.add_replica(3), vec![(5, 3)]);
        assert_eq!(g.limit(), Some(6));
    }

    #[test]
    fn arrivals_do_not_overtake_waiting_requests() {
        let mut g = Gate::new(1, 10);
        g.add_replica(1);
        assert_eq!(g.arrive(1), Arrival::Dispatch(1));
        assert!(matches!(g.arrive(2), Arrival::Queued { .. }));
        assert_eq!(g.finish(1), vec![(2, 1)]);
        assert!(matches!(g.arrive(3), Arrival::Queued { .. }));
    }

    #[test]
    fn a_draining_replica_gets_nothing_new() {
        let mut g = Gate::new(0, 10);
        g.add_replica(1);
        g.add_replica(2);
        assert_eq!(g.arrive(1), Arrival::Dispatch(1));
        assert_eq!(g.arrive(2), Arrival::Dispatch(2));
        assert_eq!(g.ready_replicas(), vec![(1, 1), (2, 1)]);
        assert_eq!(g.drain(2), 1);
        assert_eq!(g.ready(), 1);
        assert_eq!(g.ready_replicas(), vec![(1, 1)]);
        for id in 3..6 {
            assert_eq!(g.arrive(id), Arrival::Dispatch(1));
        }
        assert_eq!(g.finish(2), vec![]);
        assert_eq!(g.in_flight_of(2), 0);
        g.remove(2);
        // With every replica draining, requests wait (and poke).
        g.drain(1);
        assert_eq!(g.arrive(9), Arrival::Queued { poke: true });
    }

    #[test]
    fn raising_concurrency_releases_waiters() {
        let mut g = Gate::new(1, 10);
        g.add_replica(1);
        g.arrive(1);
        g.arrive(2);
        assert_eq!(g.set_concurrency(2), vec![(2, 1)]);
    }
}
