//! The CustomResourceDefinitions Sluice serves, generated from the types (`sluice crdgen`) and
//! checked in under `crds/yaml/` (a test fails when they drift apart).
//!
//! kube-derive makes one CRD per type with one version. Three things are added here:
//!
//! - **More versions of the same schema.** Knative YAML in the wild uses
//!   `sources.knative.dev/v1beta1` KafkaSource and `eventing.knative.dev/v1beta2` EventType.
//!   Those versions are served with the same schema and conversion `None` (the API server only
//!   rewrites `apiVersion`), so they need no conversion webhook.
//! - **`spec` is optional**: Knative's docs create a Broker with only a name.
//! - **Labels** naming Sluice, so `kubectl get crd -l app.kubernetes.io/part-of=sluice` lists them.
//!
//! Validation lives on the types (schema and `#[x_kube(validation = ...)]` CEL rules), so that
//! what the API server refuses and what embedded mode refuses are written in one place.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
};
use kube::CustomResourceExt;

/// The command that regenerates `crds/yaml/`, for messages and file headers.
pub const REGENERATE: &str = "cargo run -p sluice -- crdgen --out-dir crds/yaml";

/// Every CRD Sluice serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use crate::{eventpolicy, eventtype, flows, k8s_sources, messaging, sources, transform, types};
    let mut kafka = sources::KafkaSource::crd();
    add_version(&mut kafka, "v1beta1", None);
    let mut eventtype = eventtype::EventType::crd();
    add_version(
        &mut eventtype,
        "v1beta2",
        Some(
            "eventing.knative.dev/v1beta2 EventType is deprecated; use v1beta3, which lists the \
             event's attributes in spec.attributes",
        ),
    );
    let mut all = vec![
        types::Broker::crd(),
        types::Trigger::crd(),
        eventtype,
        sources::PingSource::crd(),
        kafka,
        k8s_sources::ApiServerSource::crd(),
        k8s_sources::SinkBinding::crd(),
        k8s_sources::ContainerSource::crd(),
        messaging::Channel::crd(),
        messaging::InMemoryChannel::crd(),
        messaging::KafkaChannel::crd(),
        messaging::NatsJetStreamChannel::crd(),
        messaging::Subscription::crd(),
        flows::Sequence::crd(),
        flows::Parallel::crd(),
        transform::EventTransform::crd(),
        eventpolicy::EventPolicy::crd(),
    ];
    for crd in &mut all {
        finish(crd);
    }
    all
}

/// Serves `name` beside the CRD's generated version, with the same schema, not as storage.
fn add_version(crd: &mut CustomResourceDefinition, name: &str, deprecation: Option<&str>) {
    let mut v: CustomResourceDefinitionVersion = crd.spec.versions[0].clone();
    v.name = name.to_string();
    v.storage = false;
    v.deprecated = deprecation.map(|_| true);
    v.deprecation_warning = deprecation.map(str::to_string);
    crd.spec.versions.push(v);
}

fn finish(crd: &mut CustomResourceDefinition) {
    let labels = crd.metadata.labels.get_or_insert_with(Default::default);
    labels.insert("app.kubernetes.io/part-of".into(), "sluice".into());
    labels.insert("knative.dev/crd-install".into(), "true".into());
    for v in &mut crd.spec.versions {
        if let Some(schema) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            if let Some(required) = schema.required.as_mut() {
                required.retain(|r| r != "spec");
                if required.is_empty() {
                    schema.required = None;
                }
            }
            if let Some(spec) = schema.properties.as_mut().and_then(|p| p.get_mut("spec")) {
                require_validated_fields(spec);
            }
        }
    }
}

/// A spec field that embedded mode defaults (`#[serde(default)]`, so that its own error can
/// name it) but that carries CEL rules is required in the CRD instead: the API server refuses
/// a default that fails the field's own rules, and "Required value" names the field.
fn require_validated_fields(spec: &mut JSONSchemaProps) {
    let Some(props) = spec.properties.as_mut() else {
        return;
    };
    let mut required = spec.required.take().unwrap_or_default();
    for (name, field) in props.iter_mut() {
        if field.default.is_some() && field.x_kubernetes_validations.is_some() {
            field.default = None;
            if !required.contains(name) {
                required.push(name.clone());
            }
        }
    }
    required.sort();
    spec.required = (!required.is_empty()).then_some(required);
}

/// `<plural>.<group>.yaml` and its text, for each CRD, each file starting with a comment that
/// says how it was made; plus a `kustomization.yaml` listing them (so `deploy/` can include the
/// directory).
pub fn crd_files() -> Vec<(String, String)> {
    let header = format!(
        "# Generated from the Rust types in crds/src by `sluice crdgen`; do not edit.\n\
         # Regenerate with: {REGENERATE}\n"
    );
    let mut files: Vec<(String, String)> = crds()
        .iter()
        .map(|c| {
            let name = c.metadata.name.clone().expect("CRDs have names");
            let yaml = serde_yaml::to_string(c).expect("CRDs serialize");
            (format!("{name}.yaml"), format!("{header}{yaml}"))
        })
        .collect();
    let list: String = files.iter().map(|(f, _)| format!("  - {f}\n")).collect();
    files.push((
        "kustomization.yaml".into(),
        format!(
            "{header}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{list}"
        ),
    ));
    files
}

/// Every CRD as one multi-document YAML stream (`sluice crdgen` without `--out-dir`).
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|c| serde_yaml::to_string(c).expect("CRDs serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Writes [`crd_files`] into `dir` (created if missing) and removes any other `*.yaml` file
/// there, so a CRD that is no longer generated does not linger. Returns the files written.
pub fn write_crd_files(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files = crd_files();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let stale = path.extension().is_some_and(|e| e == "yaml")
            && !files
                .iter()
                .any(|(name, _)| path.file_name().is_some_and(|f| f == name.as_str()));
        if stale {
            std::fs::remove_file(&path)?;
        }
    }
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}
