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
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use sluice_crds::sources::{KafkaSource, PingSource};
use sluice_crds::types::{Broker, Trigger};
use sluice_crds::{Loaded, Resource as R};
use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The reflector stores of every kind Sluice runs.
#[derive(Clone)]
pub struct Cluster {
    brokers: Store<Broker>,
    triggers: Store<Trigger>,
    ping_sources: Store<PingSource>,
    kafka_sources: Store<KafkaSource>,
    config_maps: Store<ConfigMap>,
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

impl Cluster {
    /// Starts watching every kind, cluster-wide.
    pub fn watch(client: Client) -> (Cluster, Watches) {
        let (tx, changes) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let mut tasks = Vec::new();
        let (brokers, t) = watch_kind::<Broker>(&client, &tx);
        tasks.push(t);
        let (triggers, t) = watch_kind::<Trigger>(&client, &tx);
        tasks.push(t);
        let (ping_sources, t) = watch_kind::<PingSource>(&client, &tx);
        tasks.push(t);
        let (kafka_sources, t) = watch_kind::<KafkaSource>(&client, &tx);
        tasks.push(t);
        let (config_maps, t) = watch_kind::<ConfigMap>(&client, &tx);
        tasks.push(t);
        (
            Cluster {
                brokers,
                triggers,
                ping_sources,
                kafka_sources,
                config_maps,
                changes,
            },
            Watches(tasks),
        )
    }

    /// Waits until every kind has been listed once (a first snapshot is then complete).
    pub async fn ready(&self) {
        let _ = self.brokers.wait_until_ready().await;
        let _ = self.triggers.wait_until_ready().await;
        let _ = self.ping_sources.wait_until_ready().await;
        let _ = self.kafka_sources.wait_until_ready().await;
        let _ = self.config_maps.wait_until_ready().await;
    }

    /// A receiver that changes whenever any object does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Every object, as embedded mode's loader would give it.
    pub fn snapshot(&self) -> Vec<Loaded> {
        let mut out = Vec::new();
        loaded(&self.config_maps, &mut out, |o| R::ConfigMap(Box::new(o)));
        loaded(&self.brokers, &mut out, |o| R::Broker(Box::new(o)));
        loaded(&self.triggers, &mut out, |o| R::Trigger(Box::new(o)));
        loaded(&self.ping_sources, &mut out, |o| R::PingSource(Box::new(o)));
        loaded(&self.kafka_sources, &mut out, |o| {
            R::KafkaSource(Box::new(o))
        });
        out
    }
}

fn loaded<K>(store: &Store<K>, out: &mut Vec<Loaded>, wrap: impl Fn(K) -> R)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut objects = store.state();
    // A stable order, so two snapshots of the same objects build the same topology.
    objects.sort_by_key(|o| (o.namespace(), o.name_any()));
    for o in objects {
        // Being deleted: gone for Sluice (no finalizers hold Sluice objects).
        if o.meta().deletion_timestamp.is_some() {
            continue;
        }
        let namespace = o.namespace().unwrap_or_else(|| "default".into());
        let name = o.name_any();
        out.push(Loaded {
            origin: format!("{} {namespace}/{name}", K::kind(&())),
            namespace,
            name,
            resource: wrap((*o).clone()),
        });
    }
}

fn watch_kind<K>(client: &Client, changed: &Arc<watch::Sender<u64>>) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let changed = changed.clone();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let task = tokio::spawn(async move {
        let kind = K::plural(&()).to_string();
        let group = K::group(&()).to_string();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                // Mid re-list: the store is swapped in whole at InitDone.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => {
                    changed.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    let resource = if group.is_empty() {
                        kind.clone()
                    } else {
                        format!("{kind}.{group}")
                    };
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
