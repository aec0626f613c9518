//! Reading resources from YAML text: multi-document files, each document one resource.
//!
//! Every error names the file, the document, the resource (kind namespace/name) and the field
//! path, so `sluice run` can say exactly what to fix.

use crate::eventpolicy::EventPolicy;
use crate::flows::{Parallel, Sequence};
use crate::k8s_sources::{ApiServerSource, ContainerSource, SinkBinding};
use crate::messaging::{
    Channel, InMemoryChannel, KafkaChannel, NatsJetStreamChannel, Subscription,
};
use crate::serving::Service;
use crate::sources::{KafkaSource, PingSource};
use crate::transform::EventTransform;
use crate::types::{Broker, Trigger};
use k8s_openapi::api::core::v1::ConfigMap;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sluice_core::topology::{Key, Kind, ObjectRef};
use std::fmt;

/// The namespace of resources that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One resource Sluice understands.
#[derive(Debug, Clone)]
pub enum Resource {
    Broker(Box<Broker>),
    Trigger(Box<Trigger>),
    ConfigMap(Box<ConfigMap>),
    PingSource(Box<PingSource>),
    KafkaSource(Box<KafkaSource>),
    ApiServerSource(Box<ApiServerSource>),
    ContainerSource(Box<ContainerSource>),
    SinkBinding(Box<SinkBinding>),
    Channel(Box<Channel>),
    InMemoryChannel(Box<InMemoryChannel>),
    KafkaChannel(Box<KafkaChannel>),
    NatsJetStreamChannel(Box<NatsJetStreamChannel>),
    Subscription(Box<Subscription>),
    Sequence(Box<Sequence>),
    Parallel(Box<Parallel>),
    EventTransform(Box<EventTransform>),
    /// `serving.knative.dev/v1` Service (embedded mode: local processes).
    Service(Box<Service>),
    /// `eventing.knative.dev/v1alpha1` EventPolicy (needs OIDC on).
    EventPolicy(Box<EventPolicy>),
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        self.object_kind().as_str()
    }

    /// The topology kind of this resource.
    pub fn object_kind(&self) -> Kind {
        match self {
            Resource::Broker(_) => Kind::Broker,
            Resource::Trigger(_) => Kind::Trigger,
            Resource::ConfigMap(_) => Kind::ConfigMap,
            Resource::PingSource(_) => Kind::PingSource,
            Resource::KafkaSource(_) => Kind::KafkaSource,
            Resource::Channel(_) => Kind::Channel,
            Resource::InMemoryChannel(_) => Kind::InMemoryChannel,
            Resource::KafkaChannel(_) => Kind::KafkaChannel,
            Resource::NatsJetStreamChannel(_) => Kind::NatsJetStreamChannel,
            Resource::Subscription(_) => Kind::Subscription,
            Resource::Sequence(_) => Kind::Sequence,
            Resource::Parallel(_) => Kind::Parallel,
            Resource::EventTransform(_) => Kind::EventTransform,
            Resource::ApiServerSource(_) => Kind::ApiServerSource,
            Resource::ContainerSource(_) => Kind::ContainerSource,
            Resource::SinkBinding(_) => Kind::SinkBinding,
            Resource::Service(_) => Kind::Service,
            Resource::EventPolicy(_) => Kind::EventPolicy,
        }
    }
}

/// A resource and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// `file` or `file#document` for multi-document files.
    pub origin: String,
    pub namespace: String,
    pub name: String,
    pub resource: Resource,
}

impl Loaded {
    /// The object this resource is.
    pub fn object(&self) -> ObjectRef {
        ObjectRef::new(
            self.resource.object_kind(),
            Key::new(&self.namespace, &self.name),
        )
    }

