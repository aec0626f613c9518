//! The sources that only make sense inside a cluster: `sources.knative.dev/v1` ApiServerSource,
//! SinkBinding and ContainerSource, field for field as Knative spells them.
//!
//! Their CRDs are served (`crate::crds`) so that Knative YAML applies unchanged. An
//! ApiServerSource runs in both modes (it becomes a `sluice_core::topology::ApiServerSource`
//! in `convert.rs`; `sluice_sources::apiserver` watches the cluster). A ContainerSource runs
//! in embedded mode as a local process (`sluice_sources::container`) and in Kubernetes mode
//! as a Deployment the controller writes. A SinkBinding gives `K_SINK` to its subjects: pod
//! templates in Kubernetes mode (the controller), a ContainerSource's process in embedded mode
//! (`convert_bindings.rs`). Like the other specs these deny unknown fields.

// `#[kube(printcolumn(name = .., type_ = ..), printcolumn(..))]` repeats keys by design.
#![allow(clippy::duplicated_attributes)]

use crate::sources::{any_object, CloudEventOverrides, SourceStatus};
use crate::types::Destination;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_filter::SubscriptionsApiFilter;
use std::collections::BTreeMap;

/// A Kubernetes label selector (`metav1.LabelSelector`): every `matchLabels` pair and every
/// `matchExpressions` requirement must hold.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a [`LabelSelector`].
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A kind of object an ApiServerSource watches, optionally narrowed by labels.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiVersionKindSelector {
    /// e.g. `v1` or `apps/v1`.
    pub api_version: String,
    /// e.g. `Pod`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A kind of object, without a name (ApiServerSource `owner`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiVersionKind {
    pub api_version: String,
    pub kind: String,
}

/// `sources.knative.dev/v1` ApiServerSource: changes to Kubernetes objects as CloudEvents.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "ApiServerSource",
    namespaced,
    status = "SourceStatus",
    doc = "An ApiServerSource: additions, updates and deletions of Kubernetes objects, sent to a sink as CloudEvents.",
    category = "all",
    category = "knative",
    category = "sources",
    printcolumn(name = "Sink", type_ = "string", json_path = ".status.sinkUri"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.resources) && size(self.resources) > 0").message("spec.resources needs at least one {apiVersion, kind} to watch").field_path(".resources"))]
pub struct ApiServerSourceSpec {
    /// The kinds of objects to watch (at least one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ApiVersionKindSelector>,
    /// Only objects owned by an object of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ApiVersionKind>,
    /// `Reference` (default: the event data is a reference to the object) or `Resource` (the
    /// whole object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Reference', 'Resource']").message("mode must be Reference or Resource"))]
    pub mode: Option<String>,
    /// The namespaces to watch; default: the source's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The identity the watches run as (its RBAC decides what can be seen). Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Subscriptions API filters on the events, as on a Trigger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
    /// Where the events go (required).
    #[serde(default)]
    #[x_kube(validation = Rule::new("has(self.ref) || has(self.uri)").message("spec.sink needs a `ref` or a `uri`"))]
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CloudEventOverrides>,
}

/// The objects a SinkBinding applies to: one by `name`, or all matching `selector`
/// (Knative `tracker.Reference`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.selector)").message("subject needs exactly one of `name` and `selector`"))]
pub struct BindingSubject {
    /// e.g. `apps/v1`.
    pub api_version: String,
    /// e.g. `Deployment`.
    pub kind: String,
    /// Default: the SinkBinding's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// `sources.knative.dev/v1` SinkBinding: gives the pods of its subject the sink's URL
/// (`K_SINK`) and the overrides (`K_CE_OVERRIDES`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "SinkBinding",
    namespaced,
    status = "SourceStatus",
    doc = "A SinkBinding: the sink's URL given to the pods of a subject (K_SINK), which send events there.",
    category = "all",
    category = "knative",
    category = "sources",
    category = "bindings",
    printcolumn(name = "Sink", type_ = "string", json_path = ".status.sinkUri"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkBindingSpec {
    /// The objects (with a pod template) to bind (required).
    pub subject: BindingSubject,
    /// Where the events go (required).
    #[serde(default)]
    #[x_kube(validation = Rule::new("has(self.ref) || has(self.uri)").message("spec.sink needs a `ref` or a `uri`"))]
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CloudEventOverrides>,
}

/// `sources.knative.dev/v1` ContainerSource: runs a pod template as an event source, with the
/// sink's URL in `K_SINK`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "ContainerSource",
    namespaced,
    status = "SourceStatus",
    doc = "A ContainerSource: a pod template run as an event source that sends to the sink in K_SINK.",
    category = "all",
    category = "knative",
    category = "sources",
    printcolumn(name = "Sink", type_ = "string", json_path = ".status.sinkUri"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSourceSpec {
    /// A pod template, as a Deployment's `spec.template` (required). Kept as the API server
    /// received it: its fields are the pod API's, checked when the pods are created.
    #[schemars(schema_with = "any_object")]
    pub template: serde_json::Value,
    /// Where the events go (required).
    #[serde(default)]
    #[x_kube(validation = Rule::new("has(self.ref) || has(self.uri)").message("spec.sink needs a `ref` or a `uri`"))]
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CloudEventOverrides>,
}
