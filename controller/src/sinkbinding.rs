//! SinkBinding in Kubernetes mode: `K_SINK` (and `K_CE_OVERRIDES`) written into the pod
//! templates of its subjects, kept current when the sink's address changes, removed when the
//! binding goes.
//!
//! ```text
//! SinkBinding ──bound_sinks──▶ K_SINK ──patch_body() (pure)──▶ server-side apply, field manager
//!      │ subject: by name (get) or selector (list)             "sluice-sinkbinding/<ns>/<name>"
//!      ▼                                                        (owns only those env entries)
//! subjects labelled sinkbindings.sluice.dev/bound ──▶ managers of bindings gone ──▶ empty apply (releases them)
//! ```
//!
//! **Why server-side apply with one field manager per binding, and no finalizer:** the
//! binding's manager owns exactly the env entries (and the `bound` label) it wrote; the user's
//! own fields are untouched, and an env entry the user also set stays theirs. Removing a
//! binding's entries is applying an empty object with its manager, which the API server turns
//! into "delete the fields only this manager owned". Which objects to clean is read back from
//! the objects themselves (the label, then `managedFields`), so a binding deleted while the
//! controller was down is cleaned when it comes back: no finalizer is needed, and a deleted
//! binding never waits on the controller (Knative uses a finalizer here instead).
//!
//! **Subjects**: Deployments, StatefulSets, DaemonSets and ReplicaSets (`apps/v1`), by name or
//! label selector. A Job's pod template cannot change once it exists: Knative binds Jobs
//! through a mutating admission webhook when they are created, which Sluice does not run;
//! a Job subject is reported (`SinkBindingAvailable` False, `SubjectImmutable`) instead of
//! silently ignored. Other kinds are reported as not supported.

use crate::conditions::Cond;
use crate::status::Desired;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Map, Value};
use sluice_core::topology::ObjectRef;
use sluice_crds::k8s_sources::SinkBinding;
use sluice_crds::{BoundSink, LoadError, Loaded, Resource};
use std::collections::{BTreeMap, BTreeSet};

/// Prefix of the field manager of each binding.
pub const MANAGER_PREFIX: &str = "sluice-sinkbinding/";
/// The label a bound subject carries (owned by every binding bound to it), so the controller
/// can find what to clean.
pub const BOUND_LABEL: &str = "sinkbindings.sluice.dev/bound";

/// The kinds whose pod template (`spec.template`) a binding writes.
pub fn subject_kinds() -> Vec<ApiResource> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
    vec![
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<DaemonSet>(&()),
        ApiResource::erase::<ReplicaSet>(&()),
    ]
}

/// The field manager of binding `namespace/name` (at most 128 characters, the API server's
/// limit; longer names are hashed).
pub fn manager(namespace: &str, name: &str) -> String {
    let m = format!("{MANAGER_PREFIX}{namespace}/{name}");
    if m.len() <= 128 {
        return m;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (namespace, name).hash(&mut h);
    format!("{MANAGER_PREFIX}{:016x}", h.finish())
}

/// The server-side apply body that gives every container (and init container) of `subject`
/// the bound env. Only the containers' names and those env entries are in it: the apply owns
/// nothing else.
pub fn patch_body(ar: &ApiResource, subject: &Value, bound: &BoundSink) -> Value {
    let mut env = vec![json!({"name": "K_SINK", "value": bound.sink})];
    if let Some(o) = &bound.ce_overrides {
        env.push(json!({"name": "K_CE_OVERRIDES", "value": o}));
    }
    let mut pod_spec = Map::new();
    for list in ["containers", "initContainers"] {
        let names: Vec<Value> = subject
            .pointer(&format!("/spec/template/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").cloned())
            .map(|name| json!({"name": name, "env": env}))
            .collect();
        if !names.is_empty() {
            pod_spec.insert(list.into(), Value::Array(names));
        }
    }
    json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {
            "name": subject.pointer("/metadata/name").cloned().unwrap_or_default(),
            "labels": {BOUND_LABEL: "true"},
        },
        "spec": {"template": {"spec": pod_spec}},
    })
}

/// The body that releases everything a manager owned on an object.
pub fn release_body(ar: &ApiResource, name: &str) -> Value {
    json!({"apiVersion": ar.api_version, "kind": ar.kind, "metadata": {"name": name}})
}

