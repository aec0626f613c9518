//! The authorization decision (SEMANTICS.md §11) as a pure function: target, verified
//! subject, event, the EventPolicies and the default mode in; Allow or Deny (with the reason
//! the 403 body carries) out. No I/O, no clock: table-tested below, one line per rule.
//!
//! The rules:
//! - a policy *applies* to a target when it is in the target's namespace and its `to` is empty
//!   or names the target (selectors are resolved into names when the policy is built);
//! - if any policy applies, the subject must match one of the applying policies' `from`
//!   patterns (exact or `prefix*`, case-insensitive) whose `filters` the event passes;
//! - if none applies, the default mode decides: `allow-all` passes, `deny-all` refuses,
//!   `allow-same-namespace` passes subjects `system:serviceaccount:<target namespace>:*`.

use sluice_core::topology::{EventPolicy, ObjectRef};
use sluice_core::Event;
use std::fmt;
use std::str::FromStr;

/// `default-authorization-mode` of `config-features`: what happens to a sender when no
/// EventPolicy applies to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultMode {
    /// ServiceAccounts of the target's own namespace only (Knative's default).
    #[default]
    AllowSameNamespace,
    AllowAll,
    DenyAll,
}

impl FromStr for DefaultMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow-same-namespace" => Ok(DefaultMode::AllowSameNamespace),
            "allow-all" => Ok(DefaultMode::AllowAll),
            "deny-all" => Ok(DefaultMode::DenyAll),
            other => Err(format!(
                "default-authorization-mode {other:?} is not one of allow-same-namespace, allow-all, deny-all"
            )),
        }
    }
}

impl fmt::Display for DefaultMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DefaultMode::AllowSameNamespace => "allow-same-namespace",
            DefaultMode::AllowAll => "allow-all",
            DefaultMode::DenyAll => "deny-all",
        })
    }
}

/// The answer for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused (403), with what to change.
    Deny(String),
}

/// Whether `policy` applies to `target`.
pub fn applies(policy: &EventPolicy, target: &ObjectRef) -> bool {
    policy.key.namespace == target.key.namespace
        && policy.to.as_ref().is_none_or(|to| to.contains(target))
}

/// Whether `subject` matches `pattern`: equal, or starting with what precedes a trailing
/// `*`; ASCII case is ignored.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => subject
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
        None => pattern.eq_ignore_ascii_case(subject),
    }
}

