//! ApiServerSource: additions, updates and deletions of Kubernetes objects as CloudEvents.
//!
//! ```text
//!            discovery (apiVersion+kind → plural, scope)
//!                 │            permission check (SelfSubjectAccessReview get/list/watch)
//!                 ▼                 │ denied: NotReady "User … cannot get, list, watch resource …"
//! per (resource, namespace):  list ──▶ Tracker::relist ──┐
//!                              ▲   watch from the list's resourceVersion ──▶ Tracker::applied/deleted
//!                              │       │ bookmarks move the resourceVersion on     │
//!                              └─ 410 Gone: list again (diffed, see below)          ▼
//!                                                        change_event ──▶ filter ──▶ Sender::deliver (in order)
//! ```
//!
//! **Why this crate talks to Kubernetes** (DESIGN.md principle 10 keeps `kube` in `crds/`,
//! `controller/` and the binary): an ApiServerSource's *signal* is the API server, the way a
//! KafkaSource's is a Kafka cluster. It runs where the other sources run — in `sluice run`
//! (embedded mode, against the cluster of `--kubeconfig`) and in `sluice dataplane` — and sends
//! through the same delivery path. Putting it in the controller would run it only in
//! Kubernetes mode and in the leader only. So the kube client is confined to this module,
//! behind the `apiserver` feature; the topology it reads stays plain values.
//!
//! **Why not kube-runtime's `watcher`:** it always starts with a list and cannot resume from a
//! resourceVersion we kept, which a source restarted by a reload needs to avoid replaying
//! objects; the loop here is the same list → watch → bookmark → 410-relist cycle, with
//! its state ([`WatchState`]) outliving one run of the source.
//!
//! **What is emitted when** (the re-list semantics; [`Tracker`] is the pure part):
//! - The first list of a source's life is the baseline: no events (as Knative, whose adapter
//!   ignores the reflector's initial `Replace`). Objects that already exist are not "added".
//! - Watch events: `add` for an object whose uid is new, `update` when its resourceVersion
//!   changed, nothing when it did not (a replay after a resume), `delete` on deletion.
//! - A re-list (the watch's resourceVersion is too old: 410 Gone, or the source was restarted
//!   and its kept state is stale) is *diffed* against the last seen resourceVersion of every
//!   uid: `add` only for new uids, `update` for a changed resourceVersion, `delete` for uids
//!   that vanished. Knative drops what changed while it re-listed; we emit it once instead, and
//!   never a spurious add for an object already seen.
//! - A namespace that starts matching `namespaceSelector` (listed again every
//!   5 s) gets a new watch, whose first list is its baseline.
//! - A restart of the source inside the process (its spec changed, a reload) keeps the state,
//!   resumes the watch where it was, and so neither loses nor repeats anything. A restart of
//!   the process starts from a new baseline: changes made while it was down are not emitted.

use crate::{Counters, Env, Health};
use futures::TryStreamExt as _;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use sluice_core::topology::{ApiServerMode, ApiServerSource, Key, NamespaceScope};
use sluice_core::{Envelope, Event, SpecVersion};
use sluice_delivery::Request;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Shortest and longest pause after an error (discovery, list, watch, permission check).
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one watch request lasts before the API server ends it (it is then resumed).
const WATCH_TIMEOUT_SECS: u32 = 290;
/// Objects per page when listing.
const LIST_PAGE: u32 = 500;
/// Longest pause between two permission checks of a denied source.
const RECHECK_MAX: Duration = Duration::from_secs(10);
/// Changes waiting for delivery; the watches pause when the sink falls this far behind.
const QUEUE: usize = 1024;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Add,
    Update,
    Delete,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Add => "add",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }
}

/// The CloudEvents type of a change in a mode: `dev.knative.apiserver.{resource,ref}.{add,update,delete}`.
pub fn event_type(mode: ApiServerMode, change: ChangeKind) -> String {
    let m = match mode {
        ApiServerMode::Reference => "ref",
        ApiServerMode::Resource => "resource",
    };
    format!("dev.knative.apiserver.{m}.{}", change.as_str())
}

/// The three types a source in `mode` emits (its status' `ceAttributes`).
pub fn event_types(mode: ApiServerMode) -> [String; 3] {
    [ChangeKind::Add, ChangeKind::Update, ChangeKind::Delete].map(|c| event_type(mode, c))
}

