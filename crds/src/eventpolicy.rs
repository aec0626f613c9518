//! `eventing.knative.dev/v1alpha1` EventPolicy (SEMANTICS.md §11): which senders may send
//! which events to which addressables, while OIDC authentication is on. Field for field as
//! Knative spells it; [`build`] compiles the valid ones into the topology
//! (`sluice_core::topology::EventPolicy`), where `sluice-auth` decides with them.
//!
//! Compiling resolves what the data plane should not have to: `to.selector` becomes the list
//! of the addressables it selects now, `from.ref` becomes the subject of the sender's OIDC
//! ServiceAccount, and `filters` are compiled once by `sluice-filter`.

use crate::convert::{label_selector_query, Ctx};
use crate::k8s_sources::LabelSelector;
use crate::load::{Loaded, Resource};
use crate::types::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_core::topology::{EventPolicy as Compiled, Key, Kind, ObjectRef, Topology};
use sluice_filter::SubscriptionsApiFilter;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `eventing.knative.dev/v1alpha1` EventPolicy.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1alpha1",
    kind = "EventPolicy",
    category = "all",
    category = "knative",
    category = "eventing",
    namespaced,
    status = "EventPolicyStatus",
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicySpec {
    /// The addressables it applies to; empty: every addressable in its namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<EventPolicySpecTo>,
    /// The senders it admits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<EventPolicySpecFrom>,
    /// Events admitted senders may send (Subscriptions API filters); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
}

/// One target: exactly one of `ref` and `selector`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicySpecTo {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_: Option<EventPolicyToReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<EventPolicySelector>,
}

/// An addressable by name.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicyToReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// Addressables of one kind by their labels.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicySelector {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<crate::k8s_sources::LabelSelectorRequirement>,
}

/// One admitted sender: exactly one of `ref` (a Sluice/Knative sender: its OIDC
/// ServiceAccount) and `sub` (a token subject, `prefix*` glob allowed).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicySpecFrom {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_: Option<EventPolicyFromReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// A sender by name; `namespace` defaults to the policy's.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicyFromReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What the controller reports: Ready, and the subjects `from` resolved to.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The subjects admitted (`from.sub` as written, `from.ref` resolved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

/// The ingress key of an addressable kind an EventPolicy can protect.
fn target_kind(api_version: &str, kind: &str) -> Option<Kind> {
    let group = api_version.split('/').next().unwrap_or_default();
    match (group, kind) {
        ("eventing.knative.dev", "Broker") => Some(Kind::Broker),
        ("eventing.knative.dev", "EventTransform") => Some(Kind::EventTransform),
        ("messaging.knative.dev", k) if Kind::from_name(k).is_some_and(Kind::is_channel) => {
            // The ingress serves every channel kind at /<ns>/channels/<name>.
            Some(Kind::Channel)
        }
        _ => None,
    }
}

/// The labels of an object an EventPolicy can protect, with its ingress key.
fn addressable(r: &Loaded) -> Option<(ObjectRef, &str, &BTreeMap<String, String>)> {
    let (meta, api_version) = match &r.resource {
        Resource::Broker(b) => (&b.metadata, "eventing.knative.dev/v1"),
        Resource::EventTransform(t) => (&t.metadata, "eventing.knative.dev/v1alpha1"),
        Resource::Channel(c) => (&c.metadata, "messaging.knative.dev/v1"),
        Resource::InMemoryChannel(c) => (&c.metadata, "messaging.knative.dev/v1"),
        Resource::KafkaChannel(c) => (&c.metadata, "messaging.knative.dev/v1beta1"),
        Resource::NatsJetStreamChannel(c) => (&c.metadata, "messaging.knative.dev/v1alpha1"),
        _ => return None,
    };
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    let kind = target_kind(api_version, r.resource.kind())?;
    let labels = meta.labels.as_ref().unwrap_or(&EMPTY);
    Some((
        ObjectRef::new(kind, Key::new(&r.namespace, &r.name)),
        r.resource.kind(),
        labels,
    ))
}

/// Whether `labels` satisfy a selector already checked by `label_selector_query`.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|e| {
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| e.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Compiles every EventPolicy into `topology.event_policies`; problems go to `ctx`.
pub(crate) fn build(ctx: &mut Ctx, resources: &[Loaded], topology: &mut Topology) {
    for r in resources {
        if let Resource::EventPolicy(p) = &r.resource {
            if let Some(c) = compile(ctx, r, p, resources) {
                topology.event_policies.insert(c.key.clone(), Arc::new(c));
            }
        }
    }
}

