//! ContainerSource in Kubernetes mode: one Deployment per source, running its pod template
//! with the resolved sink in `K_SINK` (and `K_CE_OVERRIDES`), as Knative's
//! container-source controller does (there, through a SinkBinding it creates; here written
//! straight into the template, which is the same pod in the end).
//!
//! ```text
//! ContainerSource ──bound_sinks (the one resolver)──▶ K_SINK ──deployment() (pure)──▶ apply Deployment
//!        ▲                                                                                 │
//!        └── status: SinkBindingReady (sink resolved), ReceiveAdapterReady ◀── Deployment status
//! ```
//!
//! The Deployment is `<source>-deployment`, labelled like Knative's (`eventing.knative.dev/source:
//! container-source-controller`, `eventing.knative.dev/sourceName: <source>`), written by
//! server-side apply with [`FIELD_MANAGER`] and an ownerReference to the source (controller,
//! blockOwnerDeletion), so a cluster's garbage collector deletes it with the source.
//! The controller also deletes it itself when its source is gone ([`is_stale`]): a cluster
//! whose garbage collector lags (or an API server without one, as in the tests) does not keep
//! running a source nobody asked for. `sluice dataplane` never runs ContainerSources (they are
//! not in its kinds, and Kubernetes-mode builds skip them).

use crate::conditions::Cond;
use crate::status::Desired;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::{json, Map, Value};
use sluice_core::topology::ObjectRef;
use sluice_crds::k8s_sources::ContainerSource;
use sluice_crds::{BoundSink, LoadError, Loaded, Resource};
use std::collections::BTreeMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The field manager of the Deployments (it owns all of them).
pub const FIELD_MANAGER: &str = "sluice-controller";
/// Knative's labels on a ContainerSource's Deployment and pods.
pub const SOURCE_LABEL: &str = "eventing.knative.dev/source";
pub const SOURCE_VALUE: &str = "container-source-controller";
pub const SOURCE_NAME_LABEL: &str = "eventing.knative.dev/sourceName";

/// The Deployment of source `name`.
pub fn deployment_name(source: &str) -> String {
    format!("{source}-deployment")
}

/// The labels selecting the source's pods.
pub fn labels(source: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SOURCE_LABEL.to_string(), SOURCE_VALUE.to_string()),
        (SOURCE_NAME_LABEL.to_string(), source.to_string()),
    ])
}

/// `K_SINK` and `K_CE_OVERRIDES` set on every container (and init container) of a pod spec:
/// existing entries of those names are replaced; `K_CE_OVERRIDES` is removed when the source
/// has no overrides.
pub fn inject_env(pod_spec: &mut Value, bound: &BoundSink) {
    for list in ["containers", "initContainers"] {
        let Some(containers) = pod_spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let Some(c) = c.as_object_mut() else { continue };
            let env = c.entry("env").or_insert_with(|| json!([]));
            if !env.is_array() {
                *env = json!([]);
            }
            let env = env.as_array_mut().expect("an array");
            env.retain(|e| {
                !matches!(
                    e.get("name").and_then(Value::as_str),
                    Some("K_SINK" | "K_CE_OVERRIDES")
                )
            });
            env.push(json!({"name": "K_SINK", "value": bound.sink}));
            if let Some(o) = &bound.ce_overrides {
                env.push(json!({"name": "K_CE_OVERRIDES", "value": o}));
            }
        }
    }
}

/// The Deployment running a ContainerSource (the body of a server-side apply).
pub fn deployment(
    namespace: &str,
    name: &str,
    uid: &str,
    template: &Value,
    bound: &BoundSink,
) -> Value {
    let mut template = if template.is_object() {
        template.clone()
    } else {
        json!({})
    };
    let labels = labels(name);
    let t = template.as_object_mut().expect("an object");
    let meta = t.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let meta = meta.as_object_mut().expect("an object");
    let pod_labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !pod_labels.is_object() {
        *pod_labels = json!({});
    }
    for (k, v) in &labels {
        pod_labels[k] = json!(v);
    }
    let spec = t.entry("spec").or_insert_with(|| json!({}));
    inject_env(spec, bound);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "sources.knative.dev/v1",
                "kind": "ContainerSource",
                "name": name,
                "uid": uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": template,
        },
    })
}