/// Decides whether `subject` may send `event` to `target`.
pub fn authorize<'a>(
    target: &ObjectRef,
    subject: &str,
    event: &Event,
    policies: impl IntoIterator<Item = &'a EventPolicy>,
    mode: DefaultMode,
) -> Decision {
    let mut applying = Vec::new();
    let mut filtered_out = None;
    for p in policies.into_iter().filter(|p| applies(p, target)) {
        applying.push(p.key.name.as_str());
        if p.from.iter().any(|pat| subject_matches(pat, subject)) {
            if p.filter.as_ref().is_none_or(|f| f.matches(event)) {
                return Decision::Allow;
            }
            filtered_out.get_or_insert(p.key.name.as_str());
        }
    }
    let what = format!(
        "{} {}/{}",
        target.kind.as_str(),
        target.key.namespace,
        target.key.name
    );
    if let Some(policy) = filtered_out {
        return Decision::Deny(format!(
            "{subject} may send to {what} under EventPolicy {policy}, but this event (type {:?}, source {:?}) does not pass its spec.filters",
            event.ty(),
            event.source()
        ));
    }
    if !applying.is_empty() {
        return Decision::Deny(format!(
            "{subject} is not admitted by the EventPolicies that apply to {what} ({}); add it to the spec.from of one of them",
            applying.join(", ")
        ));
    }
    match mode {
        DefaultMode::AllowAll => Decision::Allow,
        DefaultMode::DenyAll => Decision::Deny(format!(
            "no EventPolicy applies to {what} and default-authorization-mode is deny-all; create an EventPolicy whose spec.to names it and whose spec.from admits {subject}"
        )),
        DefaultMode::AllowSameNamespace => {
            let own = format!("system:serviceaccount:{}:", target.key.namespace);
            if subject_matches(&format!("{own}*"), subject) {
                Decision::Allow
            } else {
                Decision::Deny(format!(
                    "no EventPolicy applies to {what} and default-authorization-mode is allow-same-namespace: only subjects {own}* may send; create an EventPolicy that admits {subject}"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::topology::{EventFilter, Key, Kind};
    use std::sync::Arc;

    #[derive(Debug)]
    struct TypeIs(&'static str);
    impl EventFilter for TypeIs {
        fn matches(&self, event: &Event) -> bool {
            event.ty() == self.0
        }
    }

    fn policy(ns: &str, name: &str, to: Option<Vec<ObjectRef>>, from: &[&str]) -> EventPolicy {
        EventPolicy {
            key: Key::new(ns, name),
            to,
            from: from.iter().map(|s| s.to_string()).collect(),
            filter: None,
        }
    }

    fn event(ty: &str) -> Event {
        Event::new(sluice_core::SpecVersion::V10, "1", "/src", ty)
    }

    #[test]
    fn modes_parse_case_insensitively() {
        assert_eq!("Deny-All".parse(), Ok(DefaultMode::DenyAll));
        assert_eq!("allow-all".parse(), Ok(DefaultMode::AllowAll));
        assert_eq!(
            " ALLOW-SAME-NAMESPACE".parse(),
            Ok(DefaultMode::AllowSameNamespace)
        );
        assert!("permit"
            .parse::<DefaultMode>()
            .unwrap_err()
            .contains("deny-all"));
        assert_eq!(DefaultMode::default(), DefaultMode::AllowSameNamespace);
    }

    #[test]
    fn subject_globs() {
        let cases = [
            (
                "system:serviceaccount:ns:sa",
                "system:serviceaccount:ns:sa",
                true,
            ),
            (
                "System:ServiceAccount:NS:SA",
                "system:serviceaccount:ns:sa",
                true,
            ),
            (
                "system:serviceaccount:ns:*",
                "system:serviceaccount:ns:anything",
                true,
            ),
            (
                "system:serviceaccount:ns:*",
                "system:serviceaccount:ns:",
                true,
            ),
            (
                "system:serviceaccount:ns:*",
                "system:serviceaccount:other:sa",
                false,
            ),
            ("*", "anyone", true),
            (
                "system:serviceaccount:ns:sa",
                "system:serviceaccount:ns:sa2",
                false,
            ),
            // Only a trailing `*` is a glob.
            ("system:*:ns:sa", "system:serviceaccount:ns:sa", false),
            ("sys*", "sy", false),
            // Multi-byte subjects do not panic on a prefix that ends inside a character.
            ("a*", "é", false),
        ];
        for (pattern, subject, want) in cases {
            assert_eq!(
                subject_matches(pattern, subject),
                want,
                "{pattern} vs {subject}"
            );
        }
    }

    #[test]
    fn decisions_follow_semantics_11() {
        let b = ObjectRef::broker(Key::new("ns", "b"));
        let other = ObjectRef::broker(Key::new("ns", "other"));
        let ch = ObjectRef::new(Kind::Channel, Key::new("ns", "b"));
        let sa = "system:serviceaccount:ns:sender";
        let foreign = "system:serviceaccount:elsewhere:sender";
        let mut filtered = policy("ns", "only-orders", Some(vec![b.clone()]), &[sa]);
        filtered.filter = Some(Arc::new(TypeIs("order.created")));
        use DefaultMode::*;
        let allow = Decision::Allow;
        let deny = |needle: &'static str| Some(needle);
        // (what, policies, target, subject, event type, mode, expected: None = allow, Some(part of the reason))
        type Case<'a> = (
            &'a str,
            Vec<EventPolicy>,
            &'a ObjectRef,
            &'a str,
            &'a str,
            DefaultMode,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "no policy, allow-all",
                vec![],
                &b,
                foreign,
                "t",
                AllowAll,
                None,
            ),
            (
                "no policy, deny-all",
                vec![],
                &b,
                sa,
                "t",
                DenyAll,
                deny("deny-all"),
            ),
            (
                "no policy, same namespace",
                vec![],
                &b,
                sa,
                "t",
                AllowSameNamespace,
                None,
            ),
            (
                "no policy, other namespace",
                vec![],
                &b,
                foreign,
                "t",
                AllowSameNamespace,
                deny("allow-same-namespace"),
            ),
            (
                "no policy, a user is no ServiceAccount",
                vec![],
                &b,
                "alice",
                "t",
                AllowSameNamespace,
                deny("system:serviceaccount:ns:*"),
            ),
            (
                "to names the target, from matches",
                vec![policy("ns", "p", Some(vec![b.clone()]), &[sa])],
                &b,
                sa,
                "t",
                DenyAll,
                None,
            ),
            (
                "to names the target, from glob",
                vec![policy(
                    "ns",
                    "p",
                    Some(vec![b.clone()]),
                    &["system:serviceaccount:elsewhere:*"],
                )],
                &b,
                foreign,
                "t",
                DenyAll,
                None,
            ),
            (
                "to names the target, from glob, case-insensitive",
                vec![policy(
                    "ns",
                    "p",
                    Some(vec![b.clone()]),
                    &["SYSTEM:serviceaccount:ELSEWHERE:*"],
                )],
                &b,
                foreign,
                "t",
                DenyAll,
                None,
            ),
            (
                "applies, subject not admitted: the default mode does not rescue it",
                vec![policy("ns", "p", Some(vec![b.clone()]), &[foreign])],
                &b,
                sa,
                "t",
                AllowAll,
                deny("not admitted by the EventPolicies that apply"),
            ),
            (
                "empty to applies to all in the namespace",
                vec![policy("ns", "p", None, &[foreign])],
                &b,
                sa,
                "t",
                AllowAll,
                deny("(p)"),
            ),
            (
                "empty to, subject admitted",
                vec![policy("ns", "p", None, &[sa])],
                &ch,
                sa,
                "t",
                DenyAll,
                None,
            ),
            (
                "a policy of another namespace does not apply",
                vec![policy("elsewhere", "p", None, &[sa])],
                &b,
                sa,
                "t",
                DenyAll,
                deny("deny-all"),
            ),
            (
                "a policy for another target does not apply",
                vec![policy("ns", "p", Some(vec![other.clone()]), &[sa])],
                &b,
                sa,
                "t",
                DenyAll,
                deny("deny-all"),
            ),
            (
                "a broker and a channel of one name are different targets",
                vec![policy("ns", "p", Some(vec![ch.clone()]), &[sa])],
                &b,
                sa,
                "t",
                DenyAll,
                deny("deny-all"),
            ),
            (
                "filters pass",
                vec![filtered.clone()],
                &b,
                sa,
                "order.created",
                DenyAll,
                None,
            ),
            (
                "filters refuse",
                vec![filtered.clone()],
                &b,
                sa,
                "order.deleted",
                AllowAll,
                deny("does not pass its spec.filters"),
            ),
            (
                "a second applying policy without filters admits",
                vec![filtered.clone(), policy("ns", "any", None, &[sa])],
                &b,
                sa,
                "order.deleted",
                DenyAll,
                None,
            ),
            (
                "any of several applying policies admits",
                vec![
                    policy("ns", "p1", None, &[foreign]),
                    policy(
                        "ns",
                        "p2",
                        Some(vec![b.clone()]),
                        &["system:serviceaccount:ns:*"],
                    ),
                ],
                &b,
                sa,
                "t",
                DenyAll,
                None,
            ),
        ];
        for (what, policies, target, subject, ty, mode, want) in cases {
            let got = authorize(target, subject, &event(ty), &policies, mode);
            match (want, &got) {
                (None, Decision::Allow) => {}
                (Some(needle), Decision::Deny(reason)) => {
                    assert!(
                        reason.contains(needle),
                        "{what}: {reason:?} lacks {needle:?}"
                    )
                }
                _ => panic!("{what}: got {got:?}, wanted {want:?}"),
            }
        }
        assert_eq!(authorize(&b, sa, &event("t"), &[], AllowAll), allow);
    }
}
