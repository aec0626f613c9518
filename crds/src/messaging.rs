//! `messaging.knative.dev` resources: the channel kinds and Subscription, field for field as
//! Knative spells them.
//!
//! A channel is storage with an address; Subscriptions read it. Which storage a channel
//! gets follows from its kind, the way a Broker's class picks its channel:
//!
//! | kind | apiVersion | storage |
//! |---|---|---|
//! | `InMemoryChannel` | `messaging.knative.dev/v1` | in-memory queues (the `--queue-*` defaults) |
//! | `KafkaChannel` | `messaging.knative.dev/v1beta1` | a Kafka topic (`numPartitions`, `replicationFactor`; servers from `--kafka-bootstrap-servers`) |
//! | `NatsJetStreamChannel` | `messaging.knative.dev/v1alpha1` | a JetStream stream (server from `--nats-url`) |
//! | `Channel` | `messaging.knative.dev/v1` | whatever its `channelTemplate` names (default `InMemoryChannel`) |
//!
//! `spec.subscribers` exists on the channel kinds only because Knative's reconcilers write it;
//! Sluice refuses a non-empty list (write Subscription objects instead).

use crate::types::{AddressableStatus, DeliverySpec, Destination, KReference};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A list of objects whose fields the schema does not list (the API server keeps them).
pub(crate) fn any_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// The kind and spec of the channels a Channel, Sequence or Parallel makes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelTemplate {
    pub api_version: String,
    pub kind: String,
    /// The spec of the channel kind (e.g. a KafkaChannel's `numPartitions`); checked against
    /// that kind's spec when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::sources::any_object")]
    pub spec: Option<serde_json::Value>,
}

/// `messaging.knative.dev/v1` Channel: a channel whose storage its template picks.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "Channel",
    category = "all",
    category = "knative",
    category = "messaging",
    category = "channel",
    namespaced,
    status = "AddressableStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelSpec {
    /// Default: `messaging.knative.dev/v1` InMemoryChannel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_template: Option<ChannelTemplate>,
    /// Written by Knative's reconcilers; must be empty here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_objects")]
    pub subscribers: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// `messaging.knative.dev/v1` InMemoryChannel.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "InMemoryChannel",
    category = "all",
    category = "knative",
    category = "messaging",
    category = "channel",
    namespaced,
    status = "AddressableStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InMemoryChannelSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_objects")]
    pub subscribers: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// `messaging.knative.dev/v1beta1` KafkaChannel.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1beta1",
    kind = "KafkaChannel",
    category = "all",
    category = "knative",
    category = "messaging",
    category = "channel",
    namespaced,
    status = "AddressableStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaChannelSpec {
    /// Partitions of the topic (default 1, as Knative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_partitions: Option<i32>,
    /// Replication factor of the topic (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i16>,
    /// Accepted for compatibility; the topic keeps the cluster's retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_objects")]
    pub subscribers: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// `messaging.knative.dev/v1alpha1` NatsJetStreamChannel (eventing-natss).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1alpha1",
    kind = "NatsJetStreamChannel",
    category = "all",
    category = "knative",
    category = "messaging",
    category = "channel",
    namespaced,
    status = "AddressableStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsJetStreamChannelSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_objects")]
    pub subscribers: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// `messaging.knative.dev/v1` Subscription: a channel's events to a subscriber, its replies
/// to `reply`.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "Subscription",
    category = "all",
    category = "knative",
    category = "messaging",
    namespaced,
    status = "SubscriptionStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The channel to read (required, immutable), in the Subscription's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<KReference>,
    /// Where events go (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<Destination>,
    /// Where the subscriber's replies go; none: discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
    /// Replaces the channel's `delivery` as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// A Subscription's status (read only).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    #[serde(flatten)]
    pub addressable: AddressableStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_subscription: Option<PhysicalSubscription>,
}

/// The resolved URLs of a Subscription.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalSubscription {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink_uri: Option<String>,
}
