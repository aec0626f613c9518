//! Which offsets of a partitioned log may be committed, when events finish out of order.
//!
//! Kafka consumers (the Kafka channel and the KafkaSource) hand records to deliveries that
//! finish in any order. A commit must never pass a record still being delivered, or a crash
//! would lose it. Per partition this tracker keeps the offsets handed out and not yet finished;
//! the commit point is the lowest unfinished offset, or one past the highest received when all
//! are finished — reported only where it moved past the last commit the cluster confirmed.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// Per-partition bookkeeping; `K` names a partition (a partition number, or topic + partition).
#[derive(Debug)]
pub struct OffsetTracker<K> {
    partitions: HashMap<K, PartState>,
}

impl<K> Default for OffsetTracker<K> {
    fn default() -> Self {
        OffsetTracker {
            partitions: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct PartState {
    unfinished: BTreeSet<i64>,
    /// One past the highest offset received.
    next: i64,
    /// The last commit the cluster confirmed (-1: none yet).
    committed: i64,
}

impl<K: Hash + Eq + Ord + Copy> OffsetTracker<K> {
    /// A record was handed out for delivery.
    pub fn received(&mut self, partition: K, offset: i64) {
        let st = self.partitions.entry(partition).or_insert(PartState {
            unfinished: BTreeSet::new(),
            next: offset,
            committed: -1,
        });
        st.unfinished.insert(offset);
        st.next = st.next.max(offset + 1);
    }

    /// Its delivery ended (delivered or dead-lettered).
    pub fn finished(&mut self, partition: K, offset: i64) {
        if let Some(st) = self.partitions.get_mut(&partition) {
            st.unfinished.remove(&offset);
        }
    }

    /// The cluster confirmed a commit at `offset`.
    pub fn confirmed(&mut self, partition: K, offset: i64) {
        if let Some(st) = self.partitions.get_mut(&partition) {
            st.committed = st.committed.max(offset);
        }
    }

    /// The partition is no longer this consumer's (its group gave it to another): drop what
    /// is known of it, so that if it comes back it starts from the group's commit afresh.
    pub fn forget(&mut self, partition: K) {
        self.partitions.remove(&partition);
    }

    /// Offsets to commit, sorted by partition: per partition the lowest unfinished offset, or
    /// the next one when everything received is finished; only where that moved past the last
    /// confirmed commit.
    pub fn commit_points(&self) -> Vec<(K, i64)> {
        let mut points: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(p, st)| {
                let point = st.unfinished.first().copied().unwrap_or(st.next);
                (point > st.committed).then_some((*p, point))
            })
            .collect();
        points.sort();
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_never_pass_an_unfinished_offset() {
        let mut t = OffsetTracker::default();
        for o in 10..13 {
            t.received(0, o);
        }
        t.received(1, 5);
        assert_eq!(t.commit_points(), [(0, 10), (1, 5)]);
        // Finishing out of order does not move the commit past 10.
        t.finished(0, 11);
        t.finished(0, 12);
        t.confirmed(0, 10);
        t.confirmed(1, 5);
        assert!(t.commit_points().is_empty());
        t.finished(0, 10);
        t.finished(1, 5);
        assert_eq!(t.commit_points(), [(0, 13), (1, 6)]);
        t.confirmed(0, 13);
        assert_eq!(t.commit_points(), [(1, 6)]);
        // A partition given to another consumer is forgotten; if it comes back it starts over.
        t.forget(1);
        assert!(t.commit_points().is_empty());
        t.received(1, 40);
        assert_eq!(t.commit_points(), [(1, 40)]);
    }
}