/// `ReceiveAdapterReady` from the Deployment (or its absence): True once it is Available or
/// has a ready replica, False with its own reason when Kubernetes says it is not Available.
pub fn receive_adapter(deployment: Option<&Deployment>, name: &str) -> Cond {
    const TYPE: &str = "ReceiveAdapterReady";
    let Some(d) = deployment else {
        return Cond::unknown(
            TYPE,
            "DeploymentNotCreated",
            format!("the Deployment {} is being created", deployment_name(name)),
        );
    };
    let status = d.status.as_ref();
    let available = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_.as_deref() == Some("Available")));
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    match available {
        Some(c) if c.status.as_deref() == Some("True") => Cond::ok(TYPE),
        _ if ready > 0 => Cond::ok(TYPE),
        Some(c) if c.status.as_deref() == Some("False") => Cond::failed(
            TYPE,
            c.reason.as_deref().unwrap_or("DeploymentUnavailable"),
            c.message.clone().unwrap_or_default(),
        ),
        _ => Cond::unknown(
            TYPE,
            "DeploymentUnavailable",
            format!(
                "the Deployment {} has no ready replica yet",
                deployment_name(name)
            ),
        ),
    }
}

/// The status of a ContainerSource: `SinkBindingReady` (Knative's name for "the sink is
/// resolved and given to the pods"), `ReceiveAdapterReady`, and `sinkUri`.
pub fn desired(
    c: &ContainerSource,
    name: &str,
    bound: &Result<BoundSink, Vec<LoadError>>,
    deployment: Option<&Deployment>,
) -> Desired {
    let mut fields = Map::new();
    let sink = match bound {
        Ok(b) => {
            fields.insert("sinkUri".into(), b.sink.clone().into());
            Cond::ok("SinkBindingReady")
        }
        Err(errors) => Cond::failed(
            "SinkBindingReady",
            "SinkNotFound",
            errors
                .first()
                .map(crate::status::message)
                .unwrap_or_else(|| "the sink cannot be resolved".into()),
        ),
    };
    let adapter = match bound {
        Ok(_) => receive_adapter(deployment, name),
        Err(_) => Cond::unknown(
            "ReceiveAdapterReady",
            "SinkNotResolved",
            "the Deployment is made once the sink resolves",
        ),
    };
    Desired {
        generation: c.metadata.generation.unwrap_or(0),
        conditions: vec![sink, adapter],
        fields,
    }
}

/// Whether a Deployment this controller labelled belongs to no current ContainerSource:
/// its owner (by uid) is not among `sources` (namespace, name → uid).
pub fn is_stale(d: &Deployment, sources: &BTreeMap<(String, String), String>) -> bool {
    let owner = d
        .owner_references()
        .iter()
        .find(|o| o.kind == "ContainerSource" && o.api_version.starts_with("sources.knative.dev/"));
    match owner {
        None => false,
        Some(o) => {
            let key = (d.namespace().unwrap_or_default(), o.name.clone());
            sources.get(&key) != Some(&o.uid)
        }
    }
}