    /// `Kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.resource.kind(), self.namespace, self.name)
    }
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub origin: String,
    /// `Kind namespace/name` when known.
    pub resource: Option<String>,
    /// Dotted field path when known.
    pub field: Option<String>,
    pub message: String,
    /// The object the problem belongs to, when it is one object's problem (a reload applies
    /// everything else and reports this object as not ready).
    pub object: Option<Box<ObjectRef>>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(r) = &self.resource {
            write!(f, ": {r}")?;
        }
        if let Some(p) = &self.field {
            write!(f, ": field `{p}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeaderMeta>,
}

#[derive(Deserialize)]
struct HeaderMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// The kinds `sluice run` accepts, for the error about any other kind.
pub const SUPPORTED: &str = "eventing.knative.dev/v1 Broker and Trigger, messaging.knative.dev/v1 Channel, InMemoryChannel and Subscription, messaging.knative.dev/v1beta1 KafkaChannel, messaging.knative.dev/v1alpha1 NatsJetStreamChannel, flows.knative.dev/v1 Sequence and Parallel, eventing.knative.dev/v1alpha1 EventTransform and EventPolicy, sources.knative.dev/v1 PingSource, ApiServerSource, ContainerSource, SinkBinding (subject: a ContainerSource) and KafkaSource (v1beta1 too), serving.knative.dev/v1 Service (run as local processes), v1 ConfigMap";

/// Kinds whose CRDs Sluice serves in Kubernetes mode (`crate::crds`) but that embedded mode does
/// not run: they get their own message instead of "not supported".
pub const KUBERNETES_ONLY: &[(&str, &str)] = &[
    ("eventing.knative.dev/v1beta3", "EventType"),
    ("eventing.knative.dev/v1beta2", "EventType"),
];

/// Parses every document of a YAML file. `file` names it in errors.
pub fn parse_yaml(text: &str, file: &str) -> Result<Vec<Loaded>, LoadError> {
    // Deserialize every document before labelling them, stopping at the first error: the
    // document iterator keeps yielding the same error after a syntax error.
    let mut values = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| LoadError {
            origin: format!("{file} (document {})", i + 1),
            resource: None,
            field: None,
            message: format!("invalid YAML: {e}"),
            object: None,
        })?;
        values.push(value);
    }
    let (out, mut errors) = parse_documents(values, file);
    match errors.is_empty() {
        true => Ok(out),
        false => Err(errors.remove(0)),
    }
}

/// Parses every document of a YAML file, keeping the documents that are valid resources
/// beside the errors of the others. A file that is not YAML at all is one error with no
/// object: nothing in it can be trusted.
pub fn parse_yaml_lenient(text: &str, file: &str) -> (Vec<Loaded>, Vec<LoadError>) {
    let mut values = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(doc) {
            Ok(v) => values.push(v),
            Err(e) => {
                return (
                    Vec::new(),
                    vec![LoadError {
                        origin: format!("{file} (document {})", i + 1),
                        resource: None,
                        field: None,
                        message: format!("invalid YAML: {e}"),
                        object: None,
                    }],
                )
            }
        }
    }
    parse_documents(values, file)
}

fn parse_documents(values: Vec<serde_yaml::Value>, file: &str) -> (Vec<Loaded>, Vec<LoadError>) {
    let many = values.len() > 1;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let origin = if many {
            format!("{file} (document {})", i + 1)
        } else {
            file.to_string()
        };
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        match parse_resource(value, origin) {
            Ok(l) => out.push(l),
            Err(e) => errors.push(e),
        }
    }
    (out, errors)
}

/// Reads one object as the Kubernetes API server returns it (JSON, with `apiVersion` and
/// `kind`): the same checks and messages as a document of a file. `origin` names it in errors.
pub fn from_object(value: serde_json::Value, origin: String) -> Result<Loaded, LoadError> {
    let value = serde_yaml::to_value(value).map_err(|e| LoadError {
        origin: origin.clone(),
        resource: None,
        field: None,
        message: format!("cannot read the object: {e}"),
        object: None,
    })?;
    parse_resource(value, origin)
}

