//! `serving.knative.dev/v1` Service: the subset embedded mode runs (SEMANTICS.md §13).
//!
//! Embedded mode runs each replica as a local process started from `containers[0]`
//! `command`/`args`/`env` (an `image` alone cannot run without a container runtime and is
//! refused with a message saying so), scaled on request concurrency by `sluice-autoscaler`.
//! The container is Kubernetes' own `Container` type, so Knative YAML reads unchanged; the
//! fields embedded mode cannot honour are refused in `convert.rs`, not here.
//!
//! Sluice does not serve this CRD in Kubernetes mode (Knative Serving owns it), so the type
//! has no generated schema.

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// `serving.knative.dev/v1` Service.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Service",
    namespaced,
    schema = "disabled",
    doc = "A Knative Service: a request-driven, autoscaled workload."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// The revision template: what each replica runs.
    #[serde(default)]
    pub template: RevisionTemplateSpec,
    /// Traffic split between revisions. Embedded mode runs only the latest revision; read so
    /// Knative YAML is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<serde_json::Value>,
}

/// `spec.template`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionTemplateSpec {
    /// Autoscaling annotations (`autoscaling.knative.dev/*`) live here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    #[serde(default)]
    pub spec: RevisionSpec,
}

/// `spec.template.spec`: a pod spec subset plus Knative's revision fields.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Requests one replica takes at once; 0 (default) = unlimited. At most 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<i64>,
    /// Seconds a request may take (default 300, at most 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    /// Read for compatibility; ignored in embedded mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_start_timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
}