/// The SinkBinding field managers present on an object.
pub fn binding_managers(obj: &DynamicObject) -> BTreeSet<String> {
    obj.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .filter(|m| m.starts_with(MANAGER_PREFIX))
        .collect()
}

/// Why a subject kind cannot be bound, or `None` when it can.
pub fn unsupported(api_version: &str, kind: &str) -> Option<(&'static str, String)> {
    if subject_kinds()
        .iter()
        .any(|ar| ar.api_version == api_version && ar.kind == kind)
    {
        return None;
    }
    if (api_version, kind) == ("batch/v1", "Job") {
        return Some((
            "SubjectImmutable",
            "a Job's pod template cannot change once the Job exists; Knative binds Jobs when they are created, through an admission webhook, which Sluice does not run. Bind the Deployment, StatefulSet or DaemonSet instead, or give the Job K_SINK from this binding's status.sinkUri".into(),
        ));
    }
    Some((
        "SubjectNotSupported",
        format!(
            "`{api_version}` `{kind}` cannot be bound: Sluice writes K_SINK into apps/v1 Deployments, StatefulSets, DaemonSets and ReplicaSets"
        ),
    ))
}

/// What happened to one binding's subjects in a pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub bound: usize,
    /// Reason and message of the first problem.
    pub problem: Option<(String, String)>,
}

/// The status of a SinkBinding: SinkProvided (+ `sinkUri`), SinkBindingAvailable,
/// OIDCIdentityCreated (OIDC is off).
pub fn desired(
    b: &SinkBinding,
    bound: &Result<BoundSink, Vec<LoadError>>,
    outcome: Option<&Outcome>,
) -> Desired {
    let mut fields = Map::new();
    let sink = match bound {
        Ok(s) => {
            fields.insert("sinkUri".into(), s.sink.clone().into());
            Cond::ok("SinkProvided")
        }
        Err(errors) => Cond::failed(
            "SinkProvided",
            "NotFound",
            errors
                .first()
                .map(crate::status::message)
                .unwrap_or_else(|| "the sink cannot be resolved".into()),
        ),
    };
    let available = match (bound, outcome) {
        (Err(_), _) => Cond::unknown(
            "SinkBindingAvailable",
            "SinkNotResolved",
            "the subjects are bound once the sink resolves",
        ),
        (Ok(_), None) => Cond::unknown("SinkBindingAvailable", "NotReconciled", ""),
        (Ok(_), Some(o)) => match &o.problem {
            Some((reason, message)) => {
                Cond::failed("SinkBindingAvailable", reason, message.clone())
            }
            None => Cond::ok("SinkBindingAvailable"),
        },
    };
    Desired {
        generation: b.metadata.generation.unwrap_or(0),
        conditions: vec![
            sink,
            available,
            Cond::ok_because(
                "OIDCIdentityCreated",
                "authentication-oidc feature disabled",
                "",
            ),
        ],
        fields,
    }
}

/// What was applied to one subject, and the subject's generation after it.
type Applied = BTreeMap<(ObjectRef, String, String, String), (Value, Option<i64>)>;

/// The SinkBinding loop state: what was applied, by (binding, subject kind, namespace, name).
/// An unchanged body is not sent again unless the subject's spec changed since (its
/// generation moved: someone may have edited the env), which is then put back.
#[derive(Default)]
pub struct Bindings {
    applied: Applied,
}

impl Bindings {
    /// Forget what was applied (another leader may have written since).
    pub fn forget(&mut self) {
        self.applied.clear();
    }

    /// Writes every binding's env into its subjects, releases what bindings that are gone
    /// (or no longer select an object) wrote, and adds each binding's status to `want`.
    pub async fn reconcile(
        &mut self,
        client: &Client,
        resources: &[Loaded],
        bound: &BTreeMap<ObjectRef, Result<BoundSink, Vec<LoadError>>>,
        want: &mut BTreeMap<ObjectRef, Desired>,
    ) {
        // (kind, namespace, name) → the managers that should be on it.
        let mut wanted: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
        let mut applied_now = BTreeMap::new();
        for r in resources {
            let Resource::SinkBinding(b) = &r.resource else {
                continue;
            };
            let obj = r.object();
            let Some(sink) = bound.get(&obj) else {
                continue;
            };
            let outcome = match sink {
                Ok(s) => Some(
                    self.bind(client, r, b, s, &mut wanted, &mut applied_now)
                        .await,
                ),
                Err(_) => None,
            };
            want.insert(obj, desired(b, sink, outcome.as_ref()));
        }
        self.applied = applied_now;
        self.release_stale(client, &wanted).await;
    }

