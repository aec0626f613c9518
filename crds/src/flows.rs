//! `flows.knative.dev/v1` Sequence and Parallel, field for field as Knative spells them.
//!
//! Neither runs anything of its own: `convert` compiles them to messaging channels and
//! subscriptions in the same topology as everything else (SEMANTICS.md §10 gives the names
//! and the wiring).

use crate::messaging::ChannelTemplate;
use crate::types::{Addressable, Condition, DeliverySpec, Destination, KReference};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One step of a Sequence: a Destination plus the step's own delivery.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SequenceStep {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

impl SequenceStep {
    /// The step's subscriber.
    pub fn destination(&self) -> Destination {
        Destination {
            reference: self.reference.clone(),
            uri: self.uri.clone(),
            ca_certs: self.ca_certs.clone(),
            audience: self.audience.clone(),
        }
    }
}

/// `flows.knative.dev/v1` Sequence: steps chained by their replies.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flows.knative.dev",
    version = "v1",
    kind = "Sequence",
    category = "all",
    category = "knative",
    category = "flows",
    namespaced,
    status = "FlowStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SequenceSpec {
    /// At least one. At most 100 in the CRD: the API server budgets the cost of the
    /// DeliverySpec CEL rules per item, so the list needs a bound.
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub steps: Vec<SequenceStep>,
    /// Default: InMemoryChannel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_template: Option<ChannelTemplate>,
    /// Where the last step's replies go; none: discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
}

/// One branch of a Parallel.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParallelBranch {
    /// Passes an event by replying with it (possibly changed); an empty 2xx drops it for
    /// this branch. None: every event passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Destination>,
    #[serde(default)]
    pub subscriber: Destination,
    /// Where this branch's replies go; else the Parallel's `reply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// `flows.knative.dev/v1` Parallel: every event to every branch, each filtered on its own.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flows.knative.dev",
    version = "v1",
    kind = "Parallel",
    category = "all",
    category = "knative",
    category = "flows",
    namespaced,
    status = "FlowStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParallelSpec {
    /// At least one. At most 100 in the CRD (see [`SequenceSpec::steps`]).
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub branches: Vec<ParallelBranch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_template: Option<ChannelTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
}

/// A Sequence's or Parallel's status (read only): the address, the conditions, and the
/// statuses of the channels and subscriptions it made.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Addressable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Sequence: one per step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::messaging::any_objects")]
    pub channel_statuses: Vec<serde_json::Value>,
    /// Sequence: one per step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::messaging::any_objects")]
    pub subscription_statuses: Vec<serde_json::Value>,
    /// Parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::sources::any_object")]
    pub ingress_channel_status: Option<serde_json::Value>,
    /// Parallel: one per branch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::messaging::any_objects")]
    pub branch_statuses: Vec<serde_json::Value>,
}
