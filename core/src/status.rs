//! Per-object status: what `sluice get`, `/topology` and (in Kubernetes mode) each resource's
//! `status` show.
//!
//! Every object the topology names gets a [`Status`]: Ready True/False/Unknown with a
//! machine-readable reason (Knative's condition reasons where one exists, SEMANTICS.md §8),
//! a message that says what to do, and the generation of the object's spec the running
//! state reflects. Reconcilers write it as they converge; readers take a snapshot. The board
//! is a plain map behind a short-lived lock, never held across I/O, so status can always be
//! read even while a reconciler is stuck talking to a server.

use crate::topology::ObjectRef;
use std::collections::BTreeMap;
use std::sync::RwLock;

/// A condition's status, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    True,
    False,
    Unknown,
}

impl Ready {
    pub fn as_str(self) -> &'static str {
        match self {
            Ready::True => "True",
            Ready::False => "False",
            Ready::Unknown => "Unknown",
        }
    }
}

/// One object's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub ready: Ready,
    /// CamelCase reason, empty when ready.
    pub reason: String,
    /// What is wrong and how to fix it, empty when ready.
    pub message: String,
    /// The generation of the spec the running state reflects.
    pub observed_generation: i64,
}

impl Status {
    pub fn ready(observed_generation: i64) -> Self {
        Status {
            ready: Ready::True,
            reason: String::new(),
            message: String::new(),
            observed_generation,
        }
    }

    pub fn not_ready(
        observed_generation: i64,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Status {
            ready: Ready::False,
            reason: reason.into(),
            message: message.into(),
            observed_generation,
        }
    }

    pub fn unknown(
        observed_generation: i64,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Status {
            ready: Ready::Unknown,
            reason: reason.into(),
            message: message.into(),
            observed_generation,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready == Ready::True
    }
}

/// The status of every object, shared between the reconcilers that write it and the admin
/// API that reads it.
#[derive(Debug, Default)]
pub struct StatusBoard {
    inner: RwLock<BTreeMap<ObjectRef, Status>>,
}

impl StatusBoard {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, object: ObjectRef, status: Status) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.insert(object, status);
    }

    pub fn get(&self, object: &ObjectRef) -> Option<Status> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(object).cloned()
    }

    /// Forgets objects for which `keep` is false (deleted objects).
    pub fn retain(&self, mut keep: impl FnMut(&ObjectRef) -> bool) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| keep(k));
    }

    /// Every object's status, sorted by kind then namespace/name.
    pub fn snapshot(&self) -> Vec<(ObjectRef, Status)> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Key, ObjectRef};

    #[test]
    fn set_get_retain_snapshot() {
        let board = StatusBoard::new();
        let b = ObjectRef::broker(Key::new("ns", "b"));
        let t = ObjectRef::trigger(Key::new("ns", "t"));
        board.set(b.clone(), Status::ready(1));
        board.set(
            t.clone(),
            Status::not_ready(2, "BrokerDoesNotExist", "no broker"),
        );
        assert!(board.get(&b).unwrap().is_ready());
        assert_eq!(board.get(&t).unwrap().reason, "BrokerDoesNotExist");
        let snap = board.snapshot();
        assert_eq!(snap[0].0, b, "brokers sort before triggers");
        board.retain(|o| o == &b);
        assert!(board.get(&t).is_none());
    }
}