/// `subject`: Knative's self-link shape, `/apis/<apiVersion>/namespaces/<ns>/<kind lower-cased>s/<name>`
/// (Knative builds the collection name from the kind, not from discovery, and writes `/apis/`
/// for core objects too).
pub fn subject(api_version: &str, kind: &str, namespace: &str, name: &str) -> String {
    let version = if api_version.contains('.') && !api_version.contains('/') {
        format!("{api_version}/versionUnknown")
    } else {
        api_version.to_string()
    };
    format!(
        "/apis/{version}/namespaces/{namespace}/{}s/{name}",
        kind.to_lowercase()
    )
}

/// The event for a change of `object` (JSON, with `apiVersion` and `kind` filled in).
/// `source` is the API server's URL; `id` a fresh UUID in production; `time` RFC 3339.
pub fn change_event(
    spec: &ApiServerSource,
    source: &str,
    change: ChangeKind,
    object: &serde_json::Value,
    id: String,
    time: String,
) -> Event {
    let s = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).unwrap_or("").to_string();
    let api_version = s(object.get("apiVersion"));
    let kind = s(object.get("kind"));
    let meta = object.get("metadata");
    let name = s(meta.and_then(|m| m.get("name")));
    let namespace = s(meta.and_then(|m| m.get("namespace")));
    let mut e = Event::new(
        SpecVersion::V10,
        id,
        source.to_string(),
        event_type(spec.mode, change),
    );
    e.set("subject", subject(&api_version, &kind, &namespace, &name));
    e.set("datacontenttype", "application/json");
    e.set("time", time);
    for (n, v) in &spec.extensions {
        e.set(n.as_str(), v.as_str());
    }
    e.set("kind", kind.as_str());
    e.set("apiversion", api_version.as_str());
    e.set("name", name.as_str());
    if !namespace.is_empty() {
        e.set("namespace", namespace.as_str());
    }
    let data = match spec.mode {
        ApiServerMode::Resource => serde_json::to_vec(object).unwrap_or_default(),
        ApiServerMode::Reference => reference(&kind, &namespace, &name, &api_version).into_bytes(),
    };
    e.set_data(data, false);
    e
}

/// Reference mode's data: a Kubernetes `ObjectReference` with the fields Knative sets, in
/// the order Go writes them (namespace left out for cluster-scoped objects).
fn reference(kind: &str, namespace: &str, name: &str, api_version: &str) -> String {
    let q = |v: &str| serde_json::Value::from(v).to_string();
    let ns = if namespace.is_empty() {
        String::new()
    } else {
        format!(",\"namespace\":{}", q(namespace))
    };
    format!(
        "{{\"kind\":{}{ns},\"name\":{},\"apiVersion\":{}}}",
        q(kind),
        q(name),
        q(api_version)
    )
}

/// `owner`: whether one of the object's owner references is of this apiVersion and kind.
pub fn owned_by(object: &serde_json::Value, owner: &(String, String)) -> bool {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(|o| o.as_array())
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                r.get("apiVersion").and_then(|v| v.as_str()) == Some(owner.0.as_str())
                    && r.get("kind").and_then(|v| v.as_str()) == Some(owner.1.as_str())
            })
        })
}

/// The last seen resourceVersion of every object, by uid, and what a list or a watch event
/// means given them. Pure: see the module docs for the rules.
#[derive(Debug, Clone)]
pub struct Tracker<T> {
    known: HashMap<String, (String, T)>,
    /// No list seen yet: the first one is the baseline.
    fresh: bool,
}

impl<T: Clone> Default for Tracker<T> {
    fn default() -> Self {
        Tracker {
            known: HashMap::new(),
            fresh: true,
        }
    }
}

impl<T: Clone> Tracker<T> {
    /// A complete list (`(uid, resourceVersion, object)`, in list order): the first one
    /// records the baseline and returns nothing; later ones return the difference.
    pub fn relist(&mut self, items: Vec<(String, String, T)>) -> Vec<(ChangeKind, T)> {
        let baseline = std::mem::replace(&mut self.fresh, false);
        let mut previous = std::mem::take(&mut self.known);
        let mut out = Vec::new();
        for (uid, rv, obj) in items {
            match previous.remove(&uid) {
                None if !baseline => out.push((ChangeKind::Add, obj.clone())),
                Some((old, _)) if old != rv => out.push((ChangeKind::Update, obj.clone())),
                _ => {}
            }
            self.known.insert(uid, (rv, obj));
        }
        if !baseline {
            let mut gone: Vec<_> = previous.into_values().collect();
            // Deterministic order: by resourceVersion as the server wrote it.
            gone.sort_by(|a, b| a.0.cmp(&b.0));
            out.extend(gone.into_iter().map(|(_, obj)| (ChangeKind::Delete, obj)));
        }
        out
    }