fn parse_resource(mut value: serde_yaml::Value, origin: String) -> Result<Loaded, LoadError> {
    let err = |resource: Option<String>, field: Option<String>, message: String| LoadError {
        origin: origin.clone(),
        resource,
        field,
        message,
        object: None,
    };
    let header: Header = serde_yaml::from_value(value.clone()).map_err(|e| {
        err(
            None,
            None,
            format!("not a Kubernetes resource (expected apiVersion, kind and metadata): {e}"),
        )
    })?;
    let (Some(api_version), Some(kind)) = (header.api_version, header.kind) else {
        return Err(err(
            None,
            None,
            "missing `apiVersion` or `kind`: every document must be a resource such as `apiVersion: eventing.knative.dev/v1` / `kind: Broker`".into(),
        ));
    };
    let meta = header.metadata.unwrap_or(HeaderMeta {
        name: None,
        namespace: None,
    });
    let Some(name) = meta.name.filter(|n| !n.is_empty()) else {
        return Err(err(
            Some(kind),
            Some("metadata.name".into()),
            "is required".into(),
        ));
    };
    let namespace = meta
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let describe = format!("{kind} {namespace}/{name}");
    // Fill in the default namespace so the typed resource carries it.
    if let Some(md) = value
        .get_mut("metadata")
        .and_then(serde_yaml::Value::as_mapping_mut)
    {
        md.insert("namespace".into(), namespace.clone().into());
    }
    // `spec` may be omitted (`kind: Broker` with only a name is a valid broker).
    if let Some(top) = value.as_mapping_mut() {
        if kind != "ConfigMap" && !top.contains_key("spec") {
            top.insert("spec".into(), serde_yaml::Mapping::new().into());
        }
    }
    let object = match kind.as_str() {
        "Broker" => Some(Kind::Broker),
        "Trigger" => Some(Kind::Trigger),
        "PingSource" => Some(Kind::PingSource),
        "KafkaSource" => Some(Kind::KafkaSource),
        "ApiServerSource" => Some(Kind::ApiServerSource),
        "ContainerSource" => Some(Kind::ContainerSource),
        "SinkBinding" => Some(Kind::SinkBinding),
        "ConfigMap" => Some(Kind::ConfigMap),
        "Channel" => Some(Kind::Channel),
        "InMemoryChannel" => Some(Kind::InMemoryChannel),
        "KafkaChannel" => Some(Kind::KafkaChannel),
        "NatsJetStreamChannel" => Some(Kind::NatsJetStreamChannel),
        "Subscription" => Some(Kind::Subscription),
        "Sequence" => Some(Kind::Sequence),
        "Parallel" => Some(Kind::Parallel),
        "EventTransform" => Some(Kind::EventTransform),
        "EventPolicy" => Some(Kind::EventPolicy),
        "Service" if api_version == "serving.knative.dev/v1" => Some(Kind::Service),
        _ => None,
    }
    .map(|k| Box::new(ObjectRef::new(k, Key::new(&namespace, &name))));
    let resource = match (api_version.as_str(), kind.as_str()) {
        ("eventing.knative.dev/v1", "Broker") => {
            Resource::Broker(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("eventing.knative.dev/v1", "Trigger") => {
            Resource::Trigger(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("v1", "ConfigMap") => Resource::ConfigMap(Box::new(typed(value, &origin, &describe, &object)?)),
        ("sources.knative.dev/v1", "PingSource") => {
            Resource::PingSource(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("sources.knative.dev/v1", "ApiServerSource") => {
            Resource::ApiServerSource(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("sources.knative.dev/v1", "ContainerSource") => {
            Resource::ContainerSource(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("sources.knative.dev/v1", "SinkBinding") => {
            Resource::SinkBinding(Box::new(typed(value, &origin, &describe, &object)?))
        }
        // Knative serves KafkaSource as v1beta1; the spec is the same.
        ("sources.knative.dev/v1" | "sources.knative.dev/v1beta1", "KafkaSource") => {
            Resource::KafkaSource(Box::new(typed(value, &origin, &describe, &object)?))
        }
        // Knative served these as v1beta1 before v1; the specs Sluice reads are the same.
        ("messaging.knative.dev/v1" | "messaging.knative.dev/v1beta1", "Channel") => {
            Resource::Channel(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("messaging.knative.dev/v1" | "messaging.knative.dev/v1beta1", "InMemoryChannel") => {
            Resource::InMemoryChannel(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("messaging.knative.dev/v1beta1", "KafkaChannel") => {
            Resource::KafkaChannel(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("messaging.knative.dev/v1alpha1", "NatsJetStreamChannel") => {
            Resource::NatsJetStreamChannel(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("messaging.knative.dev/v1" | "messaging.knative.dev/v1beta1", "Subscription") => {
            Resource::Subscription(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("flows.knative.dev/v1" | "flows.knative.dev/v1beta1", "Sequence") => {
            Resource::Sequence(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("flows.knative.dev/v1" | "flows.knative.dev/v1beta1", "Parallel") => {
            Resource::Parallel(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("eventing.knative.dev/v1alpha1", "EventTransform") => {
            Resource::EventTransform(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("eventing.knative.dev/v1alpha1", "EventPolicy") => {
            Resource::EventPolicy(Box::new(typed(value, &origin, &describe, &object)?))
        }
        ("serving.knative.dev/v1", "Service") => {
            Resource::Service(Box::new(typed(value, &origin, &describe, &object)?))
        }
        _ if KUBERNETES_ONLY.contains(&(api_version.as_str(), kind.as_str())) => {
            return Err(err(
                Some(describe),
                None,
                format!("`{api_version}` `{kind}` is not supported in embedded mode yet: its CRD is served in Kubernetes mode (crds/yaml/), but nothing runs it; `sluice run` reads {SUPPORTED}"),
            ))
        }
        _ => {
            return Err(err(
                Some(describe),
                None,
                format!("apiVersion `{api_version}` kind `{kind}` is not supported; Sluice reads {SUPPORTED}"),
            ))
        }
    };
    Ok(Loaded {
        origin,
        namespace,
        name,
        resource,
    })
}

fn typed<T: DeserializeOwned>(
    value: serde_yaml::Value,
    origin: &str,
    describe: &str,
    object: &Option<Box<ObjectRef>>,
) -> Result<T, LoadError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        LoadError {
            origin: origin.to_string(),
            resource: Some(describe.to_string()),
            field: (path != ".").then_some(path),
            message: e.into_inner().to_string(),
            object: object.clone(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_several_documents_and_defaults_the_namespace() {
        let text = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t1
  namespace: team
spec:
  broker: default
  subscriber:
    uri: http://localhost:8081/
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
data:
  bootstrap.servers: localhost:9092
---
"#;
        let got = parse_yaml(text, "f.yaml").unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].describe(), "Broker default/default");
        assert_eq!(got[1].describe(), "Trigger team/t1");
        assert_eq!(got[1].origin, "f.yaml (document 2)");
        match &got[0].resource {
            Resource::Broker(b) => assert_eq!(b.metadata.namespace.as_deref(), Some("default")),
            _ => panic!(),
        }
    }

    #[test]
    fn errors_name_file_resource_and_field() {
        let text = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: b\n  delivery:\n    retry: lots\n";
        let e = parse_yaml(text, "x.yaml").unwrap_err();
        assert_eq!(e.origin, "x.yaml");
        assert_eq!(e.resource.as_deref(), Some("Trigger default/t"));
        assert_eq!(e.field.as_deref(), Some("spec.delivery.retry"));
        let shown = e.to_string();
        assert!(
            shown.starts_with("x.yaml: Trigger default/t: field `spec.delivery.retry`: "),
            "{shown}"
        );

        let text = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  brokr: b\n";
        let e = parse_yaml(text, "x.yaml").unwrap_err();
        assert!(e.message.contains("unknown field `brokr`"), "{e}");

        let e =
            parse_yaml("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "p.yaml").unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");

        let e = parse_yaml(
            "apiVersion: eventing.knative.dev/v1beta3\nkind: EventType\nmetadata: {name: c}\nspec: {}\n",
            "c.yaml",
        )
        .unwrap_err();
        assert_eq!(e.resource.as_deref(), Some("EventType default/c"));
        assert!(
            e.message.contains(
                "`eventing.knative.dev/v1beta3` `EventType` is not supported in embedded mode yet"
            ),
            "{e}"
        );

        let e = parse_yaml("kind: Broker\n", "p.yaml").unwrap_err();
        assert!(e.message.contains("apiVersion"), "{e}");

        let e = parse_yaml(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {}\n",
            "p.yaml",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("metadata.name"));

        let e = parse_yaml("a: [b\n", "bad.yaml").unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
    }
}
