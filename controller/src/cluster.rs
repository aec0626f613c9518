//! The resources in the cluster, kept current by kube-rs reflectors, read as the same
//! [`Loaded`] list embedded mode reads from files, so both modes go through
//! `sluice_crds::build_lenient` and report the same messages.
//!
//! One watcher per kind (bookmarks on, re-list on `410 Gone`, exponential backoff on errors,
//! all from kube-runtime). Each change bumps a counter on a `watch` channel; readers take a
//! snapshot when it moves. A kind whose watch keeps failing (its CRD not installed, RBAC
//! missing) is logged with what to do and retried; the others keep working.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ApiResource, DynamicObject, TypeMeta};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use sluice_crds::k8s_sources::ApiServerSource;
use sluice_crds::sources::{KafkaSource, PingSource};
use sluice_crds::types::{Broker, Trigger};
use sluice_crds::{LoadError, Loaded};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long [`Cluster::ready`] waits for every kind's first list.
pub const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The reflector stores of every kind Sluice runs.
///
/// Objects are kept as the API server sends them ([`DynamicObject`]) and read through
/// `sluice_crds::load::from_object`, the loader of embedded mode: defaults (a Broker with no
/// `spec`) and messages are the same, and one object the types cannot read is reported as
/// that object's problem instead of stopping the watch of its whole kind.
#[derive(Clone)]
pub struct Cluster {
    kinds: Vec<(ApiResource, Store<DynamicObject>)>,
    changes: watch::Receiver<u64>,
}

/// The watch tasks; dropping this stops them.
pub struct Watches(Vec<JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The kinds the data plane watches: everything `sluice_crds` turns into topology in
/// Kubernetes mode (Knative Serving's Service is Knative Serving's in a cluster;
/// ContainerSource and SinkBinding are run by pods, see [`controller_kinds`]).
pub fn kinds() -> Vec<ApiResource> {
    use sluice_crds::{flows, messaging, transform};
    vec![
        ApiResource::erase::<messaging::Channel>(&()),
        ApiResource::erase::<messaging::InMemoryChannel>(&()),
        ApiResource::erase::<messaging::KafkaChannel>(&()),
        ApiResource::erase::<messaging::NatsJetStreamChannel>(&()),
        ApiResource::erase::<messaging::Subscription>(&()),
        ApiResource::erase::<flows::Sequence>(&()),
        ApiResource::erase::<flows::Parallel>(&()),
        ApiResource::erase::<transform::EventTransform>(&()),
        ApiResource::erase::<sluice_crds::eventpolicy::EventPolicy>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<Broker>(&()),
        ApiResource::erase::<Trigger>(&()),
        ApiResource::erase::<PingSource>(&()),
        ApiResource::erase::<KafkaSource>(&()),
        ApiResource::erase::<ApiServerSource>(&()),
    ]
}

/// The kinds the controller watches: the data plane's, and the kinds whose pods it writes
/// (ContainerSource: a Deployment; SinkBinding: `K_SINK` in its subjects).
pub fn controller_kinds() -> Vec<ApiResource> {
    let mut k = kinds();
    k.push(ApiResource::erase::<
        sluice_crds::k8s_sources::ContainerSource,
    >(&()));
    k.push(ApiResource::erase::<sluice_crds::k8s_sources::SinkBinding>(
        &(),
    ));
    k
}

impl Cluster {
    /// Starts watching the data plane's kinds ([`kinds`]), cluster-wide.
    pub fn watch(client: Client) -> (Cluster, Watches) {
        Cluster::watch_kinds(client, kinds())
    }

    /// Starts watching `kinds`, cluster-wide.
    pub fn watch_kinds(client: Client, kinds: Vec<ApiResource>) -> (Cluster, Watches) {
        let (tx, changes) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let mut stores = Vec::new();
        let mut tasks = Vec::new();
        for ar in kinds {
            let (store, task) = watch_kind(&client, ar.clone(), &tx);
            stores.push((ar, store));
            tasks.push(task);
        }
        (
            Cluster {
                kinds: stores,
                changes,
            },
            Watches(tasks),
        )
    }

    /// Waits until every kind has been listed once (a first snapshot is then complete), or
    /// [`READY_WAIT`] has passed: a kind that cannot be listed (its CRD not installed, no
    /// RBAC) is logged and left empty rather than holding up every other kind.
    pub async fn ready(&self) {
        let all = async {
            for (_, store) in &self.kinds {
                let _ = store.wait_until_ready().await;
            }
        };
        if tokio::time::timeout(READY_WAIT, all).await.is_err() {
            let missing: Vec<_> =
                futures::future::join_all(self.kinds.iter().map(|(ar, store)| async move {
                    let listed =
                        tokio::time::timeout(std::time::Duration::ZERO, store.wait_until_ready())
                            .await
                            .is_ok();
                    (!listed).then(|| format!("{}.{}", ar.plural, ar.group))
                }))
                .await
                .into_iter()
                .flatten()
                .collect();
            tracing::warn!(
                ?missing,
                "some kinds could not be listed; going on without them (they appear once their watch works)"
            );
        }
    }

    /// A receiver that changes whenever any object does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Every object, as embedded mode's loader would give it, and the problems of the objects
    /// it cannot read.
    pub fn snapshot(&self) -> (Vec<Loaded>, Vec<LoadError>) {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (ar, store) in &self.kinds {
            let mut objects = store.state();
            // A stable order, so two snapshots of the same objects build the same topology.
            objects.sort_by_key(|o| (o.namespace(), o.name_any()));
            for o in objects {
                // Being deleted: gone for Sluice (no finalizers hold Sluice objects).
                if o.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let mut o = (*o).clone();
                // List items of built-in kinds come without apiVersion/kind.
                o.types = Some(TypeMeta {
                    api_version: ar.api_version.clone(),
                    kind: ar.kind.clone(),
                });
                let origin = format!(
                    "{} {}/{}",
                    ar.kind,
                    o.namespace().unwrap_or_default(),
                    o.name_any()
                );
                let value = serde_json::to_value(&o).unwrap_or_default();
                match sluice_crds::load::from_object(value, origin) {
                    Ok(l) => out.push(l),
                    Err(e) => errors.push(e),
                }
            }
        }
        (out, errors)
    }
}

fn watch_kind(
    client: &Client,
    ar: ApiResource,
    changed: &Arc<watch::Sender<u64>>,
) -> (Store<DynamicObject>, JoinHandle<()>) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let writer = Writer::new(ar.clone());
    let reader = writer.as_reader();
    let changed = changed.clone();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let resource = if ar.group.is_empty() {
        ar.plural.clone()
    } else {
        format!("{}.{}", ar.plural, ar.group)
    };
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                // Mid re-list: the store is swapped in whole at InitDone.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => {
                    changed.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    tracing::warn!(
                        resource,
                        error = %e,
                        "cannot watch {resource} (retrying with backoff): are Sluice's CRDs installed (kubectl apply -f crds/yaml/) and may this ServiceAccount list and watch them?"
                    );
                }
            }
        }
    });
    (reader, task)
}