    /// An object added or modified (watch `ADDED`/`MODIFIED`).
    pub fn applied(&mut self, uid: String, rv: String, obj: T) -> Option<(ChangeKind, T)> {
        let change = match self.known.get(&uid) {
            None => Some(ChangeKind::Add),
            Some((old, _)) if *old != rv => Some(ChangeKind::Update),
            Some(_) => None,
        };
        self.known.insert(uid, (rv, obj.clone()));
        change.map(|c| (c, obj))
    }

    /// An object deleted (watch `DELETED`).
    pub fn deleted(&mut self, uid: &str, obj: T) -> (ChangeKind, T) {
        self.known.remove(uid);
        (ChangeKind::Delete, obj)
    }

    /// How many objects are known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

/// One watch's memory: what was seen, and where to resume. Kept across restarts of a source
/// inside the process.
#[derive(Debug, Clone, Default)]
pub struct WatchState {
    pub tracker: Tracker<serde_json::Value>,
    /// Where the next watch starts; `None`: list first.
    pub resource_version: Option<String>,
}

/// States of the watches of every source, by source and watch (apiVersion, kind, selector,
/// namespace); shared by the runs of a source so a restart resumes.
pub type Memory = Arc<Mutex<BTreeMap<(Key, String), Arc<tokio::sync::Mutex<WatchState>>>>>;

/// What a watch hands to the sender.
#[derive(Debug)]
pub struct Change {
    pub kind: ChangeKind,
    pub object: serde_json::Value,
}

/// Why a watch stopped running (it retries after a backoff unless cancelled).
#[derive(Debug)]
enum WatchError {
    Gone,
    Other(String),
}

fn object_json(ar: &ApiResource, obj: &DynamicObject) -> (String, String, serde_json::Value) {
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let rv = obj.metadata.resource_version.clone().unwrap_or_default();
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    // List items of built-in kinds come without apiVersion and kind.
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), ar.api_version.clone().into());
        m.insert("kind".into(), ar.kind.clone().into());
    }
    (uid, rv, v)
}

/// Lists every page of `api`.
async fn list_all(
    api: &Api<DynamicObject>,
    selector: &str,
) -> Result<(Vec<DynamicObject>, String), kube::Error> {
    let mut items = Vec::new();
    let mut lp = ListParams::default().labels(selector).limit(LIST_PAGE);
    loop {
        let page = api.list(&lp).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok((items, page.metadata.resource_version.unwrap_or_default())),
        }
    }
}

fn is_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 410)
}

/// What one watch reads.
pub struct Watched {
    /// Namespaced or cluster-wide.
    pub api: Api<DynamicObject>,
    pub ar: ApiResource,
    /// A `labelSelector` query; empty: every object.
    pub selector: String,
    /// Only objects with an owner reference of this `(apiVersion, kind)`.
    pub owner: Option<(String, String)>,
}

