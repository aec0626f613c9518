//! `eventing.knative.dev/v1alpha1` EventTransform, field for field as Knative spells it
//! (SEMANTICS.md §12). Only the JSONata transformation exists.

use crate::types::{AddressableStatus, Destination};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A JSONata expression.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Jsonata {
    #[serde(default)]
    pub expression: String,
}

/// What to do with the sink's answer (needs `sink`): exactly one of `jsonata`, `discard`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransformReplySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonata: Option<Jsonata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard: Option<bool>,
}

/// `eventing.knative.dev/v1alpha1` EventTransform.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1alpha1",
    kind = "EventTransform",
    category = "all",
    category = "knative",
    category = "eventing",
    namespaced,
    status = "AddressableStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTransformSpec {
    /// Required: the transformation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonata: Option<Jsonata>,
    /// Where transformed events go; none: they are the HTTP answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<TransformReplySpec>,
}
