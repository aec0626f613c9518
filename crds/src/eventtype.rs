//! `eventing.knative.dev/v1beta3` EventType: an entry of the event registry, saying which events
//! a Broker, Channel or source can give (for discovery; nothing routes on it).
//!
//! Knative still serves `v1beta2` (with `type`, `source`, `schema`, `broker` in the spec) and
//! converts between the two with a webhook. Sluice runs no conversion webhook, so the CRD
//! serves `v1beta2` with this same schema: it accepts the v1beta2 fields too, and they survive
//! being stored as `v1beta3` instead of being pruned (see `crate::crds`).

// `#[kube(printcolumn(name = .., type_ = ..), printcolumn(..))]` repeats keys by design.
#![allow(clippy::duplicated_attributes)]

use crate::types::{Condition, KReference};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One CloudEvents attribute of the events an EventType describes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventAttributeDefinition {
    /// The attribute's name, e.g. `type`.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Whether every event carries it.
    #[serde(default)]
    pub required: bool,
    /// Its value; may hold `{placeholders}` for the parts that vary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `eventing.knative.dev/v1beta3` EventType.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1beta3",
    kind = "EventType",
    namespaced,
    status = "EventTypeStatus",
    doc = "An EventType: events that a Broker, Channel or source can give, for discovery.",
    category = "all",
    category = "knative",
    category = "eventing",
    printcolumn(
        name = "Reference Name",
        type_ = "string",
        json_path = ".spec.reference.name"
    ),
    printcolumn(
        name = "Reference Kind",
        type_ = "string",
        json_path = ".spec.reference.kind"
    ),
    printcolumn(
        name = "Description",
        type_ = "string",
        json_path = ".spec.description"
    ),
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
pub struct EventTypeSpec {
    /// The object that gives these events (a Broker, Channel, source, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
    /// What these events are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The events' attributes; must define `type`, `source`, `specversion` and `id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("['type', 'source', 'specversion', 'id'].all(n, self.exists(a, a.name == n))").message("attributes must define type, source, specversion and id"))]
    pub attributes: Vec<EventAttributeDefinition>,
    /// v1beta2: the CloudEvents `type` (v1beta3 puts it in `attributes`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// v1beta2: the CloudEvents `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// v1beta2: a URI of the events' data schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// v1beta2: the data schema itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_data: Option<String>,
    /// v1beta1/v1beta2: the Broker's name (deprecated there in favour of `reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
}

/// Status of an EventType. Read only: the controller writes it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}