    async fn bind(
        &self,
        client: &Client,
        r: &Loaded,
        b: &SinkBinding,
        sink: &BoundSink,
        wanted: &mut BTreeMap<(String, String, String), BTreeSet<String>>,
        applied_now: &mut Applied,
    ) -> Outcome {
        let s = &b.spec.subject;
        let mut out = Outcome::default();
        if let Some((reason, message)) = unsupported(&s.api_version, &s.kind) {
            out.problem = Some((reason.into(), message));
            return out;
        }
        let ar = subject_kinds()
            .into_iter()
            .find(|ar| ar.api_version == s.api_version && ar.kind == s.kind)
            .expect("a supported kind");
        let ns = s
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| r.namespace.clone());
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        let subjects = match (&s.name, &s.selector) {
            (Some(name), _) => match api.get_opt(name).await {
                Ok(Some(o)) => vec![o],
                Ok(None) => {
                    out.problem = Some((
                        "SubjectMissing".into(),
                        format!("{} {ns}/{name} does not exist", s.kind),
                    ));
                    return out;
                }
                Err(e) => {
                    out.problem = Some((
                        "SubjectUnreadable".into(),
                        format!("cannot read {} {ns}/{name}: {e}", s.kind),
                    ));
                    return out;
                }
            },
            (None, Some(sel)) => {
                let query = match sluice_crds::convert::label_selector_query(sel) {
                    Ok(q) => q,
                    Err((field, message)) => {
                        out.problem = Some((
                            "InvalidSelector".into(),
                            format!("spec.subject.selector.{field}: {message}"),
                        ));
                        return out;
                    }
                };
                match api.list(&ListParams::default().labels(&query)).await {
                    Ok(l) => l.items,
                    Err(e) => {
                        out.problem = Some((
                            "SubjectUnreadable".into(),
                            format!("cannot list {} in {ns} matching `{query}`: {e}", s.kind),
                        ));
                        return out;
                    }
                }
            }
            (None, None) => {
                out.problem = Some((
                    "InvalidSubject".into(),
                    "spec.subject needs `name` or `selector`".into(),
                ));
                return out;
            }
        };
        let manager = manager(&r.namespace, &r.name);
        for subject in subjects {
            let name = subject.name_any();
            wanted
                .entry((ar.kind.clone(), ns.clone(), name.clone()))
                .or_default()
                .insert(manager.clone());
            let value = serde_json::to_value(&subject).unwrap_or_default();
            let body = patch_body(&ar, &value, sink);
            let key = (r.object(), ar.kind.clone(), ns.clone(), name.clone());
            let current = binding_managers(&subject).contains(&manager);
            let generation = subject.metadata.generation;
            if current && self.applied.get(&key) == Some(&(body.clone(), generation)) {
                applied_now.insert(key, (body, generation));
                out.bound += 1;
                continue;
            }
            let pp = PatchParams::apply(&manager).force();
            match api.patch(&name, &pp, &Patch::Apply(&body)).await {
                Ok(o) => {
                    let body = (body, o.metadata.generation);
                    tracing::info!(binding = %format!("{}/{}", r.namespace, r.name), subject = %format!("{} {ns}/{name}", ar.kind), sink = %sink.sink, "K_SINK written");
                    applied_now.insert(key, body);
                    out.bound += 1;
                }
                Err(e) => {
                    if out.problem.is_none() {
                        out.problem = Some((
                            "BindingFailed".into(),
                            format!("cannot write K_SINK into {} {ns}/{name}: {e}", ar.kind),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Releases the fields of binding managers found on labelled subjects that no binding
    /// wants there any more.
    async fn release_stale(
        &mut self,
        client: &Client,
        wanted: &BTreeMap<(String, String, String), BTreeSet<String>>,
    ) {
        for ar in subject_kinds() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let list = match api.list(&ListParams::default().labels(BOUND_LABEL)).await {
                Ok(l) => l.items,
                Err(e) => {
                    tracing::warn!(kind = %ar.kind, error = %e, "cannot list bound subjects (retried on the next pass)");
                    continue;
                }
            };
            for o in list {
                let ns = o.namespace().unwrap_or_default();
                let name = o.name_any();
                let keep = wanted.get(&(ar.kind.clone(), ns.clone(), name.clone()));
                for m in binding_managers(&o) {
                    if keep.is_some_and(|k| k.contains(&m)) {
                        continue;
                    }
                    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
                    let pp = PatchParams::apply(&m).force();
                    match api
                        .patch(&name, &pp, &Patch::Apply(&release_body(&ar, &name)))
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(subject = %format!("{} {ns}/{name}", ar.kind), manager = %m, "K_SINK of a removed SinkBinding taken out")
                        }
                        Err(e) => {
                            tracing::warn!(subject = %format!("{} {ns}/{name}", ar.kind), error = %e, "cannot take a removed SinkBinding's K_SINK out (retried)")
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;

    fn sink(o: Option<&str>) -> BoundSink {
        BoundSink {
            sink: "http://b/ns/default".into(),
            ce_overrides: o.map(str::to_string),
        }
    }

    #[test]
    fn the_patch_names_every_container_and_holds_only_the_bound_env() {
        let ar = ApiResource::erase::<Deployment>(&());
        let subject = json!({
            "metadata": {"name": "d", "labels": {"app": "x"}},
            "spec": {"replicas": 3, "template": {"spec": {
                "containers": [
                    {"name": "a", "image": "i", "env": [{"name": "X", "value": "1"}]},
                    {"name": "b", "image": "j"},
                ],
                "initContainers": [{"name": "init", "image": "k"}],
            }}},
        });
        let body = patch_body(&ar, &subject, &sink(Some("{}")));
        let env = json!([
            {"name": "K_SINK", "value": "http://b/ns/default"},
            {"name": "K_CE_OVERRIDES", "value": "{}"},
        ]);
        assert_eq!(
            body,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "d", "labels": {BOUND_LABEL: "true"}},
                "spec": {"template": {"spec": {
                    "containers": [{"name": "a", "env": env}, {"name": "b", "env": env}],
                    "initContainers": [{"name": "init", "env": env}],
                }}},
            })
        );
        // Without overrides: K_SINK only.
        let body = patch_body(&ar, &subject, &sink(None));
        assert_eq!(
            body["spec"]["template"]["spec"]["containers"][1]["env"],
            json!([{"name": "K_SINK", "value": "http://b/ns/default"}])
        );
    }

    #[test]
    fn managers_fit_the_api_servers_limit() {
        assert_eq!(manager("ns", "b"), "sluice-sinkbinding/ns/b");
        let long = "x".repeat(200);
        let m = manager("ns", &long);
        assert!(m.len() <= 128 && m.starts_with(MANAGER_PREFIX), "{m}");
        assert_ne!(m, manager("ns", &"y".repeat(200)));
    }

    #[test]
    fn supported_subjects_and_the_reasons_for_the_others() {
        let table = [
            ("apps/v1", "Deployment", None),
            ("apps/v1", "StatefulSet", None),
            ("apps/v1", "DaemonSet", None),
            ("apps/v1", "ReplicaSet", None),
            ("batch/v1", "Job", Some("SubjectImmutable")),
            (
                "serving.knative.dev/v1",
                "Service",
                Some("SubjectNotSupported"),
            ),
            ("v1", "Pod", Some("SubjectNotSupported")),
        ];
        for (v, k, want) in table {
            assert_eq!(unsupported(v, k).map(|(r, _)| r), want, "{v} {k}");
        }
    }

    #[test]
    fn status_follows_the_sink_and_the_subjects() {
        use crate::conditions::State;
        let b = SinkBinding::new("b", Default::default());
        let err = Err(vec![]);
        let d = desired(&b, &err, None);
        assert_eq!(d.conditions[0].status, State::False);
        assert_eq!(d.conditions[1].status, State::Unknown);
        assert!(d.fields.get("sinkUri").is_none());
        let ok = Ok(sink(None));
        let d = desired(
            &b,
            &ok,
            Some(&Outcome {
                bound: 2,
                problem: None,
            }),
        );
        assert_eq!(d.conditions[1].status, State::True);
        assert_eq!(d.fields["sinkUri"], "http://b/ns/default");
        let missing = Outcome {
            bound: 0,
            problem: Some(("SubjectMissing".into(), "gone".into())),
        };
        let d = desired(&b, &ok, Some(&missing));
        assert_eq!(
            (d.conditions[1].status, d.conditions[1].reason.as_str()),
            (State::False, "SubjectMissing")
        );
    }
}
