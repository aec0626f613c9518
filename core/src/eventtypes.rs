//! The event types seen: which `(type, source)` pairs reached which broker or channel, for
//! discovery (`sluice get eventtypes`, `/eventtypes`), the way Knative's EventType objects
//! describe what an addressable receives.
//!
//! Recorded on the ingress's hot path, so it is cheap when a pair is known (a read lock and
//! an atomic add) and bounded: past [`EventTypeRegistry::capacity`] distinct entries, new
//! pairs are only counted as overflow, so a producer inventing a type per event cannot grow
//! memory without limit.

use crate::topology::ObjectRef;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// One `(type, source)` pair seen at a broker or channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventTypeKey {
    /// `ObjectRef::broker` / `ObjectRef::channel`.
    pub at: ObjectRef,
    pub event_type: String,
    pub source: String,
}

/// What [`EventTypeRegistry::snapshot`] returns per pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypeSeen {
    pub key: EventTypeKey,
    /// Events accepted with this pair.
    pub count: u64,
}

/// Per broker/channel, per type, per source: the count.
type Seen = BTreeMap<ObjectRef, BTreeMap<String, BTreeMap<String, AtomicU64>>>;

#[derive(Debug)]
pub struct EventTypeRegistry {
    capacity: usize,
    seen: RwLock<(Seen, usize)>,
    overflow: AtomicU64,
}

impl Default for EventTypeRegistry {
    fn default() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }
}

impl EventTypeRegistry {
    /// Distinct pairs kept by default.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    pub fn with_capacity(capacity: usize) -> Self {
        EventTypeRegistry {
            capacity,
            seen: RwLock::new((BTreeMap::new(), 0)),
            overflow: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts one event of `event_type` from `source` at `at`. A known pair costs a read
    /// lock and an atomic add, no allocation.
    pub fn record(&self, at: &ObjectRef, event_type: &str, source: &str) {
        {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            let known = seen
                .0
                .get(at)
                .and_then(|t| t.get(event_type))
                .and_then(|s| s.get(source));
            if let Some(n) = known {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut guard = self.seen.write().unwrap_or_else(|e| e.into_inner());
        let (seen, len) = &mut *guard;
        let sources = seen
            .entry(at.clone())
            .or_default()
            .entry(event_type.to_string())
            .or_default();
        if let Some(n) = sources.get(source) {
            n.fetch_add(1, Ordering::Relaxed);
        } else if *len < self.capacity {
            sources.insert(source.to_string(), AtomicU64::new(1));
            *len += 1;
        } else {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets the pairs of brokers and channels for which `keep` is false (deleted ones).
    pub fn retain(&self, mut keep: impl FnMut(&ObjectRef) -> bool) {
        let mut guard = self.seen.write().unwrap_or_else(|e| e.into_inner());
        let (seen, len) = &mut *guard;
        seen.retain(|at, _| keep(at));
        *len = seen
            .values()
            .flat_map(|t| t.values())
            .map(BTreeMap::len)
            .sum();
    }

    /// Every pair, sorted by where, type, source.
    pub fn snapshot(&self) -> Vec<EventTypeSeen> {
        let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (at, types) in &seen.0 {
            for (event_type, sources) in types {
                for (source, n) in sources {
                    out.push(EventTypeSeen {
                        key: EventTypeKey {
                            at: at.clone(),
                            event_type: event_type.clone(),
                            source: source.clone(),
                        },
                        count: n.load(Ordering::Relaxed),
                    });
                }
            }
        }
        out
    }

    /// Events whose new pair was not kept because the registry was full.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Key;

    #[test]
    fn counts_pairs_per_place_within_its_bound() {
        let r = EventTypeRegistry::with_capacity(2);
        let b = ObjectRef::broker(Key::new("ns", "b"));
        let c = ObjectRef::channel(Key::new("ns", "c"));
        r.record(&b, "t1", "/s");
        r.record(&b, "t1", "/s");
        r.record(&c, "t1", "/s");
        r.record(&c, "t2", "/s"); // full: counted as overflow, not kept
        r.record(&b, "t1", "/s"); // known pairs still count
        let snap = r.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!((snap[0].key.at.clone(), snap[0].count), (b.clone(), 3));
        assert_eq!((snap[1].key.at.clone(), snap[1].count), (c.clone(), 1));
        assert_eq!(r.overflow(), 1);
        r.retain(|o| o == &b);
        assert_eq!(r.snapshot().len(), 1);
    }
}