/// Runs one watch until `cancel`: list when there is no resourceVersion to resume from,
/// watch, follow bookmarks, re-list on 410 Gone, back off on errors. Changes go to `out` in
/// the order the API server reported them. `on_listed` is called after every successful list
/// (the source is ready once each of its watches listed).
pub async fn watch(
    target: Watched,
    state: &mut WatchState,
    out: mpsc::Sender<Change>,
    cancel: CancellationToken,
    mut on_result: impl FnMut(Result<(), String>),
) {
    let Watched {
        api,
        ar,
        selector,
        owner,
    } = target;
    let mut backoff = BACKOFF_MIN;
    let keep = |v: &serde_json::Value| owner.as_ref().is_none_or(|o| owned_by(v, o));
    loop {
        let step = async {
            let rv = match state.resource_version.clone() {
                Some(rv) => rv,
                None => {
                    let (items, rv) = list_all(&api, &selector)
                        .await
                        .map_err(|e| WatchError::Other(e.to_string()))?;
                    let items = items
                        .iter()
                        .map(|o| object_json(&ar, o))
                        .filter(|(_, _, v)| keep(v))
                        .collect();
                    for (kind, object) in state.tracker.relist(items) {
                        if out.send(Change { kind, object }).await.is_err() {
                            return Ok(());
                        }
                    }
                    state.resource_version = Some(rv.clone());
                    rv
                }
            };
            on_result(Ok(()));
            let wp = WatchParams::default()
                .labels(&selector)
                .timeout(WATCH_TIMEOUT_SECS);
            let stream = api.watch(&wp, &rv).await.map_err(|e| {
                if is_gone(&e) {
                    WatchError::Gone
                } else {
                    WatchError::Other(e.to_string())
                }
            })?;
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream
                .try_next()
                .await
                .map_err(|e| WatchError::Other(e.to_string()))?
            {
                let change = match ev {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        let (uid, rv, v) = object_json(&ar, &o);
                        state.resource_version = Some(rv.clone());
                        keep(&v)
                            .then(|| state.tracker.applied(uid, rv, v))
                            .flatten()
                    }
                    WatchEvent::Deleted(o) => {
                        let (uid, rv, v) = object_json(&ar, &o);
                        state.resource_version = Some(rv);
                        keep(&v).then(|| state.tracker.deleted(&uid, v))
                    }
                    WatchEvent::Bookmark(b) => {
                        state.resource_version = Some(b.metadata.resource_version);
                        None
                    }
                    WatchEvent::Error(s) if s.code == 410 => return Err(WatchError::Gone),
                    WatchEvent::Error(s) => return Err(WatchError::Other(s.message.clone())),
                };
                if let Some((kind, object)) = change {
                    if out.send(Change { kind, object }).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok::<(), WatchError>(())
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = step => r,
        };
        match result {
            // The server ended the watch (its timeout): resume at once.
            Ok(()) => backoff = BACKOFF_MIN,
            Err(WatchError::Gone) => {
                tracing::info!(kind = %ar.kind, "watch resourceVersion too old (410 Gone): listing again");
                state.resource_version = None;
            }
            Err(WatchError::Other(reason)) => {
                tracing::warn!(kind = %ar.kind, %reason, "watch failed; retrying");
                on_result(Err(reason));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        if out.is_closed() {
            return;
        }
    }
}

/// The message of a failed permission check (SEMANTICS.md §8, SufficientPermissions).
pub fn permission_message(
    user: &str,
    missing: &[&str],
    plural: &str,
    group: &str,
    namespace: Option<&str>,
) -> String {
    let wher = match namespace {
        Some(ns) => format!(" in namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    format!(
        "User {user} cannot {} resource \"{plural}\" in API group \"{group}\"{wher}",
        missing.join(", ")
    )
}

/// The message when the data plane may not impersonate the source's `serviceAccountName`.
/// Impersonation is opt-in in a cluster (it lets the data plane act as any ServiceAccount),
/// so the message says exactly how to turn it on.
pub fn impersonation_message(user: &str, namespace: &str, service_account: &str) -> String {
    format!(
        "User {user} cannot impersonate ServiceAccount {namespace}/{service_account} (spec.serviceAccountName). \
         Impersonation is off by default; to enable it, install with the Helm value \
         `apiServerSource.impersonation=true`, or add `optional/apiserversource-impersonation.yaml` \
         to the resources of deploy/kustomization.yaml (another identity needs the `impersonate` \
         verb on `serviceaccounts`). Or remove serviceAccountName to watch as Sluice's own identity"
    )
}

/// Whether the process's own identity may impersonate the source's ServiceAccount.
async fn check_impersonation(own: &kube::Client, spec: &ApiServerSource) -> Result<(), Health> {
    let Some(sa) = &spec.service_account else {
        return Ok(());
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(spec.key.namespace.clone()),
                verb: Some("impersonate".into()),
                group: Some(String::new()),
                resource: Some("serviceaccounts".into()),
                name: Some(sa.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let allowed = Api::<SelfSubjectAccessReview>::all(own.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| Health::NotReady(format!("cannot check the source's permissions: {e}")))?
        .status
        .is_some_and(|s| s.allowed);
    if allowed {
        return Ok(());
    }
    let own_spec = ApiServerSource {
        service_account: None,
        ..(*spec).clone()
    };
    let user = user_name(own, &own_spec).await;
    Err(Health::Denied(impersonation_message(
        &user,
        &spec.key.namespace,
        sa,
    )))
}

/// One watch target, resolved.
struct Target {
    ar: ApiResource,
    namespace: Option<String>,
    selector: String,
}

impl Target {
    fn id(&self) -> String {
        format!(
            "{}/{} {} {}",
            self.ar.api_version,
            self.ar.kind,
            self.selector,
            self.namespace.as_deref().unwrap_or("*")
        )
    }
}

/// The identity the source's requests are made as: the process's, or (`serviceAccountName`)
/// the ServiceAccount impersonated.
fn client_for(spec: &ApiServerSource, config: &kube::Config) -> Result<kube::Client, String> {
    let mut config = config.clone();
    if let Some(sa) = &spec.service_account {
        config.auth_info.impersonate =
            Some(format!("system:serviceaccount:{}:{sa}", spec.key.namespace));
    }
    kube::Client::try_from(config).map_err(|e| format!("cannot make a Kubernetes client: {e}"))
}

async fn user_name(client: &kube::Client, spec: &ApiServerSource) -> String {
    if let Some(sa) = &spec.service_account {
        return format!("system:serviceaccount:{}:{sa}", spec.key.namespace);
    }
    let review = SelfSubjectReview::default();
    match Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
    {
        Ok(r) => r
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_else(|| "(unknown)".into()),
        Err(_) => "(unknown)".into(),
    }
}

/// Discovery and namespaces: what to watch.
async fn targets(client: &kube::Client, spec: &ApiServerSource) -> Result<Vec<Target>, String> {
    let namespaces: Option<Vec<String>> = match &spec.namespaces {
        NamespaceScope::Own => Some(vec![spec.key.namespace.clone()]),
        NamespaceScope::Selector(q) if q.is_empty() => None,
        NamespaceScope::Selector(q) => {
            let list = Api::<Namespace>::all(client.clone())
                .list(&ListParams::default().labels(q))
                .await
                .map_err(|e| format!("cannot list the namespaces matching `{q}`: {e}"))?;
            Some(
                list.items
                    .into_iter()
                    .filter_map(|n| n.metadata.name)
                    .collect(),
            )
        }
    };
    let mut out = Vec::new();
    for r in &spec.resources {
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &r.kind);
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .map_err(|e| {
                format!(
                    "the API server does not serve kind `{}` in `{}`: {e}",
                    r.kind, r.api_version
                )
            })?;
        match (&caps.scope, &namespaces) {
            (Scope::Cluster, _) | (Scope::Namespaced, None) => out.push(Target {
                ar,
                namespace: None,
                selector: r.label_selector.clone(),
            }),
            (Scope::Namespaced, Some(list)) => {
                for ns in list {
                    out.push(Target {
                        ar: ar.clone(),
                        namespace: Some(ns.clone()),
                        selector: r.label_selector.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Whether the identity may get, list and watch every target; else why not.
async fn check_permissions(
    client: &kube::Client,
    spec: &ApiServerSource,
    targets: &[Target],
) -> Result<(), Health> {
    let api = Api::<SelfSubjectAccessReview>::all(client.clone());
    for t in targets {
        let mut missing = Vec::new();
        for verb in ["get", "list", "watch"] {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        namespace: t.namespace.clone(),
                        verb: Some(verb.into()),
                        group: Some(t.ar.group.clone()),
                        version: Some(t.ar.version.clone()),
                        resource: Some(t.ar.plural.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let allowed = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| {
                    Health::NotReady(format!("cannot check the source's permissions: {e}"))
                })?
                .status
                .is_some_and(|s| s.allowed);
            if !allowed {
                missing.push(verb);
            }
        }
        if !missing.is_empty() {
            let user = user_name(client, spec).await;
            return Err(Health::Denied(permission_message(
                &user,
                &missing,
                &t.ar.plural,
                &t.ar.group,
                t.namespace.as_deref(),
            )));
        }
    }
    Ok(())
}

fn set(health: &Mutex<Health>, h: Health) {
    *health.lock().unwrap_or_else(|e| e.into_inner()) = h;
}

/// Runs one ApiServerSource until `cancel`.
pub(crate) async fn run(
    spec: Arc<ApiServerSource>,
    env: Env,
    config: Option<kube::Config>,
    memory: Memory,
    cancel: CancellationToken,
    health: Arc<Mutex<Health>>,
) {
    let Some(config) = config else {
        set(&health, Health::NotReady("no Kubernetes API server to watch: give `sluice run` a --kubeconfig (or set KUBECONFIG)".into()));
        cancel.cancelled().await;
        return;
    };
    let source_url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let own = match kube::Client::try_from(config.clone()) {
        Ok(c) => c,
        Err(e) => {
            set(
                &health,
                Health::NotReady(format!("cannot make a Kubernetes client: {e}")),
            );
            cancel.cancelled().await;
            return;
        }
    };
    let client = match client_for(&spec, &config) {
        Ok(c) => c,
        Err(e) => {
            set(&health, Health::NotReady(e));
            cancel.cancelled().await;
            return;
        }
    };
    tracing::info!(source = %spec.key, server = %source_url, sink = %spec.sink, "ApiServerSource starting");
    let counters = Counters::new(&env.metrics, &spec.key, "ApiServerSource");
    // One round per set of namespaces: when the namespaces matching `namespaceSelector`
    // change, the watches are restarted on the new set (each keeps its state, so the ones that
    // stay resume where they were).
    let ctx = RunCtx {
        spec,
        env,
        own,
        client,
        source_url,
        memory,
        health,
        counters,
    };
    loop {
        let round = cancel.child_token();
        if run_round(&ctx, &round, &cancel).await.is_none() || cancel.is_cancelled() {
            break;
        }
        tracing::info!(source = %ctx.spec.key, "the namespaces matching namespaceSelector changed; watching the new set");
    }
    tracing::info!(source = %ctx.spec.key, "ApiServerSource stopped");
}

/// What every round of a source shares.
struct RunCtx {
    spec: Arc<ApiServerSource>,
    env: Env,
    /// The process's own identity (it impersonates `serviceAccountName` through `client`).
    own: kube::Client,
    client: kube::Client,
    source_url: String,
    memory: Memory,
    health: Arc<Mutex<Health>>,
    counters: Counters,
}

/// How often the namespaces matching a `namespaceSelector` are listed again.
const NAMESPACE_POLL: Duration = Duration::from_secs(5);

async fn namespaces_now(client: &kube::Client, query: &str) -> Option<Vec<String>> {
    let list = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(query))
        .await
        .ok()?;
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    Some(names)
}

/// Discovery, the permission check, then the watches and deliveries until `round` is
/// cancelled (`Some(())`: the namespace set changed, run another round) or the source stops
/// (`None`).
async fn run_round(
    ctx: &RunCtx,
    round: &CancellationToken,
    stop: &CancellationToken,
) -> Option<()> {
    let RunCtx {
        spec,
        own,
        client,
        memory,
        health,
        ..
    } = ctx;
    // Discovery and the permission check, retried with backoff until they pass.
    let mut backoff = BACKOFF_MIN;
    let targets = loop {
        let attempt = async {
            check_impersonation(own, spec).await?;
            let t = targets(client, spec).await.map_err(Health::NotReady)?;
            check_permissions(client, spec, &t).await?;
            Ok::<_, Health>(t)
        };
        let result = tokio::select! {
            _ = round.cancelled() => return None,
            r = attempt => r,
        };
        match result {
            Ok(t) => break t,
            Err(h) => {
                tracing::warn!(source = %spec.key, reason = ?h, "ApiServerSource cannot watch yet; retrying");
                set(health, h);
                tokio::select! {
                    _ = round.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RECHECK_MAX);
            }
        }
    };
    let (tx, mut rx) = mpsc::channel::<Change>(QUEUE);
    let listed = Arc::new(Mutex::new(vec![false; targets.len()]));
    let mut watches = tokio::task::JoinSet::new();
    if let NamespaceScope::Selector(q) = &spec.namespaces {
        if !q.is_empty() {
            let mut watched: Vec<String> =
                targets.iter().filter_map(|t| t.namespace.clone()).collect();
            watched.sort();
            watched.dedup();
            let (client, q, round) = (client.clone(), q.clone(), round.clone());
            watches.spawn(async move {
                loop {
                    tokio::select! {
                        _ = round.cancelled() => return,
                        _ = tokio::time::sleep(NAMESPACE_POLL) => {}
                    }
                    if let Some(now) = namespaces_now(&client, &q).await {
                        if now != watched {
                            round.cancel();
                            return;
                        }
                    }
                }
            });
        }
    }
    let n = targets.len();
    for (i, t) in targets.into_iter().enumerate() {
        let state = memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((spec.key.clone(), t.id()))
            .or_default()
            .clone();
        let api = match &t.namespace {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &t.ar),
            None => Api::<DynamicObject>::all_with(client.clone(), &t.ar),
        };
        let (tx, cancel, health, listed) =
            (tx.clone(), round.clone(), health.clone(), listed.clone());
        let owner = spec.owner.clone();
        watches.spawn(async move {
            let mut state = state.lock().await;
            let target = Watched {
                api,
                ar: t.ar,
                selector: t.selector,
                owner,
            };
            watch(target, &mut state, tx, cancel, |r| match r {
                Ok(()) => {
                    let mut l = listed.lock().unwrap_or_else(|e| e.into_inner());
                    l[i] = true;
                    if l.iter().all(|x| *x) {
                        set(&health, Health::Ready);
                    }
                }
                Err(reason) => set(&health, Health::NotReady(reason)),
            })
            .await
        });
    }
    if n == 0 {
        // No namespace matches (yet): nothing to watch, which is not an error.
        set(health, Health::Ready);
    }
    drop(tx);
    // Deliveries one at a time, in the order of the changes (Knative's adapter sends
    // synchronously too).
    loop {
        let change = tokio::select! {
            _ = round.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        deliver(ctx, change, stop).await?;
    }
    round.cancel();
    while watches.join_next().await.is_some() {}
    if stop.is_cancelled() {
        return None;
    }
    // The namespace set changed: what the watches queued is still sent.
    while let Ok(change) = rx.try_recv() {
        deliver(ctx, change, stop).await?;
    }
    Some(())
}

/// Sends one change (unless the source's `filters` drop it); `None` when stopped meanwhile.
async fn deliver(ctx: &RunCtx, change: Change, stop: &CancellationToken) -> Option<()> {
    let spec = &ctx.spec;
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let event = change_event(
        spec,
        &ctx.source_url,
        change.kind,
        &change.object,
        uuid::Uuid::new_v4().to_string(),
        time,
    );
    if spec.filter.as_ref().is_some_and(|f| !f.matches(&event)) {
        return Some(());
    }
    ctx.counters.produced.inc();
    let span = crate::emit_span("ApiServerSource", &spec.key, &event, None);
    let envelope = Envelope::new(event);
    let report = tokio::select! {
        _ = stop.cancelled() => return None,
        r = ctx.env.sender.deliver(Request {
            url: &spec.sink,
            envelope: &envelope,
            policy: &spec.delivery,
            namespace: Some(&spec.key.namespace),
        }).instrument(span) => r,
    };
    ctx.counters.count(&report);
    crate::log_failure(&spec.key, envelope.event.id(), &report);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::delivery::DeliveryPolicy;
    use std::collections::BTreeMap;

    fn spec(mode: ApiServerMode) -> ApiServerSource {
        ApiServerSource {
            key: Key::new("team", "watch"),
            resources: vec![],
            owner: None,
            mode,
            namespaces: NamespaceScope::Own,
            service_account: None,
            filter: None,
            extensions: BTreeMap::from([("team".to_string(), "blue".to_string())]),
            sink: "http://127.0.0.1:1/".parse().unwrap(),
            delivery: DeliveryPolicy::default(),
            fingerprint: 0,
        }
    }

    fn cm() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "team", "uid": "u1", "resourceVersion": "7"},
            "data": {"k": "v"}
        })
    }

    fn attrs(e: &Event) -> Vec<String> {
        let mut a: Vec<_> = e
            .attributes()
            .map(|(n, v)| format!("{n}={}", v.to_string_form()))
            .collect();
        a.sort();
        a
    }

    #[test]
    fn reference_mode_events_carry_a_reference() {
        let e = change_event(
            &spec(ApiServerMode::Reference),
            "https://10.0.0.1:443",
            ChangeKind::Add,
            &cm(),
            "id-1".into(),
            "2026-01-01T00:00:00Z".into(),
        );
        assert_eq!(
            attrs(&e),
            [
                "apiversion=v1",
                "datacontenttype=application/json",
                "id=id-1",
                "kind=ConfigMap",
                "name=cfg",
                "namespace=team",
                "source=https://10.0.0.1:443",
                "subject=/apis/v1/namespaces/team/configmaps/cfg",
                "team=blue",
                "time=2026-01-01T00:00:00Z",
                "type=dev.knative.apiserver.ref.add",
            ]
        );
        assert_eq!(
            std::str::from_utf8(e.data().unwrap()).unwrap(),
            r#"{"kind":"ConfigMap","namespace":"team","name":"cfg","apiVersion":"v1"}"#
        );
    }

    #[test]
    fn resource_mode_events_carry_the_object() {
        let e = change_event(
            &spec(ApiServerMode::Resource),
            "https://h",
            ChangeKind::Delete,
            &cm(),
            "id".into(),
            "t".into(),
        );
        assert_eq!(e.ty(), "dev.knative.apiserver.resource.delete");
        let data: serde_json::Value = serde_json::from_slice(e.data().unwrap()).unwrap();
        assert_eq!(data, cm());
    }

    #[test]
    fn types_and_subjects() {
        assert_eq!(
            event_types(ApiServerMode::Resource),
            [
                "dev.knative.apiserver.resource.add",
                "dev.knative.apiserver.resource.update",
                "dev.knative.apiserver.resource.delete"
            ]
        );
        assert_eq!(
            event_type(ApiServerMode::Reference, ChangeKind::Update),
            "dev.knative.apiserver.ref.update"
        );
        let table = [
            (("v1", "Pod", "ns", "p"), "/apis/v1/namespaces/ns/pods/p"),
            (
                ("apps/v1", "Deployment", "ns", "d"),
                "/apis/apps/v1/namespaces/ns/deployments/d",
            ),
            (
                ("serving.knative.dev", "Service", "ns", "s"),
                "/apis/serving.knative.dev/versionUnknown/namespaces/ns/services/s",
            ),
        ];
        for ((av, k, ns, n), want) in table {
            assert_eq!(subject(av, k, ns, n), want);
        }
        assert_eq!(
            reference("Namespace", "", "n", "v1"),
            r#"{"kind":"Namespace","name":"n","apiVersion":"v1"}"#
        );
    }

    #[test]
    fn owner_filter() {
        let owned = serde_json::json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "x"}]}});
        let rs = ("apps/v1".to_string(), "ReplicaSet".to_string());
        let dep = ("apps/v1".to_string(), "Deployment".to_string());
        assert!(owned_by(&owned, &rs));
        assert!(!owned_by(&owned, &dep));
        assert!(!owned_by(&cm(), &rs));
    }

    fn item(uid: &str, rv: &str) -> (String, String, String) {
        (uid.into(), rv.into(), format!("{uid}@{rv}"))
    }

    #[test]
    fn relist_diffs_against_what_was_seen() {
        type Step = (
            &'static str,
            Vec<(String, String, String)>,
            Vec<(ChangeKind, &'static str)>,
        );
        let table: Vec<Step> = vec![
            // The first list is the baseline.
            ("baseline", vec![item("a", "1"), item("b", "2")], vec![]),
            // A re-list with nothing changed says nothing.
            ("same", vec![item("a", "1"), item("b", "2")], vec![]),
            // New uid, changed rv, vanished uid.
            (
                "diff",
                vec![item("a", "5"), item("c", "6")],
                vec![
                    (ChangeKind::Update, "a@5"),
                    (ChangeKind::Add, "c@6"),
                    (ChangeKind::Delete, "b@2"),
                ],
            ),
            // A deleted-and-recreated object has a new uid: delete and add.
            (
                "recreated",
                vec![item("a2", "9"), item("c", "6")],
                vec![(ChangeKind::Add, "a2@9"), (ChangeKind::Delete, "a@5")],
            ),
        ];
        let mut t = Tracker::default();
        for (name, items, want) in table {
            let got = t.relist(items);
            let want: Vec<_> = want.into_iter().map(|(k, o)| (k, o.to_string())).collect();
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn watch_events_after_the_baseline() {
        let mut t: Tracker<String> = Tracker::default();
        assert_eq!(t.relist(vec![item("a", "1")]), vec![]);
        // A replay of what the list showed (a resumed watch) says nothing.
        assert_eq!(t.applied("a".into(), "1".into(), "a@1".into()), None);
        assert_eq!(
            t.applied("a".into(), "2".into(), "a@2".into()),
            Some((ChangeKind::Update, "a@2".into()))
        );
        assert_eq!(
            t.applied("b".into(), "3".into(), "b@3".into()),
            Some((ChangeKind::Add, "b@3".into()))
        );
        assert_eq!(
            t.deleted("a", "a@2".into()),
            (ChangeKind::Delete, "a@2".into())
        );
        // After a 410 the re-list finds b changed and a gone already (no second delete).
        assert_eq!(
            t.relist(vec![item("b", "4")]),
            vec![(ChangeKind::Update, "b@4".into())]
        );
        assert_eq!(
            permission_message("system:serviceaccount:ns:sa", &["get", "list", "watch"], "configmaps", "", Some("ns")),
            "User system:serviceaccount:ns:sa cannot get, list, watch resource \"configmaps\" in API group \"\" in namespace \"ns\""
        );
    }
}
