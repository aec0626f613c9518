//! Knative conditions: a set of dependent conditions and the `Ready` condition derived from
//! them (SEMANTICS.md §8), as pure functions.
//!
//! `Ready` is False when any dependent is False (taking the reason and message of the False
//! dependent that changed last), else Unknown when any is Unknown, else True. A condition
//! keeps its `lastTransitionTime` while its status stays the same, so writing the same status
//! twice changes nothing and a status patch is only sent when something really changed.

use serde::{Deserialize, Serialize};

/// A condition as Kubernetes spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// Knative's severity: empty for conditions `Ready` depends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

/// One dependent condition as a reconcile computes it (no time yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: State,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    True,
    False,
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::True => "True",
            State::False => "False",
            State::Unknown => "Unknown",
        }
    }
}

impl Cond {
    pub fn ok(type_: &'static str) -> Self {
        Cond {
            type_,
            status: State::True,
            reason: String::new(),
            message: String::new(),
        }
    }

    /// True, with a reason saying why it holds trivially (e.g. `DeadLetterSinkNotConfigured`).
    pub fn ok_because(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Cond {
            type_,
            status: State::True,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn failed(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Cond {
            type_,
            status: State::False,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn unknown(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Cond {
            type_,
            status: State::Unknown,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The full condition list: the dependents, then `Ready`, each with a `lastTransitionTime`
/// carried over from `previous` when its status did not change, else `now` (RFC 3339).
pub fn conditions(dependents: &[Cond], previous: &[Condition], now: &str) -> Vec<Condition> {
    let mut out: Vec<Condition> = dependents.iter().map(|c| stamp(c, previous, now)).collect();
    let ready = ready_of(dependents, &out);
    out.push(stamp(&ready, previous, now));
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// `Ready` from the dependents (SEMANTICS.md §8). Among False dependents the one that changed
/// last gives the reason; on a tie, the first in the set's order.
pub fn ready_of(dependents: &[Cond], stamped: &[Condition]) -> Cond {
    let time_of = |t: &str| {
        stamped
            .iter()
            .find(|c| c.type_ == t)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_default()
    };
    let mut latest_false: Option<(&Cond, String)> = None;
    for c in dependents.iter().filter(|c| c.status == State::False) {
        let t = time_of(c.type_);
        if latest_false.as_ref().is_none_or(|(_, lt)| t > *lt) {
            latest_false = Some((c, t));
        }
    }
    if let Some((c, _)) = latest_false {
        return Cond::failed("Ready", &c.reason, c.message.clone());
    }
    if let Some(c) = dependents.iter().find(|c| c.status == State::Unknown) {
        return Cond::unknown("Ready", &c.reason, c.message.clone());
    }
    Cond::ok("Ready")
}

fn stamp(c: &Cond, previous: &[Condition], now: &str) -> Condition {
    let kept = previous
        .iter()
        .find(|p| p.type_ == c.type_ && p.status == c.status.as_str())
        .and_then(|p| p.last_transition_time.clone());
    Condition {
        type_: c.type_.to_string(),
        status: c.status.as_str().to_string(),
        reason: (!c.reason.is_empty()).then(|| c.reason.clone()),
        message: (!c.message.is_empty()).then(|| c.message.clone()),
        last_transition_time: Some(kept.unwrap_or_else(|| now.to_string())),
        severity: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-01-01T00:00:00Z";
    const T1: &str = "2026-01-01T00:01:00Z";

    fn ready(conds: &[Condition]) -> &Condition {
        conds.iter().find(|c| c.type_ == "Ready").unwrap()
    }

    /// SEMANTICS.md §8: the rule for Ready, case by case.
    #[test]
    fn ready_follows_the_dependents() {
        let t = Cond::ok;
        let f = |ty, r: &str| Cond::failed(ty, r, format!("{ty} is broken"));
        let u = |ty, r: &str| Cond::unknown(ty, r, "not yet");
        let cases: Vec<(Vec<Cond>, &str, Option<&str>)> = vec![
            (vec![t("A"), t("B")], "True", None),
            (vec![t("A"), u("B", "Pending")], "Unknown", Some("Pending")),
            (
                vec![u("A", "Pending"), f("B", "Broken")],
                "False",
                Some("Broken"),
            ),
            (
                vec![f("A", "First"), f("B", "Second")],
                "False",
                Some("First"),
            ),
            (vec![], "True", None),
        ];
        for (deps, status, reason) in cases {
            let out = conditions(&deps, &[], T0);
            let r = ready(&out);
            assert_eq!(r.status, status, "{deps:?}");
            assert_eq!(r.reason.as_deref(), reason, "{deps:?}");
            assert_eq!(out.len(), deps.len() + 1);
        }
    }

    #[test]
    fn the_false_dependent_that_changed_last_gives_the_reason() {
        // A has been False since T0; B turns False now (T1): B's reason wins.
        let before = conditions(&[Cond::failed("A", "Old", "old"), Cond::ok("B")], &[], T0);
        let after = conditions(
            &[
                Cond::failed("A", "Old", "old"),
                Cond::failed("B", "New", "new"),
            ],
            &before,
            T1,
        );
        assert_eq!(ready(&after).reason.as_deref(), Some("New"));
        let a = after.iter().find(|c| c.type_ == "A").unwrap();
        assert_eq!(
            a.last_transition_time.as_deref(),
            Some(T0),
            "A did not change"
        );
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time_so_rewrites_are_no_ops() {
        let deps = [Cond::ok("A")];
        let first = conditions(&deps, &[], T0);
        let second = conditions(&deps, &first, T1);
        assert_eq!(first, second);
        let flipped = conditions(&[Cond::failed("A", "X", "x")], &second, T1);
        assert_eq!(ready(&flipped).last_transition_time.as_deref(), Some(T1));
    }
}