fn compile(ctx: &mut Ctx, r: &Loaded, p: &EventPolicy, resources: &[Loaded]) -> Option<Compiled> {
    if !ctx.defaults.oidc {
        ctx.error(
            r,
            "",
            "EventPolicies need OIDC authentication (authentication-oidc: enabled), which is off: \
             turn it on (embedded mode: --oidc-issuer with --oidc-jwks-file or --oidc-discovery; \
             Kubernetes mode: config-features) or remove the EventPolicy",
        );
        return None;
    }
    let before = ctx.errors.len();
    let mut to = Vec::new();
    for (i, t) in p.spec.to.iter().enumerate() {
        let field = format!("spec.to[{i}]");
        match (&t.ref_, &t.selector) {
            (Some(rf), None) => match target_kind(&rf.api_version, &rf.kind) {
                Some(kind) => to.push(ObjectRef::new(kind, Key::new(&r.namespace, &rf.name))),
                None => ctx.error(
                    r,
                    &format!("{field}.ref"),
                    unsupported_target(&rf.api_version, &rf.kind),
                ),
            },
            (None, Some(sel)) => {
                let Some(kind) = target_kind(&sel.api_version, &sel.kind) else {
                    ctx.error(
                        r,
                        &format!("{field}.selector"),
                        unsupported_target(&sel.api_version, &sel.kind),
                    );
                    continue;
                };
                let selector = LabelSelector {
                    match_labels: sel.match_labels.clone(),
                    match_expressions: sel.match_expressions.clone(),
                };
                if let Err((f, m)) = label_selector_query(&selector) {
                    ctx.error(r, &format!("{field}.selector.{f}"), m);
                    continue;
                }
                to.extend(
                    resources
                        .iter()
                        .filter(|o| o.namespace == r.namespace)
                        .filter_map(addressable)
                        .filter(|(o, written, labels)| {
                            o.kind == kind
                                && (kind != Kind::Channel || *written == sel.kind)
                                && selector_matches(&selector, labels)
                        })
                        .map(|(o, _, _)| o),
                );
            }
            _ => ctx.error(r, &field, "needs exactly one of `ref` and `selector`"),
        }
    }
    let mut from = Vec::new();
    for (i, f) in p.spec.from.iter().enumerate() {
        let field = format!("spec.from[{i}]");
        match (&f.ref_, &f.sub) {
            (Some(rf), None) => {
                let group = rf.api_version.split('/').next().unwrap_or_default();
                if group.is_empty() || !rf.api_version.contains('/') || rf.name.is_empty() {
                    ctx.error(r, &format!("{field}.ref"), "needs apiVersion <group>/<version>, kind and name of the sender (a Trigger, Subscription or source)");
                    continue;
                }
                let ns = rf.namespace.as_deref().unwrap_or(&r.namespace);
                let sa = sluice_auth::identity::service_account(&rf.name, group, &rf.kind);
                from.push(sluice_auth::identity::subject(ns, &sa));
            }
            (None, Some(sub)) => {
                let body = sub.strip_suffix('*').unwrap_or(sub);
                if sub.is_empty() || body.contains('*') {
                    ctx.error(r, &format!("{field}.sub"), format!("{sub:?} is not a subject pattern: write a subject, or a prefix ending in `*` (`*` only at the end), e.g. system:serviceaccount:my-ns:*"));
                    continue;
                }
                from.push(sub.clone());
            }
            _ => ctx.error(r, &field, "needs exactly one of `ref` and `sub`"),
        }
    }
    let filter = match sluice_filter::compile(None, &p.spec.filters) {
        Ok(f) if p.spec.filters.is_empty() => {
            drop(f);
            None
        }
        Ok(f) => Some(Arc::new(f) as Arc<dyn sluice_core::topology::EventFilter>),
        Err(e) => {
            ctx.error(r, "spec.filters", e.to_string());
            None
        }
    };
    if ctx.errors.len() > before {
        return None;
    }
    Some(Compiled {
        key: Key::new(&r.namespace, &r.name),
        to: (!p.spec.to.is_empty()).then_some(to),
        from,
        filter,
    })
}

fn unsupported_target(api_version: &str, kind: &str) -> String {
    format!("`{api_version}` `{kind}` is not an addressable Sluice authorizes; EventPolicies protect eventing.knative.dev Brokers and EventTransforms and messaging.knative.dev channels")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s_sources::LabelSelectorRequirement;

    #[test]
    fn selectors_match_labels() {
        let labels: BTreeMap<String, String> =
            [("team".into(), "a".into()), ("tier".into(), "gold".into())].into();
        let req = |k: &str, op: &str, v: &[&str]| LabelSelectorRequirement {
            key: k.into(),
            operator: op.into(),
            values: v.iter().map(|s| s.to_string()).collect(),
        };
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: ml
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: me,
        };
        let cases = [
            (sel(&[], vec![]), true),
            (sel(&[("team", "a")], vec![]), true),
            (sel(&[("team", "b")], vec![]), false),
            (sel(&[("team", "a"), ("missing", "x")], vec![]), false),
            (sel(&[], vec![req("tier", "In", &["gold", "silver"])]), true),
            (sel(&[], vec![req("tier", "In", &["silver"])]), false),
            (sel(&[], vec![req("tier", "NotIn", &["silver"])]), true),
            (sel(&[], vec![req("absent", "NotIn", &["x"])]), true),
            (sel(&[], vec![req("team", "Exists", &[])]), true),
            (sel(&[], vec![req("team", "DoesNotExist", &[])]), false),
            (
                sel(&[("team", "a")], vec![req("absent", "DoesNotExist", &[])]),
                true,
            ),
        ];
        for (i, (s, want)) in cases.iter().enumerate() {
            assert_eq!(selector_matches(s, &labels), *want, "case {i}: {s:?}");
        }
    }
}
