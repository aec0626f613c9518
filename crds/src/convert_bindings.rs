//! The sink a process is given: `K_SINK` (the resolved sink URL) and `K_CE_OVERRIDES`, for
//! the two kinds whose processes send events themselves, ContainerSource and SinkBinding.
//!
//! ```text
//! ContainerSource / SinkBinding ──spec.sink──▶ resolve (the one resolver) ──▶ BoundSink { K_SINK, K_CE_OVERRIDES }
//!        Kubernetes mode: the controller writes it into a pod template (Deployment, Job, ...)
//!        embedded mode:   the local process of a ContainerSource gets it (a binding's wins)
//! ```
//!
//! In Kubernetes mode Sluice's data plane runs neither kind (pods do); the controller calls
//! [`bound_sinks`] to learn what to write. In embedded mode a SinkBinding's subject may be a
//! ContainerSource (by name or label selector): that local process then gets the binding's
//! sink instead of its own, which is what binding a Deployment does in a cluster.

use crate::convert::{context, resolve, Ctx, Defaults};
use crate::k8s_sources::{LabelSelector, SinkBinding};
use crate::load::{LoadError, Loaded, Resource};
use crate::sources::CloudEventOverrides;
use crate::types::Destination;
use sluice_core::topology::ObjectRef;
use std::collections::BTreeMap;

/// What a bound process is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundSink {
    /// `K_SINK`: the resolved sink URL.
    pub sink: String,
    /// `K_CE_OVERRIDES`: `{"extensions":{...}}`, only when `ceOverrides` has extensions.
    pub ce_overrides: Option<String>,
}

/// The API version and kind a SinkBinding names to bind a ContainerSource in embedded mode.
pub const CONTAINER_SOURCE_SUBJECT: (&str, &str) = ("sources.knative.dev/v1", "ContainerSource");

/// `K_CE_OVERRIDES` as Knative's adapters read it, or `None` without extensions.
pub fn k_ce_overrides(extensions: &BTreeMap<String, String>) -> Option<String> {
    (!extensions.is_empty()).then(|| serde_json::json!({ "extensions": extensions }).to_string())
}

/// The resolved sink of every ContainerSource and SinkBinding, or the problems with their
/// `spec.sink` / `spec.ceOverrides` (nothing else of theirs is checked here: in Kubernetes
/// mode the pod template is the API server's to validate).
pub fn bound_sinks(
    resources: &[Loaded],
    defaults: &Defaults,
) -> BTreeMap<ObjectRef, Result<BoundSink, Vec<LoadError>>> {
    let mut ctx = context(resources, defaults);
    ctx.errors.clear();
    let mut out = BTreeMap::new();
    for r in resources {
        let (sink, overrides) = match &r.resource {
            Resource::ContainerSource(c) => (&c.spec.sink, c.spec.ce_overrides.as_ref()),
            Resource::SinkBinding(b) => (&b.spec.sink, b.spec.ce_overrides.as_ref()),
            _ => continue,
        };
        let got = sink_of(&mut ctx, r, sink, overrides);
        let errors = std::mem::take(&mut ctx.errors);
        out.insert(
            r.object(),
            match got {
                Some(b) if errors.is_empty() => Ok(b),
                _ => Err(errors),
            },
        );
    }
    out
}

pub(crate) fn sink_of(
    ctx: &mut Ctx,
    r: &Loaded,
    sink: &Destination,
    overrides: Option<&CloudEventOverrides>,
) -> Option<BoundSink> {
    let extensions = crate::convert::ce_overrides(ctx, r, overrides);
    let sink = resolve(ctx, r, sink, "spec.sink")?;
    Some(BoundSink {
        sink: sink.to_string(),
        ce_overrides: k_ce_overrides(&extensions),
    })
}

