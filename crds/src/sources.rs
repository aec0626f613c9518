//! The source resources: `sources.knative.dev/v1` PingSource and KafkaSource, field for field
//! as Knative spells them.
//!
//! Knative serves KafkaSource as `v1beta1` (eventing-kafka-broker); the same spec is read
//! under `v1` and `v1beta1` (see `load.rs`). Like the other specs these deny unknown fields.

// `#[kube(printcolumn(name = .., type_ = ..), printcolumn(..))]` repeats keys by design.
#![allow(clippy::duplicated_attributes)]

use crate::types::{AuthStatus, Condition, DeliverySpec, Destination};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Knative `CloudEventOverrides`: attributes added to every event a source sends.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudEventOverrides {
    /// Extension attributes (lower-case a-z and 0-9 names) and their values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
}

/// Status shared by sources (Knative duck `SourceStatus`). Read only: the controller writes it
/// through the status subresource; embedded mode ignores it on input.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The resolved sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_uri: Option<String>,
    #[serde(
        default,
        rename = "sinkCACerts",
        skip_serializing_if = "Option::is_none"
    )]
    pub sink_ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_audience: Option<String>,
    /// The `type` and `source` of the events the source sends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ce_attributes: Vec<CloudEventAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthStatus>,
}

/// One kind of event a source sends.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudEventAttributes {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `sources.knative.dev/v1` PingSource: a fixed event on a cron schedule.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "PingSource",
    namespaced,
    status = "SourceStatus",
    doc = "A PingSource: a fixed event sent to a sink on a cron schedule.",
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
pub struct PingSourceSpec {
    /// Cron schedule: 5 fields, 6 with leading seconds, or a descriptor such as `@hourly`;
    /// may start with `CRON_TZ=<zone> `. Default `* * * * *`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA time zone of the schedule, e.g. `Europe/Paris`. Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Media type of the data: the events' `datacontenttype`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The event data, as text. Mutually exclusive with `dataBase64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The event data, base64-encoded. Mutually exclusive with `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Where the events go (required).
    #[serde(default)]
    #[x_kube(validation = Rule::new("has(self.ref) || has(self.uri)").message("spec.sink needs a `ref` or a `uri`"))]
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CloudEventOverrides>,
}

/// `sources.knative.dev/v1` KafkaSource: records of Kafka topics as CloudEvents.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "KafkaSource",
    namespaced,
    status = "SourceStatus",
    doc = "A KafkaSource: the records of Kafka topics, sent to a sink as CloudEvents. Served as v1 and v1beta1 (Knative's version); the schema is the same.",
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
pub struct KafkaSourceSpec {
    /// `host:port` of one or more brokers of the cluster (required).
    #[serde(default)]
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.bootstrapServers needs at least one host:port"))]
    pub bootstrap_servers: Vec<String>,
    /// Topics to read (required).
    #[serde(default)]
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.topics needs at least one topic"))]
    pub topics: Vec<String>,
    /// Consumer group holding the committed offsets. Default
    /// `knative-kafka-source-<namespace>-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("Immutable fields changed: spec.consumerGroup"))]
    pub consumer_group: Option<String>,
    /// `earliest` or `latest` (default): where a group without committed offsets starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['earliest', 'latest']").message("initialOffset must be earliest or latest"))]
    pub initial_offset: Option<String>,
    /// `ordered` (default: one event in flight per partition) or `unordered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['ordered', 'unordered']").message("ordering must be ordered or unordered"))]
    pub ordering: Option<String>,
    /// Consumer replicas in Knative; accepted for compatibility (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// Where the events go (required).
    #[serde(default)]
    #[x_kube(validation = Rule::new("has(self.ref) || has(self.uri)").message("spec.sink needs a `ref` or a `uri`"))]
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CloudEventOverrides>,
    /// Knative's TLS/SASL settings. Read so that the error can say they are not supported yet
    /// (rather than "unknown field").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub net: Option<serde_json::Value>,
}

/// An object whose fields the schema does not list (the API server keeps them).
pub(crate) fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