/// The Deployments of ContainerSources, watched (by label) for their status.
pub struct Deployments {
    store: Store<Deployment>,
    changes: watch::Receiver<u64>,
    _task: AbortOnDrop,
    /// What was last applied, by source, and the Deployment's generation it gave: an
    /// unchanged body is not sent again unless someone else changed the Deployment's spec
    /// since (its generation moved), which is then put back.
    applied: BTreeMap<ObjectRef, (Value, Option<i64>)>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Deployments {
    pub fn watch(client: &Client) -> Deployments {
        let api: Api<Deployment> = Api::all(client.clone());
        let writer = Writer::default();
        let store = writer.as_reader();
        let (tx, changes) = watch::channel(0u64);
        let cfg = watcher::Config::default().labels(&format!("{SOURCE_LABEL}={SOURCE_VALUE}"));
        let stream = reflector::reflector(writer, watcher(api, cfg)).default_backoff();
        let task = tokio::spawn(async move {
            use futures::StreamExt;
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                    Ok(_) => tx.send_modify(|n| *n += 1),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "cannot watch the Deployments of ContainerSources (retrying): may the controller's ServiceAccount list and watch apps/v1 deployments?"
                    ),
                }
            }
        });
        Deployments {
            store,
            changes,
            _task: AbortOnDrop(task),
            applied: BTreeMap::new(),
        }
    }

    /// Changes whenever a watched Deployment does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Forget what was applied (another leader may have written since).
    pub fn forget(&mut self) {
        self.applied.clear();
    }

    fn get(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Deployment>> {
        self.store
            .state()
            .into_iter()
            .find(|d| d.namespace().as_deref() == Some(namespace) && d.name_any() == name)
    }

    /// Applies each ContainerSource's Deployment, deletes the stale ones, and adds each
    /// source's desired status to `want`.
    pub async fn reconcile(
        &mut self,
        client: &Client,
        resources: &[Loaded],
        bound: &BTreeMap<ObjectRef, Result<BoundSink, Vec<LoadError>>>,
        want: &mut BTreeMap<ObjectRef, Desired>,
    ) {
        let mut uids = BTreeMap::new();
        for r in resources {
            let Resource::ContainerSource(c) = &r.resource else {
                continue;
            };
            let obj = r.object();
            let uid = c.metadata.uid.clone().unwrap_or_default();
            uids.insert((r.namespace.clone(), r.name.clone()), uid.clone());
            let Some(b) = bound.get(&obj) else { continue };
            let existing = self.get(&r.namespace, &deployment_name(&r.name));
            want.insert(obj.clone(), desired(c, &r.name, b, existing.as_deref()));
            let Ok(b) = b else { continue };
            let body = deployment(&r.namespace, &r.name, &uid, &c.spec.template, b);
            let unchanged = match (&existing, self.applied.get(&obj)) {
                (Some(d), Some((b, generation))) => {
                    *b == body && d.metadata.generation == *generation
                }
                _ => false,
            };
            if unchanged {
                continue;
            }
            let api: Api<Deployment> = Api::namespaced(client.clone(), &r.namespace);
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            match api
                .patch(&deployment_name(&r.name), &pp, &Patch::Apply(&body))
                .await
            {
                Ok(d) => {
                    tracing::info!(source = %format!("{}/{}", r.namespace, r.name), sink = %b.sink, "ContainerSource Deployment applied");
                    self.applied.insert(obj, (body, d.metadata.generation));
                }
                Err(e) => {
                    tracing::warn!(source = %format!("{}/{}", r.namespace, r.name), error = %e, "cannot apply the ContainerSource's Deployment (retried on the next pass)");
                    if let Some(d) = want.get_mut(&r.object()) {
                        d.conditions[1] = Cond::failed(
                            "ReceiveAdapterReady",
                            "DeploymentFailed",
                            format!(
                                "cannot apply the Deployment {}: {e}",
                                deployment_name(&r.name)
                            ),
                        );
                    }
                }
            }
        }
        self.applied.retain(|o, _| want.contains_key(o));
        for d in self.store.state() {
            if !is_stale(&d, &uids) {
                continue;
            }
            let ns = d.namespace().unwrap_or_default();
            // The snapshot may be incomplete (a watch still listing): ask the API server
            // before deleting.
            let owner = d
                .owner_references()
                .iter()
                .find(|o| o.kind == "ContainerSource")
                .cloned();
            let Some(owner) = owner else { continue };
            let sources: Api<kube::api::DynamicObject> = Api::namespaced_with(
                client.clone(),
                &ns,
                &kube::api::ApiResource::erase::<ContainerSource>(&()),
            );
            match sources.get_opt(&owner.name).await {
                Ok(Some(s)) if s.metadata.uid.as_deref() == Some(&owner.uid) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check a ContainerSource Deployment's owner");
                    continue;
                }
            }
            let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            let dp = DeleteParams::background();
            match api.delete(&d.name_any(), &dp).await {
                Ok(_) => {
                    tracing::info!(deployment = %format!("{ns}/{}", d.name_any()), "deleted the Deployment of a removed ContainerSource")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete a removed ContainerSource's Deployment")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(sink: &str, o: Option<&str>) -> BoundSink {
        BoundSink {
            sink: sink.into(),
            ce_overrides: o.map(str::to_string),
        }
    }

    #[test]
    fn the_deployment_runs_the_template_with_k_sink_owned_by_the_source() {
        let template = json!({
            "metadata": {"labels": {"app": "heartbeat"}},
            "spec": {"containers": [{
                "name": "c",
                "image": "example/heartbeat",
                "env": [{"name": "K_SINK", "value": "stale"}, {"name": "X", "value": "1"}],
            }]},
        });
        let d = deployment(
            "ns",
            "beat",
            "u-1",
            &template,
            &bound("http://b/ns/default", Some(r#"{"extensions":{"a":"b"}}"#)),
        );
        assert_eq!(d["metadata"]["name"], "beat-deployment");
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(d["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            d["spec"]["selector"]["matchLabels"][SOURCE_NAME_LABEL],
            "beat"
        );
        let pod = &d["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"]["app"], "heartbeat");
        assert_eq!(pod["metadata"]["labels"][SOURCE_LABEL], SOURCE_VALUE);
        assert_eq!(
            pod["spec"]["containers"][0]["env"],
            json!([
                {"name": "X", "value": "1"},
                {"name": "K_SINK", "value": "http://b/ns/default"},
                {"name": "K_CE_OVERRIDES", "value": r#"{"extensions":{"a":"b"}}"#},
            ])
        );
        // Without overrides there is no K_CE_OVERRIDES, and a template without env gets one.
        let d = deployment(
            "ns",
            "beat",
            "u-1",
            &json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}),
            &bound("http://s/", None),
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "K_SINK", "value": "http://s/"}])
        );
    }

    #[test]
    fn receive_adapter_follows_the_deployment() {
        use crate::conditions::State;
        use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
        let with = |ready: Option<i32>, available: Option<(&str, &str)>| Deployment {
            status: Some(DeploymentStatus {
                ready_replicas: ready,
                conditions: available.map(|(s, r)| {
                    vec![DeploymentCondition {
                        type_: Some("Available".into()),
                        status: Some(s.into()),
                        reason: Some(r.into()),
                        message: Some("m".into()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let table = [
            (None, State::Unknown, "DeploymentNotCreated"),
            (
                Some(with(None, None)),
                State::Unknown,
                "DeploymentUnavailable",
            ),
            (Some(with(Some(1), None)), State::True, ""),
            (
                Some(with(None, Some(("True", "MinimumReplicasAvailable")))),
                State::True,
                "",
            ),
            (
                Some(with(None, Some(("False", "MinimumReplicasUnavailable")))),
                State::False,
                "MinimumReplicasUnavailable",
            ),
        ];
        for (d, status, reason) in table {
            let c = receive_adapter(d.as_ref(), "s");
            assert_eq!((c.status, c.reason.as_str()), (status, reason), "{d:?}");
        }
    }

    #[test]
    fn a_deployment_is_stale_when_its_owner_is_gone_or_replaced() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let d = |owner: Option<(&str, &str)>| {
            let mut d = Deployment::default();
            d.metadata.namespace = Some("ns".into());
            d.metadata.owner_references = owner.map(|(name, uid)| {
                vec![OwnerReference {
                    api_version: "sources.knative.dev/v1".into(),
                    kind: "ContainerSource".into(),
                    name: name.into(),
                    uid: uid.into(),
                    ..Default::default()
                }]
            });
            d
        };
        let sources = BTreeMap::from([(("ns".to_string(), "a".to_string()), "u1".to_string())]);
        assert!(!is_stale(&d(Some(("a", "u1"))), &sources));
        assert!(
            is_stale(&d(Some(("a", "u0"))), &sources),
            "recreated source"
        );
        assert!(is_stale(&d(Some(("b", "u2"))), &sources), "deleted source");
        assert!(!is_stale(&d(None), &sources), "not ours");
    }
}