/// Embedded mode: the SinkBinding (first by namespace/name) whose subject is this
/// ContainerSource, by name or by a selector its labels match.
pub(crate) fn binding_of<'a>(resources: &'a [Loaded], source: &Loaded) -> Option<&'a Loaded> {
    let labels = match &source.resource {
        Resource::ContainerSource(c) => c.metadata.labels.clone().unwrap_or_default(),
        _ => return None,
    };
    let mut found: Vec<&Loaded> = resources
        .iter()
        .filter(|b| match &b.resource {
            Resource::SinkBinding(sb) => binds(sb, &b.namespace, source, &labels),
            _ => false,
        })
        .collect();
    found.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    found.first().copied()
}

fn binds(
    b: &SinkBinding,
    namespace: &str,
    source: &Loaded,
    labels: &BTreeMap<String, String>,
) -> bool {
    let s = &b.spec.subject;
    if (s.api_version.as_str(), s.kind.as_str()) != CONTAINER_SOURCE_SUBJECT {
        return false;
    }
    let ns = s
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(namespace);
    if ns != source.namespace {
        return false;
    }
    match (&s.name, &s.selector) {
        (Some(n), _) => *n == source.name,
        (None, Some(sel)) => sel.matches(labels),
        (None, None) => false,
    }
}

/// Embedded mode: a SinkBinding's own problems (its sink; a subject embedded mode cannot bind).
pub(crate) fn check_binding(ctx: &mut Ctx, r: &Loaded, b: &SinkBinding) {
    let s = &b.spec.subject;
    if ctx.defaults.kubernetes {
        return;
    }
    if (s.api_version.as_str(), s.kind.as_str()) != CONTAINER_SOURCE_SUBJECT {
        ctx.error(
            r,
            "spec.subject",
            format!(
                "embedded mode binds only local processes: name a `{}` `{}` (by `name` or `selector`); a `{}` `{}` subject needs Kubernetes mode (sluice controller)",
                CONTAINER_SOURCE_SUBJECT.0, CONTAINER_SOURCE_SUBJECT.1, s.api_version, s.kind
            ),
        );
    }
    if s.name.is_some() == s.selector.is_some() {
        ctx.error(
            r,
            "spec.subject",
            "needs exactly one of `name` and `selector`",
        );
    }
    sink_of(ctx, r, &b.spec.sink, b.spec.ce_overrides.as_ref());
}

impl LabelSelector {
    /// Whether `labels` satisfy every `matchLabels` pair and `matchExpressions` requirement
    /// (an unknown operator matches nothing).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => got.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => got.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => got.is_some(),
                    "DoesNotExist" => got.is_none(),
                    _ => false,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s_sources::LabelSelectorRequirement;

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let labels = BTreeMap::from([("app".to_string(), "a".to_string())]);
        let req = |op: &str, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        };
        let table = [
            (LabelSelector::default(), true),
            (
                LabelSelector {
                    match_labels: labels.clone(),
                    match_expressions: vec![],
                },
                true,
            ),
            (
                LabelSelector {
                    match_labels: BTreeMap::from([("app".into(), "b".into())]),
                    match_expressions: vec![],
                },
                false,
            ),
            (req("In", &["a", "b"]), true),
            (req("In", &["b"]), false),
            (req("NotIn", &["b"]), true),
            (req("NotIn", &["a"]), false),
            (req("Exists", &[]), true),
            (req("DoesNotExist", &[]), false),
            (req("Near", &[]), false),
        ];
        for (sel, want) in table {
            assert_eq!(sel.matches(&labels), want, "{sel:?}");
        }
    }

    #[test]
    fn ce_overrides_are_knative_json_and_absent_without_extensions() {
        assert_eq!(k_ce_overrides(&BTreeMap::new()), None);
        let ext = BTreeMap::from([("team".to_string(), "blue".to_string())]);
        assert_eq!(
            k_ce_overrides(&ext).as_deref(),
            Some(r#"{"extensions":{"team":"blue"}}"#)
        );
    }
}
